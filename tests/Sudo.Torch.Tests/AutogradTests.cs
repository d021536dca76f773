using NUnit.Framework;
using static Sudo.Torch.torch;
using F = Sudo.Torch.torch.nn.functional;

namespace Sudo.Torch.Tests;

public class AutogradTests
{
    [Test]
    public void BackwardAccumulatesAndRetainsGraph()
    {
        using var scope = NewDisposeScope();
        var x = tensor(new[] { 1.0, 2, 3 }, requires_grad: true);
        var y = (x * x * x).sum();                 // dy/dx = 3x²
        y.backward(retain_graph: true);
        Check.Close(x.grad!, new[] { 3.0, 12, 27 }, 0);
        y.backward();                               // accumulates
        Check.Close(x.grad!, new[] { 6.0, 24, 54 }, 0);
        x.zero_grad();
        Assert.That(x.grad, Is.Null);
        var e = Assert.Throws<TorchException>(() => y.backward());
        Assert.That(e!.Op, Is.EqualTo("backward"));
        Assert.That(e.Message, Does.Contain("second time"));
        // assigned gradients are checked like PyTorch's setter
        var bad = Assert.Throws<TorchException>(() => x.grad = ones([2], float64));
        Assert.That(bad!.NativeMessage, Does.Contain("assigned grad has shape [2]"));
        Assert.Throws<TorchException>(() => x.grad = ones([3]));
        // a non-scalar output needs an explicit gradient
        var z = x * 2;
        z.backward(tensor(new[] { 1.0, 0, 1 }));
        Check.Close(x.grad!, new[] { 2.0, 0, 2 }, 0);
    }

    [Test]
    public void AutogradGradWithCreateGraphGivesSecondDerivatives()
    {
        using var scope = NewDisposeScope();
        var x = tensor(new[] { 0.5, -1.0 }, requires_grad: true);
        var y = (x.pow(4)).sum();
        var g = autograd.grad([y], [x], create_graph: true)[0]!;  // 4x³
        Check.Close(g, new[] { 0.5, -4.0 }, 1e-12);
        Assert.That(g.requires_grad, Is.True);
        var h = autograd.grad([g.sum()], [x])[0]!;                 // 12x²
        Check.Close(h, new[] { 3.0, 12 }, 1e-12);
        var unused = tensor(new[] { 1.0 }, requires_grad: true);
        var r = autograd.grad([(x * 2).sum()], [x, unused], allow_unused: true);
        Assert.That(r[1], Is.Null);
        Assert.Throws<TorchException>(() => autograd.grad([(x * 2).sum()], [unused]));
    }

    [Test]
    public void GradModesAreScoped()
    {
        using var scope = NewDisposeScope();
        var x = ones([2], requires_grad: true);
        Assert.That(is_grad_enabled(), Is.True);
        using (no_grad())
        {
            Assert.That(is_grad_enabled(), Is.False);
            Assert.That((x * 2).requires_grad, Is.False);
            using (enable_grad()) Assert.That((x * 2).requires_grad, Is.True);
            Assert.That(is_grad_enabled(), Is.False);
        }
        Assert.That(is_grad_enabled(), Is.True);
        using (inference_mode())
        {
            Assert.That(is_inference_mode_enabled(), Is.True);
            var t = x * 2;
            Assert.That(t.is_inference(), Is.True);
            Assert.That(t.requires_grad, Is.False);
        }
        Assert.That(is_inference_mode_enabled(), Is.False);
        Assert.That((x * 2).requires_grad, Is.True);
        using (autograd.detect_anomaly()) Assert.That(autograd.is_anomaly_enabled(), Is.True);
        Assert.That(autograd.is_anomaly_enabled(), Is.False);
    }

    private sealed class Block : nn.Module<Tensor, Tensor>
    {
        public readonly nn.Linear fc1, fc2;
        public Block()
        {
            fc1 = register_module("fc1", new nn.Linear(6, 12));
            fc2 = register_module("fc2", new nn.Linear(12, 6));
        }
        public override Tensor forward(Tensor x) => x + fc2.forward(F.silu(fc1.forward(x)));
    }

