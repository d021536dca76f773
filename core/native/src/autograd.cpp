// Autograd entry points, grad/inference/anomaly modes, autocast, and reentrant gradient checkpointing.
#include "common.h"

#include <algorithm>

#include <ATen/autocast_mode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/anomaly_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/version.h>

using namespace sudo;
using torch::autograd::variable_list;

#define SUDO_TORCH_AT_LEAST(maj, min) \
  (TORCH_VERSION_MAJOR > (maj) || (TORCH_VERSION_MAJOR == (maj) && TORCH_VERSION_MINOR >= (min)))

namespace {
thread_local std::string g_callback_error;

std::vector<at::Tensor> run_block(sudo_block_fn fn, void* ctx, const std::vector<at::Tensor>& inputs) {
  std::vector<sudo_tensor> in;
  in.reserve(inputs.size());
  for (auto& t : inputs) in.push_back(new at::Tensor(t));
  std::vector<sudo_tensor> outs(64, nullptr);
  int32_t n = 0;
  g_callback_error.clear();
  int32_t rc = fn(ctx, in.data(), static_cast<int32_t>(in.size()), outs.data(), static_cast<int32_t>(outs.size()), &n);
  for (auto h : in) delete static_cast<at::Tensor*>(h);
  std::vector<at::Tensor> result;
  for (int32_t i = 0; i < n && i < static_cast<int32_t>(outs.size()); ++i) {
    if (outs[i]) {
      result.push_back(*static_cast<at::Tensor*>(outs[i]));
      delete static_cast<at::Tensor*>(outs[i]);
    }
  }
  if (rc != 0) throw std::runtime_error("checkpointed block failed: " + g_callback_error);
  return result;
}

// The autocast state of both device types (enabled, dtype), as torch.utils.checkpoint saves and restores
// it for the recomputation (torch/utils/checkpoint.py: device_autocast_kwargs + cpu autocast kwargs), so a
// block recomputed in backward runs under the same autocast as its forward on CPU and on CUDA.
struct AutocastState {
  bool cpu_enabled = false, cuda_enabled = false;
  at::ScalarType cpu_dtype = at::kBFloat16, cuda_dtype = at::kHalf;
  void capture() {
#if SUDO_TORCH_AT_LEAST(2, 4)
    cpu_enabled = at::autocast::is_autocast_enabled(at::kCPU);
    cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
    cuda_enabled = at::autocast::is_autocast_enabled(at::kCUDA);
    cuda_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
#else
    cpu_enabled = at::autocast::is_cpu_enabled();
    cpu_dtype = at::autocast::get_autocast_cpu_dtype();
    cuda_enabled = at::autocast::is_enabled();
    cuda_dtype = at::autocast::get_autocast_gpu_dtype();
#endif
  }
  void apply() const {
#if SUDO_TORCH_AT_LEAST(2, 4)
    at::autocast::set_autocast_enabled(at::kCPU, cpu_enabled);
    at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
    at::autocast::set_autocast_enabled(at::kCUDA, cuda_enabled);
    at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
#else
    at::autocast::set_cpu_enabled(cpu_enabled);
    at::autocast::set_autocast_cpu_dtype(cpu_dtype);
    at::autocast::set_enabled(cuda_enabled);
    at::autocast::set_autocast_gpu_dtype(cuda_dtype);
#endif
  }
};

// The default generators a block may draw from: the CPU one and those of the CUDA devices its inputs
// live on (torch/utils/checkpoint.py: get_device_states / set_device_states, preserve_rng_state=True).
struct RngStates {
  std::vector<at::Generator> gens;
  std::vector<at::Tensor> states;
  void capture(const std::vector<at::Tensor>& inputs) {
    gens.clear();
    states.clear();
    gens.push_back(at::detail::getDefaultCPUGenerator());
    std::vector<c10::DeviceIndex> seen;
    for (auto& t : inputs) {
      if (!t.defined() || !t.is_cuda()) continue;
      auto idx = t.device().index();
      if (std::find(seen.begin(), seen.end(), idx) != seen.end()) continue;
      seen.push_back(idx);
      gens.push_back(at::globalContext().defaultGenerator(t.device()));
    }
    for (auto& g : gens) {
      std::lock_guard<std::mutex> lock(g.mutex());
      states.push_back(g.get_state());
    }
  }
  bool empty() const { return gens.empty(); }
  // Sets these states and returns what was there before.
  RngStates swap_in() {
    RngStates before;
    before.gens = gens;
    for (size_t i = 0; i < gens.size(); ++i) {
      std::lock_guard<std::mutex> lock(gens[i].mutex());
      before.states.push_back(gens[i].get_state());
      gens[i].set_state(states[i]);
    }
    return before;
  }
  void restore() {
    for (size_t i = 0; i < gens.size(); ++i) {
      std::lock_guard<std::mutex> lock(gens[i].mutex());
      gens[i].set_state(states[i]);
    }
  }
};

// Reentrant checkpoint node: the block ran without grad in forward; backward re-runs it with grad
// on detached copies of the inputs and differentiates w.r.t. those inputs and the block's weights.
// Weights are edges of this node, so they get gradients even when no input requires grad.
struct CheckpointBackward : public torch::autograd::Node {
  sudo_block_fn fn = nullptr;
  void* ctx = nullptr;
  void (*release)(void*) = nullptr;
  std::vector<at::Tensor> inputs;   // detached
  std::vector<bool> input_requires_grad;
  std::vector<at::Tensor> params;   // leaves
  bool preserve_rng = false;
  RngStates rng;
  AutocastState autocast;

