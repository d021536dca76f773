using NUnit.Framework;
using static Sudo.Torch.torch;

namespace Sudo.Torch.Tests;

public class OptimTests
{
    private static Parameter P(params double[] v) => new(tensor(v));

    private static void SetGrad(Parameter p, params double[] g)
    {
        using var t = tensor(g, p.shape);
        p.grad = t;
    }

    [Test]
    public void AdamWStepsMatchHandComputation()
    {
        // p=1, g=0.5, lr=0.1, λ=0.01, β=(0.9, 0.999), ε=1e-8.
        // t=1: p=1·(1−0.001)=0.999; m=0.05; v=0.00025; m̂/(√v̂+ε)=0.05/0.1 / (0.5+1e-8)·... → p = 0.999 − 0.05/(0.5+1e-8)
        // t=2: p=p₁·0.999; m=0.095; v=0.00049975; bc1=0.19, bc2=0.001999 → p = p₂' − (0.1/0.19)·0.095/(0.5+1e-8)
        using var p = P(1.0);
        using var opt = new optim.AdamW([p], lr: 0.1, weight_decay: 0.01);
        SetGrad(p, 0.5);
        opt.step();
        var p1 = 0.999 - 0.05 / (0.5 + 1e-8);
        Assert.That(p.item(), Is.EqualTo(p1).Within(1e-15));
        SetGrad(p, 0.5);
        opt.step();
        var p2 = p1 * 0.999 - (0.1 / 0.19) * 0.095 / (Math.Sqrt(0.00049975) / Math.Sqrt(0.001999) + 1e-8);
        Assert.That(p.item(), Is.EqualTo(p2).Within(1e-14));
        // no gradient: untouched (no decay either)
        p.zero_grad();
        opt.step();
        Assert.That(p.item(), Is.EqualTo(p2).Within(1e-14));
    }

    [Test]
    public void SgdMomentumAndNesterov()
    {
        using var p = P(1.0);
        using var sgd = new optim.SGD([p], lr: 0.1, momentum: 0.9);
        SetGrad(p, 0.5);
        sgd.step();
        Assert.That(p.item(), Is.EqualTo(0.95).Within(1e-15));
        SetGrad(p, 0.5);
        sgd.step();                                     // buf = 0.9·0.5 + 0.5 = 0.95
        Assert.That(p.item(), Is.EqualTo(0.855).Within(1e-15));
        using var q = P(1.0);
        using var nes = new optim.SGD([q], lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.1);
        SetGrad(q, 0.4);                                // d = 0.4 + 0.1·1 = 0.5; buf = 0.5; d = 0.5 + 0.9·0.5
        nes.step();
        Assert.That(q.item(), Is.EqualTo(1 - 0.1 * 0.95).Within(1e-15));
    }

    [Test]
    public void AdafactorOneDimensional()
    {
        // relative_step=False, scale_parameter=False, warmup_init=False (Diffusion-DPO's SDXL setting).
        using var p = P(1.0, 2.0);
        using var opt = new optim.Adafactor([p], lr: 0.01, relative_step: false, scale_parameter: false, warmup_init: false);
        SetGrad(p, 0.1, 0.2);
        opt.step();                 // β₂ₜ = 1 − 1^−0.8 = 0 → v = g²+ε₁ → update = g/|g| = ±1, RMS 1 → p −= 0.01
        Check.Close(p, new[] { 0.99, 1.99 }, 1e-12, "t=1");
        SetGrad(p, 0.3, 0.1);
        opt.step();
        var b = 1 - Math.Pow(2, -0.8);
        double[] v = [b * 0.01 + (1 - b) * 0.09, b * 0.04 + (1 - b) * 0.01];
        double[] u = [0.3 / Math.Sqrt(v[0]), 0.1 / Math.Sqrt(v[1])];
        var rms = Math.Sqrt((u[0] * u[0] + u[1] * u[1]) / 2);
        var scale = 0.01 / Math.Max(rms, 1);
        Check.Close(p, new[] { 0.99 - u[0] * scale, 1.99 - u[1] * scale }, 1e-12, "t=2");
    }

