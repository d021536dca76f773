using System.Text.Json.Nodes;

namespace Sudo.Torch;

public static partial class torch
{
    public static partial class optim
    {
        public static class lr_scheduler
        {
            /// <summary>lr = initial_lr · λ(step) per group, as torch.optim.lr_scheduler.LambdaLR: constructing
            /// it applies λ(0) at once; each step() advances one optimizer step.</summary>
            public class LambdaLR
            {
                private readonly Optimizer _optimizer;
                private readonly Func<long, double> _lambda;
                public long last_epoch { get; private set; }

                public LambdaLR(Optimizer optimizer, Func<long, double> lr_lambda, long last_epoch = -1)
                {
                    _optimizer = optimizer;
                    _lambda = lr_lambda;
                    this.last_epoch = last_epoch;
                    step();
                }

                public void step()
                {
                    last_epoch++;
                    Apply();
                }

                private void Apply()
                {
                    var f = _lambda(last_epoch);
                    foreach (var g in _optimizer.param_groups) g.lr = g.initial_lr * f;
                }

                public double[] get_last_lr() => _optimizer.param_groups.Select(g => g.lr).ToArray();

                public string state_dict() => new JsonObject { ["last_epoch"] = last_epoch }.ToJsonString();

                public void load_state_dict(string json)
                {
                    var o = JsonNode.Parse(json)?.AsObject() ?? throw new InvalidDataException("lr scheduler state: empty JSON");
                    last_epoch = (long)o["last_epoch"]!;
                    Apply();
                }
            }

            /// <summary>The schedule factors of diffusers' get_scheduler (diffusers.optimization), as functions of the step.</summary>
            public static Func<long, double> factor(string name, long num_warmup_steps = 0, long num_training_steps = 0, double num_cycles = 0.5)
            {
                double Warm(long s) => (double)s / Math.Max(1, num_warmup_steps);
                switch (name)
                {
                    case "constant":
                        return _ => 1.0;
                    case "constant_with_warmup":
                        return s => s < num_warmup_steps ? Warm(s) : 1.0;
                    case "linear":
                        RequireTotal(name, num_training_steps);
                        return s => s < num_warmup_steps ? Warm(s)
                            : Math.Max(0.0, (double)(num_training_steps - s) / Math.Max(1, num_training_steps - num_warmup_steps));
                    case "cosine":
                        RequireTotal(name, num_training_steps);
                        return s =>
                        {
                            if (s < num_warmup_steps) return Warm(s);
                            var progress = (double)(s - num_warmup_steps) / Math.Max(1, num_training_steps - num_warmup_steps);
                            return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * num_cycles * 2.0 * progress)));
                        };
                    case "cosine_with_restarts":
                        RequireTotal(name, num_training_steps);
                        return s =>
                        {
                            if (s < num_warmup_steps) return Warm(s);
                            var progress = (double)(s - num_warmup_steps) / Math.Max(1, num_training_steps - num_warmup_steps);
                            if (progress >= 1.0) return 0.0;
                            return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * ((num_cycles * progress) % 1.0))));
                        };
                    default:
                        throw new ArgumentException($"unknown lr schedule '{name}': expected constant, constant_with_warmup, linear, cosine, or cosine_with_restarts");
                }
            }

            private static void RequireTotal(string name, long total)
            {
                if (total <= 0) throw new ArgumentException($"lr schedule '{name}' needs num_training_steps > 0");
            }

            /// <summary>diffusers.optimization.get_scheduler.</summary>
            public static LambdaLR get_scheduler(string name, Optimizer optimizer, long num_warmup_steps = 0, long num_training_steps = 0, double num_cycles = 0.5) =>
                new(optimizer, factor(name, num_warmup_steps, num_training_steps, num_cycles));
        }
    }
}
