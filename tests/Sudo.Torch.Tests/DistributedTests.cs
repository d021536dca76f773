using System.Diagnostics;
using NUnit.Framework;

namespace Sudo.Torch.Tests;

/// <summary>c10d process groups with two processes on loopback (Gloo): rank 0 is this test process, rank 1 a
/// `dotnet fsi` worker (dist_worker.fsx) taking part in the same collectives.</summary>
[NonParallelizable]
public class DistributedTests
{
    private static (Process p, Task<string> stdout, Task<string> stderr) StartRank1(string scenario, int port, bool holdStdin = false)
    {
        var root = Shared.RepoRoot();
        Assume.That(File.Exists(Path.Combine(root, "artifacts", "bin", "Sudo.Torch", "release", "Sudo.Torch.dll")), "needs the Release build (scripts/test.sh builds it)");
        var psi = new ProcessStartInfo("dotnet", ["fsi", "tests/Sudo.Torch.Tests/dist_worker.fsx", scenario])
        {
            WorkingDirectory = root,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = holdStdin,
        };
        foreach (var (k, v) in new[] { ("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port.ToString()) })
            psi.Environment[k] = v;
        var p = Process.Start(psi)!;
        return (p, p.StandardOutput.ReadToEndAsync(), p.StandardError.ReadToEndAsync());
    }

    private static DistEnv Rank0(int port) => DistEnv.FromEnvironment(n => n switch
    {
        "RANK" => "0",
        "WORLD_SIZE" => "2",
        "MASTER_ADDR" => "127.0.0.1",
        "MASTER_PORT" => port.ToString(),
        _ => null,
    })!;

    [SetUp]
    public void NeedsC10d()
    {
        if (!ProcessGroup.Available())
        {
            const string msg = "the shim was built without c10d/Gloo (libgloo-dev missing)";
            if (Environment.GetEnvironmentVariable("CI") == "true") Assert.Fail(msg);
            Assert.Ignore(msg);
        }
    }

    [Test]
    public void CollectivesAgreeAcrossTwoProcesses()
    {
        var port = Shared.FreePort();
        var (p, stdout, stderr) = StartRank1("collectives", port);
        try
        {
            using var pg = ProcessGroup.init(Rank0(port), "gloo", TimeSpan.FromSeconds(120), "test");
            Assert.That((pg.rank, pg.world_size), Is.EqualTo((0, 2)));
            using var scope = torch.NewDisposeScope();
            var a = torch.tensor(new[] { 1f, 10f });
            pg.all_reduce(a);
            Assert.That(a.ToArray<float>(), Is.EqualTo(new[] { 3f, 30f }), "1 + 2, 10 + 20");
            var b = torch.tensor(new[] { 1f, 10f });
            pg.all_reduce(b, CollectiveOp.AVG);
            Assert.That(b.ToArray<float>(), Is.EqualTo(new[] { 1.5f, 15f }));
            var c = torch.tensor(new[] { 7f, 8f, 9f });
            pg.broadcast(c, 0);
            var g = pg.all_gather(torch.tensor(new[] { 0f }));
            Assert.That(g.Select(t => t.item<double>()), Is.EqualTo(new[] { 0.0, 2.0 }));
            // Rank r sends r + 1 rows: the variable-size gather SPO's step pairs need.
            var v = pg.all_gather_variable(torch.full([1, 2], 0.0));
            Assert.That(v.Select(t => t.size(0)), Is.EqualTo(new long[] { 1, 2 }));
            Assert.That(v[1].ToArray<float>(), Is.EqualTo(new[] { 1f, 1f, 1f, 1f }));
            pg.barrier();
            Assert.That(p.WaitForExit(60_000), Is.True, "rank 1 finished");
            Assert.That(p.ExitCode, Is.EqualTo(0), stderr.Result);
            var lines = stdout.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            Assert.That(lines, Does.Contain("sum 3,30").And.Contain("avg 1.5,15").And.Contain("bcast 7,8,9").And.Contain("gather 0;2").And.Contain("variable 1:0,0;2:1,1,1,1"));
        }
        finally
        {
            if (!p.HasExited) p.Kill(true);
        }
    }

    [Test]
    public void ADeadPeerIsAnErrorNamingRankAndOperationNotAHang()
    {
        var port = Shared.FreePort();
        var (p, stdout, stderr) = StartRank1("die", port);
        try
        {
            using var pg = ProcessGroup.init(Rank0(port), "gloo", TimeSpan.FromSeconds(90), "test");
            Assert.That(p.WaitForExit(60_000), Is.True);
            using var t = torch.ones([4]);
            var e = Assert.Throws<TorchException>(() => pg.all_reduce(t))!;
            TestContext.Out.WriteLine(e.Message);
            // The peer's closed connection is the cause, not the 90 s timeout running out.
            Assert.That(e.Message, Does.Contain("rank 0/2").And.Contain("all_reduce").And.Contain("closed").And.Not.Contain("timed out"));
        }
        finally
        {
            if (!p.HasExited) p.Kill(true);
        }
    }

    [Test]
    public void AHungPeerIsAnErrorAfterTheTimeout()
    {
        var port = Shared.FreePort();
        var (p, stdout, stderr) = StartRank1("hang", port, holdStdin: true);
        try
        {
            var pg = ProcessGroup.init(Rank0(port), "gloo", TimeSpan.FromSeconds(120), "test");
            pg.barrier();
            pg.timeout = TimeSpan.FromSeconds(3);
            using var t = torch.ones([4]);
            var e = Assert.Throws<TorchException>(() => pg.all_reduce(t))!;
            TestContext.Out.WriteLine(e.Message);
            // The peer is alive but never joins: the collective's own timeout ends the wait.
            Assert.That(e.Message, Does.Contain("rank 0/2").And.Contain("all_reduce").And.Contain("timed out"));
            p.StandardInput.Close();   // releases the worker, which then leaves the group
            pg.Dispose();
        }
        finally
        {
            if (!p.HasExited) p.Kill(true);
        }
    }

    [Test]
    public void EnvironmentOfTorchrunAndSlurm()
    {
        var torchrun = DistEnv.FromEnvironment(n => n switch { "RANK" => "3", "WORLD_SIZE" => "8", "LOCAL_RANK" => "1", "LOCAL_WORLD_SIZE" => "4", "MASTER_ADDR" => "node0", "MASTER_PORT" => "1234", _ => null });
        Assert.That(torchrun, Is.EqualTo(new DistEnv(3, 8, 1, 4, "node0", 1234)));
        var slurm = DistEnv.FromEnvironment(n => n switch { "SLURM_PROCID" => "5", "SLURM_NTASKS" => "16", "SLURM_LOCALID" => "5", "SLURM_NTASKS_PER_NODE" => "8(x2)", "MASTER_ADDR" => "n1", _ => null });
        Assert.That(slurm, Is.EqualTo(new DistEnv(5, 16, 5, 8, "n1", 29500)));
        var pytorchJob = DistEnv.FromEnvironment(n => n switch { "RANK" => "3", "WORLD_SIZE" => "4", "MASTER_ADDR" => "job-master-0", "MASTER_PORT" => "23456", _ => null });
        Assert.That(pytorchJob, Is.EqualTo(new DistEnv(3, 4, 0, 1, "job-master-0", 23456)), "a PyTorchJob pod: one process, local rank 0");
        Assert.That(DistEnv.FromEnvironment(_ => null), Is.Null, "not launched as a job");
        Assert.Throws<ArgumentException>(() => DistEnv.FromEnvironment(n => n switch { "RANK" => "2", "WORLD_SIZE" => "2", _ => null }));
    }
}
