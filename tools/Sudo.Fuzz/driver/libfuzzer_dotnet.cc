// A libFuzzer front end for a .NET fuzz target (Sudo.Fuzz libfuzzer TARGET, which runs SharpFuzz's
// Fuzzer.LibFuzzer.Run). libFuzzer mutates inputs in this process; the .NET process parses them. They share one System V
// shared-memory segment — SharpFuzz's 64 KiB edge-coverage map, then the input bytes — and two pipes (198: input
// lengths to the child, 199: one status word back per input; named to SharpFuzz in __LIBFUZZER_*_PIPE_ID). After each input the
// child's coverage map is copied into libFuzzer's extra-counters section, so libFuzzer's corpus grows on .NET coverage.
// This is the protocol of Metalnem/libfuzzer-dotnet (libfuzzer-dotnet.cc), written for Sudo: the target comes from the
// environment (SUDO_FUZZ_EXE, SUDO_FUZZ_TARGET), a child that dies aborts this process so libFuzzer keeps the input that
// killed it, and the child dies with this process.
//
// Build: clang++ -O1 -g -fsanitize=fuzzer libfuzzer_dotnet.cc -o libfuzzer-dotnet   (Debian: clang-14, libclang-rt-14-dev)
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <unistd.h>

namespace {

constexpr size_t kMapBytes = 1 << 16;     // SharpFuzz's coverage map (Fuzzer.MapSize)
constexpr size_t kMaxInput = 1 << 20;     // input bytes after the map; run libFuzzer with -max_len at most this
constexpr int kLengthFd = 198;            // SharpFuzz reads input lengths here ...
constexpr int kStatusFd = 199;            // ... and writes a 4-byte status here (0: no crash)

int g_to_child = -1;
int g_from_child = -1;
int g_segment = -1;
uint8_t* g_shared = nullptr;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "libfuzzer-dotnet: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

bool transfer(int fd, void* buf, bool reading) {
  auto* p = static_cast<char*>(buf);
  size_t done = 0;
  while (done < 4) {
    ssize_t n = reading ? read(fd, p + done, 4 - done) : write(fd, p + done, 4 - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

void drop_segment() { if (g_segment >= 0) shmctl(g_segment, IPC_RMID, nullptr); }

}  // namespace

// libFuzzer treats every byte of this section as an edge counter.
__attribute__((used, section("__libfuzzer_extra_counters"))) uint8_t g_counters[kMapBytes];

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* exe = std::getenv("SUDO_FUZZ_EXE");
  const char* target = std::getenv("SUDO_FUZZ_TARGET");
  if (!exe || !target) {
    std::fprintf(stderr, "libfuzzer-dotnet: set SUDO_FUZZ_EXE (the Sudo.Fuzz executable) and SUDO_FUZZ_TARGET (a target name)\n");
    std::exit(2);
  }
  int lengths[2], statuses[2];
  if (pipe(lengths) != 0 || pipe(statuses) != 0) fail("pipe");
  g_segment = shmget(IPC_PRIVATE, kMapBytes + kMaxInput, IPC_CREAT | IPC_EXCL | 0600);
  if (g_segment < 0) fail("shmget");
  std::atexit(drop_segment);
  void* at = shmat(g_segment, nullptr, 0);
  if (at == reinterpret_cast<void*>(-1)) fail("shmat");
  g_shared = static_cast<uint8_t*>(at);

  pid_t child = fork();
  if (child < 0) fail("fork");
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (dup2(lengths[0], kLengthFd) < 0 || dup2(statuses[1], kStatusFd) < 0) fail("dup2");
    for (int fd : {lengths[0], lengths[1], statuses[0], statuses[1]}) close(fd);
    char id[16];
    std::snprintf(id, sizeof id, "%d", g_segment);
    setenv("__LIBFUZZER_SHM_ID", id, 1);
    setenv("__LIBFUZZER_CONTROL_PIPE_ID", "198", 1);   // SharpFuzz 2.x reads the descriptors from these
    setenv("__LIBFUZZER_STATUS_PIPE_ID", "199", 1);
    execl(exe, exe, "libfuzzer", target, static_cast<char*>(nullptr));
    fail("exec SUDO_FUZZ_EXE");
  }
  close(lengths[0]);
  close(statuses[1]);
  g_to_child = lengths[1];
  g_from_child = statuses[0];
  int32_t hello = 0;
  if (!transfer(g_from_child, &hello, true)) {
    std::fprintf(stderr, "libfuzzer-dotnet: the .NET target did not start (%s libfuzzer %s)\n", exe, target);
    std::exit(1);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > kMaxInput) return 0;   // -max_len keeps inputs below this; anything larger is skipped, not truncated
  std::memset(g_shared, 0, kMapBytes);
  std::memcpy(g_shared + kMapBytes, data, size);
  int32_t length = static_cast<int32_t>(size);
  if (!transfer(g_to_child, &length, false)) {
    std::fprintf(stderr, "libfuzzer-dotnet: the .NET target is gone\n");
    std::abort();
  }
  int32_t status = 0;
  bool answered = transfer(g_from_child, &status, true);
  std::memcpy(g_counters, g_shared, kMapBytes);
  if (!answered) {
    // The child died inside the parser (a native crash, an abort, the OOM killer): this input is the finding.
    std::fprintf(stderr, "libfuzzer-dotnet: the .NET target died on this input\n");
    std::abort();
  }
  if (status != 0) std::abort();   // an exception escaped the target: SharpFuzz printed it on stderr
  return 0;
}
