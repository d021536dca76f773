using System.Runtime.Intrinsics.X86;

namespace Sudo.Torch;

/// <summary>The processor and the instruction-set features that decide which kernels libtorch runs.
/// <list type="bullet">
/// <item><c>avx2</c>/<c>fma</c>: ATen's vectorised CPU kernels (ATEN_CPU_CAPABILITY avx2) and OpenBLAS's Haswell sgemm.</item>
/// <item><c>avx512f</c> with <c>avx512bw</c>/<c>avx512vl</c>/<c>avx512dq</c>: libtorch's <c>mkldnn_bf16_device_check()</c>
/// (aten/src/ATen/native/mkldnn/Utils.h) routes bf16 matmul and conv to oneDNN only when these are present; without
/// them bf16 GEMM falls back to a scalar loop (measured 4 GFLOP/s against 125 for fp32 on an AVX2-only EPYC).</item>
/// <item><c>avx512_bf16</c> / <c>amx_bf16</c>: native bf16 dot products (oneDNN's avx512_core_bf16 and avx512_core_amx
/// kernels); only with them is bf16 faster than fp32 rather than merely not much slower.</item>
/// </list>
/// Whether bf16 pays off is finally measured, not inferred from these flags (<see cref="Precision"/>).</summary>
public sealed record CpuInfo(string Model, string Vendor, IReadOnlySet<string> Flags, string Source)
{
    /// <summary>The features that matter to Sudo's kernels, in the order <c>sudoml info</c> prints them.</summary>
    public static readonly IReadOnlyList<string> Reported =
        ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_tile", "amx_bf16"];

    public bool Has(string flag) => Flags.Contains(flag);

    /// <summary>oneDNN serves bf16 matmul/conv (libtorch's mkldnn_bf16_device_check: avx512bw, avx512vl, avx512dq).</summary>
    public bool OneDnnBf16 => Has("avx512bw") && Has("avx512vl") && Has("avx512dq");

    /// <summary>Hardware bf16 arithmetic: AVX512-BF16 or AMX-BF16.</summary>
    public bool NativeBf16 => Has("avx512_bf16") || Has("amx_bf16");

    /// <summary>Each reported feature with its presence, e.g. <c>avx2 avx512f -avx512_bf16</c>.</summary>
    public IReadOnlyDictionary<string, bool> Features => Reported.ToDictionary(f => f, Has);

    public string Summary => string.Join(" ", Reported.Select(f => Has(f) ? f : "-" + f));
}

public static class CpuFeatures
{
    private static CpuInfo? _cached;

    /// <summary>This machine's CPU: <c>/proc/cpuinfo</c> on Linux (the kernel's view, which drops features the
    /// OS does not enable), CPUID elsewhere.</summary>
    public static CpuInfo Detect()
    {
        if (_cached != null) return _cached;
        const string proc = "/proc/cpuinfo";
        CpuInfo? info = null;
        if (File.Exists(proc))
        {
            try
            {
                info = Parse(File.ReadAllText(proc), proc);
            }
            catch (InvalidDataException)
            {
                info = null;   // e.g. a non-x86 kernel format: fall back to CPUID below
            }
        }
        return _cached = info ?? FromCpuid();
    }

    /// <summary>Reads the first processor block of a Linux <c>/proc/cpuinfo</c> text (x86: <c>model name</c>,
    /// <c>vendor_id</c>, <c>flags</c>).</summary>
    public static CpuInfo Parse(string cpuinfo, string source = "/proc/cpuinfo")
    {
        string? model = null, vendor = null, flags = null;
        foreach (var raw in cpuinfo.Split('\n'))
        {
            var line = raw.TrimEnd('\r');
            if (line.Length == 0 && flags != null) break;   // end of the first processor's block
            var colon = line.IndexOf(':');
            if (colon < 0) continue;
            var key = line[..colon].Trim();
            var value = line[(colon + 1)..].Trim();
            if (key == "model name") model ??= value;
            else if (key == "vendor_id") vendor ??= value;
            else if (key == "flags") flags ??= value;
        }
        if (flags == null)
            throw new InvalidDataException($"{source}: no 'flags' line (expected an x86 Linux /proc/cpuinfo with model name, vendor_id and flags)");
        var set = flags.Split(' ', StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal);
        return new CpuInfo(model ?? "unknown", vendor ?? "unknown", set, source);
    }

    /// <summary>CPUID leaves 0, 1 and 7 (Intel SDM vol. 2A, CPUID): the same bits Linux reports as flags.
    /// .NET's IsSupported checks already include the OS's XSAVE enablement for AVX2/AVX-512.</summary>
    private static CpuInfo FromCpuid()
    {
        var flags = new HashSet<string>(StringComparer.Ordinal);
        var vendor = "unknown";
        var model = System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
        if (X86Base.IsSupported)
        {
            var (_, ebx, ecx, edx) = X86Base.CpuId(0, 0);
            vendor = string.Concat(new[] { ebx, edx, ecx }.SelectMany(BitConverter.GetBytes).Select(b => (char)b));
            if (Avx2.IsSupported) flags.Add("avx2");
            if (Fma.IsSupported) flags.Add("fma");
            if (Avx512F.IsSupported) flags.Add("avx512f");
            if (Avx512BW.IsSupported) flags.Add("avx512bw");
            if (Avx512DQ.IsSupported) flags.Add("avx512dq");
            if (Avx512F.VL.IsSupported) flags.Add("avx512vl");
            var (l71a, _, _, _) = X86Base.CpuId(7, 1);
            if (Avx512F.IsSupported && (l71a & (1 << 5)) != 0) flags.Add("avx512_bf16");
            var (_, _, _, l70d) = X86Base.CpuId(7, 0);
            if ((l70d & (1 << 24)) != 0) flags.Add("amx_tile");
            if ((l70d & (1 << 22)) != 0) flags.Add("amx_bf16");
            var brand = new List<byte>();
            var (maxExt, _, _, _) = X86Base.CpuId(unchecked((int)0x80000000), 0);
            if ((uint)maxExt >= 0x80000004)
                for (var leaf = 0x80000002u; leaf <= 0x80000004u; leaf++)
                {
                    var (a, b, c, d) = X86Base.CpuId(unchecked((int)leaf), 0);
                    foreach (var r in new[] { a, b, c, d }) brand.AddRange(BitConverter.GetBytes(r));
                }
            var name = System.Text.Encoding.ASCII.GetString(brand.ToArray()).TrimEnd('\0').Trim();
            if (name.Length > 0) model = name;
        }
        return new CpuInfo(model, vendor, flags, "cpuid");
    }
}
