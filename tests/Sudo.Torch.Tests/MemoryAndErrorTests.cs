using NUnit.Framework;
using static Sudo.Torch.torch;
using F = Sudo.Torch.torch.nn.functional;

namespace Sudo.Torch.Tests;

public class MemoryAndErrorTests
{
    private static long RssBytes()
    {
        var statm = File.ReadAllText("/proc/self/statm").Split(' ');
        return long.Parse(statm[1]) * Environment.SystemPageSize;
    }

    [Test]
    public void ScopedTrainingLoopLeavesNothingBehindAndRssStaysFlat()
    {
        manual_seed(0);
        using var net = new nn.Sequential(new nn.Linear(16, 32), new nn.SiLU(), new nn.Linear(32, 1));
        using var opt = new optim.AdamW(net.parameters(), lr: 1e-3);
        using var g = new Generator(0);
        // One warm-up step creates the optimizer state (kept) before the counter is read.
        void Step()
        {
            using var scope = NewDisposeScope();
            var x = randn([8, 16], g);
            var loss = F.mse_loss(net.forward(x), x.sum(1, keepdim: true));
            opt.zero_grad();
            loss.backward();
            nn.utils.clip_grad_norm_(net.parameters(), 1.0);
            opt.step();
        }
        for (var i = 0; i < 3000; i++) Step();   // warm-up: optimizer state, JIT tiers, allocator pools
        GC.Collect();                             // let earlier tests' unreferenced tensors finalize first
        GC.WaitForPendingFinalizers();
        var live = live_tensors;
        var finalized = finalized_tensors;
        var rss = new List<long>();
        for (var i = 1; i <= 10_000; i++)
        {
            Step();
            if (i % 1000 == 0)
            {
                GC.Collect();
                rss.Add(RssBytes());
            }
        }
        Assert.That(live_tensors, Is.EqualTo(live), "live-tensor count after 10,000 scoped steps");
        TestContext.Out.WriteLine("RSS (MB) every 1000 steps: " + string.Join(", ", rss.Select(r => (r / 1e6).ToString("F1"))));
        var growth = rss[^1] - rss[0];
        Assert.That(growth, Is.LessThan(6L << 20), $"RSS grew {growth / 1e6:F1} MB over 10,000 steps");
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Assert.That(finalized_tensors, Is.EqualTo(finalized), "no tensor of the loop was left to the finalizer");
    }

    [Test]
    public void ScopesDisposeTheirTensorsAndMoveOutWhatIsKept()
    {
        var live = live_tensors;
        Tensor kept;
        Tensor inner;
        using (var outer = NewDisposeScope())
        {
            using (var scope = NewDisposeScope())
            {
                var a = ones([3]);
                inner = a * 2;
                kept = scope.MoveToOuter(a + 1);
                Assert.That(scope.Count, Is.EqualTo(2));
            }
            Assert.That(inner.IsDisposed, Is.True);
            Assert.That(kept.IsDisposed, Is.False);
            Assert.That(outer.Count, Is.EqualTo(1));
            kept = outer.Detach(kept);
        }
        Assert.That(kept.IsDisposed, Is.False);
        Assert.That(kept.sum().item(), Is.EqualTo(6));
        kept.Dispose();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Assert.That(live_tensors, Is.EqualTo(live));
    }

    [Test]
    public void LibtorchErrorsNameTheOpAndCarryTheMessage()
    {
        using var scope = NewDisposeScope();
        var e = Assert.Throws<TorchException>(() => randn([4, 5]).matmul(randn([4, 5])));
        Assert.That(e!.Op, Is.EqualTo("matmul"));
        Assert.That(e.NativeMessage, Does.Contain("cannot be multiplied (4x5 and 4x5)"));
        Assert.That(e.Message, Does.StartWith("matmul: "));
        Assert.That(e.NativeMessage, Does.Not.Contain("frame #"), "no backtrace in the message");
        var add = Assert.Throws<TorchException>(() => _ = ones([3]) + ones([4]));
        Assert.That(add!.Op, Is.EqualTo("add"));
        Assert.That(add.NativeMessage, Does.Contain("must match the size of tensor b"));
        var view = Assert.Throws<TorchException>(() => ones([6]).view(4, 2));
        Assert.That(view!.Op, Is.EqualTo("view"));
        Assert.That(Assert.Throws<TorchException>(() => F.conv2d(ones([1, 3, 4, 4]), ones([2, 5, 3, 3])))!.Op, Is.EqualTo("conv2d"));
        Assert.That(Assert.Throws<TorchException>(() => ones([2]).select(0, 5))!.NativeMessage, Does.Contain("out of range"));
        Assert.That(Assert.Throws<TorchException>(() => cat([ones([2, 2]), ones([3])]))!.Op, Is.EqualTo("cat"));
        Assert.That(Assert.Throws<TorchException>(() => ones([2]).to(Device.CUDA(0)))!.Op, Is.EqualTo("to"));
        Assert.That(Assert.Throws<TorchException>(() => F.group_norm(ones([1, 3, 2, 2]), 2))!.Op, Is.EqualTo("group_norm"));
        // the process is still healthy afterwards
        Assert.That((ones([2]) + 1).sum().item(), Is.EqualTo(4));
    }

