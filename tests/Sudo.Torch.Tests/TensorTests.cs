using NUnit.Framework;
using static Sudo.Torch.torch;

namespace Sudo.Torch.Tests;

public class TensorTests
{
    /// <summary>The device-placement contract of random draws: a generator draws on its own device and the values move
    /// to the tensor's (a CPU generator for a CUDA tensor is the trainers' case; "meta" stands in for it on a CPU-only
    /// machine). Proof that the draw happened on the generator: it advanced exactly as the same draw on CPU did.</summary>
    [Test]
    public void CudaMemoryStatsAreZeroWithoutCuda()
    {
        if (torch.cuda.is_available()) Assert.Ignore("this machine has CUDA: the stats are real");
        Assert.That(torch.cuda.memory_stats(0), Is.EqualTo((0L, 0L, 0L, 0L)));
        Assert.DoesNotThrow(() => torch.cuda.reset_peak_memory_stats(0));
    }

    [Test]
    public void RandomDrawsHappenOnTheGeneratorsDeviceAndMoveToTheTensors()
    {
        using var scope = NewDisposeScope();
        using var a = new Generator(7);
        using var b = new Generator(7);
        var draws = new (string op, Func<Generator, Device, Tensor> draw)[]
        {
            ("randn", (g, d) => randn([2, 3], g, device: d)),
            ("rand", (g, d) => rand([5], g, device: d)),
            ("randint", (g, d) => randint(0, 100, [4], g, device: d)),
            ("randperm", (g, d) => randperm(6, g, device: d)),
            ("normal", (g, d) => normal(1, 2, [3], g, device: d)),
            ("normal_", (g, d) => empty([2, 2], device: d).normal_(0, 1, g)),
            ("uniform_", (g, d) => empty([3], device: d).uniform_(0, 1, g)),
        };
        foreach (var (op, draw) in draws)
        {
            var moved = draw(a, Device.Meta);
            Assert.That((moved.device, moved.shape), Is.EqualTo((Device.Meta, draw(b, Device.CPU).shape)), op);
            Assert.That(randn([4], a).ToArray<float>(), Is.EqualTo(randn([4], b).ToArray<float>()), $"{op}: the generator advanced as on its own device");
        }
    }

    [Test]
    public void DTypesRoundTripThroughHostArrays()
    {
        using var scope = NewDisposeScope();
        Assert.That(tensor(new[] { 1.5f, -2f }).ToArray<float>(), Is.EqualTo(new[] { 1.5f, -2f }));
        Assert.That(tensor(new[] { 1.5, -2 }).ToArray<double>(), Is.EqualTo(new[] { 1.5, -2 }));
        Assert.That(tensor(new[] { 3L, -4L }).ToArray<long>(), Is.EqualTo(new[] { 3L, -4L }));
        Assert.That(tensor(new[] { 3, -4 }).ToArray<int>(), Is.EqualTo(new[] { 3, -4 }));
        Assert.That(tensor(new byte[] { 0, 255 }).ToArray<byte>(), Is.EqualTo(new byte[] { 0, 255 }));
        Assert.That(tensor(new[] { true, false }).ToArray<bool>(), Is.EqualTo(new[] { true, false }));
        Assert.That(tensor(new[] { (Half)0.5f }).ToArray<Half>(), Is.EqualTo(new[] { (Half)0.5f }));
        // bf16 keeps 8 bits of mantissa: 1 + 2^-8 rounds to 1, 1 + 2^-7 survives.
        var bf = tensor(new[] { 1f + 1f / 256, 1f + 1f / 128 }, dtype: bfloat16);
        Assert.That(bf.dtype, Is.EqualTo(ScalarType.BFloat16));
        Assert.That(bf.ToArray<float>(), Is.EqualTo(new[] { 1f, 1f + 1f / 128 }));
        Assert.That(tensor(new[] { 1f, 2f }).to(float16).dtype, Is.EqualTo(ScalarType.Float16));
        Assert.That(tensor(new[] { 1.7f, -1.7f }).to(int64).ToArray<long>(), Is.EqualTo(new[] { 1L, -1L }));
        Assert.That(tensor(new[] { 0f, 2f }).to(@bool).ToArray<bool>(), Is.EqualTo(new[] { false, true }));
        Assert.That(tensor(new[] { 300f }).to(uint8).ToArray<byte>(), Is.EqualTo(new byte[] { 44 }));
    }

