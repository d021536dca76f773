using System.Diagnostics;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;
namespace Sudo.Bench;

/// <summary>Engine speed figures (sudoml bench engine). Printed, never asserted.</summary>
public sealed record EngineBenchResult(
    double op_overhead_us,
    double matmul_gflops,
    double matmul_bf16_gflops,
    double conv_fwd_bwd_ms,
    int torch_threads,
    int blas_threads,
    IReadOnlyDictionary<string, object> cpu_features);

public static class EngineBench
{
    public static EngineBenchResult Run(int overheadIters = 200_000, int matmulReps = 10, int convReps = 10)
    {
        Library.EnsureLoaded();
        return new EngineBenchResult(
            OpOverheadMicros(overheadIters),
            MatmulGflops(ScalarType.Float32, matmulReps),
            MatmulGflops(ScalarType.BFloat16, matmulReps),
            ConvFwdBwdMs(convReps),
            torch.get_num_threads(),
            torch.get_blas_threads(),
            CpuFeatureReport());
    }

    /// <summary>The CPU model, each feature that matters (CpuInfo.Reported) and the measured bf16/fp32 time ratio.</summary>
    public static IReadOnlyDictionary<string, object> CpuFeatureReport()
    {
        var cpu = CpuFeatures.Detect();
        var d = new Dictionary<string, object> { ["model"] = cpu.Model };
        foreach (var (f, has) in cpu.Features) d[f] = has;
        var probe = Precision.ProbeBf16();
        d["bf16_slowdown"] = double.IsFinite(probe.slowdown) ? Math.Round(probe.slowdown, 2) : -1;
        return d;
    }

    /// <summary>Median over 5 rounds of the per-call time of a 4-element add (result disposed each time).</summary>
    public static double OpOverheadMicros(int iters)
    {
        using var a = torch.randn([4]);
        using var b = torch.randn([4]);
        for (var i = 0; i < 10_000; i++) (a + b).Dispose();
        var rounds = new List<double>();
        for (var r = 0; r < 5; r++)
        {
            var sw = Stopwatch.StartNew();
            for (var i = 0; i < iters; i++) (a + b).Dispose();
            rounds.Add(sw.Elapsed.TotalMicroseconds / iters);
        }
        return Median(rounds);
    }

    /// <summary>GFLOP/s of an n×n matmul in <paramref name="dtype"/>; 0 where libtorch cannot compute that dtype here
    /// (bf16 with oneDNN capped below AVX-512: the bf16 probe in cpu_features says why).</summary>
    public static double MatmulGflops(ScalarType dtype, int reps, long n = 1024)
    {
        try
        {
            return MatmulGflopsOrThrow(dtype, reps, n);
        }
        catch (TorchException) when (dtype != ScalarType.Float32)
        {
            return 0;
        }
    }

    private static double MatmulGflopsOrThrow(ScalarType dtype, int reps, long n)
    {
        using var scope = torch.NewDisposeScope();
        using var g = new Generator(0);
        var a = torch.randn([n, n], g).to(dtype);
        var b = torch.randn([n, n], g).to(dtype);
        for (var i = 0; i < 3; i++) a.matmul(b).Dispose();
        var times = new List<double>();
        for (var i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            a.matmul(b).Dispose();
            times.Add(sw.Elapsed.TotalSeconds);
        }
        return 2.0 * n * n * n / Median(times) / 1e9;
    }

    public static double ConvFwdBwdMs(int reps)
    {
        using var scope = torch.NewDisposeScope();
        using var g = new Generator(0);
        var x = torch.randn([8, 64, 32, 32], g).requires_grad_();
        var w = (torch.randn([64, 64, 3, 3], g) * 0.05).requires_grad_();
        var times = new List<double>();
        for (var i = 0; i < reps + 2; i++)
        {
            using var step = torch.NewDisposeScope();
            var sw = Stopwatch.StartNew();
            var y = torch.nn.functional.conv2d(x, w, null, 1, 1);
            y.sum().backward();
            if (i >= 2) times.Add(sw.Elapsed.TotalMilliseconds);
            x.zero_grad();
            w.zero_grad();
        }
        return Median(times);
    }

    /// <summary>Runs <paramref name="step"/> once to warm up, then <paramref name="reps"/> timed times; the median in seconds.</summary>
    public static double MedianSeconds(Action step, int reps)
    {
        step();
        var times = new List<double>(reps);
        for (var i = 0; i < reps; i++)
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            step();
            times.Add(sw.Elapsed.TotalSeconds);
        }
        return Median(times);
    }

    internal static double Median(List<double> xs)
    {
        xs.Sort();
        return xs.Count % 2 == 1 ? xs[xs.Count / 2] : 0.5 * (xs[xs.Count / 2 - 1] + xs[xs.Count / 2]);
    }
}
