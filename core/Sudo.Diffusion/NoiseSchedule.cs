// The forward noising process shared by training and every scheduler (diffusers' betas / alphas_cumprod,
// add_noise, get_velocity), in float32 exactly as diffusers builds it.
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion;

public sealed class NoiseSchedule : IDisposable
{
    public SchedulerConfig config { get; }
    /// <summary>β_t, float32 [T].</summary>
    public Tensor betas { get; }
    /// <summary>ᾱ_t = Π(1 − β_s), float32 [T] (torch.cumprod).</summary>
    public Tensor alphas_cumprod { get; }
    /// <summary>Host copy of alphas_cumprod for scalar step coefficients.</summary>
    public float[] ac { get; }

    public NoiseSchedule(SchedulerConfig config)
    {
        this.config = config;
        var T = config.num_train_timesteps;
        using var scope = NewDisposeScope();
        Tensor b;
        if (config.trained_betas is { } tb) b = tensor(tb).to(float32);
        else
            b = config.beta_schedule switch
            {
                "linear" => linspace(config.beta_start, config.beta_end, T, float32),
                // linspace(√β_start, √β_end, T)² — Stable Diffusion's schedule.
                "scaled_linear" => linspace(Math.Sqrt(config.beta_start), Math.Sqrt(config.beta_end), T, float32).pow(2),
                "squaredcos_cap_v2" => tensor(CosineBetas(T), dtype: float32),
                _ => throw new NotSupportedException($"beta_schedule '{config.beta_schedule}' is not supported (linear, scaled_linear, squaredcos_cap_v2)"),
            };
        if (config.rescale_betas_zero_snr) b = RescaleZeroTerminalSnr(b);
        var acp = (1.0 - b).cumprod(0);
        if (config.rescale_betas_zero_snr)
        {
            // diffusers: alphas_cumprod[-1] = 2**-24 so that the last step stays finite.
            var fix = acp.clone();
            fix.narrow(0, T - 1, 1).fill_(Math.Pow(2, -24));
            acp = fix;
        }
        betas = scope.MoveToOuter(b.contiguous());
        alphas_cumprod = scope.MoveToOuter(acp.contiguous());
        DisposeScope.Current?.Detach(betas);
        DisposeScope.Current?.Detach(alphas_cumprod);
        ac = alphas_cumprod.ToArray<float>();
    }

    /// <summary>betas_for_alpha_bar with the cosine ᾱ(t) = cos²((t + 0.008)/1.008 · π/2), β capped at 0.999.</summary>
    private static double[] CosineBetas(int T)
    {
        static double AlphaBar(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
        var b = new double[T];
        for (var i = 0; i < T; i++) b[i] = Math.Min(1 - AlphaBar((i + 1.0) / T) / AlphaBar((double)i / T), 0.999);
        return b;
    }

    /// <summary>Lin et al. 2023: shift and scale √ᾱ so that the last timestep has zero SNR.</summary>
    private static Tensor RescaleZeroTerminalSnr(Tensor betas)
    {
        var alphasBarSqrt = (1.0 - betas).cumprod(0).sqrt();
        var first = alphasBarSqrt[0].item();
        var last = alphasBarSqrt.select(0, alphasBarSqrt.size(0) - 1).item();
        alphasBarSqrt = (alphasBarSqrt - last) * (first / (first - last));
        var alphasBar = alphasBarSqrt.square();
        var alphas = cat([alphasBar.narrow(0, 0, 1), alphasBar.narrow(0, 1, alphasBar.size(0) - 1) / alphasBar.narrow(0, 0, alphasBar.size(0) - 1)]);
        return 1.0 - alphas;
    }

    private Tensor Gather(Tensor timesteps, Tensor like)
    {
        var a = alphas_cumprod.to(like.device, like.dtype).index_select(0, timesteps.to(like.device).to(ScalarType.Int64).flatten());
        var shape = new long[like.dim()];
        Array.Fill(shape, 1L);
        shape[0] = -1;
        return a.view(shape);
    }

    /// <summary>x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε for per-sample timesteps [B].</summary>
    public Tensor add_noise(Tensor original_samples, Tensor noise, Tensor timesteps)
    {
        using var scope = NewDisposeScope();
        var a = Gather(timesteps, original_samples);
        return scope.MoveToOuter(a.sqrt() * original_samples + (1.0 - a).sqrt() * noise);
    }

    /// <summary>v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀ (the v-prediction target).</summary>
    public Tensor get_velocity(Tensor sample, Tensor noise, Tensor timesteps)
    {
        using var scope = NewDisposeScope();
        var a = Gather(timesteps, sample);
        return scope.MoveToOuter(a.sqrt() * noise - (1.0 - a).sqrt() * sample);
    }

    /// <summary>SNR(t) = ᾱ_t / (1 − ᾱ_t) per timestep.</summary>
    public Tensor snr(Tensor timesteps)
    {
        using var scope = NewDisposeScope();
        var a = alphas_cumprod.index_select(0, timesteps.to(ScalarType.Int64).flatten().cpu());
        return scope.MoveToOuter(a / (1.0 - a));
    }

    /// <summary>The training target for the configured prediction type (ε, v or x₀).</summary>
    public Tensor target(Tensor x0, Tensor noise, Tensor timesteps) => config.prediction_type switch
    {
        "epsilon" => noise.alias(),
        "v_prediction" => get_velocity(x0, noise, timesteps),
        "sample" => x0.alias(),
        _ => throw new NotSupportedException(config.prediction_type),
    };

    public void Dispose()
    {
        betas.Dispose();
        alphas_cumprod.Dispose();
    }
}
