using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Sudo.Torch;

public static partial class torch
{
    public static partial class optim
    {
        /// <summary>Parameters that share a learning rate and weight decay.</summary>
        public sealed class ParamGroup(IEnumerable<Parameter> parameters, double? lr = null, double? weight_decay = null)
        {
            public Parameter[] Parameters { get; } = parameters.ToArray();
            public double lr { get; set; } = lr ?? double.NaN;
            public double weight_decay { get; set; } = weight_decay ?? double.NaN;
            /// <summary>The lr schedules scale (set when a schedule is attached).</summary>
            public double initial_lr { get; set; } = double.NaN;
        }

        /// <summary>Base optimizer: param groups, per-parameter state tensors, zero_grad and state save/load.</summary>
        public abstract class Optimizer : IDisposable
        {
            public IReadOnlyList<ParamGroup> param_groups { get; }
            protected readonly Dictionary<Parameter, Dictionary<string, Tensor>> state = new(ReferenceEqualityComparer.Instance);
            protected readonly Dictionary<Parameter, long> steps = new(ReferenceEqualityComparer.Instance);

            protected Optimizer(IEnumerable<ParamGroup> groups, double lr, double weightDecay)
            {
                Library.EnsureLoaded();
                if (lr < 0 || double.IsNaN(lr)) throw new ArgumentOutOfRangeException(nameof(lr), $"invalid learning rate: {lr}");
                var gs = groups.ToList();
                if (gs.Count == 0 || gs.All(g => g.Parameters.Length == 0)) throw new ArgumentException("optimizer got an empty parameter list");
                var seen = new HashSet<Parameter>(ReferenceEqualityComparer.Instance);
                foreach (var g in gs)
                {
                    if (double.IsNaN(g.lr)) g.lr = lr;
                    if (double.IsNaN(g.weight_decay)) g.weight_decay = weightDecay;
                    g.initial_lr = g.lr;
                    foreach (var p in g.Parameters)
                        if (!seen.Add(p)) throw new ArgumentException("some parameters appear in more than one parameter group");
                }
                param_groups = gs;
            }

            protected static IEnumerable<ParamGroup> One(IEnumerable<Parameter> ps) => [new ParamGroup(ps)];

            public abstract void step();

            public void zero_grad(bool set_to_none = true)
            {
                foreach (var g in param_groups)
                    foreach (var p in g.Parameters) p.zero_grad(set_to_none);
            }

            /// <summary>The parameters to update this step: those with a gradient. Refuses memory-mapped
            /// weights (an in-place update there would write a file-backed page).</summary>
            protected IEnumerable<(Parameter p, Tensor grad)> WithGrads(ParamGroup g)
            {
                foreach (var p in g.Parameters)
                {
                    if (p.IsMapped)
                        throw new InvalidOperationException(
                            $"{GetType().Name}.step: a parameter of shape [{string.Join(", ", p.shape)}] aliases a memory-mapped safetensors file; " +
                            "load weights with load_state_dict (which copies) or clone() them before training");
                    var gr = p.grad;
                    if (gr is null) continue;
                    yield return (p, gr);
                }
            }

            protected Dictionary<string, Tensor> State(Parameter p)
            {
                if (!state.TryGetValue(p, out var s)) state[p] = s = [];
                return s;
            }

            protected static Tensor Keep(Tensor t)
            {
                t.Owner = null;
                return t;
            }

            protected long NextStep(Parameter p)
            {
                steps.TryGetValue(p, out var n);
                steps[p] = ++n;
                return n;
            }

            protected virtual JsonObject Hyper() => [];
            protected virtual void LoadHyper(JsonObject o) { }

