using System.Globalization;
using System.Text;

namespace Sudo.Torch;

/// <summary>A libtorch tensor. Owns one native handle, freed deterministically by <see cref="Dispose"/> or
/// by the innermost <see cref="DisposeScope"/> alive when it was created; the finalizer is a counted
/// backstop only (see <see cref="torch.finalized_tensors"/>).</summary>
public partial class Tensor : IDisposable
{
    private static long _live;
    private static long _finalized;
    private IntPtr _handle;

    internal DisposeScope? Owner;

    /// <summary>True for tensors that alias a memory-mapped file (safetensors.load with mmap).</summary>
    public bool IsMapped { get; internal set; }

    internal Tensor(IntPtr handle)
    {
        _handle = handle;
        Interlocked.Increment(ref _live);
        DisposeScope.Current?.Register(this);
    }

    /// <summary>Takes a new handle to the same native tensor (no scope registration), for Parameter.</summary>
    private protected Tensor(IntPtr handle, bool registerInScope)
    {
        _handle = handle;
        Interlocked.Increment(ref _live);
        if (registerInScope) DisposeScope.Current?.Register(this);
    }

    internal static long LiveCount => Interlocked.Read(ref _live);
    internal static long FinalizedCount => Interlocked.Read(ref _finalized);

    public bool IsDisposed => _handle == IntPtr.Zero;

    internal IntPtr Handle
    {
        get
        {
            var h = _handle;
            if (h == IntPtr.Zero) ThrowDisposed();
            return h;
        }
    }

    private static void ThrowDisposed() =>
        throw new ObjectDisposedException(nameof(Tensor), "this tensor was disposed (by Dispose() or by its DisposeScope); move it out with scope.MoveToOuter(t) to keep it");

    public void Dispose()
    {
        var h = Interlocked.Exchange(ref _handle, IntPtr.Zero);
        if (h != IntPtr.Zero)
        {
            Native.sudo_free(h);
            Interlocked.Decrement(ref _live);
        }
        GC.SuppressFinalize(this);
    }

    ~Tensor()
    {
        var h = Interlocked.Exchange(ref _handle, IntPtr.Zero);
        if (h != IntPtr.Zero)
        {
            Native.sudo_free(h);
            Interlocked.Decrement(ref _live);
            Interlocked.Increment(ref _finalized);
        }
    }

    internal static Tensor Wrap(IntPtr handle, string op) => new(Native.Check(handle, op));

    // ---- properties ----
    public unsafe long[] shape
    {
        get
        {
            var h = Handle;
            var n = (int)Native.sudo_dim(h);
            var s = new long[n];
            fixed (long* p = s) Native.CheckStatus(Native.sudo_sizes(h, p, n), "shape");
            return s;
        }
    }

    public unsafe long[] stride()
    {
        var h = Handle;
        var n = (int)Native.sudo_dim(h);
        var s = new long[n];
        fixed (long* p = s) Native.CheckStatus(Native.sudo_strides(h, p, n), "stride");
        return s;
    }

    public long size(int dim)
    {
        var s = shape;
        var d = dim < 0 ? dim + s.Length : dim;
        if (d < 0 || d >= s.Length) throw new ArgumentOutOfRangeException(nameof(dim), $"dim {dim} out of range for a {s.Length}-D tensor");
        return s[d];
    }

    public long dim() => Native.sudo_dim(Handle);
    public long numel() => Native.sudo_numel(Handle);
    public ScalarType dtype => (ScalarType)Native.sudo_dtype(Handle);

    public unsafe Device device
    {
        get
        {
            int t, i;
            Native.CheckStatus(Native.sudo_device(Handle, &t, &i), "device");
            return new Device((DeviceType)t, i);
        }
    }

    public bool is_leaf => Native.sudo_is_leaf(Handle) != 0;
    public bool is_contiguous() => Native.sudo_is_contiguous(Handle) != 0;
    public bool has_grad_fn => Native.sudo_has_grad_fn(Handle) != 0;
    public bool is_inference() => Native.sudo_is_inference(Handle) != 0;
    public bool is_floating_point() => dtype.IsFloatingPoint();

    public bool requires_grad
    {
        get => Native.sudo_requires_grad(Handle) != 0;
        set => Native.CheckStatus(Native.sudo_set_requires_grad(Handle, value ? 1 : 0), "requires_grad_");
    }

    public Tensor requires_grad_(bool on = true)
    {
        requires_grad = on;
        return this;
    }

    /// <summary>The accumulated gradient (a new handle in the current scope), or null.</summary>
    public unsafe Tensor? grad
    {
        get
        {
            IntPtr g;
            Native.CheckStatus(Native.sudo_grad(Handle, &g), "grad");
            return g == IntPtr.Zero ? null : new Tensor(g);
        }
        set => Native.CheckStatus(Native.sudo_set_grad(Handle, value?.Handle ?? IntPtr.Zero), "grad");
    }

    public void zero_grad(bool set_to_none = true) =>
        Native.CheckStatus(Native.sudo_zero_grad(Handle, set_to_none ? 1 : 0), "zero_grad");

    public void retain_grad() => Native.CheckStatus(Native.sudo_retain_grad(Handle), "retain_grad");

    /// <summary>Replaces this tensor's data (tensor.data = src), keeping its identity; modules use it
    /// to move parameters between devices and dtypes.</summary>
    public void set_data(Tensor src) => Native.CheckStatus(Native.sudo_set_data(Handle, src.Handle), "set_data");