  std::string name() const override { return "CheckpointBackward"; }
  void release_variables() override {
    inputs.clear();
    params.clear();
    rng = RngStates();
  }
  ~CheckpointBackward() override {
    if (release) release(ctx);
  }

  variable_list apply(variable_list&& grads) override {
    if (inputs.empty() && params.empty() && !input_requires_grad.empty())
      throw std::runtime_error("checkpointed block: backward called twice (use retain_graph only without checkpointing)");
    std::vector<at::Tensor> in;
    in.reserve(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      auto x = inputs[i].detach();
      x.requires_grad_(input_requires_grad[i]);
      in.push_back(x);
    }
    AutocastState outer;
    outer.capture();
    autocast.apply();
    RngStates outer_rng;
    if (preserve_rng && !rng.empty()) outer_rng = rng.swap_in();
    std::vector<at::Tensor> outs;
    try {
      at::AutoGradMode enable(true);
      outs = run_block(fn, ctx, in);
    } catch (...) {
      outer.apply();
      outer_rng.restore();
      throw;
    }
    outer.apply();
    outer_rng.restore();

    variable_list out_sel, grad_sel, diff;
    std::vector<size_t> diff_slot;
    size_t k = 0;
    for (auto& o : outs) {
      if (!(o.is_floating_point() || o.is_complex())) continue;
      if (k < grads.size() && grads[k].defined() && o.requires_grad()) {
        out_sel.push_back(o);
        grad_sel.push_back(grads[k]);
      }
      ++k;
    }
    for (size_t i = 0; i < in.size(); ++i)
      if (input_requires_grad[i]) { diff.push_back(in[i]); diff_slot.push_back(i); }
    for (size_t j = 0; j < params.size(); ++j)
      if (params[j].requires_grad()) { diff.push_back(params[j]); diff_slot.push_back(in.size() + j); }

    variable_list result(in.size() + params.size());
    if (out_sel.empty() || diff.empty()) return result;
    auto g = torch::autograd::grad(out_sel, diff, grad_sel, /*retain_graph=*/false, /*create_graph=*/false,
                                   /*allow_unused=*/true);
    for (size_t i = 0; i < g.size(); ++i) result[diff_slot[i]] = g[i];
    return result;
  }
};
}  // namespace

