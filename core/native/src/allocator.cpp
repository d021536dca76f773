// A caching CPU allocator: large blocks are kept for reuse instead of going back to the C library.
//
// Why: glibc serves blocks above its mmap threshold (128 KiB, rising to at most 32 MiB) with mmap and returns them
// with munmap on free, and trims the top of its heap; a tensor of the next step then pays a page fault for every
// 4 KiB it touches. Measured on a 2-core AMD EPYC VM with the "small" UNet at batch 8, forward+backward took
// 0.93 s with glibc's defaults and 0.50 s with its thresholds raised (MALLOC_MMAP_THRESHOLD_=32 MiB,
// MALLOC_TRIM_THRESHOLD_=4 GiB); PyTorch's tuning guide recommends jemalloc/tcmalloc for the same reason. This
// allocator does the reuse in-process, for every size, and bounds what it keeps.
//
// Policy: requests below kMinCached (32 KiB) go to libtorch's default allocator. Larger ones are rounded up to a size
// class (multiples of 1/16 of their power of two: at most 6.25% more address space; pages a tensor never touches
// are never resident) and served from that class's free list (most recently freed first) or, on a miss, mapped
// with mmap from 1 MiB (2 MiB blocks and up asked for transparent huge pages: one fault per 2 MiB), else
// posix_memalign. Freed blocks go back to their
// list. On a miss the cache unmaps its oldest free blocks while live + cached + request would exceed the footprint
// limit — peak live bytes + min(peak × headroom, 1 GiB) + 64 MiB (headroom 0.25, or SUDO_CPU_CACHE_HEADROOM) — or
// while the system's available memory (MemAvailable) is below the request + 256 MiB. So a steady training or
// sampling loop runs without page faults, a change of shapes cannot grow the footprint past about its new peak, and
// the cache gives memory back before the kernel's OOM killer would act. sudo_cpu_cache_empty unmaps every free block.
#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>
#include "common.h"

using namespace sudo;

namespace {

constexpr size_t kMinCached = 32 * 1024;
constexpr size_t kSlack = 64ull << 20;

size_t size_class(size_t n) {
  size_t p = size_t(1) << (63 - __builtin_clzll(n));
  size_t step = std::max<size_t>(4096, p / 16);
  return (n + step - 1) / step * step;
}

// Blocks of 1 MiB and more are mapped directly (so a release returns them to the system at once); smaller ones come
// from the C library (64-byte aligned, as libtorch's own allocator), keeping the number of mappings small.
constexpr size_t kMapMin = 1u << 20;

void* map_block(size_t n) {
  if (n < kMapMin) {
    void* q = nullptr;
    return posix_memalign(&q, 64, n) == 0 ? q : nullptr;
  }
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
#ifdef MADV_HUGEPAGE
  if (n >= (2u << 20)) madvise(p, n, MADV_HUGEPAGE);
#endif
  return p;
}

// MemAvailable of /proc/meminfo in bytes; -1 when unknown.
int64_t mem_available() {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return -1;
  char line[256];
  int64_t kb = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %ld kB", &kb) == 1) break;
  std::fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}

// Data pointer == context pointer (libtorch's raw_allocate/raw_deallocate require it), so the block's size class
// and free time live in a table keyed by the pointer.
struct Block {
  size_t size;         // the size class
  uint64_t stamp = 0;  // when it was last freed (orders the release of free blocks)
};

struct State {
  std::mutex mu;
  std::unordered_map<void*, Block> blocks;                    // every block the cache owns, live or free
  std::unordered_map<size_t, std::vector<void*>> free_lists;  // size class → free blocks
  std::map<uint64_t, void*> by_age;                           // stamp → free block, oldest first
  uint64_t clock = 0;
  int64_t live = 0, cached = 0, peak_live = 0;
  int64_t hits = 0, misses = 0, releases = 0;

  void release(void* p) {
    auto it = blocks.find(p);
    auto& list = free_lists[it->second.size];
    for (size_t i = 0; i < list.size(); ++i)
      if (list[i] == p) { list[i] = list.back(); list.pop_back(); break; }
    by_age.erase(it->second.stamp);
    cached -= static_cast<int64_t>(it->second.size);
    if (it->second.size < kMapMin) std::free(p);
    else munmap(p, it->second.size);
    blocks.erase(it);
    releases += 1;
  }
  void release_oldest_until(int64_t budget) {
    while (cached > 0 && live + cached > budget && !by_age.empty()) release(by_age.begin()->second);
  }
};

State& state() {
  static State* s = new State();  // never destroyed: tensors may be freed during process exit
  return *s;
}

c10::Allocator* g_fallback = nullptr;

void delete_cached(void* p) {
  if (!p) return;
  auto& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.blocks.find(p);
    if (it != s.blocks.end()) {
      auto& b = it->second;
      b.stamp = ++s.clock;
      s.free_lists[b.size].push_back(p);
      s.by_age.emplace(b.stamp, p);
      s.live -= static_cast<int64_t>(b.size);
      s.cached += static_cast<int64_t>(b.size);
      return;
    }
  }
  // A small block from libtorch's own allocator, handed back through raw_deallocate.
  g_fallback->raw_deleter()(p);
}

