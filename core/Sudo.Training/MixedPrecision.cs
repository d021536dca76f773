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

    /// <summary>The autocast scope of <paramref name="mode"/> on <paramref name="device"/>; null for no.</summary>
    public static IDisposable? Autocast(string mode, Device device) => mode switch
    {
        "bf16" => autocast(device, ScalarType.BFloat16),
        "fp16" => autocast(device, ScalarType.Float16),
        _ => null,
    };
}
