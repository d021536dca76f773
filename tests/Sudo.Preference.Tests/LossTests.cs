using NUnit.Framework;
using Sudo.Parity;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Preference.Tests;

public class LossTests
{
    [Test]
    public void EveryGoldenLossCasePasses()
    {
        var report = LossParity.Run(Shared.Require("golden", "losses", "io.safetensors"));
        foreach (var r in report.Rows) TestContext.Out.WriteLine($"{r.Name,-45} max|Δ| {r.MaxAbsError:G3} tol {r.Tolerance:G3} {r.Note}");
        Assert.That(report.Rows.Where(r => !r.Passed).Select(r => $"{r.Name}: {r.MaxAbsError} {r.Note}"), Is.Empty);
    }

    [Test]
    public void DiffusionDpoByHand()
    {
        using var scope = NewDisposeScope();
        // pairs: (w0, l0) = (0.10, 0.30), (w1, l1) = (0.20, 0.10); reference all 0.2
        var m = tensor(new[] { 0.10f, 0.20f, 0.30f, 0.10f });
        var r = tensor(new[] { 0.20f, 0.20f, 0.20f, 0.20f });
        var o = Losses.diffusion_dpo(m, r, beta: 10);
        // Δ0 = (0.1 − 0.3) − 0 = −0.2 → z0 = −5·(−0.2) = 1; Δ1 = 0.1 → z1 = −0.5
        Check.Close(o.diagnostics["z"], new[] { 1.0, -0.5 }, 1e-6);
        var expected = (Math.Log(1 + Math.Exp(-1)) + Math.Log(1 + Math.Exp(0.5))) / 2;
        Assert.That(o.loss.item(), Is.EqualTo(expected).Within(1e-6));
        Assert.That(o.Value("implicit_acc"), Is.EqualTo(0.5));
        Assert.That(o.Value("model_mse"), Is.EqualTo(0.175).Within(1e-7));
        Assert.That(o.Value("reward_margin"), Is.EqualTo(0.25).Within(1e-6));
        // the diffusers example's β_d = β/2 is the same loss
        Assert.That(Losses.diffusers_dpo(m, r, 5).loss.item(), Is.EqualTo(expected).Within(1e-6));
    }

    [TestCase(ScalarType.Float32)]
    [TestCase(ScalarType.BFloat16)]
    public void PolicyEqualToReferenceGivesLog2AndZeroAccuracy(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(0);
        var pred = randn([6, 4, 8, 8], g).to(dtype);
        var target = randn([6, 4, 8, 8], g).to(dtype);
        var m = Losses.per_sample_mse(pred, target);
        Assert.That(m.dtype, Is.EqualTo(ScalarType.Float32), "MSEs in fp32 even for bf16 predictions");
        var o = Losses.diffusion_dpo(m, m.clone());
        Assert.That(o.loss.item(), Is.EqualTo(Math.Log(2)).Within(1e-7));
        Assert.That(o.Value("implicit_acc"), Is.EqualTo(0), "z = 0 counts as wrong (strict)");
    }

    [Test]
    public void SudoSelfPairedCaseIsHalfSftPlusHalfLog2()
    {
        using var scope = NewDisposeScope();
        var mw = tensor(new[] { 0.3f, 0.5f });
        var m = cat([mw, mw]);               // loser = the winner itself (perm[j] = j)
        var r = tensor(new[] { 0.2f, 0.1f, 0.2f, 0.1f });
        var o = Losses.sudo(m, r);
        Assert.That(o.loss.item(), Is.EqualTo(0.5 * Math.Log(2) + 0.5 * 0.4).Within(1e-6));
        Assert.That(Losses.sft(mw).loss.item(), Is.EqualTo(0.4).Within(1e-7));
    }

    [Test]
    public void SpoClampBoundsAndGradients()
    {
        using var scope = NewDisposeScope();
        // log-ratios: w far above the band (clamped to 1.1), l far below (clamped to 0.9): the logit is
        // bounded by 10·ln(1.1/0.9) ≈ 2.007 and the loss by softplus(−2.007) ≈ 0.126; no gradient flows.
        var lpw = tensor(new[] { 0.5, 0.01 }).requires_grad_();
        var lpl = tensor(new[] { -0.5, -0.01 }).requires_grad_();
        var zero = zeros([2], float64);
        var o = Losses.spo(lpw, zero, lpl, zero);
        var bound = 10 * Math.Log(1.1 / 0.9);
        Assert.That(o.diagnostics["logits"][0].item(), Is.EqualTo(bound).Within(1e-9));
        Assert.That(o.diagnostics["loss_per_sample"][0].item(), Is.EqualTo(Math.Log(1 + Math.Exp(-bound))).Within(1e-9));
        Assert.That(Math.Log(1 + Math.Exp(-bound)), Is.EqualTo(0.126).Within(1e-3));
        o.loss.backward();
        Assert.That(lpw.grad![0].item(), Is.EqualTo(0), "clamped: no gradient");
        Assert.That(lpw.grad![1].item(), Is.LessThan(0), "inside the band: pushes log p_w up");
        Assert.That(lpl.grad![1].item(), Is.GreaterThan(0));
        // at θ = ref the loss is log 2
        Assert.That(Losses.spo(zero, zero, zero, zero).loss.item(), Is.EqualTo(Math.Log(2)).Within(1e-12));
    }
}