    [Test]
    public void ShapesAndItems()
    {
        using var scope = NewDisposeScope();
        var t = arange(24).view(2, 3, 4);
        Assert.That(t.shape, Is.EqualTo(new long[] { 2, 3, 4 }));
        Assert.That(t.dtype, Is.EqualTo(ScalarType.Int64));
        Assert.That(t.numel(), Is.EqualTo(24));
        Assert.That(t.stride(), Is.EqualTo(new long[] { 12, 4, 1 }));
        Assert.That(t[1, 2, 3].item<long>(), Is.EqualTo(23));
        Assert.That((t[1, 2, 3].item<int>(), t[0, 0, 1].item<bool>(), t[0, 0, 0].item<bool>()), Is.EqualTo((23, true, false)));
        Assert.That((t[0, 1, 1].to(ScalarType.Float32) / 2).item<float>(), Is.EqualTo(2.5f), "each type boxed as itself");
        Assert.That((t[0, 1, 1].to(ScalarType.Float64) / 4).item<double>(), Is.EqualTo(1.25));
        Assert.That(t[1, .., 1].ToArray<long>(), Is.EqualTo(new long[] { 13, 17, 21 }));
        Assert.That(t[TensorIndex.Colon, 1..3, TensorIndex.Slice(0, 4, 2)].ToArray<long>(), Is.EqualTo(new long[] { 4, 6, 8, 10, 16, 18, 20, 22 }));
        Assert.That(t[TensorIndex.None].shape, Is.EqualTo(new long[] { 1, 2, 3, 4 }));
        Assert.That(t.permute(2, 0, 1).shape, Is.EqualTo(new long[] { 4, 2, 3 }));
        Assert.That(t.transpose(0, 2).is_contiguous(), Is.False);
        Assert.That(t.transpose(0, 2).contiguous().is_contiguous(), Is.True);
        Assert.That(t.flatten(1).shape, Is.EqualTo(new long[] { 2, 12 }));
        Assert.That(t.reshape(-1).shape, Is.EqualTo(new long[] { 24 }));
        Assert.That(t.unsqueeze(0).squeeze(0).shape, Is.EqualTo(new long[] { 2, 3, 4 }));
        Assert.That(zeros(1, 3, 1).squeeze().shape, Is.EqualTo(new long[] { 3 }));
        Assert.That(scalar_tensor(2.5).shape, Is.Empty);
        Assert.That(scalar_tensor(2.5).item(), Is.EqualTo(2.5));
        Assert.That(scalar_tensor(7).dtype, Is.EqualTo(ScalarType.Int64));
    }

    [Test]
    public void CreationFunctions()
    {
        using var scope = NewDisposeScope();
        Assert.That(zeros([2, 2]).sum().item(), Is.EqualTo(0));
        Assert.That(ones([2, 3], float64).sum().item(), Is.EqualTo(6));
        Assert.That(full([2], 3.5).ToArray<float>(), Is.EqualTo(new[] { 3.5f, 3.5f }));
        Assert.That(arange(1.0, 2.0, 0.25).ToArray<float>(), Is.EqualTo(new[] { 1f, 1.25f, 1.5f, 1.75f }));
        Assert.That(linspace(0, 1, 5).ToArray<float>(), Is.EqualTo(new[] { 0f, 0.25f, 0.5f, 0.75f, 1f }));
        var x = randn([3, 4]);
        Assert.That(zeros_like(x).shape, Is.EqualTo(x.shape));
        Assert.That(ones_like(x, float64).dtype, Is.EqualTo(ScalarType.Float64));
        Assert.That(full_like(x, 2).mean().item(), Is.EqualTo(2));
        Assert.That(empty([0, 3]).numel(), Is.EqualTo(0));
        Assert.That(tensor(new float[] { 1, 2, 3, 4, 5, 6 }, [2, 3]).shape, Is.EqualTo(new long[] { 2, 3 }));
        Assert.That(tensor(new[,] { { 1f, 2f }, { 3f, 4f } }).sum().item(), Is.EqualTo(10));
    }