    [Test]
    public void AdafactorFactoredAndClipped()
    {
        using var p = new Parameter(tensor(new[] { 1.0, 2, 3, 4 }, [2, 2]));
        using var opt = new optim.Adafactor([p], lr: 0.01, relative_step: false, scale_parameter: false, clip_threshold: 0.5);
        SetGrad(p, 0.1, 0.2, 0.3, 0.4);
        opt.step();
        // row means of g²: [0.025, 0.125]; col means: [0.05, 0.1]; r = rsqrt(row/mean(row)), c = rsqrt(col)
        double[] row = [0.025, 0.125], col = [0.05, 0.1];
        var rm = (row[0] + row[1]) / 2;
        double[] g = [0.1, 0.2, 0.3, 0.4];
        var u = new double[4];
        for (var i = 0; i < 2; i++)
            for (var j = 0; j < 2; j++)
                u[i * 2 + j] = 1 / Math.Sqrt(row[i] / rm) / Math.Sqrt(col[j]) * g[i * 2 + j];
        var rms = Math.Sqrt(u.Sum(x => x * x) / 4);       // 0.9798 > clip 0.5 → divide by rms/0.5
        Assert.That(rms, Is.EqualTo(Math.Sqrt(0.96)).Within(1e-12));
        var div = Math.Max(rms / 0.5, 1);
        Check.Close(p, [1 - 0.01 * u[0] / div, 2 - 0.01 * u[1] / div, 3 - 0.01 * u[2] / div, 4 - 0.01 * u[3] / div], 1e-12, "factored, clipped");
        Assert.Throws<ArgumentException>(() => new optim.Adafactor([p], lr: 0.01));   // lr with relative_step=True
    }

    [Test]
    public void AdafactorKeepsBf16WeightsInFp32Math()
    {
        using var p = new Parameter(tensor(new[] { 1f, 2f }).bfloat16());
        using var opt = new optim.Adafactor([p], lr: 0.25, relative_step: false, scale_parameter: false);
        using (var g = tensor(new[] { 1f, -1f }).bfloat16()) p.grad = g;
        opt.step();
        Assert.That(p.dtype, Is.EqualTo(ScalarType.BFloat16));
        Check.Close(p, new[] { 0.75, 2.25 }, 0);
    }

    [Test]
    public void ClipGradNormReallyClips()
    {
        using var a = P(0, 0);
        using var b = P(0);
        SetGrad(a, 3, 0);
        SetGrad(b, 4);
        var norm = nn.utils.clip_grad_norm_([a, b], 1.0);
        Assert.That(norm, Is.EqualTo(5).Within(1e-6));
        using var scope = NewDisposeScope();
        var total = Math.Sqrt(a.grad!.square().sum().item() + b.grad!.square().sum().item());
        Assert.That(total, Is.EqualTo(1).Within(1e-5));
        Check.Close(a.grad!, new[] { 3 / (5 + 1e-6), 0 }, 1e-12);
        var after = nn.utils.clip_grad_norm_([a, b], 10.0);       // below the limit: unchanged
        Assert.That(after, Is.EqualTo(total).Within(1e-6));
        Assert.That(Math.Sqrt(a.grad!.square().sum().item() + b.grad!.square().sum().item()), Is.EqualTo(total).Within(1e-12));
        SetGrad(b, double.NaN);
        Assert.Throws<InvalidOperationException>(() => nn.utils.clip_grad_norm_([a, b], 1.0, error_if_nonfinite: true));
    }

    [Test]
    public void LrSchedulesMatchDiffusersGetScheduler()
    {
        double F(string name, long step) => optim.lr_scheduler.factor(name, 10, 100)(step);
        Assert.That(F("constant", 0), Is.EqualTo(1));
        Assert.That(F("constant_with_warmup", 0), Is.EqualTo(0));
        Assert.That(F("constant_with_warmup", 5), Is.EqualTo(0.5));
        Assert.That(F("constant_with_warmup", 50), Is.EqualTo(1));
        Assert.That(F("linear", 5), Is.EqualTo(0.5));
        Assert.That(F("linear", 10), Is.EqualTo(1));
        Assert.That(F("linear", 55), Is.EqualTo(0.5));
        Assert.That(F("linear", 100), Is.EqualTo(0));
        Assert.That(F("linear", 120), Is.EqualTo(0));
        Assert.That(F("cosine", 10), Is.EqualTo(1));
        Assert.That(F("cosine", 55), Is.EqualTo(0.5).Within(1e-15));
        Assert.That(F("cosine", 100), Is.EqualTo(0).Within(1e-15));
        Assert.That(F("cosine", 32), Is.EqualTo(0.5 * (1 + Math.Cos(Math.PI * 22 / 90))).Within(1e-15));
        Assert.Throws<ArgumentException>(() => optim.lr_scheduler.factor("cosine"));
        Assert.Throws<ArgumentException>(() => optim.lr_scheduler.factor("warmup_stable"));
        // LambdaLR applies λ(0) at construction and advances once per step().
        using var p = P(1.0);
        using var opt = new optim.AdamW([p], lr: 1e-3);
        var sched = optim.lr_scheduler.get_scheduler("linear", opt, 10, 100);
        Assert.That(opt.param_groups[0].lr, Is.EqualTo(0));
        for (var i = 0; i < 5; i++) sched.step();
        Assert.That(sched.get_last_lr()[0], Is.EqualTo(5e-4).Within(1e-18));
        var saved = sched.state_dict();
        var again = optim.lr_scheduler.get_scheduler("linear", opt, 10, 100);
        again.load_state_dict(saved);
        Assert.That(again.last_epoch, Is.EqualTo(5));
        Assert.That(opt.param_groups[0].lr, Is.EqualTo(5e-4).Within(1e-18));
    }

