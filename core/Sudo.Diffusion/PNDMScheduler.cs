// diffusers.schedulers.scheduling_pndm.PNDMScheduler (0.27.2): pseudo numerical methods for diffusion models —
// Runge-Kutta warm-up (PRK) then linear multistep (PLMS); Stable Diffusion 1.x's default scheduler, with
// skip_prk_steps (crowsonkb's PLMS: the first step is repeated as a two-point average). The coefficient arithmetic
// follows _get_prev_sample in float32 as the 0-dim tensors of diffusers compute it.
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion;

public sealed class PNDMScheduler : Scheduler
{
    private const int PndmOrder = 4;
    public float final_alpha_cumprod { get; }
    private long[] _prk = [], _plms = [];
    private readonly List<Tensor> _ets = [];
    private Tensor? _curSample;
    private Tensor? _curModelOutput;
    private int _counter;

    public PNDMScheduler(SchedulerConfig config) : base(config)
    {
        if (config.prediction_type is not ("epsilon" or "v_prediction"))
            throw new NotSupportedException($"PNDM supports prediction_type epsilon or v_prediction, not '{config.prediction_type}'");
        final_alpha_cumprod = config.set_alpha_to_one ? 1f : schedule.ac[0];
    }

    public override void set_timesteps(int n)
    {
        if (n < 1 || n > config.num_train_timesteps)
            throw new ArgumentOutOfRangeException(nameof(n), $"num_inference_steps must be in [1, {config.num_train_timesteps}], got {n}");
        num_inference_steps = n;
        var T = config.num_train_timesteps;
        // Ascending _timesteps as diffusers builds them (the shared Spacing helper returns them descending).
        var asc = Spacing(config.timestep_spacing ?? "leading", T, n, config.steps_offset).Select(v => (long)v).Reverse().ToArray();
        if (config.skip_prk_steps)
        {
            _prk = [];
            // concat(_timesteps[:-1], _timesteps[-2:-1], _timesteps[-1:])[::-1]
            var plms = asc[..^1].Concat(n >= 2 ? asc[^2..^1] : []).Concat(asc[^1..]).ToArray();
            Array.Reverse(plms);
            _plms = plms;
        }
        else
        {
            if (n < PndmOrder) throw new ArgumentException($"PNDM with PRK steps needs at least {PndmOrder} inference steps");
            var half = T / n / 2;
            var last = asc[^PndmOrder..];
            var rep = last.SelectMany(v => new[] { v, v }).Select((v, i) => v + (i % 2 == 1 ? half : 0)).ToArray();
            var r2 = rep[..^1].SelectMany(v => new[] { v, v }).ToArray()[1..^1];
            Array.Reverse(r2);
            _prk = r2;
            var plms = asc[..^3];
            Array.Reverse(plms);
            _plms = plms;
        }
        SetTimesteps(tensor(_prk.Concat(_plms).ToArray()));
        // The schedule has more entries than steps (the repeated PLMS step, the PRK sub-steps): the stride T // N
        // uses the requested count, as diffusers' self.num_inference_steps.
        num_inference_steps = n;
        Reset();
    }

    private void Reset()
    {
        foreach (var e in _ets) e.Dispose();
        _ets.Clear();
        _curSample?.Dispose();
        _curSample = null;
        _curModelOutput?.Dispose();
        _curModelOutput = null;
        _counter = 0;
    }

    public override SchedulerOutput step(Tensor model_output, double timestep, Tensor sample, double eta = 0, NoiseSource? noise = null)
    {
        if (num_inference_steps == 0) throw new InvalidOperationException("call set_timesteps before step");
        var t = (long)timestep;
        return _counter < _prk.Length && !config.skip_prk_steps ? StepPrk(model_output, t, sample) : StepPlms(model_output, t, sample);
    }