    [Test]
    public void GeneratorsAreExplicitAndReproducible()
    {
        using var scope = NewDisposeScope();
        using var g1 = new Generator(42);
        using var g2 = new Generator(42);
        Assert.That(randn([5], g1).equal(randn([5], g2)), Is.True);
        Assert.That(rand([5], g1).equal(rand([5], g2)), Is.True);
        Assert.That(randint(0, 10, [5], g1).equal(randint(0, 10, [5], g2)), Is.True);
        Assert.That(randperm(10, g1).equal(randperm(10, g2)), Is.True);
        Assert.That(normal(3, 0.5, [5], g1).equal(normal(3, 0.5, [5], g2)), Is.True);
        // torch.manual_seed(0); torch.randn(3) in PyTorch (CPU, float32):
        using var g0 = new Generator(0);
        Check.Close(randn([3], g0), new[] { 1.5409961, -0.2934289, -2.1787894 }, 1e-6, "randn seed 0");
        // A state snapshot replays the stream.
        using var g = new Generator(5);
        var state = g.get_state();
        var a = randn([4], g);
        g.set_state(state);
        Assert.That(randn([4], g).equal(a), Is.True);
        g.manual_seed(5);
        Assert.That(randn([4], g).equal(a), Is.True);
        Assert.That(g.initial_seed(), Is.EqualTo(5));
        // Statistics of the draws.
        using var gs = new Generator(1);
        var big = randn([100_000], gs);
        Assert.That(big.mean().item(), Is.EqualTo(0).Within(0.02));
        Assert.That(big.std().item(), Is.EqualTo(1).Within(0.02));
        var ints = randint(3, 7, [10_000], gs);
        Assert.That(ints.min().item(), Is.EqualTo(3));
        Assert.That(ints.max().item(), Is.EqualTo(6));
        var u = rand([10_000], gs);
        Assert.That(u.min().item(), Is.GreaterThanOrEqualTo(0));
        Assert.That(u.max().item(), Is.LessThan(1));
        Assert.That(randperm(50, gs).sort().values.equal(arange(50)), Is.True);
        // Per-image generators: image i is the same whatever the batch.
        using var ga = new Generator(11);
        using var gb = new Generator(11);
        var batch = stack([randn([2, 3], ga), randn([2, 3], new Generator(12))]);
        Assert.That(batch[0].equal(randn([2, 3], gb)), Is.True);
    }

    [Test]
    public void ArithmeticAndComparisons()
    {
        using var scope = NewDisposeScope();
        var a = tensor(new[] { 1f, 2f, 3f });
        var b = tensor(new[] { 4f, 5f, 6f });
        Check.Close(a + b, new[] { 5.0, 7, 9 }, 0);
        Check.Close(a - b, new[] { -3.0, -3, -3 }, 0);
        Check.Close(a * b, new[] { 4.0, 10, 18 }, 0);
        Check.Close(b / a, new[] { 4.0, 2.5, 2 }, 0);
        Check.Close(a + 1, new[] { 2.0, 3, 4 }, 0);
        Check.Close(10 - a, new[] { 9.0, 8, 7 }, 0);
        Check.Close(6 / a, new[] { 6.0, 3, 2 }, 1e-6);
        Check.Close(2 * a, new[] { 2.0, 4, 6 }, 0);
        Check.Close(-a, new[] { -1.0, -2, -3 }, 0);
        Check.Close(a.pow(2), new[] { 1.0, 4, 9 }, 0);
        Check.Close(a.pow(b), new[] { 1.0, 32, 729 }, 1e-4);
        Check.Close(b % 4, new[] { 0.0, 1, 2 }, 0);
        Assert.That(a.lt(b).all().item<bool>(), Is.True);
        Assert.That((a > 1.5).ToArray<bool>(), Is.EqualTo(new[] { false, true, true }));
        Assert.That(a.eq(tensor(new[] { 1f, 0f, 3f })).ToArray<bool>(), Is.EqualTo(new[] { true, false, true }));
        Assert.That((a >= 2).logical_and(a <= 2).ToArray<bool>(), Is.EqualTo(new[] { false, true, false }));
        Check.Close(maximum(a, tensor(new[] { 2f, 2f, 2f })), new[] { 2.0, 2, 3 }, 0);
        Check.Close(minimum(a, tensor(new[] { 2f, 2f, 2f })), new[] { 1.0, 2, 2 }, 0);
        // int tensor with an int scalar stays int; with a float scalar it promotes (PyTorch's rules).
        Assert.That((arange(3) + 1).dtype, Is.EqualTo(ScalarType.Int64));
        Assert.That((arange(3) + 0.5).dtype, Is.EqualTo(ScalarType.Float32));
    }

