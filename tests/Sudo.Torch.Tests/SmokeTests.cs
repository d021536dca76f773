using System.Diagnostics;
using System.Text.Json;
using NUnit.Framework;

namespace Sudo.Torch.Tests;

/// <summary>Recipes and the CLI run end to end, so none can rot.</summary>
public class SmokeTests
{
    private static (int code, string stdout, string stderr) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Shared.RepoRoot() };
        psi.ArgumentList.Add(file);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            p.Kill(true);
            Assert.Fail($"dotnet {file} timed out");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Test]
    public void OpTablesOfTheShimAndTheBindingAgree()
    {
        // Library start-up refuses to run when they disagree; this states the check ran clean.
        Assert.That(Library.OpTableMismatches(), Is.Empty);
        using var x = torch.tensor(new[] { 0.5f, 2f });
        Assert.That(x.log().ToArray<float>(), Is.EqualTo(new[] { MathF.Log(0.5f), MathF.Log(2f) }).Within(1e-6), "log is log, not its neighbour in the table");
        Assert.That(x.exp().ToArray<float>(), Is.EqualTo(new[] { MathF.Exp(0.5f), MathF.Exp(2f) }).Within(1e-5));
    }

    [Test]
    public void AutogradRecipeRunsInFsi()
    {
        var (code, stdout, stderr) = Run("fsi", Path.Combine("recipes", "autograd_example.fsx"));
        TestContext.Out.WriteLine(stdout + stderr);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stderr, Does.Contain("sudo: native"), "_load.fsx says which native library it loaded");
        Assert.That(stdout, Does.Contain("w = 3.0000, b = 2.0000"));
        Assert.That(stdout, Does.Contain("d2/dt2 t^4 = 48.0"));
    }

    private static string Cli() => Path.Combine(Shared.RepoRoot(), "artifacts", "bin", "Sudo.Cli", "release", "sudoml.dll");

    [Test]
    public void CliInfoAndBadFlags()
    {
        var (code, stdout, _) = Run(Cli(), "info", "--json");
        Assert.That(code, Is.EqualTo(0));
        using var doc = JsonDocument.Parse(stdout);
        Assert.That(doc.RootElement.GetProperty("TorchVersion").GetString(), Is.EqualTo(Library.Info().TorchVersion), "the CLI reports the libtorch this process loaded");
        var (bad, _, err) = Run(Cli(), "info", "--nope");
        Assert.That(bad, Is.EqualTo(2));
        Assert.That(err, Does.Contain("--nope"));
        var (target, _, err2) = Run(Cli(), "bench", "gpu");
        Assert.That(target, Is.EqualTo(2));
        Assert.That(err2, Does.Contain("unknown target 'gpu'"));
    }

    [Test]
    public void BenchJsonHasExactlyTheDocumentedKeys()
    {
        var r = Sudo.Bench.EngineBench.Run(overheadIters: 1000, matmulReps: 1, convReps: 1);
        using var doc = JsonDocument.Parse(JsonSerializer.Serialize(r));
        Assert.That(doc.RootElement.EnumerateObject().Select(p => p.Name), Is.EqualTo(new[]
        {
            "op_overhead_us", "matmul_gflops", "matmul_bf16_gflops", "conv_fwd_bwd_ms", "torch_threads", "blas_threads", "cpu_features",
        }));
        var cpu = doc.RootElement.GetProperty("cpu_features");
        Assert.That(cpu.EnumerateObject().Select(p => p.Name), Is.EqualTo(new[] { "model" }.Concat(CpuInfo.Reported).Append("bf16_slowdown")));
        Assert.That(cpu.GetProperty("avx2").GetBoolean(), Is.EqualTo(CpuFeatures.Detect().Has("avx2")));
        Assert.That(r.matmul_gflops, Is.GreaterThan(0));
        Assert.That(r.torch_threads, Is.EqualTo(torch.get_num_threads()));
    }

    [Test]
    public void DemoTrainingLearns()
    {
        var (first, last, acc, reloaded) = Sudo.Bench.ConvNetDemo.Run(steps: 150, seed: 0);
        TestContext.Out.WriteLine($"loss {first:F4} -> {last:F4}, accuracy {acc:P1}");
        Assert.That(last, Is.LessThan(first * 0.5));
        Assert.That(acc, Is.GreaterThan(0.6));
        Assert.That(reloaded, Is.EqualTo(acc), "safetensors round trip gives the same predictions");
    }
}
