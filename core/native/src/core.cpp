// Library info, threads, tensor lifetime/properties, creation, generators, conversion, mmap.
#include "common.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/Generator.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Context.h>
#include <torch/version.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <atomic>
#include <cstring>
#include <memory>

#ifdef SUDO_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif

#ifndef SUDO_TORCH_DIR
#define SUDO_TORCH_DIR ""
#endif

namespace sudo {
thread_local std::string g_error;
void set_error(const char* msg) { g_error = msg ? msg : "(no message)"; }
}  // namespace sudo

using namespace sudo;

extern "C" {

int32_t sudo_abi_version(void) { return SUDO_ABI_VERSION; }
const char* sudo_torch_version(void) { return TORCH_VERSION; }
const char* sudo_build_torch_path(void) { return SUDO_TORCH_DIR; }

const char* sudo_torch_library_path(void) {
  static std::string path;
  Dl_info info;
  // A symbol that lives in libtorch_cpu: where the process really resolved it from.
  if (path.empty() && dladdr(reinterpret_cast<void*>(&at::set_num_threads), &info) && info.dli_fname)
    path = info.dli_fname;
  return path.c_str();
}

int32_t sudo_cuda_compiled(void) {
#ifdef SUDO_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}
// CUDA runtime, cuDNN and NCCL versions of a CUDA build (0 where unknown or absent): out[0] CUDART (e.g. 12040),
// out[1] cuDNN (e.g. 90100), out[2] NCCL (e.g. 22105). Asked of the libraries libtorch_cuda loaded (dlsym), not of
// ATen's CUDA hooks, whose names change between libtorch versions.
int32_t sudo_cuda_versions(int64_t* out) {
  out[0] = out[1] = out[2] = 0;
#ifdef SUDO_WITH_CUDA
  using int_fn = int (*)(int*);
  using size_fn = size_t (*)(void);
  if (auto f = reinterpret_cast<int_fn>(dlsym(RTLD_DEFAULT, "cudaRuntimeGetVersion"))) {
    int v = 0;
    if (f(&v) == 0) out[0] = v;
  }
  if (auto f = reinterpret_cast<size_fn>(dlsym(RTLD_DEFAULT, "cudnnGetVersion"))) out[1] = static_cast<int64_t>(f());
  if (auto f = reinterpret_cast<int_fn>(dlsym(RTLD_DEFAULT, "ncclGetVersion"))) {
    int v = 0;
    if (f(&v) == 0) out[2] = v;
  }
#endif
  return 0;
}
int32_t sudo_cuda_available(void) {
  try { return at::hasCUDA() ? 1 : 0; } SUDO_CATCH return 0;
}
int32_t sudo_cuda_device_count(void) {
#ifdef SUDO_WITH_CUDA
  try { return static_cast<int32_t>(c10::cuda::device_count()); } SUDO_CATCH return 0;
#else
  return 0;
#endif
}
int32_t sudo_cuda_empty_cache(void) {
#ifdef SUDO_WITH_CUDA
  TRY_S(c10::cuda::CUDACachingAllocator::emptyCache();)
#else
  return 0;
#endif
}
int32_t sudo_cuda_synchronize(int32_t device) {
#ifdef SUDO_WITH_CUDA
  TRY_S(c10::cuda::set_device(static_cast<c10::DeviceIndex>(device)); c10::cuda::device_synchronize();)
#else
  (void)device;
  return 0;
#endif
}
int64_t sudo_cuda_memory_allocated(int32_t device) {
#ifdef SUDO_WITH_CUDA
  try {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
    return stats.allocated_bytes[0].current;  // StatType::AGGREGATE
  } SUDO_CATCH return -1;
#else
  (void)device;
  return 0;
#endif
}

// torch.cuda.max_memory_allocated / memory_reserved / max_memory_reserved: out[0..3] = allocated current, allocated
// peak, reserved current, reserved peak (bytes; the aggregate pool). 0 on a build without CUDA.
int32_t sudo_cuda_memory_stats(int32_t device, int64_t* out) {
#ifdef SUDO_WITH_CUDA
  TRY_S(auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
        out[0] = stats.allocated_bytes[0].current; out[1] = stats.allocated_bytes[0].peak;
        out[2] = stats.reserved_bytes[0].current; out[3] = stats.reserved_bytes[0].peak;)
#else
  (void)device;
  for (int i = 0; i < 4; ++i) out[i] = 0;
  return 0;
#endif
}

int32_t sudo_cuda_reset_peak_memory_stats(int32_t device) {
#ifdef SUDO_WITH_CUDA
  TRY_S(c10::cuda::CUDACachingAllocator::resetPeakStats(device);)
#else
  (void)device;
  return 0;
#endif
}

const char* sudo_last_error(void) { return g_error.c_str(); }
void sudo_clear_error(void) { g_error.clear(); }

int32_t sudo_set_num_threads(int32_t n) { TRY_S(at::set_num_threads(n);) }
int32_t sudo_get_num_threads(void) { return at::get_num_threads(); }
int32_t sudo_backend_flag(int32_t which, int32_t value) {
  try {
    auto& ctx = at::globalContext();
    bool on = value > 0;
    switch (which) {
      case 0: if (value >= 0) ctx.setUserEnabledMkldnn(on); return ctx.userEnabledMkldnn() ? 1 : 0;
      case 1: if (value >= 0) ctx.setAllowTF32CuBLAS(on); return ctx.allowTF32CuBLAS() ? 1 : 0;
      case 2: if (value >= 0) ctx.setAllowTF32CuDNN(on); return ctx.allowTF32CuDNN() ? 1 : 0;
      case 3: if (value >= 0) ctx.setBenchmarkCuDNN(on); return ctx.benchmarkCuDNN() ? 1 : 0;
      default: throw std::invalid_argument("unknown backend flag " + std::to_string(which));
    }
  } SUDO_CATCH
  return -1;
}

// OpenBLAS is reached through the process's symbol table (libtorch links the system BLAS), so the
// shim works whichever BLAS the alternatives system selected.
static void* blas_sym(const char* name) { return dlsym(RTLD_DEFAULT, name); }
int32_t sudo_blas_set_num_threads(int32_t n) {
  auto f = reinterpret_cast<void (*)(int)>(blas_sym("openblas_set_num_threads"));
  if (!f) return -1;
  f(n);
  return 0;
}
int32_t sudo_blas_get_num_threads(void) {
  auto f = reinterpret_cast<int (*)(void)>(blas_sym("openblas_get_num_threads"));
  return f ? f() : -1;
}
const char* sudo_blas_info(void) {
  static std::string s;
  auto cfg = reinterpret_cast<char* (*)(void)>(blas_sym("openblas_get_config"));
  auto core = reinterpret_cast<char* (*)(void)>(blas_sym("openblas_get_corename"));
  if (cfg) {
    s = std::string(cfg()) + (core ? std::string(" core=") + core() : "");
  } else {
    Dl_info info;
    void* sgemm = blas_sym("sgemm_");
    s = (sgemm && dladdr(sgemm, &info) && info.dli_fname) ? std::string("BLAS from ") + info.dli_fname
                                                        : "unknown BLAS";
  }
  return s.c_str();
}
const char* sudo_parallel_info(void) {
  static thread_local std::string s;
  try { s = at::get_parallel_info(); } catch (...) { s = "unavailable"; }
  return s.c_str();
}
int32_t sudo_manual_seed(int64_t seed) { TRY_S(at::manual_seed(static_cast<uint64_t>(seed));) }
int32_t sudo_has_mkldnn_bf16(void) {
  try { return at::globalContext().userEnabledMkldnn() ? 1 : 0; } SUDO_CATCH return 0;
}

// ---- lifetime and properties ----
void sudo_free(sudo_tensor t) { delete static_cast<at::Tensor*>(t); }
int64_t sudo_dim(sudo_tensor t) { TRY_V(T(t).dim(), -1) }
int32_t sudo_sizes(sudo_tensor t, int64_t* out, int32_t cap) {
  TRY_S(auto s = T(t).sizes(); if ((int32_t)s.size() > cap) throw std::out_of_range("sizes buffer too small");
        for (size_t i = 0; i < s.size(); ++i) out[i] = s[i];)
}
int32_t sudo_strides(sudo_tensor t, int64_t* out, int32_t cap) {
  TRY_S(auto s = T(t).strides(); if ((int32_t)s.size() > cap) throw std::out_of_range("strides buffer too small");
        for (size_t i = 0; i < s.size(); ++i) out[i] = s[i];)
}
int64_t sudo_numel(sudo_tensor t) { TRY_V(T(t).numel(), -1) }
int32_t sudo_dtype(sudo_tensor t) { TRY_V(static_cast<int32_t>(T(t).scalar_type()), -1) }
int32_t sudo_device(sudo_tensor t, int32_t* type, int32_t* index) {
  TRY_S(auto d = T(t).device(); *type = static_cast<int32_t>(d.type()); *index = d.index();)
}
int32_t sudo_requires_grad(sudo_tensor t) { TRY_V(T(t).requires_grad() ? 1 : 0, -1) }
int32_t sudo_is_leaf(sudo_tensor t) { TRY_V(T(t).is_leaf() ? 1 : 0, -1) }
int32_t sudo_is_contiguous(sudo_tensor t) { TRY_V(T(t).is_contiguous() ? 1 : 0, -1) }
int32_t sudo_defined(sudo_tensor t) { TRY_V(T(t).defined() ? 1 : 0, -1) }
int32_t sudo_has_grad_fn(sudo_tensor t) { TRY_V(T(t).grad_fn() ? 1 : 0, -1) }
int32_t sudo_item(sudo_tensor t, double* d, int64_t* i) {
  TRY_S(auto s = T(t).item(); if (s.isIntegral(true)) { *i = s.toLong(); *d = static_cast<double>(*i); }
        else { *d = s.toDouble(); *i = static_cast<int64_t>(*d); })
}
void* sudo_data_ptr(sudo_tensor t) {
  try { return T(t).data_ptr(); } SUDO_CATCH return nullptr;
}
int32_t sudo_copy_to_host(sudo_tensor t, void* dst, int64_t nbytes, int32_t dtype) {
  TRY_S(
    auto src = T(t).detach().to(at::kCPU, dt(dtype)).contiguous();
    int64_t need = src.numel() * static_cast<int64_t>(src.element_size());
    if (need != nbytes)
      throw std::invalid_argument("destination holds " + std::to_string(nbytes) + " bytes, tensor needs " +
                                  std::to_string(need));
    if (need) std::memcpy(dst, src.data_ptr(), static_cast<size_t>(need));)
}
int32_t sudo_set_requires_grad(sudo_tensor t, int32_t on) { TRY_S(T(t).set_requires_grad(on != 0);) }
int32_t sudo_grad(sudo_tensor t, sudo_tensor* out) {
  TRY_S(auto& g = T(t).grad(); *out = g.defined() ? wrap(g) : nullptr;)
}
int32_t sudo_set_grad(sudo_tensor t, sudo_tensor g) {
  TRY_S(
    auto& x = T(t);
    if (g) {
      auto& n = T(g);
      // The checks PyTorch's tensor.grad setter makes: same shape, dtype and device.
      if (n.sizes() != x.sizes() || n.scalar_type() != x.scalar_type() || n.device() != x.device())
        throw std::invalid_argument("assigned grad has shape " + c10::str(n.sizes()) + ", dtype " + c10::toString(n.scalar_type()) +
                                    ", device " + n.device().str() + "; the tensor has " + c10::str(x.sizes()) + ", " +
                                    c10::toString(x.scalar_type()) + ", " + x.device().str());
    }
    x.mutable_grad() = g ? T(g) : at::Tensor();)
}
int32_t sudo_zero_grad(sudo_tensor t, int32_t set_to_none) {
  TRY_S(auto& g = T(t).mutable_grad(); if (g.defined()) {
          if (set_to_none) g = at::Tensor();
          else { if (g.grad_fn()) g = g.detach(); else g.requires_grad_(false); g.zero_(); }
        })
}
int32_t sudo_set_data(sudo_tensor t, sudo_tensor src) { TRY_S(T(t).set_data(T(src));) }
int32_t sudo_retain_grad(sudo_tensor t) { TRY_S(T(t).retain_grad();) }
int32_t sudo_same_storage(sudo_tensor a, sudo_tensor b) {
  try { return T(a).is_alias_of(T(b)) ? 1 : 0; } SUDO_CATCH return -1;
}

// ---- creation ----
sudo_tensor sudo_shallow_copy(sudo_tensor t) { TRY_T(return wrap(T(t));) }
sudo_tensor sudo_from_host(const void* data, const int64_t* shape, int32_t ndim, int32_t dtype, int32_t dev_type,
                           int32_t dev_index) {
  // Always a copy: a tensor never aliases .NET memory, which the GC may move or free.
  TRY_T(auto cpu = at::empty(ints(shape, ndim), at::TensorOptions().dtype(dt(dtype)));
        size_t n = static_cast<size_t>(cpu.numel()) * cpu.element_size();
        if (n) std::memcpy(cpu.data_ptr(), data, n);
        return wrap(dev_type == 0 ? cpu : cpu.to(dev(dev_type, dev_index)));)
}
sudo_tensor sudo_scalar_tensor(sudo_scalar s, int32_t dtype, int32_t dev_type, int32_t dev_index) {
  TRY_T(return wrap(at::scalar_tensor(scalar(s), opts(dtype, dev_type, dev_index)));)
}
sudo_tensor sudo_empty(const int64_t* shape, int32_t ndim, int32_t dtype, int32_t dev_type, int32_t dev_index) {
  TRY_T(return wrap(at::empty(ints(shape, ndim), opts(dtype, dev_type, dev_index)));)
}
sudo_tensor sudo_full(const int64_t* shape, int32_t ndim, sudo_scalar v, int32_t dtype, int32_t dev_type, int32_t dev_index) {
  TRY_T(return wrap(at::full(ints(shape, ndim), scalar(v), opts(dtype, dev_type, dev_index)));)
}
sudo_tensor sudo_arange(sudo_scalar start, sudo_scalar end, sudo_scalar step, int32_t dtype, int32_t dev_type, int32_t dev_index) {
  TRY_T(return wrap(at::arange(scalar(start), scalar(end), scalar(step), opts(dtype, dev_type, dev_index)));)
}
sudo_tensor sudo_linspace(double start, double end, int64_t steps, int32_t dtype, int32_t dev_type, int32_t dev_index) {
  TRY_T(return wrap(at::linspace(start, end, steps, opts(dtype, dev_type, dev_index)));)
}
static c10::optional<at::Generator> gen_of(sudo_generator g) {
  if (!g) return c10::nullopt;
  return *static_cast<at::Generator*>(g);
}
sudo_tensor sudo_randn(const int64_t* shape, int32_t ndim, sudo_generator gen, int32_t dtype, int32_t dev_type, int32_t dev_index) {
  TRY_T(return wrap(at::randn(ints(shape, ndim), gen_of(gen), opts(dtype, dev_type, dev_index)));)
}
sudo_tensor sudo_rand(const int64_t* shape, int32_t ndim, sudo_generator gen, int32_t dtype, int32_t dev_type, int32_t dev_index) {
  TRY_T(return wrap(at::rand(ints(shape, ndim), gen_of(gen), opts(dtype, dev_type, dev_index)));)
}
sudo_tensor sudo_randint(int64_t low, int64_t high, const int64_t* shape, int32_t ndim, sudo_generator gen, int32_t dtype,
                         int32_t dev_type, int32_t dev_index) {
  TRY_T(return wrap(at::randint(low, high, ints(shape, ndim), gen_of(gen), opts(dtype, dev_type, dev_index)));)
}
sudo_tensor sudo_randperm(int64_t n, sudo_generator gen, int32_t dtype, int32_t dev_type, int32_t dev_index) {
  TRY_T(return wrap(at::randperm(n, gen_of(gen), opts(dtype, dev_type, dev_index)));)
}
sudo_tensor sudo_normal(double mean, double std, const int64_t* shape, int32_t ndim, sudo_generator gen, int32_t dtype,
                        int32_t dev_type, int32_t dev_index) {
  TRY_T(auto t = at::empty(ints(shape, ndim), opts(dtype, dev_type, dev_index)); t.normal_(mean, std, gen_of(gen));
        return wrap(t);)
}
int32_t sudo_normal_(sudo_tensor t, double mean, double std, sudo_generator gen) {
  TRY_S(at::NoGradGuard ng; T(t).normal_(mean, std, gen_of(gen));)
}
int32_t sudo_uniform_(sudo_tensor t, double from, double to, sudo_generator gen) {
  TRY_S(at::NoGradGuard ng; T(t).uniform_(from, to, gen_of(gen));)
}
sudo_tensor sudo_bernoulli(sudo_tensor p, sudo_generator gen) { TRY_T(return wrap(at::bernoulli(T(p), gen_of(gen)));) }

// ---- generators ----
sudo_generator sudo_generator_new(int32_t dev_type, int32_t dev_index, int64_t seed) {
  try {
    at::Generator g;
    if (dev_type == 0) {
      g = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
    } else {
#ifdef SUDO_WITH_CUDA
      g = at::make_generator<at::CUDAGeneratorImpl>(static_cast<c10::DeviceIndex>(dev_index));
      g.set_current_seed(static_cast<uint64_t>(seed));
#else
      (void)dev_index;
      throw std::invalid_argument("this Sudo native library was built without CUDA: no generator for that device");
#endif
    }
    return new at::Generator(std::move(g));
  }
  SUDO_CATCH return nullptr;
}
void sudo_generator_free(sudo_generator g) { delete static_cast<at::Generator*>(g); }
int32_t sudo_generator_manual_seed(sudo_generator g, int64_t seed) {
  TRY_S(auto& gen = *static_cast<at::Generator*>(g); std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_current_seed(static_cast<uint64_t>(seed));)
}
int64_t sudo_generator_initial_seed(sudo_generator g) {
  TRY_V(g ? static_cast<int64_t>(static_cast<at::Generator*>(g)->current_seed()) : throw std::invalid_argument("null generator"), -1)
}
sudo_tensor sudo_generator_get_state(sudo_generator g) {
  TRY_T(at::Generator gen = g ? *static_cast<at::Generator*>(g) : at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(gen.mutex()); return wrap(gen.get_state());)
}
int32_t sudo_generator_set_state(sudo_generator g, sudo_tensor state) {
  TRY_S(at::Generator gen = g ? *static_cast<at::Generator*>(g) : at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(gen.mutex()); gen.set_state(T(state));)
}

// ---- conversion ----
sudo_tensor sudo_to(sudo_tensor t, int32_t dtype, int32_t dev_type, int32_t dev_index, int32_t copy) {
  TRY_T(auto& x = T(t); auto d = dev_type < 0 ? x.device() : dev(dev_type, dev_index);
        auto s = dtype < 0 ? x.scalar_type() : dt(dtype);
        return wrap(x.to(d, s, /*non_blocking=*/false, copy != 0));)
}
sudo_tensor sudo_contiguous(sudo_tensor t) { TRY_T(return wrap(T(t).contiguous());) }
sudo_tensor sudo_clone(sudo_tensor t) { TRY_T(return wrap(T(t).clone());) }
sudo_tensor sudo_detach(sudo_tensor t) { TRY_T(return wrap(T(t).detach());) }

// ---- memory-mapped files ----
// Mapped privately and writable: copy-on-write pages, so an in-place op on a mapped tensor changes
// only this process's copy and can never fault on a read-only page.
struct Mapping {
  void* base = nullptr;
  size_t size = 0;
  ~Mapping() { if (base && size) munmap(base, size); }
};
using MappingRef = std::shared_ptr<Mapping>;

sudo_mapping sudo_mmap_open(const char* path, int64_t* size) {
  try {
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(std::string("cannot open ") + path + ": " + std::strerror(errno));
    struct stat st {};
    if (fstat(fd, &st) != 0) { int e = errno; ::close(fd); throw std::runtime_error(std::string("cannot stat ") + path + ": " + std::strerror(e)); }
    auto m = std::make_shared<Mapping>();
    m->size = static_cast<size_t>(st.st_size);
    if (m->size > 0) {
      void* p = mmap(nullptr, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) { int e = errno; ::close(fd); m->size = 0; throw std::runtime_error(std::string("cannot map ") + path + ": " + std::strerror(e)); }
      m->base = p;
    }
    ::close(fd);
    *size = static_cast<int64_t>(m->size);
    return new MappingRef(std::move(m));
  }
  SUDO_CATCH return nullptr;
}
const void* sudo_mmap_data(sudo_mapping m) { return m ? (*static_cast<MappingRef*>(m))->base : nullptr; }
void sudo_mmap_close(sudo_mapping m) { delete static_cast<MappingRef*>(m); }
sudo_tensor sudo_mmap_tensor(sudo_mapping m, int64_t offset, const int64_t* shape, int32_t ndim, int32_t dtype) {
  TRY_T(
    auto ref = *static_cast<MappingRef*>(m);
    auto o = at::TensorOptions().dtype(dt(dtype));
    int64_t numel = 1;
    for (int32_t i = 0; i < ndim; ++i) {
      if (shape[i] < 0) throw std::invalid_argument("negative dimension");
      numel *= shape[i];
    }
    int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(dt(dtype)));
    if (offset < 0 || offset + nbytes > static_cast<int64_t>(ref->size))
      throw std::out_of_range("tensor bytes [" + std::to_string(offset) + ", " + std::to_string(offset + nbytes) +
                              ") outside the mapped file of " + std::to_string(ref->size) + " bytes");
    if (numel == 0) return wrap(at::empty(ints(shape, ndim), o));
    auto* keep = new MappingRef(ref);
    void* p = static_cast<char*>(ref->base) + offset;
    return wrap(at::from_blob(p, ints(shape, ndim), [keep](void*) { delete keep; }, o));)
}

// ---- foreach ----
int32_t sudo_foreach_zero_(const sudo_tensor* ts, int32_t n) { TRY_S(at::_foreach_zero_(list(ts, n));) }
sudo_tensor sudo_foreach_norm_sq_sum(const sudo_tensor* ts, int32_t n) {
  TRY_T(
    if (n == 0) return wrap(at::zeros({}, at::kFloat));
    auto v = list(ts, n);
    auto norms = at::_foreach_norm(v, 2);
    std::vector<at::Tensor> f;
    f.reserve(norms.size());
    for (auto& x : norms) f.push_back(x.to(at::kFloat).to(v[0].device()));
    return wrap(at::stack(f).pow(2).sum());)
}
int32_t sudo_foreach_mul_scalar_(const sudo_tensor* ts, int32_t n, sudo_tensor scalar) {
  TRY_S(auto v = list(ts, n); for (auto& x : v) x.mul_(T(scalar).to(x.device(), x.scalar_type()));)
}

}  // extern "C"
