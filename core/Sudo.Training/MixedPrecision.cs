using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Training;

/// <summary>--mixed_precision as accelerate reads it, in one place for every trainer: unset means fp16 on CUDA (train.py's
/// and SPO's configs) and no on a CPU; fp16 needs CUDA; the autocast scope computes in the named dtype (bf16 explicitly:
/// CUDA autocast's own default is fp16).</summary>
public static class MixedPrecision
{
    public static string Resolve(string? requested, Device device) => requested ?? (device.Type == DeviceType.CPU ? "no" : "fp16");

    public static void Validate(string? requested, Device device)
    {
        var mode = Resolve(requested, device);
        if (mode is not ("no" or "bf16" or "fp16")) throw new ArgumentException($"--mixed_precision {requested}: expected no, bf16 or fp16");
        if (mode == "fp16" && device.Type == DeviceType.CPU)
            throw new ArgumentException("--mixed_precision fp16 needs CUDA (libtorch 1.13 cannot compute fp16 on CPU): use bf16");
    }

    /// <summary>A CPU run's precision chosen for the machine (requested "auto"): bf16 autocast where the CPU has native bf16
    /// (avx512_bf16 or amx_bf16) and the bf16 probe (<see cref="Precision.ProbeBf16"/>) runs at most <see cref="AutoBf16Factor"/>
    /// of fp32's time, fp32 ("no") elsewhere — never the emulated or scalar bf16 paths. "no"/"fp32" and "bf16" are taken as
    /// asked. Returns the mode and a sentence saying why (for logs and reports).</summary>
    public static (string mode, string why) ForMachine(string requested, CpuInfo? cpu = null, Bf16Probe? probe = null)
    {
        switch (requested)
        {
            case "no" or "fp32": return ("no", "fp32 (asked)");
            case "bf16": return ("bf16", "bf16 autocast (asked)");
            case "auto": break;
            default: throw new ArgumentException($"precision '{requested}': expected auto, fp32 (no) or bf16");
        }
        cpu ??= CpuFeatures.Detect();
        if (!cpu.NativeBf16) return ("no", $"fp32: {cpu.Model} has no native bf16 (avx512_bf16 / amx_bf16)");
        probe ??= Precision.ProbeBf16();
        if (probe.bf16_error != null) return ("no", $"fp32: the bf16 probe failed ({probe.bf16_error})");
        var figure = $"probe: bf16 {probe.slowdown:0.00}× fp32's time";
        return probe.slowdown <= AutoBf16Factor
            ? ("bf16", $"bf16 autocast: {cpu.Model} has native bf16 ({(cpu.Has("amx_bf16") ? "amx_bf16" : "avx512_bf16")}), {figure}")
            : ("no", $"fp32: native bf16 but not faster here ({figure})");
    }

    /// <summary>"auto" picks bf16 only when the probe finds it at most this share of fp32's time.</summary>
    public const double AutoBf16Factor = 0.8;

    /// <summary>The autocast scope of <paramref name="mode"/> on <paramref name="device"/>; null for no.</summary>
    public static IDisposable? Autocast(string mode, Device device) => mode switch
    {
        "bf16" => autocast(device, ScalarType.BFloat16),
        "fp16" => autocast(device, ScalarType.Float16),
        _ => null,
    };
}