    [Test]
    public void MisuseRaisesClearExceptionsNeverCrashes()
    {
        var t = ones([3]);
        t.Dispose();
        var e = Assert.Throws<ObjectDisposedException>(() => t.sum());
        Assert.That(e!.Message, Does.Contain("disposed"));
        Assert.Throws<ObjectDisposedException>(() => _ = t.shape);
        using var scope = NewDisposeScope();
        var u = ones([2, 3]);
        var wrong = Assert.Throws<ArgumentException>(() => u.CopyTo<float>(new float[5]));
        Assert.That(wrong!.Message, Does.Contain("destination has 5 elements, the tensor has 6"));
        Assert.Throws<ArgumentException>(() => tensor(new float[5], [2, 3]));
        Assert.Throws<ArgumentException>(() => tensor(new float[5], [-1, 5]));
        Assert.That(u.ToArray<double>(), Has.Length.EqualTo(6));
        Assert.Throws<NotSupportedException>(() => u.ToArray<decimal>());
        using var gen = new Generator(1);
        gen.Dispose();
        Assert.Throws<ObjectDisposedException>(() => randn([2], gen));
        Assert.Throws<ArgumentOutOfRangeException>(() => set_num_threads(0));
        var outer = NewDisposeScope();
        var inner = NewDisposeScope();
        Assert.Throws<InvalidOperationException>(() => outer.Dispose());   // outer before inner
        inner.Dispose();
        outer.Dispose();
    }

    [Test]
    public void OptimizerRefusesMemoryMappedWeights()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-mm-{Guid.NewGuid():N}");
        var path = Path.Combine(dir, "w.safetensors");
        try
        {
            using (var s = NewDisposeScope()) safetensors.save_file(new Dictionary<string, Tensor> { ["w"] = ones([4]) }, path);
            using var scope = NewDisposeScope();
            var mapped = safetensors.load_file(path)["w"];
            Assert.That(mapped.IsMapped, Is.True);
            using var p = new Parameter(mapped);
            using var opt = new optim.SGD([p], lr: 0.1);
            (p * 2).sum().backward();
            var e = Assert.Throws<InvalidOperationException>(() => opt.step());
            Assert.That(e!.Message, Does.Contain("memory-mapped"));
            // Loading into a module copies: that parameter trains fine and the file is unchanged.
            using var lin = new nn.Linear(4, 1, bias: false);
            lin.load_state_dict(new Dictionary<string, Tensor> { ["weight"] = mapped.view(1, 4) });
            Assert.That(lin.weight.IsMapped, Is.False);
            using var opt2 = new optim.SGD(lin.parameters(), lr: 0.1);
            lin.forward(ones([1, 4])).sum().backward();
            opt2.step();
            Check.Close(lin.weight, new[] { 0.9, 0.9, 0.9, 0.9 }, 1e-6);
            // An in-place op on a mapped tensor hits a private copy-on-write page: no crash, file intact.
            mapped.add_(1);
            Assert.That(safetensors.load_file(path, mmap: false)["w"].sum().item(), Is.EqualTo(4));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Test]
    public void LibraryInfoAndThreads()
    {
        var info = Library.Info();
        TestContext.Out.WriteLine(info.ToString());
        Assert.That(info.TorchVersion, Does.StartWith("1.").Or.StartWith("2."));
        Assert.That(info.AbiVersion, Is.EqualTo(7));
        Assert.That(info.TorchThreads, Is.GreaterThanOrEqualTo(1));
        var prev = get_num_threads();
        set_num_threads(1);
        Assert.That(get_num_threads(), Is.EqualTo(1));
        set_num_threads(prev);
        if (get_blas_threads() > 0)
        {
            var b = get_blas_threads();
            set_blas_threads(2);
            Assert.That(get_blas_threads(), Is.EqualTo(2));
            set_blas_threads(b);
        }
    }
}