    [Test]
    public void ElementwiseFunctionsMatchClosedForms()
    {
        using var scope = NewDisposeScope();
        var x = tensor(new[] { -2.0, -0.5, 0.0, 0.7, 3.0 });
        var xs = x.ToArray<double>();
        void Same(Tensor t, Func<double, double> f, string name) => Check.Close(t, xs.Select(f).ToArray(), 1e-12, name);
        Same(x.exp(), Math.Exp, "exp");
        Same(x.abs().add(1).log(), v => Math.Log(Math.Abs(v) + 1), "log");
        Same(x.abs().sqrt(), v => Math.Sqrt(Math.Abs(v)), "sqrt");
        Same(x.abs().add(1).rsqrt(), v => 1 / Math.Sqrt(Math.Abs(v) + 1), "rsqrt");
        Same(x.sin(), Math.Sin, "sin");
        Same(x.cos(), Math.Cos, "cos");
        Same(x.tanh(), Math.Tanh, "tanh");
        Same(x.sigmoid(), v => 1 / (1 + Math.Exp(-v)), "sigmoid");
        Same(x.abs(), Math.Abs, "abs");
        Same(x.clamp(-1, 1), v => Math.Clamp(v, -1, 1), "clamp");
        Same(x.clamp_min(0), v => Math.Max(v, 0), "clamp_min");
        Same(x.sign(), v => Math.Sign(v), "sign");
        Same(x.square(), v => v * v, "square");
        Same(x.lerp(ones_like(x), 0.25), v => v + 0.25 * (1 - v), "lerp");
        Same(x.floor(), Math.Floor, "floor");
        Same(x.erf(), Erf, "erf");
        Assert.That(tensor(new[] { double.NaN, 1 }).isnan().ToArray<bool>(), Is.EqualTo(new[] { true, false }));
        Assert.That(tensor(new[] { double.PositiveInfinity, 1 }).isfinite().ToArray<bool>(), Is.EqualTo(new[] { false, true }));
    }

    private static double Erf(double x)
    {
        // Abramowitz-Stegun 7.1.26 is too coarse for 1e-12; integrate the series instead.
        double sum = 0, term = x;
        for (var n = 0; n < 60; n++)
        {
            sum += term / (2 * n + 1);
            term *= -x * x / (n + 1);
        }
        return 2 / Math.Sqrt(Math.PI) * sum;
    }

    [Test]
    public void Reductions()
    {
        using var scope = NewDisposeScope();
        var t = tensor(new[] { 1.0, 2, 3, 4, 5, 6 }, [2, 3]);
        Assert.That(t.sum().item(), Is.EqualTo(21));
        Check.Close(t.sum(0), new[] { 5.0, 7, 9 }, 0);
        Check.Close(t.sum(1, keepdim: true), new[] { 6.0, 15 }, 0);
        Assert.That(t.sum(1, keepdim: true).shape, Is.EqualTo(new long[] { 2, 1 }));
        Check.Close(t.mean([0, 1]), new[] { 3.5 }, 0);
        Check.Close(t.mean(-1), new[] { 2.0, 5 }, 0);
        Assert.That(t.var().item(), Is.EqualTo(3.5).Within(1e-12));              // unbiased
        Assert.That(t.var(unbiased: false).item(), Is.EqualTo(35.0 / 12).Within(1e-12));
        Check.Close(t.std(1), new[] { 1.0, 1 }, 1e-12);
        Check.Close(t.var(1, keepdim: true), new[] { 1.0, 1 }, 1e-12);
        Assert.That(t.max().item(), Is.EqualTo(6));
        Assert.That(t.min().item(), Is.EqualTo(1));
        var (v, i) = t.max(1);
        Check.Close(v, new[] { 3.0, 6 }, 0);
        Assert.That(i.ToArray<long>(), Is.EqualTo(new long[] { 2, 2 }));
        Assert.That(t.argmax().item<long>(), Is.EqualTo(5));
        Assert.That(t.argmin(1).ToArray<long>(), Is.EqualTo(new long[] { 0, 0 }));
        Check.Close(t.logsumexp(1), new[] { Math.Log(Math.Exp(1) + Math.Exp(2) + Math.Exp(3)), Math.Log(Math.Exp(4) + Math.Exp(5) + Math.Exp(6)) }, 1e-12);
        Assert.That(t.norm().item(), Is.EqualTo(Math.Sqrt(91)).Within(1e-12));
        Check.Close(t.norm(1, [1]), new[] { 6.0, 15 }, 1e-12);
        Check.Close(t.softmax(1).sum(1), new[] { 1.0, 1 }, 1e-12);
        Check.Close(t.log_softmax(1).exp(), t.softmax(1).ToArray<double>(), 1e-12);
        Check.Close(t.amax([0]), new[] { 4.0, 5, 6 }, 0);
        Check.Close(t.cumsum(1), new[] { 1.0, 3, 6, 4, 9, 15 }, 0);
        Check.Close(t.cumprod(1), new[] { 1.0, 2, 6, 4, 20, 120 }, 0);
        Assert.That(t.prod().item(), Is.EqualTo(720));
    }

