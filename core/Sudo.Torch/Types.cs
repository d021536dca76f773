using System.Globalization;

namespace Sudo.Torch;

/// <summary>Element types; values are c10::ScalarType codes.</summary>
public enum ScalarType
{
    UInt8 = 0,
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    Float16 = 5,
    Float32 = 6,
    Float64 = 7,
    Bool = 11,
    BFloat16 = 15,
}

public static class ScalarTypeExtensions
{
    public static int ElementSize(this ScalarType t) => t switch
    {
        ScalarType.UInt8 or ScalarType.Int8 or ScalarType.Bool => 1,
        ScalarType.Int16 or ScalarType.Float16 or ScalarType.BFloat16 => 2,
        ScalarType.Int32 or ScalarType.Float32 => 4,
        ScalarType.Int64 or ScalarType.Float64 => 8,
        _ => throw new ArgumentException($"unsupported dtype {t}"),
    };

    public static bool IsFloatingPoint(this ScalarType t) =>
        t is ScalarType.Float16 or ScalarType.Float32 or ScalarType.Float64 or ScalarType.BFloat16;

    /// <summary>PyTorch's spelling: torch.float32, torch.bfloat16, ...</summary>
    public static string TorchName(this ScalarType t) => t switch
    {
        ScalarType.UInt8 => "torch.uint8",
        ScalarType.Int8 => "torch.int8",
        ScalarType.Int16 => "torch.int16",
        ScalarType.Int32 => "torch.int32",
        ScalarType.Int64 => "torch.int64",
        ScalarType.Float16 => "torch.float16",
        ScalarType.Float32 => "torch.float32",
        ScalarType.Float64 => "torch.float64",
        ScalarType.Bool => "torch.bool",
        ScalarType.BFloat16 => "torch.bfloat16",
        _ => t.ToString(),
    };
}

/// <summary>c10::DeviceType codes that Sudo uses.</summary>
public enum DeviceType
{
    CPU = 0,
    CUDA = 1,
    Meta = 14,
}

/// <summary>A device: "cpu", "cuda", "cuda:1", "meta".</summary>
public readonly record struct Device(DeviceType Type, int Index = -1)
{
    public static readonly Device CPU = new(DeviceType.CPU);
    public static readonly Device Meta = new(DeviceType.Meta);
    public static Device CUDA(int index = 0) => new(DeviceType.CUDA, index);

    public static Device Parse(string spec)
    {
        var s = spec.Trim().ToLowerInvariant();
        var parts = s.Split(':');
        if (parts.Length > 2) throw new ArgumentException($"bad device '{spec}': expected cpu, meta, cuda or cuda:N");
        var index = -1;
        if (parts.Length == 2 && !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out index))
            throw new ArgumentException($"bad device index in '{spec}': expected cuda:N with N ≥ 0");
        return parts[0] switch
        {
            "cpu" when parts.Length == 1 => CPU,
            "meta" when parts.Length == 1 => Meta,
            "cuda" => new Device(DeviceType.CUDA, parts.Length == 2 ? index : 0),
            _ => throw new ArgumentException($"unknown device '{spec}': expected cpu, meta, cuda or cuda:N"),
        };
    }

    public static implicit operator Device(string spec) => Parse(spec);

    public override string ToString() => Type switch
    {
        DeviceType.CPU => "cpu",
        DeviceType.Meta => "meta",
        DeviceType.CUDA => Index >= 0 ? $"cuda:{Index}" : "cuda",
        _ => $"{Type}:{Index}",
    };
}

/// <summary>A number passed to an op: integer, floating or bool, as PyTorch's Scalar.</summary>
public readonly struct Scalar
{
    internal readonly NativeScalar Value;

    private Scalar(double d, long i, int kind) => Value = new NativeScalar { D = d, I = i, Kind = kind };

    public static implicit operator Scalar(double d) => new(d, 0, 0);
    public static implicit operator Scalar(float d) => new(d, 0, 0);
    public static implicit operator Scalar(long i) => new(i, i, 1);
    public static implicit operator Scalar(int i) => new(i, i, 1);
    public static implicit operator Scalar(bool b) => new(b ? 1 : 0, b ? 1 : 0, 2);

    public bool IsIntegral => Value.Kind != 0;
    public double ToDouble() => Value.Kind == 0 ? Value.D : Value.I;
    public override string ToString() => Value.Kind == 0 ? Value.D.ToString(CultureInfo.InvariantCulture) : Value.I.ToString(CultureInfo.InvariantCulture);
}

/// <summary>A seedable random-number generator (torch.Generator). Every random op takes one, so a
/// sampler can give each image its own stream.</summary>
public sealed class Generator : IDisposable
{
    private IntPtr _handle;
    public Device Device { get; }

    public Generator(long seed = 67280421310721L, Device? device = null)
    {
        Library.EnsureLoaded();
        Device = device ?? Device.CPU;
        _handle = Native.Check(Native.sudo_generator_new((int)Device.Type, Device.Index, seed), "Generator");
    }

    internal IntPtr Handle => _handle != IntPtr.Zero ? _handle : throw new ObjectDisposedException(nameof(Generator), "the Generator was disposed");

    public Generator manual_seed(long seed)
    {
        Native.CheckStatus(Native.sudo_generator_manual_seed(Handle, seed), "Generator.manual_seed");
        return this;
    }

    public long initial_seed() => Native.sudo_generator_initial_seed(Handle);

    /// <summary>The generator's full state as a uint8 tensor (torch.Generator.get_state).</summary>
    public Tensor get_state() => new(Native.Check(Native.sudo_generator_get_state(Handle), "Generator.get_state"));

    public void set_state(Tensor state) =>
        Native.CheckStatus(Native.sudo_generator_set_state(Handle, state.Handle), "Generator.set_state");

    internal static IntPtr HandleOf(Generator? g) => g?.Handle ?? IntPtr.Zero;

    public void Dispose()
    {
        var h = Interlocked.Exchange(ref _handle, IntPtr.Zero);
        if (h != IntPtr.Zero) Native.sudo_generator_free(h);
        GC.SuppressFinalize(this);
    }

    ~Generator()
    {
        if (_handle != IntPtr.Zero) Native.sudo_generator_free(_handle);
    }
}
