using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace Sudo.Torch;

/// <summary>What the loaded native library reports: versions, flavour, devices, threads, BLAS.</summary>
public sealed record LibraryInfo(
    string NativePath,
    int AbiVersion,
    string TorchVersion,
    string TorchLibrary,
    bool CudaCompiled,
    bool CudaAvailable,
    int CudaDevices,
    int TorchThreads,
    int BlasThreads,
    string Blas,
    bool FusedAttention,
    string ParallelInfo,
    CpuInfo Cpu,
    IReadOnlyList<CudaDeviceInfo> CudaDeviceList,
    bool OneDnnEnabled = true,
    string? CudaRuntime = null,
    string? Cudnn = null,
    string? Nccl = null)
{
    public string Flavour => CudaCompiled ? "CUDA" : "CPU";
}

/// <summary>Loads the native shim (next to this assembly, or $SUDO_NATIVE_LIB), checks that it matches
/// this binding and the libtorch it was built against, and owns the thread settings.</summary>
public static unsafe partial class Library
{
    private static readonly object Gate = new();
    private static bool _loaded;
    private static string _nativePath = "";

    internal static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (name != Native.Lib) return IntPtr.Zero;
        var file = FindNative();
        _nativePath = file;
        SetThreadPoolEnvironment();
        return NativeLibrary.Load(file);
    }

    /// <summary>Spin limits for the two thread pools, set (unless the user set them) before libgomp and
    /// OpenBLAS load and read them. By default an idle OpenMP worker spins ~300k iterations and an idle
    /// OpenBLAS thread 2^28 cycles, so with both pools sized to the cores each one's spinning steals the
    /// cores the other needs (a conv+attention fwd/bwd step went from 60 to 195 ms here). With short
    /// spins both pools can use every core: fp32 matmul 125 → 220 GFLOP/s at the same step time.</summary>
    public static readonly IReadOnlyDictionary<string, string> ThreadPoolEnvironment = new Dictionary<string, string>
    {
        ["GOMP_SPINCOUNT"] = "1000",
        ["OPENBLAS_THREAD_TIMEOUT"] = "4",
    };

    private static void SetThreadPoolEnvironment()
    {
        // Environment.SetEnvironmentVariable is invisible to native getenv on Linux: call libc's setenv.
        foreach (var (k, v) in ThreadPoolEnvironment)
            if (Environment.GetEnvironmentVariable(k) is null) _ = setenv(k, v, 0);
    }

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int setenv(string name, string value, int overwrite);

    private static string FindNative()
    {
        var env = Environment.GetEnvironmentVariable("SUDO_NATIVE_LIB");
        if (!string.IsNullOrEmpty(env))
        {
            if (!File.Exists(env)) throw new DllNotFoundException($"SUDO_NATIVE_LIB points to '{env}', which does not exist");
            return Path.GetFullPath(env);
        }
        var candidates = new List<string>();
        var asmDir = Path.GetDirectoryName(typeof(Library).Assembly.Location);
        if (!string.IsNullOrEmpty(asmDir)) candidates.Add(Path.Combine(asmDir, "libsudo_native.so"));
        candidates.Add(Path.Combine(AppContext.BaseDirectory, "libsudo_native.so"));
        foreach (var c in candidates)
            if (File.Exists(c)) return c;
        throw new DllNotFoundException(
            "libsudo_native.so not found (looked in: " + string.Join(", ", candidates) +
            "). Build it with `dotnet build` (which runs CMake on core/native) or point SUDO_NATIVE_LIB at it.");
    }

    /// <summary>Loads and checks the native library once; every entry point of the binding calls this.</summary>
    public static void EnsureLoaded()
    {
        if (_loaded) return;
        lock (Gate)
        {
            if (_loaded) return;
            CheckVersions();
            ApplyThreadDefaults();
            Native.sudo_set_checkpoint_release(&Autograd.ReleaseCallback);
            _loaded = true;
        }
    }

    /// <summary>The C# op enums against the shim's op tables, code by code (names compared without case and
    /// underscores): an op inserted in one table and not the other would otherwise run a different op silently.</summary>
    public static List<string> OpTableMismatches()
    {
        static string Norm(string n) => n.Replace("_", "").ToUpperInvariant();
        var problems = new List<string>();
        void Check<TEnum>(int table, string cTable) where TEnum : struct, Enum
        {
            var names = Enum.GetNames<TEnum>();
            for (var code = 0; code < names.Length; code++)
            {
                var c = Native.sudo_op_name(table, code);
                var cName = c == IntPtr.Zero ? null : System.Runtime.InteropServices.Marshal.PtrToStringUTF8(c);
                if (cName is null) problems.Add($"{typeof(TEnum).Name}.{names[code]} = {code} has no {cTable} op in the native library");
                else if (Norm(cName) != Norm(names[code])) problems.Add($"{typeof(TEnum).Name}.{names[code]} = {code} but the native library's {cTable} op {code} is {cTable}{cName}");
            }
            if (Native.sudo_op_name(table, names.Length) != IntPtr.Zero)
                problems.Add($"the native library's {cTable} table has more ops than {typeof(TEnum).Name} ({names.Length})");
        }
        Check<UnaryOp>(0, "SU_");
        Check<BinaryOp>(1, "SB_");
        Check<ScalarOp>(2, "SS_");
        Check<ReduceOp>(3, "SR_");
        return problems;
    }

    private static void CheckOpTables()
    {
        var problems = OpTableMismatches();
        if (problems.Count > 0)
            throw new InvalidOperationException($"the op tables of {_nativePath} (sudo_native.h) and Sudo.Torch (Tensor.Ops.cs) disagree:\n  " + string.Join("\n  ", problems));
    }

    private static void CheckVersions()
    {
        int abi;
        try
        {
            abi = Native.sudo_abi_version();
        }
        catch (EntryPointNotFoundException e)
        {
            throw new InvalidOperationException($"{_nativePath} is not a Sudo native library of this version: {e.Message}", e);
        }
        if (abi != Native.AbiVersion)
            throw new InvalidOperationException(
                $"native library {_nativePath} has C ABI version {abi} but Sudo.Torch expects {Native.AbiVersion}: rebuild with `dotnet build`");
        CheckOpTables();
        if (Environment.GetEnvironmentVariable("SUDO_SKIP_VERSION_CHECK") == "1") return;
        var built = Native.Str(Native.sudo_torch_version());
        var loaded = Native.Str(Native.sudo_torch_library_path());
        var builtDir = Native.Str(Native.sudo_build_torch_path());
        var m = MajorMinor().Match(built);
        if (!m.Success) throw new InvalidOperationException($"cannot parse the libtorch version '{built}' the native library was built with");
        var major = int.Parse(m.Groups[1].Value);
        if (major < 1 || (major == 1 && int.Parse(m.Groups[2].Value) < 13))
            throw new InvalidOperationException($"libtorch {built} is too old: Sudo needs libtorch ≥ 1.13");
        // The loaded libtorch must be the one the shim was compiled against: same version and directory.
        if (loaded.Length > 0)
        {
            var real = ResolveLink(loaded);
            var lm = SonameVersion().Match(Path.GetFileName(real));
            if (lm.Success && (lm.Groups[1].Value != m.Groups[1].Value || lm.Groups[2].Value != m.Groups[2].Value))
                throw new InvalidOperationException(
                    $"libtorch mismatch: the native library was built against libtorch {built} but loaded {real} " +
                    $"(version {lm.Groups[1].Value}.{lm.Groups[2].Value}). Rebuild (`dotnet build`) or set SUDO_SKIP_VERSION_CHECK=1 to bypass.");
            if (builtDir.Length > 0 && Directory.Exists(builtDir) &&
                !SameDirectory(Path.GetDirectoryName(loaded)!, builtDir) && !SameDirectory(Path.GetDirectoryName(real)!, builtDir))
                throw new InvalidOperationException(
                    $"libtorch mismatch: the native library was linked against {builtDir} but the process loaded {loaded}. " +
                    "Fix LD_LIBRARY_PATH, rebuild (`dotnet build`) or set SUDO_SKIP_VERSION_CHECK=1 to bypass.");
        }
    }

    private static string ResolveLink(string path)
    {
        try
        {
            var target = File.ResolveLinkTarget(path, returnFinalTarget: true);
            return target?.FullName ?? path;
        }
        catch (IOException)
        {
            return path;
        }
    }

    private static bool SameDirectory(string a, string b) =>
        string.Equals(Path.GetFullPath(a).TrimEnd('/'), Path.GetFullPath(b).TrimEnd('/'), StringComparison.Ordinal);

    [GeneratedRegex(@"^(\d+)\.(\d+)")]
    private static partial Regex MajorMinor();

    [GeneratedRegex(@"\.so\.(\d+)\.(\d+)")]
    private static partial Regex SonameVersion();

    /// <summary>Threads are owned together: libtorch's intra-op (OpenMP) pool and OpenBLAS's pool (fp32
    /// GEMM). With the short spin limits above, both default to all cores — the fastest combination
    /// measured on 2 cores; without them, oversubscribing both doubled step times. SUDO_TORCH_THREADS /
    /// SUDO_BLAS_THREADS (or OMP_NUM_THREADS / OPENBLAS_NUM_THREADS) override.</summary>
    private static void ApplyThreadDefaults()
    {
        var torchThreads = EnvInt("SUDO_TORCH_THREADS") ?? (Environment.GetEnvironmentVariable("OMP_NUM_THREADS") is null ? Environment.ProcessorCount : (int?)null);
        var blasThreads = EnvInt("SUDO_BLAS_THREADS") ?? (Environment.GetEnvironmentVariable("OPENBLAS_NUM_THREADS") is null ? Environment.ProcessorCount : (int?)null);
        if (torchThreads is int t) Native.CheckStatus(Native.sudo_set_num_threads(t), "set_num_threads");
        if (blasThreads is int b) Native.sudo_blas_set_num_threads(b);
        switch (Environment.GetEnvironmentVariable("SUDO_MKLDNN"))
        {
            case null or "" or "1": break;
            case "0": Native.sudo_backend_flag(0, 0); break;
            case var v: throw new ArgumentException($"SUDO_MKLDNN='{v}': expected 0 (oneDNN kernels off) or 1");
        }
        switch (Environment.GetEnvironmentVariable("SUDO_CPU_CACHE"))
        {
            case null or "" or "1": Native.CheckStatus(Native.sudo_cpu_cache_install(), "cpu caching allocator"); break;
            case "0": break;
            case var v: throw new ArgumentException($"SUDO_CPU_CACHE='{v}': expected 1 (caching CPU allocator, the default) or 0 (libtorch's own)");
        }
    }

    private static int? EnvInt(string name)
    {
        var v = Environment.GetEnvironmentVariable(name);
        if (string.IsNullOrWhiteSpace(v)) return null;
        if (!int.TryParse(v, out var n) || n < 1) throw new ArgumentException($"{name}='{v}': expected a positive integer");
        return n;
    }

    public static LibraryInfo Info()
    {
        EnsureLoaded();
        var v = new long[3];
        fixed (long* pv = v) Native.sudo_cuda_versions(pv);
        return new LibraryInfo(
            _nativePath,
            Native.sudo_abi_version(),
            Native.Str(Native.sudo_torch_version()),
            Native.Str(Native.sudo_torch_library_path()),
            Native.sudo_cuda_compiled() != 0,
            Native.sudo_cuda_available() != 0,
            Native.sudo_cuda_device_count(),
            Native.sudo_get_num_threads(),
            Native.sudo_blas_get_num_threads(),
            Native.Str(Native.sudo_blas_info()),
            Native.sudo_sdpa_fused_available() != 0,
            Native.Str(Native.sudo_parallel_info()),
            CpuFeatures.Detect(),
            CudaDevices.List(),
            torch.backends.mkldnn.enabled,
            v[0] > 0 ? $"{v[0] / 1000}.{v[0] % 1000 / 10}" : null,
            v[1] > 0 ? CudnnVersion(v[1]) : null,
            v[2] > 0 ? $"{v[2] / 10000}.{v[2] % 10000 / 100}.{v[2] % 100}" : null);
    }

    // cuDNN encodes major·10000 + minor·100 + patch from 9.0 on, major·1000 + minor·100 + patch before.
    private static string CudnnVersion(long v) =>
        v >= 90000 ? $"{v / 10000}.{v % 10000 / 100}.{v % 100}" : $"{v / 1000}.{v % 1000 / 100}.{v % 100}";

    public static string NativePath
    {
        get
        {
            EnsureLoaded();
            return _nativePath;
        }
    }
}