    [Test]
    public void ShapeOps()
    {
        using var scope = NewDisposeScope();
        var a = arange(6).view(2, 3);
        var b = arange(6, 12).view(2, 3);
        Assert.That(cat([a, b]).shape, Is.EqualTo(new long[] { 4, 3 }));
        Assert.That(cat([a, b], 1).ToArray<long>(), Is.EqualTo(new long[] { 0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11 }));
        Assert.That(stack([a, b], 1).shape, Is.EqualTo(new long[] { 2, 2, 3 }));
        var parts = arange(7).chunk(3);
        Assert.That(parts.Select(p => p.numel()), Is.EqualTo(new long[] { 3, 3, 1 }));
        Assert.That(arange(7).split(2).Select(p => p.numel()), Is.EqualTo(new long[] { 2, 2, 2, 1 }));
        Assert.That(arange(7).split([3L, 4L])[1].ToArray<long>(), Is.EqualTo(new long[] { 3, 4, 5, 6 }));
        Assert.That(a.narrow(1, 1, 2).ToArray<long>(), Is.EqualTo(new long[] { 1, 2, 4, 5 }));
        Assert.That(a.index_select(1, tensor(new[] { 2L, 0L })).ToArray<long>(), Is.EqualTo(new long[] { 2, 0, 5, 3 }));
        Assert.That(a.gather(1, tensor(new[] { 1L, 1L, 0L, 2L }, [2, 2])).ToArray<long>(), Is.EqualTo(new long[] { 1, 1, 3, 5 }));
        Assert.That(tensor(new[] { 1L, 2L }).view(2, 1).expand(2, 3).ToArray<long>(), Is.EqualTo(new long[] { 1, 1, 1, 2, 2, 2 }));
        Assert.That(tensor(new[] { 1L, 2L }).repeat(2).ToArray<long>(), Is.EqualTo(new long[] { 1, 2, 1, 2 }));
        Assert.That(tensor(new[] { 1L, 2L }).repeat_interleave(2, 0).ToArray<long>(), Is.EqualTo(new long[] { 1, 1, 2, 2 }));
        var cond = tensor(new[] { true, false, true });
        Check.Close(where(cond, ones([3]), zeros([3])), new[] { 1.0, 0, 1 }, 0);
        Check.Close(zeros([3]).masked_fill(cond, 5), new[] { 5.0, 0, 5 }, 0);
        Assert.That(a.flip(1).ToArray<long>(), Is.EqualTo(new long[] { 2, 1, 0, 5, 4, 3 }));
        Assert.That(a.unbind(0)[1].ToArray<long>(), Is.EqualTo(new long[] { 3, 4, 5 }));
        Assert.That(ones([3, 3]).tril().sum().item(), Is.EqualTo(6));
        var p = nn.functional.pad(ones([1, 1, 2, 2]), [1, 0, 0, 2], value: 9);
        Assert.That(p.shape, Is.EqualTo(new long[] { 1, 1, 4, 3 }));
        Assert.That(p.sum().item(), Is.EqualTo(4 + 8 * 9));
        var r = nn.functional.pad(arange(3.0, 6.0, 1.0).view(1, 1, 3), [2, 1], nn.PaddingMode.Reflect);
        Check.Close(r, new[] { 5.0, 4, 3, 4, 5, 4 }, 0);
    }

