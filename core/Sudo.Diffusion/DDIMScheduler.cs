// diffusers.schedulers.scheduling_ddim.DDIMScheduler (0.27.2), plus the per-step Gaussian log-probability
// of x_{t−1} given x_t that DDPO, D3PO and SPO use (ddim_with_logprob in DDPO and SPO).
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion;

/// <summary>prev_sample, pred_original_sample, and log p(x_{t−1} | x_t) averaged over the non-batch
/// dimensions (one value per sample), with μ and σ of that Gaussian.</summary>
public sealed record DDIMStepWithLogProb(Tensor prev_sample, Tensor pred_original_sample, Tensor log_prob, Tensor prev_sample_mean, Tensor std_dev_t);

public sealed class DDIMScheduler : Scheduler
{
    /// <summary>ᾱ used when t' = t − T/N falls below 0: 1 with set_alpha_to_one, else ᾱ_0.</summary>
    public float final_alpha_cumprod { get; }

    public DDIMScheduler(SchedulerConfig config) : base(config)
    {
        final_alpha_cumprod = config.set_alpha_to_one ? 1f : schedule.ac[0];
    }

    public override void set_timesteps(int n)
    {
        if (n < 1 || n > config.num_train_timesteps)
            throw new ArgumentOutOfRangeException(nameof(n), $"num_inference_steps must be in [1, {config.num_train_timesteps}], got {n}");
        num_inference_steps = n;
        var ts = Spacing(config.timestep_spacing ?? "leading", config.num_train_timesteps, n, config.steps_offset);
        SetTimesteps(tensor(ts.Select(v => (long)v).ToArray()));
    }

    /// <summary>t' = t − T // N (diffusers' prev_timestep).</summary>
    public long PrevTimestep(long t) => t - config.num_train_timesteps / Math.Max(1, num_inference_steps);

    /// <summary>DDIM eq. 16's σ_t² at η = 1: (1−ᾱ_{t'})/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_{t'}).</summary>
    public double get_variance(long t, long prev)
    {
        var a = schedule.ac[t];
        var ap = prev >= 0 ? schedule.ac[prev] : final_alpha_cumprod;
        return (1f - ap) / (1f - a) * (1f - a / ap);
    }

    // ᾱ_t and ᾱ_{t'} per sample as [B, 1, ..., 1] float32 tensors (timesteps may differ per sample).
    private (Tensor a, Tensor ap) Alphas(Tensor timesteps, Tensor like)
    {
        var ts = timesteps.dim() == 0 ? timesteps.unsqueeze(0).expand(like.size(0)) : timesteps;
        var t = ts.to(ScalarType.Int64).cpu().ToArray<long>();
        if (t.Length != like.size(0)) throw new ArgumentException($"{t.Length} timesteps for a batch of {like.size(0)}");
        var a = new float[t.Length];
        var ap = new float[t.Length];
        for (var i = 0; i < t.Length; i++)
        {
            if (t[i] < 0 || t[i] >= config.num_train_timesteps) throw new ArgumentOutOfRangeException(nameof(timesteps), $"timestep {t[i]} outside [0, {config.num_train_timesteps})");
            a[i] = schedule.ac[t[i]];
            var p = PrevTimestep(t[i]);
            ap[i] = p >= 0 ? schedule.ac[p] : final_alpha_cumprod;
        }
        var shape = Enumerable.Repeat(1L, (int)like.dim()).ToArray();
        shape[0] = t.Length;
        // fp32 (fp64 for an fp64 sample) whatever the sample's dtype: the coefficients are formed in fp32 and cast to the sample's dtype only where
        // they multiply it (diffusers' 0-dim fp32 alphas do the same by type promotion). In bf16, ᾱ near 1 rounds to 1
        // and (1−ᾱ_{t'})/(1−ᾱ_t) became 0/0.
        var cdt = like.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        return (tensor(a, shape).to(like.device, cdt), tensor(ap, shape).to(like.device, cdt));
    }