    private SchedulerOutput StepPrk(Tensor model_output, long timestep, Tensor sample)
    {
        using var scope = NewDisposeScope();
        var diff = _counter % 2 == 1 ? 0 : config.num_train_timesteps / num_inference_steps / 2;
        var prev = timestep - diff;
        var t = _prk[_counter / 4 * 4];
        Tensor mo = model_output;
        switch (_counter % 4)
        {
            case 0:
                Accumulate(model_output * (1.0 / 6));
                _ets.Add(DisposeScope.HandOut(model_output));
                _curSample?.Dispose();
                _curSample = DisposeScope.HandOut(sample);
                break;
            case 1:
            case 2:
                Accumulate(model_output * (1.0 / 3));
                break;
            default:
                mo = _curModelOutput! + model_output * (1.0 / 6);
                _curModelOutput!.Dispose();
                _curModelOutput = null;
                break;
        }
        var cur = _curSample ?? sample;
        var prevSample = PrevSample(cur, t, prev, mo);
        _counter++;
        return new SchedulerOutput(scope.MoveToOuter(prevSample), null);
    }

    private void Accumulate(Tensor x)
    {
        var next = _curModelOutput is null ? x : _curModelOutput + x;
        _curModelOutput?.Dispose();
        _curModelOutput = DisposeScope.HandOut(next);
    }

    private SchedulerOutput StepPlms(Tensor model_output, long timestep, Tensor sample)
    {
        using var scope = NewDisposeScope();
        if (!config.skip_prk_steps && _ets.Count < 3) throw new InvalidOperationException("PNDM's PLMS steps run after 12 PRK iterations");
        var stride = config.num_train_timesteps / num_inference_steps;
        var prev = timestep - stride;
        if (_counter != 1)
        {
            while (_ets.Count > 3)
            {
                _ets[0].Dispose();
                _ets.RemoveAt(0);
            }
            _ets.Add(DisposeScope.HandOut(model_output));
        }
        else
        {
            prev = timestep;
            timestep += stride;
        }
        Tensor mo;
        var x = sample;
        Tensor? used = null;
        if (_ets.Count == 1 && _counter == 0)
        {
            mo = model_output;
            _curSample?.Dispose();
            _curSample = DisposeScope.HandOut(sample);
        }
        else if (_ets.Count == 1 && _counter == 1)
        {
            mo = (model_output + _ets[^1]) / 2;
            x = used = _curSample!;
            _curSample = null;
        }
        else if (_ets.Count == 2) mo = (_ets[^1] * 3 - _ets[^2]) / 2;
        else if (_ets.Count == 3) mo = (_ets[^1] * 23 - _ets[^2] * 16 + _ets[^3] * 5) / 12;
        else mo = (_ets[^1] * 55 - _ets[^2] * 59 + _ets[^3] * 37 - _ets[^4] * 9) * (1.0 / 24);
        var prevSample = PrevSample(x, timestep, prev, mo);
        used?.Dispose();
        _counter++;
        return new SchedulerOutput(scope.MoveToOuter(prevSample), null);
    }

    /// <summary>_get_prev_sample: x_{t'} = (ᾱ_{t'}/ᾱ_t)^½ · x − (ᾱ_{t'} − ᾱ_t) · ε / (ᾱ_t·(1−ᾱ_{t'})^½ + (ᾱ_t·(1−ᾱ_t)·ᾱ_{t'})^½) (PNDM eq. 9).</summary>
    private Tensor PrevSample(Tensor sample, long t, long prev, Tensor model_output)
    {
        using var scope = NewDisposeScope();
        var a = schedule.ac[t];
        var ap = prev >= 0 ? schedule.ac[prev] : final_alpha_cumprod;
        var b = 1f - a;
        var bp = 1f - ap;
        if (config.prediction_type == "v_prediction") model_output = model_output * MathF.Sqrt(a) + sample * MathF.Sqrt(b);
        var sampleCoeff = MathF.Sqrt(ap / a);
        var denom = a * MathF.Sqrt(bp) + MathF.Sqrt(a * b * ap);
        var r = sample * sampleCoeff - model_output * (ap - a) / denom;
        return scope.MoveToOuter(r);
    }

    public override void Dispose()
    {
        Reset();
        base.Dispose();
    }
}
