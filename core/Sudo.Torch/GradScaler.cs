using System.Text.Json.Nodes;

namespace Sudo.Torch;

public static partial class torch
{
    public static partial class amp
    {
        /// <summary>Dynamic loss scaling for fp16 training, as torch.cuda.amp.GradScaler: scale the loss before
        /// backward, unscale the gradients before clipping, skip the optimizer step when any gradient is inf/NaN,
        /// then update the scale (× backoff_factor after an overflow; × growth_factor after growth_interval
        /// clean steps in a row — torch._amp_update_scale_). Defaults are PyTorch's: 2^16, 2.0, 0.5, 2000.
        /// Disabled (bf16 / fp32 runs) every method is a pass-through, so one training loop serves all precisions.</summary>
        public sealed class GradScaler
        {
            public double growth_factor { get; }
            public double backoff_factor { get; }
            public int growth_interval { get; }
            public bool enabled { get; }

            private double _scale;
            private int _growthTracker;
            private enum Stage { Ready, Unscaled, Stepped }
            private readonly Dictionary<optim.Optimizer, (Stage stage, bool foundInf)> _perOptimizer = new(ReferenceEqualityComparer.Instance);

            public GradScaler(double init_scale = 65536.0, double growth_factor = 2.0, double backoff_factor = 0.5, int growth_interval = 2000, bool enabled = true)
            {
                if (!(init_scale > 0) || double.IsInfinity(init_scale)) throw new ArgumentOutOfRangeException(nameof(init_scale), $"init_scale must be a positive finite number, got {init_scale}");
                if (!(growth_factor > 1)) throw new ArgumentOutOfRangeException(nameof(growth_factor), $"growth_factor must be > 1, got {growth_factor}");
                if (!(backoff_factor > 0 && backoff_factor < 1)) throw new ArgumentOutOfRangeException(nameof(backoff_factor), $"backoff_factor must be in (0, 1), got {backoff_factor}");
                if (growth_interval < 1) throw new ArgumentOutOfRangeException(nameof(growth_interval), $"growth_interval must be ≥ 1, got {growth_interval}");
                _scale = init_scale;
                this.growth_factor = growth_factor;
                this.backoff_factor = backoff_factor;
                this.growth_interval = growth_interval;
                this.enabled = enabled;
            }

            /// <summary>The current scale (1 when disabled).</summary>
            public double get_scale() => enabled ? _scale : 1.0;

            public int growth_tracker => _growthTracker;

            /// <summary>loss × scale (the loss itself when disabled).</summary>
            public Tensor scale(Tensor outputs) => enabled ? outputs * _scale : outputs;

            /// <summary>Divides the optimizer's gradients by the scale in place and records whether any is
            /// non-finite. Call it before clip_grad_norm_; at most once per optimizer between updates.</summary>
            public void unscale_(optim.Optimizer optimizer)
            {
                if (!enabled) return;
                var st = _perOptimizer.GetValueOrDefault(optimizer);
                if (st.stage == Stage.Unscaled) throw new InvalidOperationException("unscale_() has already been called on this optimizer since the last update()");
                if (st.stage == Stage.Stepped) throw new InvalidOperationException("unscale_() is being called after step()");
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                // PyTorch computes the inverse in double then uses it in fp32: same here.
                var inv = 1.0 / _scale;
                var checks = new List<Tensor>();
                foreach (var g in optimizer.param_groups)
                    foreach (var p in g.Parameters)
                    {
                        var grad = p.grad;
                        if (grad is null) continue;
                        grad.mul_(inv);
                        checks.Add(grad.isfinite().all());
                    }
                var allFinite = checks.Count == 0 || stack(checks.ToArray()).all().item<bool>();
                _perOptimizer[optimizer] = (Stage.Unscaled, !allFinite);
            }

            /// <summary>Unscales if needed, then runs optimizer.step() unless a gradient was inf/NaN.
            /// Returns true when the step was taken.</summary>
            public bool step(optim.Optimizer optimizer)
            {
                if (!enabled)
                {
                    optimizer.step();
                    return true;
                }
                var st = _perOptimizer.GetValueOrDefault(optimizer);
                if (st.stage == Stage.Stepped) throw new InvalidOperationException("step() has already been called since the last update()");
                if (st.stage == Stage.Ready) unscale_(optimizer);
                var foundInf = _perOptimizer[optimizer].foundInf;
                if (!foundInf) optimizer.step();
                _perOptimizer[optimizer] = (Stage.Stepped, foundInf);
                return !foundInf;
            }

            /// <summary>Updates the scale from this iteration's overflow checks (or sets <paramref name="new_scale"/>).</summary>
            public void update(double? new_scale = null)
            {
                if (!enabled) return;
                if (new_scale is { } ns)
                {
                    if (!(ns > 0) || double.IsInfinity(ns)) throw new ArgumentOutOfRangeException(nameof(new_scale), $"new_scale must be a positive finite number, got {ns}");
                    _scale = ns;
                }
                else
                {
                    if (_perOptimizer.Count == 0) throw new InvalidOperationException("update() without any unscale_()/step() since the last update()");
                    if (_perOptimizer.Values.Any(v => v.foundInf))
                    {
                        _scale *= backoff_factor;
                        _growthTracker = 0;
                    }
                    else if (++_growthTracker == growth_interval)
                    {
                        var grown = _scale * growth_factor;
                        // fp32 scale as in PyTorch: do not grow into infinity.
                        if (float.IsFinite((float)grown)) _scale = grown;
                        _growthTracker = 0;
                    }
                }
                _perOptimizer.Clear();
            }

            /// <summary>Whether the last step() skipped <paramref name="optimizer"/> because of inf/NaN gradients.</summary>
            public bool found_inf(optim.Optimizer optimizer) => _perOptimizer.TryGetValue(optimizer, out var st) && st.foundInf;

            public string state_dict() => new JsonObject
            {
                ["scale"] = _scale,
                ["growth_factor"] = growth_factor,
                ["backoff_factor"] = backoff_factor,
                ["growth_interval"] = growth_interval,
                ["_growth_tracker"] = _growthTracker,
            }.ToJsonString();

            public void load_state_dict(string json)
            {
                var o = JsonNode.Parse(json) as JsonObject ?? throw new FormatException("GradScaler state: expected a JSON object");
                _scale = o["scale"]?.GetValue<double>() ?? throw new FormatException("GradScaler state: missing \"scale\"");
                _growthTracker = o["_growth_tracker"]?.GetValue<int>() ?? throw new FormatException("GradScaler state: missing \"_growth_tracker\"");
            }
        }
    }
}
