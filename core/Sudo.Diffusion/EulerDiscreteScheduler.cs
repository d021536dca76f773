// diffusers.schedulers.scheduling_euler_discrete.EulerDiscreteScheduler (0.27.2), deterministic
// (s_churn = 0): σ-space Euler steps, inputs scaled by 1/√(σ²+1).
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion;

public sealed class EulerDiscreteScheduler : Scheduler
{
    /// <summary>σ for each inference step plus a final 0 (float32, as diffusers stores them).</summary>
    public float[] sigmas { get; private set; }

    public EulerDiscreteScheduler(SchedulerConfig config) : base(config)
    {
        if (config.interpolation_type != "linear") throw new NotSupportedException($"Euler interpolation_type '{config.interpolation_type}' is not supported (linear)");
        // Before set_timesteps: σ over all training timesteps, descending, plus 0.
        var s = TrainSigmas().Reverse().ToList();
        s.Add(0f);
        sigmas = s.ToArray();
        using var scope = NewDisposeScope();
        SetTimesteps(scope.MoveToOuter(tensor(Linspace(0, config.num_train_timesteps - 1, config.num_train_timesteps).Reverse().Select(v => (float)v).ToArray())));
        num_inference_steps = 0;
    }

    // σ_t = √((1−ᾱ_t)/ᾱ_t) in float32, ascending in t.
    private float[] TrainSigmas() => schedule.ac.Select(a => MathF.Sqrt((1f - a) / a)).ToArray();

    public override double init_noise_sigma
    {
        get
        {
            var max = sigmas.Max();
            return (config.timestep_spacing ?? "linspace") is "linspace" or "trailing" ? max : MathF.Sqrt(max * max + 1f);
        }
    }

    public override void set_timesteps(int n)
    {
        var T = config.num_train_timesteps;
        double[] ts = (config.timestep_spacing ?? "linspace") switch
        {
            // np.linspace(0, T−1, n, dtype=float32)[::-1]: fractional timesteps, no rounding.
            "linspace" => Linspace(0, T - 1, n).Select(v => (double)(float)v).Reverse().ToArray(),
            "leading" => Spacing("leading", T, n, config.steps_offset),
            "trailing" => Spacing("trailing", T, n, 0),
            var s => throw new NotSupportedException($"timestep_spacing '{s}' is not supported (leading, trailing, linspace)"),
        };
        var train = TrainSigmas();
        double[] sig;
        if (config.use_karras_sigmas)
        {
            var logSigmas = train.Select(x => Math.Log(x)).ToArray();
            sig = Karras.Sigmas(train[^1], train[0], n);
            ts = sig.Select(x => Math.Round(Karras.SigmaToT(x, logSigmas), MidpointRounding.ToEven)).ToArray();
        }
        else
        {
            // np.interp(timesteps, arange(T), σ) in float64 over the float32 σ.
            sig = ts.Select(t => Interp(t, train)).ToArray();
        }
        sigmas = sig.Select(x => (float)x).Append(0f).ToArray();
        SetTimesteps(tensor(ts.Select(v => (float)v).ToArray()));
    }

    internal static double Interp(double x, float[] ys)
    {
        if (x <= 0) return ys[0];
        if (x >= ys.Length - 1) return ys[^1];
        var i = (int)Math.Floor(x);
        var f = x - i;
        return ys[i] + (ys[i + 1] - (double)ys[i]) * f;
    }

    private int StepIndex(double timestep) => _step_index ??= IndexForTimestep(timestep);

    /// <summary>x / √(σ² + 1) at the current step's σ.</summary>
    public override Tensor scale_model_input(Tensor sample, double timestep)
    {
        var sigma = sigmas[StepIndex(timestep)];
        return sample / MathF.Sqrt(sigma * sigma + 1f);
    }

    public override SchedulerOutput step(Tensor model_output, double timestep, Tensor sample, double eta = 0, NoiseSource? noise = null)
    {
        if (num_inference_steps == 0) throw new InvalidOperationException("call set_timesteps before step");
        using var scope = NewDisposeScope();
        var i = StepIndex(timestep);
        var x = sample.to(ScalarType.Float32);
        var sigma = sigmas[i];
        var sigmaHat = sigma;   // γ = 0 (s_churn = 0)
        var x0 = config.prediction_type switch
        {
            "epsilon" => x - sigmaHat * model_output,
            "v_prediction" => model_output * (-sigma / MathF.Sqrt(sigma * sigma + 1f)) + x / (sigma * sigma + 1f),
            _ => model_output.alias(),
        };
        var derivative = (x - x0) / sigmaHat;
        var dt = sigmas[i + 1] - sigmaHat;
        var prev = (x + derivative * dt).to(model_output.dtype);
        _step_index = i + 1;
        return new SchedulerOutput(scope.MoveToOuter(prev), scope.MoveToOuter(x0));
    }
}

/// <summary>Karras et al. (2022) σ schedule and σ → t interpolation, as diffusers implements them.</summary>
internal static class Karras
{
    public static double[] Sigmas(double sigmaMax, double sigmaMin, int n, double rho = 7.0)
    {
        var minInv = Math.Pow(sigmaMin, 1 / rho);
        var maxInv = Math.Pow(sigmaMax, 1 / rho);
        var ramp = n == 1 ? new[] { 0.0 } : Enumerable.Range(0, n).Select(i => i == n - 1 ? 1.0 : i * (1.0 / (n - 1))).ToArray();
        return ramp.Select(r => Math.Pow(maxInv + r * (minInv - maxInv), rho)).ToArray();
    }

    /// <summary>_sigma_to_t: linear interpolation of log σ over the training log σ table.</summary>
    public static double SigmaToT(double sigma, double[] logSigmas)
    {
        var logSigma = Math.Log(Math.Max(sigma, 1e-10));
        // cumsum(dists >= 0).argmax(): the first index where the running count reaches its maximum.
        var running = 0;
        var best = -1;
        var argmax = 0;
        for (var i = 0; i < logSigmas.Length; i++)
        {
            if (logSigma - logSigmas[i] >= 0) running++;
            if (running > best)
            {
                best = running;
                argmax = i;
            }
        }
        var low = Math.Min(argmax, logSigmas.Length - 2);
        var high = low + 1;
        var w = (logSigmas[low] - logSigma) / (logSigmas[low] - logSigmas[high]);
        w = Math.Clamp(w, 0, 1);
        return (1 - w) * low + w * high;
    }
}
