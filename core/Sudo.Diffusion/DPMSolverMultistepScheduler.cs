// diffusers.schedulers.scheduling_dpmsolver_multistep.DPMSolverMultistepScheduler (0.27.2) in its
// DPM-Solver++(2M) configuration: algorithm_type dpmsolver++, solver_order 2, solver_type midpoint,
// lower_order_final, final_sigmas_type zero, optional Karras σ.
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion;

public sealed class DPMSolverMultistepScheduler : Scheduler
{
    public float[] sigmas { get; private set; } = [];
    private readonly Tensor?[] _modelOutputs;
    private int _lowerOrderNums;

    public DPMSolverMultistepScheduler(SchedulerConfig config) : base(config)
    {
        if (config.algorithm_type != "dpmsolver++") throw new NotSupportedException($"DPM-Solver algorithm_type '{config.algorithm_type}' is not supported (dpmsolver++)");
        if (config.solver_order is < 1 or > 2) throw new NotSupportedException($"DPM-Solver solver_order {config.solver_order} is not supported (1, 2)");
        if (config.solver_type != "midpoint") throw new NotSupportedException($"DPM-Solver solver_type '{config.solver_type}' is not supported (midpoint)");
        if (config.final_sigmas_type is not ("zero" or "sigma_min")) throw new NotSupportedException($"final_sigmas_type '{config.final_sigmas_type}' is not supported (zero, sigma_min)");
        _modelOutputs = new Tensor?[config.solver_order];
    }

    private float[] TrainSigmas() => schedule.ac.Select(a => MathF.Sqrt((1f - a) / a)).ToArray();

    public override void set_timesteps(int n)
    {
        var T = config.num_train_timesteps;
        // lambda_min_clipped = −inf keeps every timestep.
        var lastTimestep = T;
        if (!double.IsNegativeInfinity(config.lambda_min_clipped))
        {
            var lambdas = schedule.ac.Select(a => Math.Log(Math.Sqrt(a)) - Math.Log(Math.Sqrt(1 - a))).Reverse().ToArray();
            var clipped = lambdas.TakeWhile(l => l < config.lambda_min_clipped).Count();
            lastTimestep = T - clipped;
        }
        double[] ts = (config.timestep_spacing ?? "linspace") switch
        {
            "linspace" => Linspace(0, lastTimestep - 1, n + 1).Select(v => Math.Round(v, MidpointRounding.ToEven)).Reverse().Take(n).ToArray(),
            "leading" => Enumerable.Range(0, n + 1).Select(i => (double)(i * (lastTimestep / (n + 1)))).Reverse().Take(n).Select(v => v + config.steps_offset).ToArray(),
            "trailing" => Spacing("trailing", lastTimestep, n, 0),
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
            sig = ts.Select(t => EulerDiscreteScheduler.Interp(t, train)).ToArray();
        }
        var last = config.final_sigmas_type == "sigma_min" ? MathF.Sqrt((1f - schedule.ac[0]) / schedule.ac[0]) : 0f;
        sigmas = sig.Select(x => (float)x).Append(last).ToArray();
        SetTimesteps(tensor(ts.Select(v => (long)v).ToArray()));
        ResetState();
    }

    private void ResetState()
    {
        for (var i = 0; i < _modelOutputs.Length; i++)
        {
            _modelOutputs[i]?.Dispose();
            _modelOutputs[i] = null;
        }
        _lowerOrderNums = 0;
    }

    // σ → (α_t, σ_t) = (1/√(σ²+1), σ·α_t) and λ = log α_t − log σ_t, all in float32.
    private static (float alpha, float sigma, float lambda) Conv(float s)
    {
        var alpha = 1f / MathF.Sqrt(s * s + 1f);
        var sig = s * alpha;
        return (alpha, sig, MathF.Log(alpha) - MathF.Log(sig));
    }

    public override SchedulerOutput step(Tensor model_output, double timestep, Tensor sample, double eta = 0, NoiseSource? noise = null)
    {
        if (num_inference_steps == 0) throw new InvalidOperationException("call set_timesteps before step");
        using var scope = NewDisposeScope();
        var i = _step_index ??= IndexForTimestep(timestep);
        var n = num_inference_steps;
        var lowerOrderFinal = i == n - 1 && (config.euler_at_final || (config.lower_order_final && n < 15) || config.final_sigmas_type == "zero");
        var lowerOrderSecond = i == n - 2 && config.lower_order_final && n < 15;

        // convert_model_output (dpmsolver++): the data prediction x̂₀.
        var (a_s, s_s, _) = Conv(sigmas[i]);
        var x0 = config.prediction_type switch
        {
            "epsilon" => (sample - s_s * model_output) / a_s,
            "v_prediction" => a_s * sample - s_s * model_output,
            _ => model_output.alias(),
        };
        _modelOutputs[0]?.Dispose();
        for (var k = 0; k < _modelOutputs.Length - 1; k++) _modelOutputs[k] = _modelOutputs[k + 1];
        _modelOutputs[^1] = Own(x0.alias());

        var (alphaT, sigmaT, lambdaT) = Conv(sigmas[i + 1]);
        var (_, sigmaS0, lambdaS0) = Conv(sigmas[i]);
        var h = lambdaT - lambdaS0;
        Tensor prev;
        if (config.solver_order == 1 || _lowerOrderNums < 1 || lowerOrderFinal)
        {
            // First order: x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·D0
            prev = sigmaT / sigmaS0 * sample - alphaT * (MathF.Exp(-h) - 1f) * x0;
        }
        else
        {
            // 2M midpoint: D1 = (m0 − m1)/r0, r0 = h₀/h; x_t = (σ_t/σ_s0)x − α_t(e^{−h}−1)D0 − ½α_t(e^{−h}−1)D1
            var (_, _, lambdaS1) = Conv(sigmas[i - 1]);
            var m0 = _modelOutputs[^1]!;
            var m1 = _modelOutputs[^2]!;
            var h0 = lambdaS0 - lambdaS1;
            var r0 = h0 / h;
            var d1 = (1f / r0) * (m0 - m1);
            var c = alphaT * (MathF.Exp(-h) - 1f);
            prev = sigmaT / sigmaS0 * sample - c * m0 - 0.5f * c * d1;
        }
        _ = lowerOrderSecond;
        if (_lowerOrderNums < config.solver_order) _lowerOrderNums++;
        _step_index = i + 1;
        return new SchedulerOutput(scope.MoveToOuter(prev), scope.MoveToOuter(x0));
    }

    public override void Dispose()
    {
        ResetState();
        base.Dispose();
    }
}
