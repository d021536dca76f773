using NUnit.Framework;
using Sudo.Torch;

[assembly: Parallelizable(ParallelScope.None)]

namespace Sudo.Torch.Tests;

/// <summary>Where ../shared is (SUDO_SHARED, default: the folder beside the repository), and the rule for
/// tests that need it: they fail in CI when it is missing and are skipped elsewhere.</summary>
public static class Shared
{
    public static string Root
    {
        get
        {
            var env = Environment.GetEnvironmentVariable("SUDO_SHARED");
            if (!string.IsNullOrEmpty(env)) return Path.GetFullPath(env);
            var dir = new DirectoryInfo(AppContext.BaseDirectory);
            while (dir != null && !File.Exists(Path.Combine(dir.FullName, "Sudo.sln"))) dir = dir.Parent;
            var repo = dir?.FullName ?? Directory.GetCurrentDirectory();
            return Path.GetFullPath(Path.Combine(repo, "..", "shared"));
        }
    }

    /// <summary>The repository root (the folder holding Sudo.sln above the test binaries).</summary>
    public static string RepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "Sudo.sln"))) dir = dir.Parent;
        return dir?.FullName ?? throw new DirectoryNotFoundException("repository root (Sudo.sln) not found above " + AppContext.BaseDirectory);
    }

    /// <summary>A TCP port free on loopback now (for a test's rendezvous).</summary>
    public static int FreePort()
    {
        var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        var p = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return p;
    }

    public static string Require(params string[] parts)
    {
        var path = Path.Combine([Root, .. parts]);
        if (File.Exists(path) || Directory.Exists(path)) return path;
        var msg = $"shared data not found: {path} (set SUDO_SHARED to the shared folder)";
        if (Environment.GetEnvironmentVariable("CI") == "true") Assert.Fail(msg);
        Assert.Ignore(msg);
        return path;
    }
}

public static class Check
{
    /// <summary>Asserts |a − b| ≤ tol element by element (tol broadcast to the shape) and prints the worst ratio.</summary>
    public static void CloseElementwise(Tensor actual, Tensor expected, Tensor tol, string what = "")
    {
        Assert.That(actual.shape, Is.EqualTo(expected.shape), $"{what}: shape");
        using var scope = torch.NewDisposeScope();
        var err = actual.to(ScalarType.Float64).sub(expected.to(ScalarType.Float64)).abs();
        var ratio = (err / tol.to(ScalarType.Float64).clamp_min(1e-300)).max().item();
        TestContext.Out.WriteLine($"{what}: max |Δ| = {err.max().item():G3}, worst |Δ|/bound = {ratio:G3}");
        Assert.That(ratio, Is.LessThanOrEqualTo(1.0), $"{what}: an element exceeds its bound by {ratio:G3}×");
    }

    /// <summary>Asserts max |a − b| ≤ tol and prints the max error.</summary>
    public static double Close(Tensor actual, Tensor expected, double tol, string what = "")
    {
        Assert.That(actual.shape, Is.EqualTo(expected.shape), $"{what}: shape");
        using var scope = torch.NewDisposeScope();
        var err = actual.to(ScalarType.Float64).sub(expected.to(ScalarType.Float64)).abs().max().item();
        TestContext.Out.WriteLine($"{what}: max |Δ| = {err:G3} (tol {tol:G3})");
        Assert.That(err, Is.LessThanOrEqualTo(tol), $"{what}: max |Δ| = {err}");
        return err;
    }

    public static void Close(Tensor actual, double[] expected, double tol, string what = "")
    {
        var a = actual.ToArray<double>();
        Assert.That(a.Length, Is.EqualTo(expected.Length), $"{what}: numel");
        for (var i = 0; i < a.Length; i++)
            Assert.That(a[i], Is.EqualTo(expected[i]).Within(tol), $"{what}[{i}]");
    }

