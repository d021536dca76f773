using System.Runtime.InteropServices;
using System.Text;

namespace Sudo.Torch;

/// <summary>One CUDA device: index, name, compute capability (8.0 and up compute bf16 natively; 9.0 is Hopper) and memory.</summary>
public sealed record CudaDeviceInfo(int Index, string Name, int Major, int Minor, long TotalMemoryBytes)
{
    public string ComputeCapability => $"{Major}.{Minor}";
    public bool NativeBf16 => Major >= 8;
}

/// <summary>Lists CUDA devices through the driver API (<c>libcuda.so.1</c>: cuInit, cuDeviceGetCount, cuDeviceGetName,
/// cuDeviceGetAttribute, cuDeviceTotalMem_v2), which every NVIDIA driver ships: it needs no CUDA headers at build time,
/// so the CPU build of the shim can report them too. An empty list where no driver or device is present.</summary>
public static unsafe class CudaDevices
{
    // CUdevice_attribute values from cuda.h.
    private const int AttrComputeCapabilityMajor = 75;
    private const int AttrComputeCapabilityMinor = 76;

    private static IReadOnlyList<CudaDeviceInfo>? _cached;

    public static IReadOnlyList<CudaDeviceInfo> List()
    {
        if (_cached != null) return _cached;
        var result = new List<CudaDeviceInfo>();
        if (!NativeLibrary.TryLoad("libcuda.so.1", out var lib)) return _cached = result;
        try
        {
            T? Fn<T>(string name) where T : Delegate =>
                NativeLibrary.TryGetExport(lib, name, out var p) ? Marshal.GetDelegateForFunctionPointer<T>(p) : null;
            var init = Fn<CuInit>("cuInit");
            var count = Fn<CuDeviceGetCount>("cuDeviceGetCount");
            var get = Fn<CuDeviceGet>("cuDeviceGet");
            var name = Fn<CuDeviceGetName>("cuDeviceGetName");
            var attr = Fn<CuDeviceGetAttribute>("cuDeviceGetAttribute");
            var mem = Fn<CuDeviceTotalMem>("cuDeviceTotalMem_v2");
            if (init == null || count == null || get == null || name == null || attr == null || init(0) != 0) return _cached = result;
            if (count(out var n) != 0) return _cached = result;
            for (var i = 0; i < n; i++)
            {
                if (get(out var dev, i) != 0) continue;
                var buf = new byte[256];
                string devName;
                fixed (byte* b = buf) devName = name(b, buf.Length, dev) == 0 ? Encoding.UTF8.GetString(buf).TrimEnd('\0') : "?";
                attr(out var major, AttrComputeCapabilityMajor, dev);
                attr(out var minor, AttrComputeCapabilityMinor, dev);
                long total = 0;
                if (mem != null && mem(out var bytes, dev) == 0) total = (long)bytes;
                result.Add(new CudaDeviceInfo(i, devName, major, minor, total));
            }
        }
        catch (Exception e) when (e is EntryPointNotFoundException or MarshalDirectiveException)
        {
            // An unusual driver library: report no devices rather than fail `sudoml info`.
        }
        return _cached = result;
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] private delegate int CuInit(uint flags);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] private delegate int CuDeviceGetCount(out int count);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] private delegate int CuDeviceGet(out int device, int ordinal);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] private delegate int CuDeviceGetName(byte* name, int len, int device);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] private delegate int CuDeviceGetAttribute(out int value, int attribute, int device);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] private delegate int CuDeviceTotalMem(out nuint bytes, int device);
}