    // x̂₀ and ε̂ from the model output for the configured prediction type.
    private (Tensor x0, Tensor eps) Predict(Tensor model_output, Tensor sample, Tensor a)
    {
        var dt = sample.dtype;
        var sa = a.sqrt().to(dt);
        var sb = (1.0 - a).sqrt().to(dt);
        Tensor x0, eps;
        switch (config.prediction_type)
        {
            case "epsilon":
                x0 = (sample - sb * model_output) / sa;
                eps = model_output;
                break;
            case "sample":
                x0 = model_output;
                eps = (sample - sa * x0) / sb;
                break;
            default: // v_prediction
                x0 = sa * sample - sb * model_output;
                eps = sa * model_output + sb * sample;
                break;
        }
        if (config.clip_sample) x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range);
        return (x0, eps);
    }

    public override SchedulerOutput step(Tensor model_output, double timestep, Tensor sample, double eta = 0, NoiseSource? noise = null)
    {
        using var scope = NewDisposeScope();
        var r = step(model_output, scalar_tensor((long)timestep), sample, eta, noise ?? NoiseSource.Default);
        return new SchedulerOutput(scope.MoveToOuter(r.prev_sample), scope.MoveToOuter(r.pred_original_sample!));
    }

    /// <summary>One DDIM step for a 0-dim or per-sample [B] timestep tensor:
    /// x_{t'} = √ᾱ_{t'}·x̂₀ + √(1−ᾱ_{t'}−σ²)·ε̂ + σ·z, σ = η·√var (z from <paramref name="noise"/> when η > 0).</summary>
    public SchedulerOutput step(Tensor model_output, Tensor timestep, Tensor sample, double eta, NoiseSource noise, bool use_clipped_model_output = false)
    {
        if (num_inference_steps == 0) throw new InvalidOperationException("call set_timesteps before step");
        using var scope = NewDisposeScope();
        var (a, ap) = Alphas(timestep, sample);
        var (x0, eps) = Predict(model_output, sample, a);
        var dt = sample.dtype;
        var variance = (1.0 - ap) / (1.0 - a) * (1.0 - a / ap);
        var std = variance.sqrt() * eta;
        if (use_clipped_model_output) eps = (sample - a.sqrt().to(dt) * x0) / (1.0 - a).sqrt().to(dt);
        var direction = (1.0 - ap - std.square()).sqrt().to(dt) * eps;
        var prev = ap.sqrt().to(dt) * x0 + direction;
        if (eta > 0)
        {
            var z = Noise.randn_tensor(model_output.shape, noise, model_output.dtype, model_output.device);
            prev = prev + std.to(dt) * z;
        }
        return new SchedulerOutput(scope.MoveToOuter(prev), scope.MoveToOuter(x0));
    }

    /// <summary>The DDIM step and log p(x_{t'} | x_t) = mean over C·H·W of
    /// −(x_{t'} − μ)²/(2σ²) − log σ − log √(2π), μ = √ᾱ_{t'}·x̂₀ + √(1−ᾱ_{t'}−σ²)·ε̂, σ = η·√var (DDPO/D3PO/SPO's
    /// ddim_with_logprob). x_{t'} is drawn (from <paramref name="noise"/>) unless <paramref name="prev_sample"/>
    /// is given; it is detached, so gradients flow through μ only. Needs η > 0.</summary>
    public DDIMStepWithLogProb step_with_logprob(Tensor model_output, Tensor timestep, Tensor sample, double eta, NoiseSource? noise = null, Tensor? prev_sample = null)
    {
        if (eta <= 0) throw new ArgumentException("the DDIM transition log-probability needs eta > 0 (with eta = 0 the step is deterministic)");
        if (num_inference_steps == 0) throw new InvalidOperationException("call set_timesteps before step_with_logprob");
        using var scope = NewDisposeScope();
        var (a, ap) = Alphas(timestep, sample);
        var (x0, eps) = Predict(model_output, sample, a);
        // As SPO's ddim_step_with_logprob: the coefficients are fp32 tensors of the sample's rank, so mean, the drawn
        // x_{t'} and its log-probability are fp32 whatever the model's dtype; x_{t'} is handed back in the sample's dtype.
        var std = ((1.0 - ap) / (1.0 - a) * (1.0 - a / ap)).sqrt() * eta;
        var mean = ap.sqrt() * x0 + (1.0 - ap - std.square()).sqrt() * eps;
        var x = prev_sample?.detach().to(mean.dtype) ?? (mean + std * Noise.randn_tensor(model_output.shape, noise ?? NoiseSource.Default, model_output.dtype, model_output.device)).detach();
        var lp = -(x - mean).square() / (std.square() * 2.0) - std.log() - Math.Log(Math.Sqrt(2 * Math.PI));
        var logProb = lp.flatten(1).mean(1);
        return new DDIMStepWithLogProb(scope.MoveToOuter(x.to(sample.dtype)), scope.MoveToOuter(x0), scope.MoveToOuter(logProb), scope.MoveToOuter(mean), scope.MoveToOuter(std.flatten()));
    }
}