    private static (double[][] paramGrads, double[]? inputGrad) RunBlock(bool checkpoint, bool inputRequiresGrad, bool frozen = false)
    {
        using var scope = NewDisposeScope();
        manual_seed(0);
        using var block = new Block();
        if (frozen) block.fc1.requires_grad_(false);
        using var g = new Generator(1);
        var x = randn([4, 6], g);
        if (inputRequiresGrad) x.requires_grad = true;
        var h = checkpoint
            ? utils.checkpoint.run(block.forward, x, block.parameters())
            : block.forward(x);
        (h * h).sum().backward();
        var grads = block.parameters().Select(p => p.grad?.ToArray<double>() ?? []).ToArray();
        return (grads, inputRequiresGrad ? x.grad!.ToArray<double>() : null);
    }

    [TestCase(true)]
    [TestCase(false)]
    public void CheckpointingGivesIdenticalGradients(bool inputRequiresGrad)
    {
        var (plain, plainX) = RunBlock(false, inputRequiresGrad);
        var (ckpt, ckptX) = RunBlock(true, inputRequiresGrad);
        Assert.That(ckpt.Length, Is.EqualTo(plain.Length));
        for (var i = 0; i < plain.Length; i++)
        {
            Assert.That(plain[i], Is.Not.Empty, $"parameter {i} got no gradient without checkpointing");
            Assert.That(ckpt[i], Is.EqualTo(plain[i]), $"parameter {i}: checkpointed gradient differs");
        }
        Assert.That(ckptX, Is.EqualTo(plainX));
    }

    [Test]
    public void CheckpointingHonoursFrozenWeightsAndFrozenInput()
    {
        // LoRA-like: some weights frozen, input frozen; trainable weights still get their gradients.
        var (plain, _) = RunBlock(false, false, frozen: true);
        var (ckpt, _) = RunBlock(true, false, frozen: true);
        Assert.That(ckpt[0], Is.Empty);
        Assert.That(ckpt[2], Is.EqualTo(plain[2]));
        Assert.That(ckpt[3], Is.EqualTo(plain[3]));
    }

    [Test]
    public void CheckpointingFreesNothingEarlyAndReportsBlockErrors()
    {
        var live = live_tensors;
        using (var scope = NewDisposeScope())
        {
            var x = randn([3, 3], requires_grad: true);
            var y = utils.checkpoint.run(t => t.matmul(t).sin(), x);
            y.sum().backward();
            Check.Close(x.grad!, ExpectedGrad(x), 1e-5, "checkpointed matmul-sin");
            var e = Assert.Throws<TorchException>(() => utils.checkpoint.run(t => t.matmul(ones([2, 2])), x));
            Assert.That(e!.Message, Does.Contain("checkpointed block failed"));
            Assert.That(e.Message, Does.Contain("cannot be multiplied"));
        }
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Assert.That(live_tensors, Is.EqualTo(live));
    }

    private static Tensor ExpectedGrad(Tensor x)
    {
        var x2 = x.detach().requires_grad_();
        x2.matmul(x2).sin().sum().backward();
        return x2.grad!;
    }

    [Test]
    public void CheckpointReplaysDropoutRandomness()
    {
        using var scope = NewDisposeScope();
        var x = randn([64], requires_grad: true);
        manual_seed(3);
        var y = utils.checkpoint.run(t => F.dropout(t, 0.5) * 3, x);
        y.sum().backward();
        // The gradient is 3·mask/(1-p) with the same mask that forward drew.
        var mask = y.detach().ne(0).@float();
        Check.Close(x.grad!, mask * 6, 0, "dropout mask replayed");
    }

    [Test]
    public void CheckpointUnderAutocastGivesTheWeightsTheirGradients()
    {
        // The checkpointed forward runs without grad; a bf16 weight cast cached there (autocast's cache) has no
        // history, and a recompute that reused it would leave the weights without gradients.
        Requires.Bf16Compute();
        using var scope = NewDisposeScope();
        using var g = new Generator(1);
        var lin = new nn.Linear(16, 16);
        var x = randn([4, 16], g);
        Tensor[] Grads(bool ckpt)
        {
            lin.zero_grad();
            using (autocast(Device.CPU, ScalarType.BFloat16))
            {
                var y = ckpt ? utils.checkpoint.run(t => lin.forward(t).relu(), x, lin.parameters()) : lin.forward(x).relu();
                y.@float().square().sum().backward();
            }
            return lin.parameters().Select(p => p.grad ?? throw new AssertionException($"no gradient (checkpoint: {ckpt})")).ToArray();
        }
        var plain = Grads(false);
        var ck = Grads(true);
        for (var i = 0; i < plain.Length; i++) Check.Close(ck[i], plain[i], 0, $"parameter {i}");
    }

