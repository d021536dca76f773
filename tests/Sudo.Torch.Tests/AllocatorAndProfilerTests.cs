using NUnit.Framework;
using static Sudo.Torch.torch;

namespace Sudo.Torch.Tests;

public class AllocatorAndProfilerTests
{
    [Test]
    public void CachingAllocatorReusesFreedBlocksWithFreshValues()
    {
        Assert.That(cpu.caching_allocator_enabled, Is.True, "the caching CPU allocator is on by default");
        cpu.empty_cache(reset_peak: true);
        var before = cpu.memory_stats();
        for (var i = 1; i <= 5; i++)
        {
            using var scope = NewDisposeScope();
            var a = full([512, 1024], (double)i);      // 2 MiB: a cached size class
            Assert.That(a.sum().item<float>(), Is.EqualTo(i * 512f * 1024f));
            var z = zeros([512, 1024]);               // may land in a block that held other values
            Assert.That(z.abs().max().item<float>(), Is.EqualTo(0f));
        }
        var after = cpu.memory_stats();
        Assert.That(after.live, Is.EqualTo(before.live), "every block came back");
        Assert.That(after.misses - before.misses, Is.LessThanOrEqualTo(4), "blocks are allocated once, then reused");
        Assert.That(after.hits - before.hits, Is.GreaterThanOrEqualTo(6));
        cpu.empty_cache();
        Assert.That(cpu.memory_stats().cached, Is.EqualTo(0));
    }

    [Test]
    public void CachingAllocatorBoundsWhatItKeeps()
    {
        cpu.empty_cache(reset_peak: true);
        var baseLive = cpu.memory_stats().live;
        // 40 different sizes, one alive at a time: keeping them all would hold 820 MiB.
        for (var mb = 1; mb <= 40; mb++)
        {
            using var t = empty([mb * 256L * 1024]);   // mb MiB of fp32
            t.fill_(1.0);
        }
        var s = cpu.memory_stats();
        var limit = s.peak_live * 1.25 + (64L << 20);
        Assert.That(s.live + s.cached, Is.LessThanOrEqualTo(limit), $"live {s.live} + cached {s.cached} vs limit {limit} (peak {s.peak_live}, base {baseLive})");
        Assert.That(s.releases, Is.GreaterThan(0));
        cpu.empty_cache();
    }

    [Test]
    public void ProfilerCountsOpsAndSplitsSelfFromTotal()
    {
        using var a = randn([64, 64]);
        using var b = randn([64, 64]);
        var p = profiler.profile();
        for (var i = 0; i < 3; i++)
        {
            using var c = a.matmul(b);
        }
        p.Dispose();
        var mm = p.ops.Single(o => o.name == "aten::mm");
        var matmul = p.ops.Single(o => o.name == "aten::matmul");
        Assert.That(mm.calls, Is.EqualTo(3));
        Assert.That(matmul.calls, Is.EqualTo(3));
        Assert.That(matmul.total_us, Is.GreaterThanOrEqualTo(mm.total_us), "matmul's total includes the mm it calls");
        Assert.That(matmul.self_us, Is.LessThan(matmul.total_us));
        Assert.That(mm.self_us, Is.GreaterThan(0));
        Assert.Throws<TorchException>(() => { using var q = profiler.profile(); using var r = profiler.profile(); }, "one profile at a time");

        // save_tsv keeps the native table itself: the file reads back to the same ops, and no temporary is left beside it.
        var dir = Directory.CreateTempSubdirectory("sudo-profile-").FullName;
        try
        {
            var path = Path.Combine(dir, "ops.tsv");
            var q = profiler.profile(save_tsv: path);
            using (var c = a.matmul(b)) { }
            q.Dispose();
            Assert.That(Profile.Parse(File.ReadAllLines(path)).Select(o => (o.name, o.calls)), Is.EquivalentTo(q.ops.Select(o => (o.name, o.calls))));
            Assert.That(q.ops.Single(o => o.name == "aten::mm").calls, Is.EqualTo(1));
            Assert.That(Directory.GetFiles(dir).Select(Path.GetFileName), Is.EqualTo(new[] { "ops.tsv" }));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void PeakRssReadsStatusLinesOfEverySize()
    {
        Assert.That(ProcessMemory.StatusKb("VmHWM:\t  709039 kB"), Is.EqualTo(709039));
        Assert.That(ProcessMemory.StatusKb("VmHWM:\t23152876 kB"), Is.EqualTo(23152876));   // ≥ 10 GB: no padding
        Assert.That(ProcessMemory.PeakRssMb(), Is.GreaterThan(0));
    }
}