    /// <summary>Central finite differences in float64 against autograd for a scalar projection of f.</summary>
    public static void GradCheck(Func<Tensor, Tensor> f, Tensor x0, double eps = 1e-6, double tol = 1e-6, string what = "")
    {
        using var scope = torch.NewDisposeScope();
        using var g = new Generator(7);
        var x = x0.to(ScalarType.Float64).detach().requires_grad_();
        var y = f(x);
        var w = torch.randn(y.shape, g, ScalarType.Float64);
        (y * w).sum().backward();
        var analytic = x.grad!.ToArray<double>();
        var xs = x.detach().ToArray<double>();
        var shape = x.shape;
        using var ng = torch.no_grad();
        double maxErr = 0;
        for (var i = 0; i < xs.Length; i++)
        {
            var plus = (double[])xs.Clone();
            var minus = (double[])xs.Clone();
            plus[i] += eps;
            minus[i] -= eps;
            using var s2 = torch.NewDisposeScope();
            var fp = (f(torch.tensor(plus, shape)) * w).sum().item();
            var fm = (f(torch.tensor(minus, shape)) * w).sum().item();
            var numeric = (fp - fm) / (2 * eps);
            var err = Math.Abs(numeric - analytic[i]) / Math.Max(1, Math.Abs(numeric));
            maxErr = Math.Max(maxErr, err);
        }
        TestContext.Out.WriteLine($"gradcheck {what}: max rel err {maxErr:G3}");
        Assert.That(maxErr, Is.LessThanOrEqualTo(tol), $"gradcheck {what}");
    }
}

/// <summary>CPU capabilities a test depends on: an absent one skips the test with a message naming it (never a weaker check).</summary>
public static class Requires
{
    /// <summary>libtorch can compute bf16 here. True on every CPU libtorch supports (oneDNN with AVX-512 BW/VL/DQ, a scalar
    /// loop without); false only where oneDNN is capped below AVX-512 (DNNL_MAX_CPU_ISA) while libtorch still routes bf16
    /// to it, which the bf16 probe reports.</summary>
    public static void Bf16Compute()
    {
        var probe = Precision.ProbeBf16();
        if (probe.bf16_error != null)
            Assert.Ignore($"needs bf16 compute, which libtorch cannot do in this configuration ({CpuFeatures.Detect().Summary}): {probe.bf16_error}");
    }
}

/// <summary>Base of tests that need a fresh folder: <see cref="Tmp"/> exists during each test and is removed after it.</summary>
public abstract class TempFolderTest
{
    protected string Tmp { get; private set; } = "";

    [SetUp]
    public void MakeTempFolder() => Directory.CreateDirectory(Tmp = Path.Combine(Path.GetTempPath(), $"sudo-{GetType().Name}-{Guid.NewGuid():N}"));

    [TearDown]
    public void RemoveTempFolder()
    {
        if (Directory.Exists(Tmp)) Directory.Delete(Tmp, true);
    }
}

/// <summary>Tolerances derived from the arithmetic, so that a check holds on every CPU whose kernels round
/// correctly, whatever their blocking, vector width or accumulation order, and still fails on a wrong result.</summary>
public static class Tolerance
{
    /// <summary>Unit roundoff u of a dtype (round to nearest, p significand bits: u = 2^−p): bf16 2^−8, fp16 2^−11,
    /// fp32 2^−24, fp64 2^−53.</summary>
    public static double UnitRoundoff(ScalarType dtype) => dtype switch
    {
        ScalarType.BFloat16 => Math.Pow(2, -8),
        ScalarType.Float16 => Math.Pow(2, -11),
        ScalarType.Float32 => Math.Pow(2, -24),
        ScalarType.Float64 => Math.Pow(2, -53),
        _ => throw new ArgumentException($"no unit roundoff for {dtype}"),
    };

    /// <summary>Deterministic first-order bound of a dot product of length <paramref name="k"/> whose operands are
    /// rounded to <paramref name="dtype"/>, accumulated in it (the worst case: a kernel accumulating in fp32 does
    /// better) and whose result is rounded once more: |Δ| ≤ γ_(k+3)·Σ|a||b| with γ_n = n·u/(1 − n·u) (Higham,
    /// Accuracy and Stability of Numerical Algorithms, 2nd ed., §3.1: two operand roundings, k − 1 additions and a
    /// multiply per term, one output rounding). <paramref name="absDot"/> is Σ|a||b| for each output element.</summary>
    public static Tensor DotProduct(ScalarType dtype, long k, Tensor absDot)
    {
        var nu = (k + 3) * UnitRoundoff(dtype);
        if (nu >= 1) throw new ArgumentException($"a dot product of length {k} in {dtype} has no first-order bound (n·u = {nu})");
        return absDot * (nu / (1 - nu));
    }
}

/// <summary>Devices the tests run on: cpu always, cuda when this machine has one.</summary>
public static class Devices
{
    public static IEnumerable<string> All()
    {
        yield return "cpu";
        if (torch.cuda.is_available()) yield return "cuda:0";
    }
}