            /// <summary>The optimizer's state as tensors named state.{index}.{name} (index = position of the
            /// parameter across groups) plus a JSON description of groups, steps and hyperparameters.</summary>
            public (Dictionary<string, Tensor> tensors, string json) state_dict()
            {
                var tensors = new Dictionary<string, Tensor>();
                var idx = 0;
                var stepsJson = new JsonObject();
                var groups = new JsonArray();
                foreach (var g in param_groups)
                {
                    var ids = new JsonArray();
                    foreach (var p in g.Parameters)
                    {
                        ids.Add(idx);
                        if (state.TryGetValue(p, out var s))
                            foreach (var (k, v) in s) tensors[$"state.{idx}.{k}"] = v.detach();
                        if (steps.TryGetValue(p, out var n)) stepsJson[idx.ToString(CultureInfo.InvariantCulture)] = n;
                        idx++;
                    }
                    groups.Add(new JsonObject { ["params"] = ids, ["lr"] = g.lr, ["initial_lr"] = g.initial_lr, ["weight_decay"] = g.weight_decay });
                }
                var root = new JsonObject { ["type"] = GetType().Name, ["param_groups"] = groups, ["steps"] = stepsJson, ["hyper"] = Hyper() };
                return (tensors, root.ToJsonString());
            }

            public void load_state_dict(IReadOnlyDictionary<string, Tensor> tensors, string json)
            {
                var root = JsonNode.Parse(json)?.AsObject() ?? throw new InvalidDataException("optimizer state: empty JSON");
                var type = (string?)root["type"];
                if (type != GetType().Name) throw new InvalidDataException($"optimizer state was saved by {type}, cannot load into {GetType().Name}");
                var groups = root["param_groups"]!.AsArray();
                if (groups.Count != param_groups.Count)
                    throw new InvalidDataException($"optimizer state has {groups.Count} parameter groups, this optimizer has {param_groups.Count}");
                var all = param_groups.SelectMany(g => g.Parameters).ToArray();
                for (var gi = 0; gi < groups.Count; gi++)
                {
                    var gj = groups[gi]!.AsObject();
                    if (gj["params"]!.AsArray().Count != param_groups[gi].Parameters.Length)
                        throw new InvalidDataException($"optimizer state group {gi} has {gj["params"]!.AsArray().Count} parameters, this optimizer's has {param_groups[gi].Parameters.Length}");
                    param_groups[gi].lr = (double)gj["lr"]!;
                    param_groups[gi].initial_lr = (double)gj["initial_lr"]!;
                    param_groups[gi].weight_decay = (double)gj["weight_decay"]!;
                }
                foreach (var s in state.Values)
                    foreach (var t in s.Values) t.Dispose();
                state.Clear();
                steps.Clear();
                foreach (var (k, v) in root["steps"]!.AsObject())
                    steps[all[int.Parse(k, CultureInfo.InvariantCulture)]] = (long)v!;
                foreach (var (key, t) in tensors)
                {
                    var parts = key.Split('.', 3);
                    if (parts.Length != 3 || parts[0] != "state" || !int.TryParse(parts[1], out var i) || i < 0 || i >= all.Length)
                        throw new InvalidDataException($"optimizer state: unexpected tensor '{key}'");
                    var p = all[i];
                    using (no_grad())
                    {
                        var copy = t.to(p.device, t.dtype, copy: true);
                        State(p)[parts[2]] = Keep(copy);
                    }
                }
                LoadHyper(root["hyper"]?.AsObject() ?? []);
            }

            /// <summary>Writes the state to one safetensors file (atomically).</summary>
            public void save(string path)
            {
                var (tensors, json) = state_dict();
                try
                {
                    safetensors.save_file(tensors, path, new Dictionary<string, string> { ["optimizer"] = json });
                }
                finally
                {
                    foreach (var t in tensors.Values) t.Dispose();
                }
            }

            public void load(string path)
            {
                using var f = safetensors.safe_open(path);
                if (!f.Metadata.TryGetValue("optimizer", out var json))
                    throw new InvalidDataException($"{path} holds no optimizer state (no 'optimizer' metadata)");
                var tensors = f.Keys.ToDictionary(k => k, k => f.get(k, copy: true));
                try
                {
                    load_state_dict(tensors, json);
                }
                finally
                {
                    foreach (var t in tensors.Values) t.Dispose();
                }
            }

            public virtual void Dispose()
            {
                foreach (var s in state.Values)
                    foreach (var t in s.Values) t.Dispose();
                state.Clear();
                GC.SuppressFinalize(this);
            }
        }

