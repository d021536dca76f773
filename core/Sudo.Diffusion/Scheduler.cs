// Common scheduler surface (diffusers' set_timesteps / scale_model_input / step) and randn_tensor.
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion;

/// <summary>prev_sample = x_{t−1}; pred_original_sample = the predicted x₀ (null where a solver has none).</summary>
public sealed record SchedulerOutput(Tensor prev_sample, Tensor? pred_original_sample);

/// <summary>Where a step's random draws come from: one generator per image (diffusers' generator list),
/// one generator for the batch, or given noise.</summary>
public sealed record NoiseSource(Generator[]? generators = null, Generator? generator = null, Tensor? noise = null)
{
    public static readonly NoiseSource Default = new();
}

public static class Noise
{
    /// <summary>diffusers.utils.torch_utils.randn_tensor: with a generator list, one randn((1, ...)) per
    /// generator in order, concatenated (image i depends only on generator i); else one call.</summary>
    public static Tensor randn_tensor(long[] shape, NoiseSource source, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        if (source.noise is { } given)
        {
            if (!given.shape.SequenceEqual(shape))
                throw new ArgumentException($"given noise has shape [{string.Join(", ", given.shape)}], expected [{string.Join(", ", shape)}]");
            return given.to(device ?? given.device, dtype);
        }
        if (source.generators is { } gens)
        {
            if (gens.Length != shape[0])
                throw new ArgumentException($"{gens.Length} generators for a batch of {shape[0]}: pass one generator per image");
            using var scope = NewDisposeScope();
            var one = shape.ToArray();
            one[0] = 1;
            // Drawn on the generator's device (CPU), then moved: the numbers do not depend on the target device.
            var parts = gens.Select(g => randn(one, g, ScalarType.Float32, g.Device)).ToArray();
            return scope.MoveToOuter(cat(parts).to(device ?? Device.CPU, dtype));
        }
        if (source.generator is { } single)
        {
            using var scope = NewDisposeScope();
            return scope.MoveToOuter(randn(shape, single, ScalarType.Float32, single.Device).to(device ?? Device.CPU, dtype));
        }
        return randn(shape, null, dtype, device);
    }
}

public abstract class Scheduler : IDisposable
{
    public SchedulerConfig config { get; }
    public NoiseSchedule schedule { get; }
    /// <summary>The timesteps of the current schedule (int64, or float32 for EulerDiscrete).</summary>
    public Tensor timesteps { get; protected set; }
    public int num_inference_steps { get; protected set; }
    public virtual double init_noise_sigma => 1.0;
    protected int? _step_index;

    protected Scheduler(SchedulerConfig config)
    {
        this.config = config;
        schedule = new NoiseSchedule(config);
        timesteps = Own(arange(config.num_train_timesteps - 1, -1, -1));
    }

    /// <summary>Keeps a tensor as this scheduler's state (outside every DisposeScope).</summary>
    protected static Tensor Own(Tensor t)
    {
        DisposeScope.Current?.Detach(t);
        return t;
    }

    protected void SetTimesteps(Tensor t)
    {
        var old = timesteps;
        timesteps = Own(t);
        old.Dispose();
        num_inference_steps = (int)t.size(0);
        _step_index = null;
    }

    public double[] TimestepValues => timesteps.ToArray<double>();

    public abstract void set_timesteps(int num_inference_steps);

    public virtual Tensor scale_model_input(Tensor sample, double timestep) => sample.alias();

    public abstract SchedulerOutput step(Tensor model_output, double timestep, Tensor sample, double eta = 0, NoiseSource? noise = null);

    /// <summary>The index of a timestep in the schedule (the second match when it appears twice, as diffusers).</summary>
    protected int IndexForTimestep(double t)
    {
        var ts = TimestepValues;
        var hits = Enumerable.Range(0, ts.Length).Where(i => ts[i] == t).ToArray();
        if (hits.Length == 0) throw new ArgumentException($"timestep {t} is not in the current schedule [{string.Join(", ", ts)}]");
        return hits.Length > 1 ? hits[1] : hits[0];
    }

    /// <summary>Timesteps for the leading / trailing / linspace spacings (diffusers' set_timesteps).</summary>
    protected static double[] Spacing(string spacing, int T, int n, int stepsOffset)
    {
        switch (spacing)
        {
            case "leading":
                {
                    var ratio = T / n;
                    return Enumerable.Range(0, n).Select(i => (double)(i * ratio + stepsOffset)).Reverse().ToArray();
                }
            case "trailing":
                {
                    // np.round(np.arange(T, 0, -T / n)) - 1
                    var ratio = (double)T / n;
                    var list = new List<double>();
                    for (var i = 0; T - i * ratio > 0; i++) list.Add(Math.Round(T - i * ratio, MidpointRounding.ToEven) - 1);
                    return list.ToArray();
                }
            case "linspace":
                return Linspace(0, T - 1, n).Select(v => Math.Round(v, MidpointRounding.ToEven)).Reverse().ToArray();
            default:
                throw new NotSupportedException($"timestep_spacing '{spacing}' is not supported (leading, trailing, linspace)");
        }
    }

    /// <summary>numpy.linspace(start, stop, n): start + i·step with the last point exactly stop.</summary>
    protected static double[] Linspace(double start, double stop, int n)
    {
        if (n == 1) return [start];
        var step = (stop - start) / (n - 1);
        var r = new double[n];
        for (var i = 0; i < n; i++) r[i] = start + i * step;
        r[^1] = stop;
        return r;
    }

    public static Scheduler FromConfig(SchedulerConfig config) => config._class_name switch
    {
        "DDIMScheduler" => new DDIMScheduler(config),
        "DDPMScheduler" => new DDPMScheduler(config),
        "EulerDiscreteScheduler" => new EulerDiscreteScheduler(config),
        "DPMSolverMultistepScheduler" => new DPMSolverMultistepScheduler(config),
        "PNDMScheduler" => new PNDMScheduler(config),
        _ => throw new NotSupportedException($"scheduler '{config._class_name}' is not supported (DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler, PNDMScheduler)"),
    };

    /// <summary>ddim, ddpm, euler or dpmpp2m built from a pipeline's scheduler config (as diffusers'
    /// Class.from_config: the shared fields are kept, the class defaults fill the rest).</summary>
    public static Scheduler ByName(string name, SchedulerConfig baseConfig) => name switch
    {
        "ddim" => new DDIMScheduler(baseConfig with { _class_name = "DDIMScheduler" }),
        "ddpm" => new DDPMScheduler(baseConfig with { _class_name = "DDPMScheduler" }),
        "euler" => new EulerDiscreteScheduler(baseConfig with { _class_name = "EulerDiscreteScheduler" }),
        "dpmpp2m" => new DPMSolverMultistepScheduler(baseConfig with { _class_name = "DPMSolverMultistepScheduler", algorithm_type = "dpmsolver++", solver_order = 2 }),
        "pndm" => new PNDMScheduler(baseConfig with { _class_name = "PNDMScheduler" }),
        _ => throw new ArgumentException($"unknown scheduler '{name}' (ddim, ddpm, euler, dpmpp2m, pndm)"),
    };

    public virtual void Dispose()
    {
        timesteps.Dispose();
        schedule.Dispose();
        GC.SuppressFinalize(this);
    }
}
