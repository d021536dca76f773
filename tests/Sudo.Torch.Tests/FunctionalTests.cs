using NUnit.Framework;
using static Sudo.Torch.torch;
using F = Sudo.Torch.torch.nn.functional;

namespace Sudo.Torch.Tests;

public class FunctionalTests
{
    [Test]
    public void LinearAndConvValues()
    {
        using var scope = NewDisposeScope();
        var w = tensor(new[] { 1.0, 0, 0, 2, 1, 1 }, [3, 2]);
        Check.Close(F.linear(tensor(new[] { 1.0, 2 }), w, tensor(new[] { 0.0, 1, 2 })), new[] { 1.0, 5, 5 }, 0);
        var x = arange(9.0, dtype: float64).view(1, 1, 3, 3);
        var k = ones([1, 1, 2, 2], float64);
        Check.Close(F.conv2d(x, k), new[] { 8.0, 12, 20, 24 }, 0);
        Check.Close(F.conv2d(x, k, null, stride: 2, padding: 1), new[] { 0.0, 3, 9, 24 }, 0);
        Check.Close(F.conv2d(x, k, null, dilation: 2), new[] { 16.0 }, 0);
        // groups = 2: each channel has its own kernel (2 and -1).
        var x2 = cat([x, x], 1);
        var k2 = cat([ones([1, 1, 1, 1], float64) * 2, -ones([1, 1, 1, 1], float64)]);
        var y2 = F.conv2d(x2, k2, tensor(new[] { 0.0, 10 }), groups: 2);
        Check.Close(y2[0, 0], x[0, 0] * 2, 0, "group 0");
        Check.Close(y2[0, 1], 10 - x[0, 0], 0, "group 1");
    }

    [Test]
    public void NormValues()
    {
        using var scope = NewDisposeScope();
        var x = tensor(new[] { 1.0, 2, 3, 4 }, [1, 4, 1, 1]);
        var s = Math.Sqrt(0.25 + 1e-5);
        Check.Close(F.group_norm(x, 2), new[] { -0.5 / s, 0.5 / s, -0.5 / s, 0.5 / s }, 1e-12);
        var gw = tensor(new[] { 1.0, 2, 3, 4 });
        var gb = tensor(new[] { 0.0, 0, 1, 1 });
        Check.Close(F.group_norm(x, 2, gw, gb), new[] { -0.5 / s, 1 / s, 1 - 1.5 / s, 1 + 2 / s }, 1e-12);
        var v = Math.Sqrt(2.0 / 3 + 1e-5);
        Check.Close(F.layer_norm(tensor(new[] { 1.0, 2, 3 }), [3]), new[] { -1 / v, 0, 1 / v }, 1e-12);
        Check.Close(F.layer_norm(tensor(new[] { 1.0, 2, 3 }), [3], tensor(new[] { 2.0, 2, 2 }), tensor(new[] { 1.0, 1, 1 }), eps: 0), new[] { 1 - 2 * Math.Sqrt(1.5), 1, 1 + 2 * Math.Sqrt(1.5) }, 1e-12);
    }