        /// <summary>AdamW with decoupled weight decay, step for step torch.optim.AdamW (foreach=False):
        /// p ← p·(1 − lr·λ); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
        /// p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε).</summary>
        public sealed class AdamW : Optimizer
        {
            public double beta1 { get; }
            public double beta2 { get; }
            public double eps { get; }
            public bool amsgrad { get; }

            public AdamW(IEnumerable<Parameter> parameters, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
                double weight_decay = 1e-2, bool amsgrad = false)
                : this(One(parameters), lr, beta1, beta2, eps, weight_decay, amsgrad) { }

            public AdamW(IEnumerable<ParamGroup> groups, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
                double weight_decay = 1e-2, bool amsgrad = false)
                : base(groups, lr, weight_decay)
            {
                if (beta1 is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(beta1), $"invalid beta1: {beta1}");
                if (beta2 is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(beta2), $"invalid beta2: {beta2}");
                if (eps < 0) throw new ArgumentOutOfRangeException(nameof(eps), $"invalid epsilon: {eps}");
                (this.beta1, this.beta2, this.eps, this.amsgrad) = (beta1, beta2, eps, amsgrad);
            }

            public override void step()
            {
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                foreach (var g in param_groups)
                    foreach (var (p, grad) in WithGrads(g))
                    {
                        using var perParam = NewDisposeScope();   // temporaries of one parameter at a time (as PyTorch's loop)
                        var s = State(p);
                        if (!s.TryGetValue("exp_avg", out var m))
                        {
                            s["exp_avg"] = m = Keep(zeros_like(p));
                            s["exp_avg_sq"] = Keep(zeros_like(p));
                            if (amsgrad) s["max_exp_avg_sq"] = Keep(zeros_like(p));
                        }
                        var v = s["exp_avg_sq"];
                        var t = NextStep(p);
                        if (g.weight_decay != 0) p.mul_(1 - g.lr * g.weight_decay);
                        m.lerp_(grad, 1 - beta1);
                        v.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
                        var bc1 = 1 - Math.Pow(beta1, t);
                        var bc2 = 1 - Math.Pow(beta2, t);
                        var stepSize = g.lr / bc1;
                        var bc2Sqrt = Math.Sqrt(bc2);
                        Tensor denom;
                        if (amsgrad)
                        {
                            var vmax = s["max_exp_avg_sq"];
                            vmax.maximum_(v);
                            denom = vmax.sqrt().div_(bc2Sqrt).add_(eps);
                        }
                        else
                        {
                            denom = v.sqrt().div_(bc2Sqrt).add_(eps);
                        }
                        p.addcdiv_(m, denom, -stepSize);
                    }
            }

            protected override JsonObject Hyper() => new() { ["beta1"] = beta1, ["beta2"] = beta2, ["eps"] = eps, ["amsgrad"] = amsgrad };
        }

        /// <summary>SGD with momentum, dampening and Nesterov, as torch.optim.SGD.</summary>
        public sealed class SGD : Optimizer
        {
            public double momentum { get; }
            public double dampening { get; }
            public bool nesterov { get; }

            public SGD(IEnumerable<Parameter> parameters, double lr, double momentum = 0, double dampening = 0, double weight_decay = 0, bool nesterov = false)
                : this(One(parameters), lr, momentum, dampening, weight_decay, nesterov) { }

            public SGD(IEnumerable<ParamGroup> groups, double lr, double momentum = 0, double dampening = 0, double weight_decay = 0, bool nesterov = false)
                : base(groups, lr, weight_decay)
            {
                if (nesterov && (momentum <= 0 || dampening != 0)) throw new ArgumentException("Nesterov momentum requires a momentum and zero dampening");
                (this.momentum, this.dampening, this.nesterov) = (momentum, dampening, nesterov);
            }

