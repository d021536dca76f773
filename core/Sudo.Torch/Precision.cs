using System.Diagnostics;

namespace Sudo.Torch;

/// <summary>A short timing of the same work in fp32 and in bf16 on the CPU (a linear layer and a 3×3
/// convolution, the two ops a UNet spends its time in), with the thread settings the process runs with.</summary>
public sealed record Bf16Probe(double fp32_ms, double bf16_ms, string? bf16_error = null)
{
    /// <summary>bf16 time / fp32 time: above 1, bf16 is slower than fp32 on this CPU.</summary>
    public double slowdown => bf16_ms / fp32_ms;
}

/// <summary>What a bf16 request on a device comes to: <see cref="Allowed"/> false means refuse with
/// <see cref="Message"/>; a non-null message with Allowed true is a warning to print.</summary>
public sealed record Bf16Verdict(bool Allowed, string? Message);

/// <summary>CPU-aware precision: bf16 on a CPU pays only where oneDNN has bf16 kernels (AVX-512 BW/VL/DQ,
/// natively fast with AVX512-BF16 or AMX). Elsewhere libtorch computes bf16 GEMMs in a scalar loop — measured
/// 4 GFLOP/s against 125 for fp32, a training step 12× slower, on an AVX2-only EPYC — so a bf16 request is
/// checked against a measured probe, never assumed fast.</summary>
public static class Precision
{
    /// <summary>bf16 is refused (or, when allowed, warned about) if the probe finds it this much slower than
    /// fp32: mixed precision exists to be faster, and within 1.5× the probe's own noise can explain the gap.</summary>
    public const double SlowBf16Factor = 1.5;

    private static Bf16Probe? _probe;
    private static readonly object Gate = new();

    /// <summary>Times <c>linear([256, 512] × [512, 512]ᵀ)</c> plus <c>conv2d([1, 64, 32, 32], 64×64×3×3)</c> in fp32 and in bf16
    /// (warm-up, then the median of 3): about 10 ms on a machine with bf16 kernels, 50 ms without. Measured once per process.</summary>
    public static Bf16Probe ProbeBf16()
    {
        lock (Gate)
        {
            if (_probe != null) return _probe;
            Library.EnsureLoaded();
            using var scope = torch.NewDisposeScope();
            using var ng = torch.no_grad();
            using var g = new Generator(0);
            var x = torch.randn([256, 512], g);
            var w = torch.randn([512, 512], g) * 0.05;
            var img = torch.randn([1, 64, 32, 32], g);
            var k = torch.randn([64, 64, 3, 3], g) * 0.05;
            double Time(ScalarType dt)
            {
                var (xd, wd, id, kd) = (x.to(dt), w.to(dt), img.to(dt), k.to(dt));
                void Once()
                {
                    using var s = torch.NewDisposeScope();
                    torch.nn.functional.linear(xd, wd);
                    torch.nn.functional.conv2d(id, kd, null, 1, 1);
                }
                Once();
                var times = new double[3];
                for (var i = 0; i < times.Length; i++)
                {
                    var sw = Stopwatch.StartNew();
                    Once();
                    times[i] = sw.Elapsed.TotalMilliseconds;
                }
                Array.Sort(times);
                return times[1];
            }
            var fp32 = Time(ScalarType.Float32);
            try
            {
                _probe = new Bf16Probe(fp32, Time(ScalarType.BFloat16));
            }
            catch (TorchException e)
            {
                // e.g. oneDNN limited below AVX-512 (DNNL_MAX_CPU_ISA) while libtorch still routes bf16 to it.
                _probe = new Bf16Probe(fp32, double.PositiveInfinity, e.Message);
            }
            return _probe;
        }
    }

    /// <summary>The rule, separate from the measurement so that it can be tested with any figures: CUDA is always
    /// allowed; on the CPU a slowdown above <see cref="SlowBf16Factor"/> is refused unless <paramref name="allowSlow"/>,
    /// and then warned about; a probe that could not compute bf16 at all is always refused. <paramref name="what"/> names the request (e.g. <c>--mixed_precision bf16</c>) and
    /// <paramref name="allowFlag"/> the switch that lets it run anyway.</summary>
    public static Bf16Verdict Judge(CpuInfo cpu, Bf16Probe probe, bool allowSlow, string what, string allowFlag = "--allow_slow_bf16")
    {
        if (probe.bf16_error == null && probe.slowdown <= SlowBf16Factor) return new Bf16Verdict(true, null);
        var missing = cpu.NativeBf16 ? "" : cpu.OneDnnBf16 ? " (no avx512_bf16/amx_bf16: bf16 is emulated)" : " (no avx512bw/vl/dq: libtorch has no bf16 kernels for it)";
        if (probe.bf16_error != null)
            return new Bf16Verdict(false, $"{what} cannot run on this CPU ({cpu.Model}{missing}): libtorch failed the bf16 probe: {probe.bf16_error}. Use fp32 (drop {what}).");
        var figure = $"{what} on this CPU ({cpu.Model}{missing}) runs {probe.slowdown:0.0}× slower than fp32 " +
                     $"(probe: linear + conv, {probe.fp32_ms:0.00} ms fp32 vs {probe.bf16_ms:0.00} ms bf16)";
        return allowSlow
            ? new Bf16Verdict(true, $"warning: {figure}; running anyway because of {allowFlag}")
            : new Bf16Verdict(false, $"{figure}. Use fp32 (drop {what}), or pass {allowFlag} to run anyway.");
    }

    /// <summary>Checks a bf16 request on <paramref name="device"/> (probing the CPU once per process): throws
    /// <see cref="NotSupportedException"/> when refused, writes the warning to stderr when allowed but slow.</summary>
    public static void RequireUsableBf16(Device device, bool allowSlow, string what, string allowFlag = "--allow_slow_bf16")
    {
        if (device.Type != DeviceType.CPU) return;
        var v = Judge(CpuFeatures.Detect(), ProbeBf16(), allowSlow, what, allowFlag);
        if (!v.Allowed) throw new NotSupportedException(v.Message);
        if (v.Message != null) Console.Error.WriteLine(v.Message);
    }
}
