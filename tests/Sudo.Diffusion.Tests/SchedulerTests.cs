using NUnit.Framework;
using Sudo.Parity;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Diffusion.Tests;

public class SchedulerTests
{
    [Test]
    public void EveryGoldenSchedulerCasePasses()
    {
        var report = SchedulerParity.Run(Shared.Require("golden", "schedulers", "io.safetensors"));
        foreach (var r in report.Rows) TestContext.Out.WriteLine($"{r.Name,-45} max|Δ| {r.MaxAbsError:G3} tol {r.Tolerance:G3} {r.Note}");
        Assert.That(report.Rows.Count, Is.GreaterThan(60));
        Assert.That(report.Rows.Where(r => !r.Passed).Select(r => $"{r.Name}: {r.MaxAbsError} {r.Note}"), Is.Empty);
    }

    [Test]
    public void TimestepSpacings()
    {
        var cfg = SchedulerConfig.SD15 with { _class_name = "DDIMScheduler" };
        long[] Ts(string spacing)
        {
            using var s = new DDIMScheduler(cfg with { timestep_spacing = spacing });
            s.set_timesteps(5);
            return s.timesteps.ToArray<long>();
        }
        Assert.That(Ts("leading"), Is.EqualTo(new long[] { 801, 601, 401, 201, 1 }));
        Assert.That(Ts("trailing"), Is.EqualTo(new long[] { 999, 799, 599, 399, 199 }));
        Assert.That(Ts("linspace"), Is.EqualTo(new long[] { 999, 749, 500, 250, 0 }));
        Assert.Throws<NotSupportedException>(() => Ts("cosine"));
    }

    [Test]
    public void ForwardProcessFormulas()
    {
        using var sched = new NoiseSchedule(SchedulerConfig.SD15);
        using var scope = NewDisposeScope();
        using var g = new Generator(1);
        var x0 = randn([2, 4, 3, 3], g, float64);
        var eps = randn([2, 4, 3, 3], g, float64);
        var t = tensor(new long[] { 10, 900 });
        var a = sched.ac.Select(v => (double)v).ToArray();
        var xt = sched.add_noise(x0, eps, t);
        var v = sched.get_velocity(x0, eps, t);
        for (var b = 0; b < 2; b++)
        {
            var ab = a[new[] { 10, 900 }[b]];
            Check.Close(xt[b], x0[b] * Math.Sqrt(ab) + eps[b] * Math.Sqrt(1 - ab), 1e-12, "add_noise");
            Check.Close(v[b], eps[b] * Math.Sqrt(ab) - x0[b] * Math.Sqrt(1 - ab), 1e-12, "velocity");
        }
        Check.Close(sched.snr(t), new[] { a[10] / (1 - a[10]), a[900] / (1 - a[900]) }, 1e-4, "snr");
        // ᾱ is decreasing and in (0, 1); β of scaled_linear ends at 0.012.
        Assert.That(sched.ac.Zip(sched.ac.Skip(1)).All(p => p.Second < p.First), Is.True);
        Assert.That(sched.betas[^1..].item(), Is.EqualTo(0.012).Within(1e-7));
        using var v2 = new NoiseSchedule(SchedulerConfig.SD15 with { prediction_type = "v_prediction" });
        Check.Close(v2.target(x0, eps, t), v, 0, "v target");
        using var zsnr = new NoiseSchedule(SchedulerConfig.SD15 with { rescale_betas_zero_snr = true });
        Assert.That(zsnr.ac[^1], Is.EqualTo(Math.Pow(2, -24)).Within(1e-12), "zero terminal SNR (clamped as diffusers)");
    }

    [Test]
    public void DdimStepsInBf16FormTheirCoefficientsInFp32()
    {
        // At the last step ᾱ_{t'} (0.99915) rounds to 1 in bf16 and (1−ᾱ_{t'})/(1−ᾱ_t) was 0/0: every latent became NaN.
        using var ddim = new DDIMScheduler(SchedulerConfig.SD15 with { _class_name = "DDIMScheduler" });
        ddim.set_timesteps(5);
        using var scope = NewDisposeScope();
        using var g = new Generator(4);
        var x = randn([2, 4, 4, 4], g);
        var eps = randn([2, 4, 4, 4], g);
        foreach (var t in ddim.timesteps.ToArray<long>())
        {
            var full = ddim.step(eps, t, x).prev_sample;
            var half = ddim.step(eps.bfloat16(), t, x.bfloat16()).prev_sample;
            Assert.That(half.dtype, Is.EqualTo(ScalarType.BFloat16));
            // bf16 rounding of x, ε and the result: a few units of 2⁻⁸ relative to the largest value.
            Check.Close(half.@float(), full, 0.03 * full.abs().max().item(), $"t = {t}");
        }
    }