    [Test]
    public void ActivationValues()
    {
        using var scope = NewDisposeScope();
        double[] xs = [-3, -0.5, 0, 0.5, 2, 30];
        var x = tensor(xs);
        double Erf(double z) => F.gelu(tensor(new[] { z * Math.Sqrt(2) })).item() / (0.5 * z * Math.Sqrt(2)) - 1;
        Check.Close(F.silu(x), xs.Select(v => v / (1 + Math.Exp(-v))).ToArray(), 1e-12, "silu");
        Check.Close(F.gelu(x, "tanh"), xs.Select(v => 0.5 * v * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)))).ToArray(), 1e-12, "gelu tanh");
        // exact gelu: x·Φ(x); Φ(0.5) = 0.6914624612740131, Φ(2) = 0.9772498680518208
        Check.Close(F.gelu(tensor(new[] { 0.5, 2 })), new[] { 0.5 * 0.6914624612740131, 2 * 0.9772498680518208 }, 1e-12, "gelu");
        Assert.That(Erf(1), Is.EqualTo(0.8427007929497149).Within(1e-12));
        Check.Close(F.quick_gelu(x), xs.Select(v => v / (1 + Math.Exp(-1.702 * v))).ToArray(), 1e-12, "quick_gelu");
        Check.Close(F.softplus(x), xs.Select(v => v > 20 ? v : Math.Log(1 + Math.Exp(v))).ToArray(), 1e-12, "softplus");
        Check.Close(F.softplus(x, beta: 2), xs.Select(v => 2 * v > 20 ? v : Math.Log(1 + Math.Exp(2 * v)) / 2).ToArray(), 1e-12, "softplus beta 2");
        Check.Close(F.logsigmoid(x), xs.Select(v => -Math.Log(1 + Math.Exp(-v))).ToArray(), 1e-12, "logsigmoid");
        Check.Close(F.leaky_relu(x, 0.1), xs.Select(v => v > 0 ? v : 0.1 * v).ToArray(), 1e-15, "leaky_relu");
    }

    [Test]
    public void InterpolateValues()
    {
        using var scope = NewDisposeScope();
        var x = tensor(new[] { 1.0, 2, 3, 4 }, [1, 1, 2, 2]);
        var up = F.interpolate(x, 2.0);
        Assert.That(up.shape, Is.EqualTo(new long[] { 1, 1, 4, 4 }));
        Check.Close(up[0, 0, 0], new[] { 1.0, 1, 2, 2 }, 0);
        Check.Close(up[0, 0, 3], new[] { 3.0, 3, 4, 4 }, 0);
        var row = tensor(new[] { 0.0, 1 }, [1, 1, 1, 2]);
        Check.Close(F.interpolate(row, size: (1, 3), mode: nn.InterpolationMode.Bilinear, align_corners: true), new[] { 0.0, 0.5, 1 }, 1e-12);
        Check.Close(F.interpolate(row, size: (1, 4), mode: nn.InterpolationMode.Bilinear, align_corners: false), new[] { 0.0, 0.25, 0.75, 1 }, 1e-12);
        // Antialiased 2× downsampling: triangle filter of support 2 (PIL's rule), weights normalised.
        var ramp = arange(4.0, dtype: float64).view(1, 1, 1, 4);
        Check.Close(F.interpolate(ramp, size: (1, 2), mode: nn.InterpolationMode.Bilinear, antialias: true), new[] { 5.0 / 7, 16.0 / 7 }, 1e-12);
        // Bicubic through a linear ramp reproduces the ramp where no clamping happens (a = -0.75 is exact for lines).
        var ramp8 = arange(8.0, dtype: float64).view(1, 1, 1, 8);
        var bc = F.interpolate(ramp8, size: (1, 15), mode: nn.InterpolationMode.Bicubic, align_corners: true);
        Check.Close(bc.narrow(3, 2, 11), Enumerable.Range(2, 11).Select(i => i * 0.5).ToArray(), 1e-12);
        Assert.Throws<ArgumentException>(() => F.interpolate(x));
    }

    [Test]
    public void PoolingLossesEmbedding()
    {
        using var scope = NewDisposeScope();
        var x = arange(16.0, dtype: float64).view(1, 1, 4, 4);
        Check.Close(F.avg_pool2d(x, 2), new[] { 2.5, 4.5, 10.5, 12.5 }, 0);
        Check.Close(F.max_pool2d(x, 2), new[] { 5.0, 7, 13, 15 }, 0);
        var a = tensor(new[] { 1.0, 2 });
        var b = zeros([2], float64);
        Assert.That(F.mse_loss(a, b).item(), Is.EqualTo(2.5));
        Assert.That(F.mse_loss(a, b, nn.Reduction.Sum).item(), Is.EqualTo(5));
        Check.Close(F.mse_loss(a, b, nn.Reduction.None), new[] { 1.0, 4 }, 0);
        var logits = tensor(new[] { 1.0, 0, 0, 0 }, [2, 2]);
        var target = tensor(new[] { 0L, 1L });
        var ce = F.cross_entropy(logits, target, reduction: nn.Reduction.None);
        Check.Close(ce, new[] { Math.Log(1 + Math.Exp(-1)), Math.Log(2) }, 1e-12);
        Assert.That(F.cross_entropy(logits, tensor(new[] { 0L, -100L })).item(), Is.EqualTo(Math.Log(1 + Math.Exp(-1))).Within(1e-12));
        // label smoothing ε: (1-ε)·nll + ε·mean_c(−log p_c)
        var eps = 0.1;
        var lp = logits[0].log_softmax(0).ToArray<double>();
        var expected = (1 - eps) * -lp[0] + eps * -(lp[0] + lp[1]) / 2;
        Assert.That(F.cross_entropy(logits[..1], target[..1], label_smoothing: eps).item(), Is.EqualTo(expected).Within(1e-12));
        var table = arange(6.0).view(3, 2);
        Check.Close(F.embedding(tensor(new[] { 2L, 0L }), table), new[] { 4.0, 5, 0, 1 }, 0);
    }

    [Test]
    public void DropoutScalesKeptValues()
    {
        using var scope = NewDisposeScope();
        manual_seed(0);
        var y = F.dropout(ones([10_000]), 0.25);
        var kept = y.ne(0).@float().mean().item();
        Assert.That(kept, Is.EqualTo(0.75).Within(0.02));
        Assert.That(y.max().item(), Is.EqualTo(1 / 0.75).Within(1e-6));
        Assert.That(F.dropout(ones([10]), 0.5, training: false).equal(ones([10])), Is.True);
        Assert.Throws<ArgumentOutOfRangeException>(() => F.dropout(ones([1]), 1.5));
    }

    [Test]
    public void AttentionMatchesTheFormula()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(3);
        var q = randn([2, 3, 5, 8], g, float64);
        var k = randn([2, 3, 7, 8], g, float64);
        var v = randn([2, 3, 7, 4], g, float64);
        var reference = (q.matmul(k.transpose(-2, -1)) / Math.Sqrt(8)).softmax(-1).matmul(v);
        Check.Close(F.scaled_dot_product_attention(q, k, v), reference, 1e-12, "sdpa");
        var scaled = (q.matmul(k.transpose(-2, -1)) * 0.3).softmax(-1).matmul(v);
        Check.Close(F.scaled_dot_product_attention(q, k, v, scale: 0.3), scaled, 1e-12, "sdpa scale");
        // bool mask: masked keys get no weight; float mask is added.
        var keep = ones([5, 7], @bool);
        keep.narrow(1, 3, 4).fill_(false);
        var masked = (q.matmul(k.narrow(2, 0, 3).transpose(-2, -1)) / Math.Sqrt(8)).softmax(-1).matmul(v.narrow(2, 0, 3));
        Check.Close(F.scaled_dot_product_attention(q, k, v, keep), masked, 1e-12, "bool mask");
        var add = zeros([5, 7], float64).masked_fill(keep.logical_not(), double.NegativeInfinity);
        Check.Close(F.scaled_dot_product_attention(q, k, v, add), masked, 1e-12, "float mask");
        // causal: query 0 sees only key 0.
        var qs = randn([1, 1, 4, 8], g, float64);
        var ks = randn([1, 1, 4, 8], g, float64);
        var vs = randn([1, 1, 4, 8], g, float64);
        var c = F.scaled_dot_product_attention(qs, ks, vs, is_causal: true);
        Check.Close(c[0, 0, 0], vs[0, 0, 0], 1e-12, "causal row 0");
        Requires.Bf16Compute();
        // bf16 inputs: scores normalised in fp32, result in bf16, within a bound derived element by element from
        // bf16's unit roundoff u (Tolerance.DotProduct: γ_n = n·u/(1 − n·u)):
        //   scores  |Δs_ij| ≤ δ_ij = γ_(d+4)·(|q_i|·|k_j|)/√d          (rounded q and k, d-term dot product, the scale, rounding)
        //   softmax p̂_ij/p_ij ∈ [e^(−2δ_i), e^(2δ_i)], δ_i = max_j δ_ij  (a shift of every score by at most δ_i), then rounded (1 + u)
        //   output  |Δo_i| ≤ [(1 + γ_(n+3))·e^(2δ_i)·(1 + u)² − 1]·Σ_j p_ij|v_j|   (rounded v, n-term sum, output rounding)
        var b = F.scaled_dot_product_attention(q.@float().bfloat16(), k.@float().bfloat16(), v.@float().bfloat16());
        Assert.That(b.dtype, Is.EqualTo(ScalarType.BFloat16));
        long d = q.size(-1), n = k.size(-2);
        var u = Tolerance.UnitRoundoff(ScalarType.BFloat16);
        var delta = Tolerance.DotProduct(ScalarType.BFloat16, d + 1, q.abs().matmul(k.abs().transpose(-2, -1)) / Math.Sqrt(d)).amax([-1], keepdim: true);
        var gamma = Tolerance.DotProduct(ScalarType.BFloat16, n, ones([1], float64)).item();
        var p = (q.matmul(k.transpose(-2, -1)) / Math.Sqrt(d)).softmax(-1);
        var bound = ((delta * 2).exp() * ((1 + gamma) * (1 + u) * (1 + u)) - 1) * p.matmul(v.abs());
        Check.CloseElementwise(b, reference, bound, "sdpa bf16");
    }

    [Test]
    public void Fp32CpuAttentionMatchesTheFormulaAndItsGradientsAcrossQueryBlocks()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(5);
        // (a) the UNet's layout: [B, h, L, d] views of [B, L, h·d] projections; L = 600 query rows against S = 700 keys.
        //     Row blocks hold 2^20 scores (1497 rows here): L = 1600 below gives two blocks, 1497 + 103 rows. (b) contiguous [N, L, d] cross-attention, Ev ≠ d.
        var cases = new (Tensor q, Tensor k, Tensor v, bool headsView)[]
        {
            (randn([2, 600, 24], g, float64).view(2, 600, 3, 8).transpose(1, 2), randn([2, 700, 24], g, float64).view(2, 700, 3, 8).transpose(1, 2),
             randn([2, 700, 24], g, float64).view(2, 700, 3, 8).transpose(1, 2), true),
            (randn([1, 1600, 16], g, float64).view(1, 1600, 2, 8).transpose(1, 2), randn([1, 700, 16], g, float64).view(1, 700, 2, 8).transpose(1, 2),
             randn([1, 700, 16], g, float64).view(1, 700, 2, 8).transpose(1, 2), true),
            (randn([4, 300, 16], g, float64), randn([4, 77, 16], g, float64), randn([4, 77, 5], g, float64), false),
        };
        var threshold = backends.cpu.blocked_attention_min_bytes;
        backends.cpu.blocked_attention_min_bytes = 0;   // these scores are small: force the blocked kernel
        try
        {
            foreach (var (q64, k64, v64, headsView) in cases)
            {
                var what = headsView ? "heads view" : "3-D";
                var (q, k, v) = (q64.@float().requires_grad_(), k64.@float().requires_grad_(), v64.@float().requires_grad_());
                var o = F.scaled_dot_product_attention(q, k, v);
                if (headsView && !F.fused_attention_available)
                    Assert.That(o.stride()[1], Is.LessThan(o.stride()[2]), "the blocked kernel lays the output out as [B, L, h, E] memory");
                // Reference in float64 from the inputs as rounded to fp32; bound as in AttentionMatchesTheFormula with fp32's u.
                var (qr, kr, vr) = (q.detach().@double().requires_grad_(), k.detach().@double().requires_grad_(), v.detach().@double().requires_grad_());
                long d = q.size(-1), n = k.size(-2);
                var p = (qr.matmul(kr.transpose(-2, -1)) / Math.Sqrt(d)).softmax(-1);
                var reference = p.matmul(vr);
                var u = Tolerance.UnitRoundoff(ScalarType.Float32);
                var delta = Tolerance.DotProduct(ScalarType.Float32, d + 1, qr.detach().abs().matmul(kr.detach().abs().transpose(-2, -1)) / Math.Sqrt(d)).amax([-1], keepdim: true);
                var gamma = Tolerance.DotProduct(ScalarType.Float32, n, ones([1], float64)).item();
                var bound = ((delta * 2).exp() * ((1 + gamma) * (1 + u) * (1 + u)) - 1) * p.detach().matmul(vr.detach().abs());
                Check.CloseElementwise(o.detach().@double(), reference.detach(), bound, "sdpa fp32 " + what);
                // Gradients of a fixed weighting of the output: each within 1e-4 of the largest reference gradient (fp32 sums
                // over at most 700 terms: γ_700 ≈ 4.2e-5 per dot product, a few in a row).
                var w = randn(o.shape, g, float64);
                (o.@double() * w).sum().backward();
                (reference * w).sum().backward();
                foreach (var (name, a, b) in new[] { ("dq", q.grad!, qr.grad!), ("dk", k.grad!, kr.grad!), ("dv", v.grad!, vr.grad!) })
                    Check.Close(a.@double(), b, 1e-4 * b.abs().max().item(), $"sdpa fp32 {what} {name}");
            }
        }
        finally
        {
            backends.cpu.blocked_attention_min_bytes = threshold;
        }
    }

    /// <summary>Without gradients nothing is kept for backward, so the blocked kernel starts at twice
    /// blocked_attention_min_bytes (composed attention was faster there on Intel; attention.cpp has the figures).</summary>
    [Test]
    public void WithoutGradientsTheBlockedKernelStartsAtTwiceTheBound()
    {
        if (F.fused_attention_available) Assert.Ignore("libtorch ≥ 2.1 runs its fused kernel at every size");
        if (Environment.GetEnvironmentVariable("SUDO_SDPA") is { Length: > 0 } mode) Assert.Ignore($"SUDO_SDPA={mode} fixes the choice");
        using var scope = NewDisposeScope();
        using var g = new Generator(6);
        // [B, h, L, d] views of [B, L, h·d] projections; the blocked kernel lays its output out as [B, L, h, E] memory.
        Tensor Heads() => randn([1, 64, 16], g, float32).requires_grad_().view(1, 64, 2, 8).transpose(1, 2);
        var (q, k, v) = (Heads(), Heads(), Heads());
        static bool Blocked(Tensor o) => o.stride()[1] < o.stride()[2];
        var threshold = backends.cpu.blocked_attention_min_bytes;
        try
        {
            // The scores take 1·2·64·64·4 bytes = 32 KiB.
            backends.cpu.blocked_attention_min_bytes = (32 << 10) + 1;   // just above the scores: composed either way
            Assert.That(Blocked(F.scaled_dot_product_attention(q, k, v)), Is.False, "with gradients: composed below the bound");
            backends.cpu.blocked_attention_min_bytes = 32 << 10;   // 1× the bound
            var withGrad = F.scaled_dot_product_attention(q, k, v);
            Assert.That(Blocked(withGrad), Is.True, "with gradients: blocked from 1× the bound");
            using (no_grad())
            {
                var without = F.scaled_dot_product_attention(q, k, v);
                Assert.That(Blocked(without), Is.False, "without gradients: composed below 2× the bound");
                Check.Close(without, withGrad.detach(), 1e-5, "composed and blocked agree");
                backends.cpu.blocked_attention_min_bytes = (16 << 10) + 1;   // 32 KiB is just under 2× the bound
                Assert.That(Blocked(F.scaled_dot_product_attention(q, k, v)), Is.False, "without gradients: composed just under 2× the bound");
                backends.cpu.blocked_attention_min_bytes = 16 << 10;   // 32 KiB = 2× the bound
                Assert.That(Blocked(F.scaled_dot_product_attention(q, k, v)), Is.True, "without gradients: blocked from 2× the bound");
                backends.cpu.blocked_attention_min_bytes = long.MaxValue;
                Assert.That(Blocked(F.scaled_dot_product_attention(q, k, v)), Is.False, "long.MaxValue: never");
            }
        }
        finally
        {
            backends.cpu.blocked_attention_min_bytes = threshold;
        }
    }

    private static Tensor Rand(long[] shape, long seed)
    {
        using var g = new Generator(seed);
        return randn(shape, g, float64);
    }

    [Test]
    public void GradientsMatchFiniteDifferences()
    {
        using var scope = NewDisposeScope();
        var w = Rand([3, 4], 1);
        var b = Rand([3], 2);
        Check.GradCheck(x => F.linear(x, w, b), Rand([2, 4], 3), what: "linear");
        var cw = Rand([4, 2, 3, 3], 4);
        Check.GradCheck(x => F.conv2d(x, cw, null, stride: 2, padding: 1), Rand([1, 2, 5, 4], 5), what: "conv2d stride/pad");
        Check.GradCheck(x => F.conv2d(x, cw, null, dilation: 2), Rand([1, 2, 5, 5], 6), what: "conv2d dilation");
        var gw = Rand([4, 1, 3, 3], 7);
        Check.GradCheck(x => F.conv2d(x, gw, null, padding: 1, groups: 2), Rand([1, 2, 3, 3], 8), what: "conv2d groups");
        Check.GradCheck(x => F.conv2d(Rand([1, 2, 4, 4], 9), x, null, padding: 1), Rand([3, 2, 3, 3], 10), what: "conv2d weight");
        Check.GradCheck(x => F.group_norm(x, 2, Rand([4], 11), Rand([4], 12)), Rand([2, 4, 2, 3], 13), what: "group_norm");
        Check.GradCheck(x => F.layer_norm(x, [5], Rand([5], 14), Rand([5], 15)), Rand([3, 5], 16), what: "layer_norm");
        Check.GradCheck(F.silu, Rand([10], 17), what: "silu");
        Check.GradCheck(x => F.gelu(x), Rand([10], 18), what: "gelu");
        Check.GradCheck(x => F.gelu(x, "tanh"), Rand([10], 19), what: "gelu tanh");
        Check.GradCheck(x => F.softplus(x, 2), Rand([10], 20), what: "softplus");
        Check.GradCheck(F.logsigmoid, Rand([10], 21), what: "logsigmoid");
        Check.GradCheck(x => F.interpolate(x, size: (5, 3), mode: nn.InterpolationMode.Bilinear, align_corners: false), Rand([1, 1, 3, 4], 22), what: "bilinear");
        Check.GradCheck(x => F.interpolate(x, size: (5, 7), mode: nn.InterpolationMode.Bicubic, align_corners: true), Rand([1, 1, 3, 4], 23), what: "bicubic");
        Check.GradCheck(x => F.interpolate(x, size: (2, 3), mode: nn.InterpolationMode.Bicubic, antialias: true), Rand([1, 1, 5, 6], 24), what: "bicubic aa");
        Check.GradCheck(x => F.interpolate(x, 2.0), Rand([1, 1, 2, 3], 25), what: "nearest");
        Check.GradCheck(x => F.avg_pool2d(x, 2), Rand([1, 2, 4, 4], 26), what: "avg_pool2d");
        Check.GradCheck(x => F.mse_loss(x, Rand([6], 27), nn.Reduction.None), Rand([6], 28), what: "mse_loss");
        var target = tensor(new[] { 2L, 0L, 1L });
        Check.GradCheck(x => F.cross_entropy(x, target, label_smoothing: 0.1), Rand([3, 4], 29), what: "cross_entropy");
        var kk = Rand([1, 2, 4, 3], 30);
        var vv = Rand([1, 2, 4, 3], 31);
        Check.GradCheck(x => F.scaled_dot_product_attention(x, kk, vv), Rand([1, 2, 3, 3], 32), what: "sdpa q");
        Check.GradCheck(x => F.scaled_dot_product_attention(Rand([1, 2, 3, 3], 33), x, vv, is_causal: false), kk, what: "sdpa k");
        Check.GradCheck(x => F.pad(x, [1, 2, 2, 1], nn.PaddingMode.Reflect), Rand([1, 1, 3, 4], 34), what: "pad reflect");
        Check.GradCheck(x => x.softmax(-1), Rand([2, 5], 35), what: "softmax");
        Check.GradCheck(x => x.log_softmax(-1), Rand([2, 5], 36), what: "log_softmax");
        Check.GradCheck(x => x.logsumexp(1), Rand([2, 5], 37), what: "logsumexp");
        Check.GradCheck(x => F.embedding(tensor(new[] { 2L, 0L, 2L }), x), Rand([3, 2], 38), what: "embedding");
        Check.GradCheck(x => x.var(1), Rand([2, 5], 39), what: "var");
        Check.GradCheck(x => x.norm(2, [1]), Rand([2, 5], 40), what: "norm");
    }
}