    [Test]
    public void CheckpointRecomputesUnderTheForwardsAutocastOnEveryDevice()
    {
        // Backward runs outside the autocast scopes; the recomputation must see the forward's state of
        // both device types (enabled and dtype) and leave the caller's state as it was. CUDA autocast is a
        // thread-local flag, so it is set and checked here without a GPU.
        using var scope = NewDisposeScope();
        var seen = new List<(bool Cpu, ScalarType CpuDt, bool Cuda, ScalarType CudaDt)>();
        var x = randn([4, 4], requires_grad: true);
        Tensor y;
        using (autocast(Device.CPU, ScalarType.BFloat16))
        using (autocast(new Device(DeviceType.CUDA, 0), ScalarType.BFloat16))
            y = utils.checkpoint.run(t =>
            {
                seen.Add((is_autocast_enabled(DeviceType.CPU), get_autocast_dtype(DeviceType.CPU),
                          is_autocast_enabled(DeviceType.CUDA), get_autocast_dtype(DeviceType.CUDA)));
                return t * 2;
            }, x);
        Assert.That(is_autocast_enabled(DeviceType.CUDA), Is.False);
        y.sum().backward();
        Assert.That(seen, Has.Count.EqualTo(2), "forward, then the recomputation in backward");
        Assert.That(seen[0], Is.EqualTo((true, ScalarType.BFloat16, true, ScalarType.BFloat16)));
        Assert.That(seen[1], Is.EqualTo(seen[0]), "the recomputed block ran under a different autocast state");
        Assert.That(is_autocast_enabled(DeviceType.CPU) || is_autocast_enabled(DeviceType.CUDA), Is.False,
            "backward left autocast switched on");
        Assert.That(get_autocast_dtype(DeviceType.CUDA), Is.EqualTo(ScalarType.Float16), "backward left CUDA autocast in bf16");
    }

    [Test]
    public void Bf16AutocastOnCpu()
    {
        Requires.Bf16Compute();
        using var scope = NewDisposeScope();
        using var g = new Generator(0);
        var a = randn([16, 32], g);
        var w = randn([8, 32], g);
        Tensor y;
        using (autocast(Device.CPU))
        {
            Assert.That(is_autocast_enabled(), Is.True);
            y = F.linear(a, w);
            Assert.That(y.dtype, Is.EqualTo(ScalarType.BFloat16));
            // norms stay in fp32 when their module upcasts by hand
            using var norm = new nn.GroupNorm(2, 8);
            var n = norm.forward(y.view(16, 8, 1, 1));
            Assert.That(n.dtype, Is.EqualTo(ScalarType.BFloat16));
            // Normalised in fp32 from the same bf16 input, so the only bf16 rounding is the output's: |Δ| ≤ u·|ref|,
            // plus fp32's own rounding of a 4-element normalisation (a few u_fp32, bounded here by 64·u_fp32·max|ref|).
            var ref32 = F.group_norm(y.@float().view(16, 8, 1, 1), 2, norm.weight, norm.bias);
            var bound = ref32.abs() * Tolerance.UnitRoundoff(ScalarType.BFloat16) + 64 * Tolerance.UnitRoundoff(ScalarType.Float32) * ref32.abs().max().item();
            Check.CloseElementwise(n, ref32, bound, "bf16 group_norm computed in fp32");
        }
        Assert.That(is_autocast_enabled(), Is.False);
        // A 32-term dot product of bf16-rounded operands: |Δ| ≤ γ_(k+3)·Σ|a||w| element by element.
        Check.CloseElementwise(y, F.linear(a.to(float64), w.to(float64)), Tolerance.DotProduct(ScalarType.BFloat16, a.size(1), a.abs().to(float64).matmul(w.abs().to(float64).t())), "bf16 linear");
        Assert.Throws<ArgumentException>(() => autocast(Device.CPU, float16));
    }
}