    [Test]
    public void DdimLogProbIsTheGaussianDensityAveragedOverElements()
    {
        using var ddim = new DDIMScheduler(SchedulerConfig.SD15 with { _class_name = "DDIMScheduler" });
        ddim.set_timesteps(20);
        using var scope = NewDisposeScope();
        using var g = new Generator(3);
        var x = randn([2, 4, 3, 5], g, float64);
        var eps = randn([2, 4, 3, 5], g, float64).requires_grad_();
        var given = randn([2, 4, 3, 5], g, float64).requires_grad_();
        var ts = tensor(new long[] { 951, 501 });
        const double eta = 1.0;
        var r = ddim.step_with_logprob(eps, ts, x, eta, prev_sample: given);
        Assert.That(r.log_prob.shape, Is.EqualTo(new long[] { 2 }));
        var xs = x.ToArray<double>();
        var es = eps.detach().ToArray<double>();
        var ps = given.detach().ToArray<double>();
        var per = xs.Length / 2;
        for (var b = 0; b < 2; b++)
        {
            var t = new[] { 951, 501 }[b];
            double a = ddim.schedule.ac[t], ap = ddim.schedule.ac[t - 50];
            var sigma = eta * Math.Sqrt((1 - ap) / (1 - a) * (1 - a / ap));
            double sum = 0;
            for (var i = b * per; i < (b + 1) * per; i++)
            {
                var x0 = (xs[i] - Math.Sqrt(1 - a) * es[i]) / Math.Sqrt(a);
                var mu = Math.Sqrt(ap) * x0 + Math.Sqrt(1 - ap - sigma * sigma) * es[i];
                sum += -(ps[i] - mu) * (ps[i] - mu) / (2 * sigma * sigma) - Math.Log(sigma) - 0.5 * Math.Log(2 * Math.PI);
            }
            Assert.That(r.log_prob[b].item(), Is.EqualTo(sum / per).Within(1e-9 * Math.Abs(sum / per)), $"sample {b}");
            Assert.That(r.std_dev_t[b].item(), Is.EqualTo(sigma).Within(1e-12));
        }
        // Gradients flow through μ (ε̂), never into x_{t-1}.
        r.log_prob.sum().backward();
        Assert.That(eps.grad, Is.Not.Null);
        Assert.That(given.grad, Is.Null);
        // A drawn x_{t−1} = μ + σ·z scores mean(−z²/2) − log σ − ½ log 2π.
        var z = randn([2, 4, 3, 5], g, float64);
        var drawn = ddim.step_with_logprob(eps.detach(), ts, x, eta, new NoiseSource(noise: z));
        var expected = (z.square() * -0.5).flatten(1).mean(1) - drawn.std_dev_t.log() - 0.5 * Math.Log(2 * Math.PI);
        Check.Close(drawn.log_prob, expected, 1e-9, "drawn sample");
        Check.Close(drawn.prev_sample, drawn.prev_sample_mean + drawn.std_dev_t.view(2, 1, 1, 1) * z, 1e-12, "x = μ + σz");
        // The same step as DDIMScheduler.step with eta and the same noise.
        Check.Close(ddim.step(eps.detach()[..1], 951, x[..1], eta, new NoiseSource(noise: z[..1])).prev_sample, drawn.prev_sample[..1], 1e-12, "step == step_with_logprob");
        // Per-sample timesteps equal separate calls.
        var one = ddim.step_with_logprob(eps.detach()[1..], scalar_tensor(501L), x[1..], eta, prev_sample: given.detach()[1..]);
        Assert.That(one.log_prob.item(), Is.EqualTo(r.log_prob[1].item()).Within(1e-12));
        Assert.Throws<ArgumentException>(() => ddim.step_with_logprob(eps, ts, x, 0.0));
    }
}

/// <summary>PNDM (SD1.5's default scheduler) against diffusers 0.27.2's own PNDMScheduler: tests/golden/schedulers_pndm,
/// generated by tools/reference/make_pndm_golden.py (PLMS with leading / trailing / linspace spacing and
/// v-prediction, and the PRK warm-up), through the scheduler parity harness.</summary>
public class PndmGoldenTests
{
    private static string RepoGolden(string item) => Path.Combine(Shared.RepoRoot(), "tests", "golden", item);

    [Test]
    public void MatchesDiffusersPndm()
    {
        var report = SchedulerParity.Run(Path.Combine(RepoGolden("schedulers_pndm"), "io.safetensors"));
        foreach (var r in report.Rows) TestContext.Out.WriteLine($"{r.Name,-40} {r.MaxAbsError:G3} {(r.Passed ? "ok" : "FAIL")}");
        Assert.That(report.Rows.Where(r => !r.Passed).Select(r => r.Name), Is.Empty);
        Assert.That(report.Rows.Count(r => r.Name.StartsWith("pndm_prk", StringComparison.Ordinal) && r.Name.EndsWith("_samples", StringComparison.Ordinal)), Is.EqualTo(1));
        Assert.That(report.Rows.Count(r => r.Name.StartsWith("pndm_plms", StringComparison.Ordinal) && r.Name.EndsWith("_samples", StringComparison.Ordinal)), Is.GreaterThanOrEqualTo(3));
    }

    [Test]
    public void PipelineFolderWithPndmSchedulerSamplesWithoutChoosingOne()
    {
        var src = Shared.Require("golden", "pipe_sd15");
        var cfg = SchedulerConfig.FromFile(Path.Combine(src, "scheduler", "scheduler_config.json")) with { _class_name = "PNDMScheduler", skip_prk_steps = true };
        using var s = Scheduler.FromConfig(cfg);
        Assert.That(s, Is.InstanceOf<PNDMScheduler>());
        s.set_timesteps(5);
        Assert.That(s.num_inference_steps, Is.EqualTo(5));
        Assert.That(s.TimestepValues.Length, Is.EqualTo(6), "PLMS repeats its second timestep");
    }
}
