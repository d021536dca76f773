// diffusers.schedulers.scheduling_ddpm.DDPMScheduler (0.27.2): ancestral sampling with variance
// fixed_small (default), fixed_small_log or fixed_large.
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion;

public sealed class DDPMScheduler : Scheduler
{
    public DDPMScheduler(SchedulerConfig config) : base(config)
    {
        if (config.variance_type is not (null or "fixed_small" or "fixed_small_log" or "fixed_large"))
            throw new NotSupportedException($"DDPM variance_type '{config.variance_type}' is not supported (fixed_small, fixed_small_log, fixed_large)");
    }

    public override void set_timesteps(int n)
    {
        if (n < 1 || n > config.num_train_timesteps)
            throw new ArgumentOutOfRangeException(nameof(n), $"num_inference_steps must be in [1, {config.num_train_timesteps}], got {n}");
        num_inference_steps = n;
        var ts = Spacing(config.timestep_spacing ?? "leading", config.num_train_timesteps, n, config.steps_offset);
        SetTimesteps(tensor(ts.Select(v => (long)v).ToArray()));
    }

    private long PrevTimestep(long t) => t - config.num_train_timesteps / Math.Max(1, num_inference_steps);

    /// <summary>β̃_t = (1−ᾱ_{t'})/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_{t'}), clamped to ≥ 1e−20 (ᾱ_{t'} = 1 below t' = 0).</summary>
    private float Variance(long t)
    {
        var prev = PrevTimestep(t);
        var a = schedule.ac[t];
        var ap = prev >= 0 ? schedule.ac[prev] : 1f;
        var currentBeta = 1f - a / ap;
        var v = Math.Max((1f - ap) / (1f - a) * currentBeta, 1e-20f);
        return config.variance_type switch
        {
            "fixed_small_log" => MathF.Exp(0.5f * MathF.Log(v)),
            "fixed_large" => currentBeta,
            _ => v,
        };
    }

    public override SchedulerOutput step(Tensor model_output, double timestep, Tensor sample, double eta = 0, NoiseSource? noise = null)
    {
        if (num_inference_steps == 0) throw new InvalidOperationException("call set_timesteps before step");
        using var scope = NewDisposeScope();
        var t = (long)timestep;
        var prev = PrevTimestep(t);
        var a = schedule.ac[t];
        var ap = prev >= 0 ? schedule.ac[prev] : 1f;
        var b = 1f - a;
        var bp = 1f - ap;
        var currentAlpha = a / ap;
        var currentBeta = 1f - currentAlpha;
        var x0 = config.prediction_type switch
        {
            "epsilon" => (sample - MathF.Sqrt(b) * model_output) / MathF.Sqrt(a),
            "sample" => model_output.alias(),
            _ => MathF.Sqrt(a) * sample - MathF.Sqrt(b) * model_output,
        };
        if (config.clip_sample) x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range);
        // μ̃_t = √ᾱ_{t'}β_t/(1−ᾱ_t)·x̂₀ + √α_t(1−ᾱ_{t'})/(1−ᾱ_t)·x_t  (DDPM eq. 7)
        var coefX0 = MathF.Sqrt(ap) * currentBeta / b;
        var coefXt = MathF.Sqrt(currentAlpha) * bp / b;
        var prevSample = coefX0 * x0 + coefXt * sample;
        if (t > 0)
        {
            var z = Noise.randn_tensor(model_output.shape, noise ?? NoiseSource.Default, model_output.dtype, model_output.device);
            var v = Variance(t);
            var sd = config.variance_type == "fixed_small_log" ? v : MathF.Sqrt(v);
            prevSample = prevSample + sd * z;
        }
        return new SchedulerOutput(scope.MoveToOuter(prevSample), scope.MoveToOuter(x0));
    }
}