    [Test]
    public void OptimizerStateSavesAndResumesExactly()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-optim-{Guid.NewGuid():N}");
        try
        {
            double[] Run(bool resume)
            {
                using var p = P(1.0, -2.0, 3.0);
                var opt = new optim.AdamW([p], lr: 0.05);
                for (var i = 0; i < 6; i++)
                {
                    if (resume && i == 3)
                    {
                        opt.save(Path.Combine(dir, "opt.safetensors"));
                        opt.Dispose();
                        opt = new optim.AdamW([p], lr: 0.05);
                        opt.load(Path.Combine(dir, "opt.safetensors"));
                    }
                    using var scope = NewDisposeScope();
                    var loss = (p * p * p).sum();
                    opt.zero_grad();
                    loss.backward();
                    opt.step();
                }
                opt.Dispose();
                return p.ToArray<double>();
            }
            Assert.That(Run(true), Is.EqualTo(Run(false)));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Test]
    public void GradScalerScalesSkipsAndAdapts()
    {
        // Loss (w·x)² with w = 1, x = 3: dL/dw = 2·w·x² = 18. SGD lr 0.01 → w = 1 − 0.18.
        using var w = new Parameter(tensor(new[] { 1.0f }));
        using var x = tensor(new[] { 3.0f });
        using var opt = new optim.SGD([w], lr: 0.01);
        var scaler = new amp.GradScaler(init_scale: 1024, growth_interval: 2);
        void Backward()
        {
            using var scope = NewDisposeScope();
            opt.zero_grad();
            scaler.scale((w * x).pow(2).sum()).backward();
        }
        Backward();
        using (var g = w.grad!) Assert.That(g.item(), Is.EqualTo(18.0 * 1024), "backward sees the scaled loss");
        scaler.unscale_(opt);
        using (var g = w.grad!) Assert.That(g.item(), Is.EqualTo(18.0), "unscale_ before clipping (power-of-two scale: exact)");
        Assert.Throws<InvalidOperationException>(() => scaler.unscale_(opt), "unscale_ twice in one iteration");
        Assert.That(scaler.step(opt), Is.True);
        scaler.update();
        Assert.That(w.item(), Is.EqualTo(0.82).Within(1e-7));
        Assert.That((scaler.get_scale(), scaler.growth_tracker), Is.EqualTo((1024.0, 1)));
        Backward();
        scaler.step(opt);
        scaler.update();
        Assert.That((scaler.get_scale(), scaler.growth_tracker), Is.EqualTo((2048.0, 0)), "grows × 2 after growth_interval clean steps");

        // An overflow (inf gradient): the step is skipped, the scale backs off × 0.5, the tracker resets.
        Backward();
        var before = w.item();
        using (no_grad())
        using (var g = w.grad!) g.fill_(float.PositiveInfinity);
        Assert.That(scaler.step(opt), Is.False);
        Assert.That(scaler.found_inf(opt), Is.True);
        scaler.update();
        Assert.That(w.item(), Is.EqualTo(before), "parameters untouched by a skipped step");
        Assert.That((scaler.get_scale(), scaler.growth_tracker), Is.EqualTo((1024.0, 0)));

        // state round trip; disabled scaler is a pass-through.
        var restored = new amp.GradScaler();
        restored.load_state_dict(scaler.state_dict());
        Assert.That((restored.get_scale(), restored.growth_tracker), Is.EqualTo((1024.0, 0)));
        var off = new amp.GradScaler(enabled: false);
        Assert.That(off.get_scale(), Is.EqualTo(1.0));
        using var l = tensor(new[] { 2.0f });
        Assert.That(ReferenceEquals(off.scale(l), l), Is.True);
        Assert.Throws<ArgumentOutOfRangeException>(() => new amp.GradScaler(backoff_factor: 1.5));
    }
}
