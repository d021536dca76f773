using NUnit.Framework;
using Sudo.Torch;
using Sudo.Torch.Tests;

namespace Sudo.Training.Tests;

/// <summary>`sudoml launch` (Launcher.Run): torchrun's environment per rank, rank-prefixed output, and a failing rank
/// stopping the job with its exit code.</summary>
[NonParallelizable]
public class LauncherTests
{
    [Test]
    public void EnvironmentIsTorchruns()
    {
        var e = Launcher.Environment(new LaunchOptions { nproc_per_node = 8, nnodes = 2, node_rank = 1, master_addr = "node0", master_port = 1234 }, 3);
        Assert.That((e["RANK"], e["WORLD_SIZE"], e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"], e["GROUP_RANK"], e["MASTER_ADDR"], e["MASTER_PORT"]),
            Is.EqualTo(("11", "16", "3", "8", "1", "node0", "1234")));
        var env = DistEnv.FromEnvironment(n => e.GetValueOrDefault(n));
        Assert.That(env, Is.EqualTo(new DistEnv(11, 16, 3, 8, "node0", 1234)), "what a launched rank reads back");
    }

    [Test]
    public void TwoRanksRunTheCommandAndAFailingRankStopsTheJob()
    {
        if (!ProcessGroup.Available()) Assert.Ignore("the shim was built without c10d/Gloo");
        var root = Shared.RepoRoot();
        Assume.That(File.Exists(Path.Combine(root, "artifacts", "bin", "Sudo.Torch", "release", "Sudo.Torch.dll")), "needs the Release build");
        var worker = Path.Combine(root, "tests", "Sudo.Torch.Tests", "dist_worker.fsx");
        var lines = new List<string>();
        var code = Launcher.Run(new LaunchOptions { nproc_per_node = 2, master_port = Shared.FreePort() }, ["dotnet", "fsi", worker, "collectives"], lines.Add);
        Assert.That(code, Is.EqualTo(0), string.Join("\n", lines));
        Assert.That(lines, Does.Contain("[rank 0] sum 3,30").And.Contain("[rank 1] sum 3,30").And.Contain("[rank 1] bcast 7,8,9"));

        lines.Clear();
        code = Launcher.Run(new LaunchOptions { nproc_per_node = 2, master_port = Shared.FreePort(), grace_seconds = 30 }, ["dotnet", "fsi", worker, "die"], lines.Add);
        TestContext.Out.WriteLine(string.Join("\n", lines));
        Assert.That(code, Is.EqualTo(3), "the first failing rank's exit code");
        Assert.That(lines, Has.Some.Contains("launch: rank 1 exited with code 3"));
        Assert.That(lines, Has.Some.Contains("[rank 0] error: rank 0/2 all_reduce"), "rank 0 failed on the missing peer instead of waiting");
    }
}
