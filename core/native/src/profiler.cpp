// Per-op CPU profile: libtorch's own (legacy, RecordFunction-based) profiler, the one
// torch.autograd.profiler.profile(use_kineto=False) uses in Python, so Sudo's and PyTorch's op tables
// come from the same instrumentation. Events are aggregated here by op name into calls, total and self
// time (self = total minus the time of the ops it called on the same thread).
#include <torch/csrc/autograd/profiler_legacy.h>
#include <fstream>
#include <map>
#include "common.h"

using namespace sudo;
namespace prof = torch::autograd::profiler;

namespace {
bool g_on = false;
struct Agg { int64_t calls = 0; double total_us = 0, self_us = 0; };
}

extern "C" {

int32_t sudo_profiler_start(int32_t record_shapes) {
  TRY_S(
    if (g_on) throw std::runtime_error("the profiler is already running");
    prof::enableProfilerLegacy(torch::profiler::impl::ProfilerConfig(
        torch::profiler::impl::ProfilerState::CPU, record_shapes != 0));
    g_on = true;
  )
}

// Stops the profiler and writes one line per op: name \t calls \t total_us \t self_us (tab-separated,
// a header line first). With shapes recorded, the name carries the input shapes after a '|'.
int32_t sudo_profiler_stop(const char* path) {
  TRY_S(
    if (!g_on) throw std::runtime_error("the profiler is not running");
    g_on = false;
    auto lists = prof::disableProfilerLegacy();
    std::map<std::string, Agg> agg;
    for (auto& events : lists) {
      struct Open { const prof::LegacyEvent* ev; std::string key; double child_us; };
      std::vector<Open> stack;
      for (auto& e : events) {
        if (e.kind() == prof::EventKind::PushRange) {
          std::string key = e.name();
          auto shapes = e.shapes();
          if (!shapes.empty()) {
            key += "|";
            for (size_t i = 0; i < shapes.size(); ++i) {
              key += i ? ";[" : "[";
              for (size_t j = 0; j < shapes[i].size(); ++j) key += (j ? "," : "") + std::to_string(shapes[i][j]);
              key += "]";
            }
          }
          stack.push_back({&e, std::move(key), 0.0});
        } else if (e.kind() == prof::EventKind::PopRange && !stack.empty()) {
          auto open = std::move(stack.back());
          stack.pop_back();
          double total = open.ev->cpuElapsedUs(e);
          auto& a = agg[open.key];
          a.calls += 1;
          a.total_us += total;
          a.self_us += total - open.child_us;
          if (!stack.empty()) stack.back().child_us += total;
        }
      }
    }
    if (path && *path) {
      std::ofstream out(path);
      if (!out) throw std::runtime_error(std::string("cannot write the profile to ") + path);
      out << "name\tcalls\ttotal_us\tself_us\n";
      for (auto& [k, a] : agg) out << k << '\t' << a.calls << '\t' << a.total_us << '\t' << a.self_us << '\n';
    }
  )
}

}  // extern "C"