    public bool shares_storage_with(Tensor other) => Native.sudo_same_storage(Handle, other.Handle) == 1;

    // ---- autograd ----
    public void backward(Tensor? gradient = null, bool retain_graph = false, bool create_graph = false) =>
        Native.CheckStatus(Native.sudo_backward(Handle, gradient?.Handle ?? IntPtr.Zero, retain_graph ? 1 : 0, create_graph ? 1 : 0), "backward");

    public Tensor detach() => Wrap(Native.sudo_detach(Handle), "detach");
    public Tensor clone() => Wrap(Native.sudo_clone(Handle), "clone");
    public Tensor contiguous() => Wrap(Native.sudo_contiguous(Handle), "contiguous");

    /// <summary>A second handle to the same tensor, owned by the current scope.</summary>
    public Tensor alias() => Wrap(Native.sudo_shallow_copy(Handle), "alias");

    // ---- conversion ----
    public Tensor to(ScalarType type, bool copy = false) => Wrap(Native.sudo_to(Handle, (int)type, -1, -1, copy ? 1 : 0), "to");
    public Tensor to(Device dev, bool copy = false) => Wrap(Native.sudo_to(Handle, -1, (int)dev.Type, dev.Index, copy ? 1 : 0), "to");
    public Tensor to(Device dev, ScalarType type, bool copy = false) => Wrap(Native.sudo_to(Handle, (int)type, (int)dev.Type, dev.Index, copy ? 1 : 0), "to");
    public Tensor to(Tensor other) => to(other.device, other.dtype);
    public Tensor cpu() => to(Device.CPU);
    public Tensor cuda(int index = 0) => to(Device.CUDA(index));
    public Tensor @float() => to(ScalarType.Float32);
    public Tensor @double() => to(ScalarType.Float64);
    public Tensor half() => to(ScalarType.Float16);
    public Tensor bfloat16() => to(ScalarType.BFloat16);
    public Tensor @long() => to(ScalarType.Int64);
    public Tensor @int() => to(ScalarType.Int32);
    public Tensor @bool() => to(ScalarType.Bool);

    // ---- data out ----
    public unsafe double item()
    {
        double d;
        long i;
        Native.CheckStatus(Native.sudo_item(Handle, &d, &i), "item");
        return d;
    }

    public unsafe T item<T>() where T : unmanaged
    {
        double d;
        long i;
        Native.CheckStatus(Native.sudo_item(Handle, &d, &i), "item");
        // Each branch boxed as its own type (a conditional with a natural type would box them all as one).
        object r = typeof(T) == typeof(long) ? (object)i
            : typeof(T) == typeof(int) ? (object)checked((int)i)
            : typeof(T) == typeof(bool) ? (object)(i != 0)
            : typeof(T) == typeof(float) ? (object)(float)d
            : typeof(T) == typeof(double) ? (object)d
            : throw new NotSupportedException($"item<{typeof(T).Name}> is not supported: use float, double, int, long or bool");
        return (T)r;
    }

    /// <summary>Copies the elements (converted to T's dtype, row-major) into <paramref name="dest"/>,
    /// whose length must equal numel().</summary>
    public unsafe void CopyTo<T>(Span<T> dest) where T : unmanaged
    {
        var dt = DTypes.Of<T>();
        var n = numel();
        if (dest.Length != n) throw new ArgumentException($"CopyTo: destination has {dest.Length} elements, the tensor has {n}");
        fixed (T* p = dest)
            Native.CheckStatus(Native.sudo_copy_to_host(Handle, p, (long)dest.Length * sizeof(T), (int)dt), "CopyTo");
    }

    public T[] ToArray<T>() where T : unmanaged
    {
        var a = new T[numel()];
        CopyTo<T>(a);
        return a;
    }

    public float[] data() => ToArray<float>();

    public override string ToString()
    {
        if (IsDisposed) return "tensor(<disposed>)";
        var sb = new StringBuilder("tensor(");
        var n = numel();
        var dev = device;
        if (n <= 16 && dev.Type != DeviceType.Meta)
        {
            var vals = ToArray<double>();
            sb.Append('[').Append(string.Join(", ", vals.Select(v => v.ToString("G6", CultureInfo.InvariantCulture)))).Append("], ");
        }
        sb.Append("shape=[").Append(string.Join(", ", shape)).Append("], dtype=").Append(dtype.TorchName());
        if (dev.Type != DeviceType.CPU) sb.Append(", device=").Append(dev);
        if (requires_grad) sb.Append(", requires_grad=True");
        return sb.Append(')').ToString();
    }
}

internal static class DTypes
{
    internal static ScalarType Of<T>() where T : unmanaged =>
        typeof(T) == typeof(float) ? ScalarType.Float32
        : typeof(T) == typeof(double) ? ScalarType.Float64
        : typeof(T) == typeof(long) ? ScalarType.Int64
        : typeof(T) == typeof(int) ? ScalarType.Int32
        : typeof(T) == typeof(short) ? ScalarType.Int16
        : typeof(T) == typeof(byte) ? ScalarType.UInt8
        : typeof(T) == typeof(sbyte) ? ScalarType.Int8
        : typeof(T) == typeof(bool) ? ScalarType.Bool
        : typeof(T) == typeof(Half) ? ScalarType.Float16
        : throw new NotSupportedException($"no tensor dtype for .NET type {typeof(T).Name}: use float, double, long, int, short, byte, sbyte, bool or Half");
}