struct CachingCpuAllocator final : c10::Allocator {
  // libtorch 1.13 declares allocate const and libtorch 2.x (from 2.3) non-const: both overloads are defined, so
  // whichever the base declares pure virtual is overridden and the other is an unused extra (no `override`).
  c10::DataPtr allocate(size_t n) { return static_cast<const CachingCpuAllocator*>(this)->allocate(n); }
  c10::DataPtr allocate(size_t n) const {
    if (n < kMinCached) return g_fallback->allocate(n);
    size_t cls = size_class(n);
    auto& s = state();
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      auto it = s.free_lists.find(cls);
      if (it != s.free_lists.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        s.by_age.erase(s.blocks[p].stamp);
        s.cached -= static_cast<int64_t>(cls);
        s.hits += 1;
      } else {
        s.misses += 1;
        s.peak_live = std::max(s.peak_live, s.live + static_cast<int64_t>(cls));
        // 0.1 left the small UNet's fwd+bwd loop releasing and re-faulting blocks every step; 0.25 does not.
        static const double frac = [] { const char* e = std::getenv("SUDO_CPU_CACHE_HEADROOM"); double v = e ? atof(e) : 0.25; return v >= 0 ? v : 0.25; }();
        const int64_t headroom = std::min<int64_t>(static_cast<int64_t>(s.peak_live * frac), int64_t(1) << 30);
        s.release_oldest_until(s.peak_live + headroom + static_cast<int64_t>(kSlack) - static_cast<int64_t>(cls));
        if (s.cached > 0) {
          const int64_t avail = mem_available();
          const int64_t need = static_cast<int64_t>(cls) + (256ll << 20);
          if (avail >= 0 && avail < need) s.release_oldest_until(s.live + s.cached - (need - avail));
        }
      }
      s.live += static_cast<int64_t>(cls);
      s.peak_live = std::max(s.peak_live, s.live);
    }
    if (!p) {
      p = map_block(cls);
      if (!p) {
        // Out of address space or memory: give the cache back and try once more.
        {
          std::lock_guard<std::mutex> lock(s.mu);
          s.release_oldest_until(0);
        }
        p = map_block(cls);
        if (!p) {
          std::lock_guard<std::mutex> lock(s.mu);
          s.live -= static_cast<int64_t>(cls);
          throw std::runtime_error("CPU out of memory: could not allocate " + std::to_string(n) + " bytes");
        }
      }
      std::lock_guard<std::mutex> lock(s.mu);
      s.blocks.emplace(p, Block{cls});
    }
    return c10::DataPtr(p, p, &delete_cached, c10::Device(c10::DeviceType::CPU));
  }
  c10::DeleterFnPtr raw_deleter() const override { return &delete_cached; }
  // libtorch ≥ 2.3 declares this pure virtual; on older versions it is an unused extra method.
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }
};

CachingCpuAllocator g_caching;
bool g_installed = false;

}  // namespace

extern "C" {

// Installs the caching allocator as libtorch's CPU allocator (tensors made before keep their own deleter).
int32_t sudo_cpu_cache_install(void) {
  TRY_S(
    if (!g_installed) {
      g_fallback = c10::GetCPUAllocator();
      c10::SetCPUAllocator(&g_caching, /*priority=*/10);
      g_installed = true;
    }
  )
}

int32_t sudo_cpu_cache_installed(void) { return g_installed ? 1 : 0; }

// out[6]: live bytes, cached (free) bytes, peak live bytes, hits, misses, releases — blocks of ≥ 256 KiB only.
int32_t sudo_cpu_cache_stats(int64_t* out) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  out[0] = s.live; out[1] = s.cached; out[2] = s.peak_live; out[3] = s.hits; out[4] = s.misses; out[5] = s.releases;
  return 0;
}

// Returns every free block to the C library; with reset_peak, the peak starts again from the live bytes.
int32_t sudo_cpu_cache_empty(int32_t reset_peak) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  while (!s.by_age.empty()) s.release(s.by_age.begin()->second);
  if (reset_peak) s.peak_live = s.live;
  return 0;
}

}  // extern "C"