            public override void step()
            {
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                foreach (var g in param_groups)
                    foreach (var (p, grad) in WithGrads(g))
                    {
                        using var perParam = NewDisposeScope();
                        var d = g.weight_decay != 0 ? grad.add(p, g.weight_decay) : grad;
                        if (momentum != 0)
                        {
                            var s = State(p);
                            if (!s.TryGetValue("momentum_buffer", out var buf))
                                s["momentum_buffer"] = buf = Keep(d.clone());
                            else
                                buf.mul_(momentum).add_(d, 1 - dampening);
                            d = nesterov ? d.add(buf, momentum) : buf;
                        }
                        NextStep(p);
                        p.add_(d, -g.lr);
                    }
            }

            protected override JsonObject Hyper() => new() { ["momentum"] = momentum, ["dampening"] = dampening, ["nesterov"] = nesterov };
        }

        /// <summary>Adafactor as Hugging Face transformers implements it (transformers.optimization.Adafactor),
        /// the optimizer Diffusion-DPO uses for SDXL with relative_step=False, scale_parameter=False,
        /// warmup_init=False and an explicit lr. Factored second moments for ≥2-D parameters;
        /// β₂ₜ = 1 − t^decay_rate; update clipped to RMS ≤ clip_threshold; fp32 math for bf16/fp16 weights.</summary>
        public sealed class Adafactor : Optimizer
        {
            public double eps1 { get; }
            public double eps2 { get; }
            public double clip_threshold { get; }
            public double decay_rate { get; }
            public double? beta1 { get; }
            public bool scale_parameter { get; }
            public bool relative_step { get; }
            public bool warmup_init { get; }

            public Adafactor(IEnumerable<Parameter> parameters, double? lr = null, double eps1 = 1e-30, double eps2 = 1e-3, double clip_threshold = 1.0,
                double decay_rate = -0.8, double? beta1 = null, double weight_decay = 0.0, bool scale_parameter = true, bool relative_step = true,
                bool warmup_init = false)
                : this(One(parameters), lr, eps1, eps2, clip_threshold, decay_rate, beta1, weight_decay, scale_parameter, relative_step, warmup_init) { }

            public Adafactor(IEnumerable<ParamGroup> groups, double? lr = null, double eps1 = 1e-30, double eps2 = 1e-3, double clip_threshold = 1.0,
                double decay_rate = -0.8, double? beta1 = null, double weight_decay = 0.0, bool scale_parameter = true, bool relative_step = true,
                bool warmup_init = false)
                : base(groups, lr ?? 0.0, weight_decay)
            {
                if (lr.HasValue && relative_step) throw new ArgumentException("Adafactor: cannot combine a manual lr with relative_step=True");
                if (!lr.HasValue && !relative_step) throw new ArgumentException("Adafactor: give an lr when relative_step=False");
                if (warmup_init && !relative_step) throw new ArgumentException("Adafactor: warmup_init=True requires relative_step=True");
                (this.eps1, this.eps2, this.clip_threshold, this.decay_rate, this.beta1) = (eps1, eps2, clip_threshold, decay_rate, beta1);
                (this.scale_parameter, this.relative_step, this.warmup_init) = (scale_parameter, relative_step, warmup_init);
            }

            private static double Rms(Tensor t) => t.norm(2).item() / Math.Sqrt(t.numel());