    [Test]
    public void LinearAlgebra()
    {
        using var scope = NewDisposeScope();
        var a = tensor(new[] { 1.0, 2, 3, 4 }, [2, 2]);
        var b = tensor(new[] { 5.0, 6, 7, 8 }, [2, 2]);
        Check.Close(a.matmul(b), new[] { 19.0, 22, 43, 50 }, 0);
        Check.Close(bmm(a.unsqueeze(0), b.unsqueeze(0)), new[] { 19.0, 22, 43, 50 }, 0);
        Check.Close(einsum("ij,jk->ik", a, b), new[] { 19.0, 22, 43, 50 }, 0);
        Check.Close(einsum("ij->ji", a), new[] { 1.0, 3, 2, 4 }, 0);
        // beta·self + alpha·b1@b2 with an initialised self (never empty(): 1.13 NaN quirk).
        var self = ones([1, 2, 2], float64);
        Check.Close(baddbmm(self, a.unsqueeze(0), b.unsqueeze(0), beta: 0.5, alpha: 2), new[] { 38.5, 44.5, 86.5, 100.5 }, 1e-12);
        Check.Close(baddbmm(zeros([1, 2, 2], float64), a.unsqueeze(0), b.unsqueeze(0), beta: 0), new[] { 19.0, 22, 43, 50 }, 0);
        Check.Close(addmm(ones([2, 2], float64), a, b), new[] { 20.0, 23, 44, 51 }, 0);
    }

    [Test]
    public void InPlaceOpsForOptimizers()
    {
        using var scope = NewDisposeScope();
        var p = tensor(new[] { 1.0, 2.0 });
        var g = tensor(new[] { 0.5, -1.0 });
        p.add_(g, -0.1);
        Check.Close(p, new[] { 0.95, 2.1 }, 1e-15);
        p.mul_(2);
        Check.Close(p, new[] { 1.9, 4.2 }, 1e-15);
        p.addcmul_(g, g, 2);
        Check.Close(p, new[] { 2.4, 6.2 }, 1e-15);
        p.addcdiv_(g, tensor(new[] { 2.0, 4.0 }), -1);
        Check.Close(p, new[] { 2.15, 6.45 }, 1e-15);
        p.lerp_(zeros_like(p), 0.5);
        Check.Close(p, new[] { 1.075, 3.225 }, 1e-15);
        p.copy_(tensor(new[] { 7f, 8f }));
        Check.Close(p, new[] { 7.0, 8.0 }, 0);
        p.zero_();
        Assert.That(p.sum().item(), Is.EqualTo(0));
        p.fill_(3).sqrt_();
        Check.Close(p, new[] { Math.Sqrt(3), Math.Sqrt(3) }, 1e-15);
        p.clamp_(max: 1);
        Check.Close(p, new[] { 1.0, 1 }, 0);
    }

    [TestCaseSource(typeof(Devices), nameof(Devices.All))]
    public void DeviceAndDtypeConversion(string device)
    {
        using var scope = NewDisposeScope();
        var d = Device.Parse(device);
        var t = arange(4.0, device: d);
        Assert.That(t.device, Is.EqualTo(d.Type == DeviceType.CUDA ? new Device(DeviceType.CUDA, 0) : Device.CPU));
        var back = t.to(Device.CPU, ScalarType.Float64);
        Assert.That(back.dtype, Is.EqualTo(ScalarType.Float64));
        Check.Close(back, new[] { 0.0, 1, 2, 3 }, 0);
        Assert.That(Device.Parse("cuda:1"), Is.EqualTo(new Device(DeviceType.CUDA, 1)));
        Assert.That(Device.Parse("meta").ToString(), Is.EqualTo("meta"));
        Assert.Throws<ArgumentException>(() => Device.Parse("tpu"));
    }

    [Test]
    public void Fp16OnCpuComputesOnLibtorch2AndIsAClearErrorOn113()
    {
        // libtorch 1.13 has no CPU fp16 kernels for matmul; 2.x has them.
        using var scope = NewDisposeScope();
        var h = ones([2, 2], float16);
        if (Library.Info().TorchVersion.StartsWith("1."))
        {
            var e = Assert.Throws<TorchException>(() => h.matmul(h));
            Assert.That(e!.Op, Is.EqualTo("matmul"));
            Assert.That(e.Message, Does.Contain("Half"));
        }
        else Check.Close(h.matmul(h).@float(), full([2, 2], 2.0f), 0, "fp16 matmul on CPU");
    }
}