extern "C" {

int32_t sudo_backward(sudo_tensor t, sudo_tensor grad, int32_t retain_graph, int32_t create_graph) {
  TRY_S(T(t).backward(opt(grad), c10::optional<bool>(retain_graph != 0), create_graph != 0);)
}

int32_t sudo_autograd_grad(const sudo_tensor* outputs, int32_t nout, const sudo_tensor* inputs, int32_t nin,
                           const sudo_tensor* grad_outputs, int32_t retain_graph, int32_t create_graph,
                           int32_t allow_unused, sudo_tensor* result) {
  TRY_S(
    variable_list outs = list(outputs, nout), ins = list(inputs, nin), gouts;
    if (grad_outputs) for (int32_t i = 0; i < nout; ++i) gouts.push_back(opt(grad_outputs[i]));
    auto r = torch::autograd::grad(outs, ins, gouts, c10::optional<bool>(retain_graph != 0), create_graph != 0,
                                   allow_unused != 0);
    for (int32_t i = 0; i < nin; ++i) result[i] = r[i].defined() ? wrap(r[i]) : nullptr;)
}

int32_t sudo_grad_enabled(void) { return at::GradMode::is_enabled() ? 1 : 0; }
void sudo_set_grad_enabled(int32_t on) { at::GradMode::set_enabled(on != 0); }
void* sudo_inference_mode_enter(int32_t on) {
  try { return new c10::InferenceMode(on != 0); } SUDO_CATCH return nullptr;
}
void sudo_inference_mode_exit(void* guard) { delete static_cast<c10::InferenceMode*>(guard); }
int32_t sudo_inference_mode_enabled(void) { return c10::InferenceMode::is_enabled() ? 1 : 0; }
int32_t sudo_is_inference(sudo_tensor t) { TRY_V(T(t).is_inference() ? 1 : 0, -1) }
void sudo_set_anomaly_enabled(int32_t on) { torch::autograd::AnomalyMode::set_enabled(on != 0); }
int32_t sudo_anomaly_enabled(void) { return torch::autograd::AnomalyMode::is_enabled() ? 1 : 0; }

void sudo_set_callback_error(const char* msg) { g_callback_error = msg ? msg : ""; }

static void (*g_release)(void*) = nullptr;

int32_t sudo_checkpoint(sudo_block_fn fn, void* ctx, const sudo_tensor* inputs, int32_t n_inputs, const sudo_tensor* params,
                        int32_t n_params, int32_t preserve_rng, sudo_tensor* outs, int32_t cap, int32_t* nout) {
  struct CtxGuard {
    void* ctx;
    ~CtxGuard() { if (ctx && g_release) g_release(ctx); }
  } guard{ctx};
  TRY_S(
    auto in = list(inputs, n_inputs);
    auto ps = list(params, n_params);
    bool needs_graph = at::GradMode::is_enabled() && !c10::InferenceMode::is_enabled();
    bool any_grad = false;
    for (auto& t : in) any_grad = any_grad || t.requires_grad();
    for (auto& t : ps) any_grad = any_grad || t.requires_grad();
    std::vector<at::Tensor> result;
    if (!needs_graph || !any_grad) {
      result = run_block(fn, ctx, in);
    } else {
      auto node = std::shared_ptr<CheckpointBackward>(new CheckpointBackward(), torch::autograd::deleteNode);
      node->fn = fn;
      node->ctx = ctx;
      node->preserve_rng = preserve_rng != 0;
      node->autocast.capture();
      if (node->preserve_rng) node->rng.capture(in);
      {
        // No autocast cache for this run: a weight cast cached here would have no history, the recompute in
        // backward would reuse it, and the block's weights would get no gradient under autocast.
        at::NoGradGuard ng;
        bool cache = at::autocast::is_autocast_cache_enabled();
        at::autocast::set_autocast_cache_enabled(false);
        try {
          result = run_block(fn, ctx, in);
        } catch (...) {
          at::autocast::set_autocast_cache_enabled(cache);
          throw;
        }
        at::autocast::set_autocast_cache_enabled(cache);
      }
      variable_list all(in.begin(), in.end());
      all.insert(all.end(), ps.begin(), ps.end());
      node->set_next_edges(torch::autograd::collect_next_edges(all));
      for (auto& t : in) { node->inputs.push_back(t.detach()); node->input_requires_grad.push_back(t.requires_grad()); }
      for (auto& t : ps) node->params.push_back(t);
      for (auto& o : result) {
        if (!(o.is_floating_point() || o.is_complex())) continue;
        // A view (or an input passed through) cannot take this node as its history: copy it.
        bool alias = o.is_view();
        for (auto& t : in) alias = alias || o.is_alias_of(t);
        if (alias) o = o.clone();
        torch::autograd::create_gradient_edge(o, node);
      }
      // From here the node owns ctx: the C# side's handle is freed when the graph is.
      node->release = g_release;
      guard.ctx = nullptr;
    }
    if (static_cast<int32_t>(result.size()) > cap) throw std::out_of_range("checkpointed block returned too many outputs");
    for (size_t i = 0; i < result.size(); ++i) outs[i] = wrap(result[i]);
    *nout = static_cast<int32_t>(result.size());)
}

SUDO_EXPORT void sudo_set_checkpoint_release(void (*release)(void*)) { g_release = release; }

// ---- autocast ----
int32_t sudo_autocast_set(int32_t dev_type, int32_t enabled, int32_t dtype) {
  TRY_S(
#if SUDO_TORCH_AT_LEAST(2, 4)
    auto d = static_cast<c10::DeviceType>(dev_type);
    at::autocast::set_autocast_enabled(d, enabled != 0);
    if (dtype >= 0) at::autocast::set_autocast_dtype(d, dt(dtype));
#else
    if (dev_type == 0) {
      at::autocast::set_cpu_enabled(enabled != 0);
      if (dtype >= 0) at::autocast::set_autocast_cpu_dtype(dt(dtype));
    } else if (dev_type == 1) {
      at::autocast::set_enabled(enabled != 0);
      if (dtype >= 0) at::autocast::set_autocast_gpu_dtype(dt(dtype));
    } else {
      throw std::invalid_argument("autocast supports cpu and cuda");
    }
#endif
  )
}
int32_t sudo_autocast_enabled(int32_t dev_type) {
#if SUDO_TORCH_AT_LEAST(2, 4)
  return at::autocast::is_autocast_enabled(static_cast<c10::DeviceType>(dev_type)) ? 1 : 0;
#else
  return (dev_type == 0 ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled()) ? 1 : 0;
#endif
}
int32_t sudo_autocast_dtype(int32_t dev_type) {
#if SUDO_TORCH_AT_LEAST(2, 4)
  return static_cast<int32_t>(at::autocast::get_autocast_dtype(static_cast<c10::DeviceType>(dev_type)));
#else
  return static_cast<int32_t>(dev_type == 0 ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype());
#endif
}
int32_t sudo_autocast_nesting(int32_t delta) {
  try {
    int32_t n = delta > 0 ? at::autocast::increment_nesting() : at::autocast::decrement_nesting();
    if (delta < 0 && n == 0) at::autocast::clear_cache();
    return n;
  }
  SUDO_CATCH return -1;
}

}  // extern "C"