            public override void step()
            {
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                foreach (var g in param_groups)
                    foreach (var (p, grad0) in WithGrads(g))
                    {
                        using var perParam = NewDisposeScope();
                        var low = p.dtype is ScalarType.Float16 or ScalarType.BFloat16;
                        var grad = grad0.dtype is ScalarType.Float16 or ScalarType.BFloat16 ? grad0.@float() : grad0;
                        var shape = grad.shape;
                        var factored = shape.Length >= 2;
                        var s = State(p);
                        if (!steps.ContainsKey(p))
                        {
                            if (beta1.HasValue) s["exp_avg"] = Keep(zeros_like(grad));
                            if (factored)
                            {
                                s["exp_avg_sq_row"] = Keep(zeros(shape[..^1], grad.dtype, grad.device));
                                s["exp_avg_sq_col"] = Keep(zeros([.. shape[..^2], shape[^1]], grad.dtype, grad.device));
                            }
                            else
                            {
                                s["exp_avg_sq"] = Keep(zeros_like(grad));
                            }
                        }
                        var pf = low ? p.@float() : p;
                        var t = NextStep(p);
                        var rms = Rms(pf);
                        var lr = g.lr;
                        if (relative_step)
                        {
                            var minStep = warmup_init ? 1e-6 * t : 1e-2;
                            lr = Math.Min(minStep, 1.0 / Math.Sqrt(t));
                        }
                        if (scale_parameter) lr *= Math.Max(eps2, rms);
                        var beta2t = 1.0 - Math.Pow(t, decay_rate);
                        var update = (grad * grad).add_(eps1);
                        if (factored)
                        {
                            var row = s["exp_avg_sq_row"];
                            var col = s["exp_avg_sq_col"];
                            row.mul_(beta2t).add_(update.mean(-1), 1.0 - beta2t);
                            col.mul_(beta2t).add_(update.mean(-2), 1.0 - beta2t);
                            // approx_sq_grad: rsqrt(row / mean(row)) ⊗ rsqrt(col)
                            var rFactor = (row / row.mean(-1, keepdim: true)).rsqrt().unsqueeze(-1);
                            var cFactor = col.unsqueeze(-2).rsqrt();
                            update = (rFactor * cFactor).mul_(grad);
                        }
                        else
                        {
                            var v = s["exp_avg_sq"];
                            v.mul_(beta2t).add_(update, 1.0 - beta2t);
                            update = v.rsqrt().mul_(grad);
                        }
                        update.div_(Math.Max(Rms(update) / clip_threshold, 1.0));
                        update.mul_(lr);
                        if (beta1 is double b1)
                        {
                            var m = s["exp_avg"];
                            m.mul_(b1).add_(update, 1 - b1);
                            update = m;
                        }
                        if (g.weight_decay != 0) pf.add_(pf, -g.weight_decay * lr);
                        pf.add_(update, -1);
                        if (low) p.copy_(pf);
                    }
            }

            protected override JsonObject Hyper() => new()
            {
                ["eps1"] = eps1,
                ["eps2"] = eps2,
                ["clip_threshold"] = clip_threshold,
                ["decay_rate"] = decay_rate,
                ["beta1"] = beta1,
                ["scale_parameter"] = scale_parameter,
                ["relative_step"] = relative_step,
                ["warmup_init"] = warmup_init,
            };
        }
    }

    public static partial class nn
    {
        public static class utils
        {
            /// <summary>Scales all gradients by min(1, max_norm / (‖g‖ + 1e-6)) where ‖g‖ is the global norm over
            /// every parameter (torch.nn.utils.clip_grad_norm_); returns ‖g‖ before clipping.</summary>
            public static unsafe double clip_grad_norm_(IEnumerable<Parameter> parameters, double max_norm, double norm_type = 2.0, bool error_if_nonfinite = false)
            {
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                var grads = parameters.Select(p => p.grad).Where(g => g != null).Cast<Tensor>().ToArray();
                if (grads.Length == 0) return 0;
                double total;
                if (double.IsPositiveInfinity(norm_type))
                {
                    total = grads.Select(g => g.abs().max().item()).Max();
                }
                else if (norm_type == 2.0)
                {
                    var hs = new IntPtr[grads.Length];
                    for (var i = 0; i < hs.Length; i++) hs[i] = grads[i].Handle;
                    fixed (IntPtr* ph = hs)
                    {
                        using var sq = Tensor.Wrap(Native.sudo_foreach_norm_sq_sum(ph, hs.Length), "clip_grad_norm_");
                        total = Math.Sqrt(sq.item());
                    }
                }
                else
                {
                    var norms = grads.Select(g => g.norm(norm_type).@float()).ToArray();
                    total = stack(norms).norm(norm_type).item();
                }
                if (error_if_nonfinite && !double.IsFinite(total))
                    throw new InvalidOperationException($"the total norm of order {norm_type} for gradients is non-finite ({total}), so it cannot be clipped");
                var coef = max_norm / (total + 1e-6);
                if (coef < 1)
                    foreach (var g in grads) g.mul_(coef);
                return total;
            }
        }
    }
}
