namespace Sudo.Torch;

/// <summary>The torch.* namespace: creation, free functions, modes, threads and memory counters.</summary>
public static unsafe partial class torch
{
    static torch() => Library.EnsureLoaded();

    public const ScalarType float32 = ScalarType.Float32;
    public const ScalarType float16 = ScalarType.Float16;
    public const ScalarType bfloat16 = ScalarType.BFloat16;
    public const ScalarType float64 = ScalarType.Float64;
    public const ScalarType int64 = ScalarType.Int64;
    public const ScalarType int32 = ScalarType.Int32;
    public const ScalarType uint8 = ScalarType.UInt8;
    public const ScalarType @bool = ScalarType.Bool;

    [ThreadStatic] private static Device? _defaultDevice;
    [ThreadStatic] private static ScalarType? _defaultDtype;

    /// <summary>The device factories use when none is given (thread-local; cpu unless set).</summary>
    public static Device default_device => _defaultDevice ?? Device.CPU;
    public static ScalarType default_dtype => _defaultDtype ?? ScalarType.Float32;

    /// <summary>Within the returned scope, factories and new modules default to <paramref name="device"/>
    /// (e.g. "meta" to check full-size models by name and shape without memory).</summary>
    public static IDisposable device_scope(Device device) => new Restore<Device?>(ref _defaultDevice, device, v => _defaultDevice = v);
    public static IDisposable dtype_scope(ScalarType dtype) => new Restore<ScalarType?>(ref _defaultDtype, dtype, v => _defaultDtype = v);

    private sealed class Restore<T> : IDisposable
    {
        private readonly T _old;
        private readonly Action<T> _set;
        private bool _done;
        public Restore(ref T field, T value, Action<T> set)
        {
            _old = field;
            _set = set;
            field = value;
        }
        public void Dispose()
        {
            if (_done) return;
            _done = true;
            _set(_old);
        }
    }

    // ---- memory ----
    /// <summary>Native tensors currently alive (created and not yet freed), across threads.</summary>
    public static long live_tensors => Tensor.LiveCount;
    /// <summary>Tensors freed by the finalizer instead of Dispose/scopes: a leak indicator.</summary>
    public static long finalized_tensors => Tensor.FinalizedCount;
    public static DisposeScope NewDisposeScope() => new();

    // ---- library ----
    public static string __version__ => Native.Str(Native.sudo_torch_version());
    public static void manual_seed(long seed) => Native.CheckStatus(Native.sudo_manual_seed(seed), "manual_seed");

    /// <summary>The default CPU generator's state (dropout and other draws without an explicit generator).</summary>
    public static Tensor get_rng_state() => Tensor.Wrap(Native.sudo_generator_get_state(IntPtr.Zero), "get_rng_state");
    public static void set_rng_state(Tensor state) => Native.CheckStatus(Native.sudo_generator_set_state(IntPtr.Zero, state.Handle), "set_rng_state");
    public static int get_num_threads() => Native.sudo_get_num_threads();
    public static void set_num_threads(int n)
    {
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(n), "set_num_threads expects n ≥ 1");
        Native.CheckStatus(Native.sudo_set_num_threads(n), "set_num_threads");
    }
    /// <summary>OpenBLAS's own pool (fp32 matmul/linear); -1 when the BLAS offers no such control.</summary>
    public static int get_blas_threads() => Native.sudo_blas_get_num_threads();
    public static void set_blas_threads(int n)
    {
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(n), "set_blas_threads expects n ≥ 1");
        if (Native.sudo_blas_set_num_threads(n) != 0) throw new InvalidOperationException("the BLAS in use has no openblas_set_num_threads: " + Native.Str(Native.sudo_blas_info()));
    }

    public static class cuda
    {
        public static bool is_available() => Native.sudo_cuda_available() != 0;
        public static int device_count() => Native.sudo_cuda_device_count();
        public static void empty_cache() => Native.CheckStatus(Native.sudo_cuda_empty_cache(), "cuda.empty_cache");
        public static void synchronize(int device = 0) => Native.CheckStatus(Native.sudo_cuda_synchronize(device), "cuda.synchronize");
        public static long memory_allocated(int device = 0) => Native.sudo_cuda_memory_allocated(device);

        /// <summary>(allocated, peak allocated, reserved, peak reserved) bytes of the caching allocator on
        /// <paramref name="device"/> (torch.cuda.memory_allocated / max_memory_allocated / memory_reserved /
        /// max_memory_reserved); zeros on a build without CUDA.</summary>
        public static unsafe (long allocated, long max_allocated, long reserved, long max_reserved) memory_stats(int device = 0)
        {
            var o = stackalloc long[4];
            Native.CheckStatus(Native.sudo_cuda_memory_stats(device, o), "cuda.memory_stats");
            return (o[0], o[1], o[2], o[3]);
        }

        public static void reset_peak_memory_stats(int device = 0) => Native.CheckStatus(Native.sudo_cuda_reset_peak_memory_stats(device), "cuda.reset_peak_memory_stats");
    }

    /// <summary>The CPU caching allocator (core/native/src/allocator.cpp): blocks of 256 KiB and more are kept
    /// for reuse instead of being returned to the C library, so a steady loop does not page-fault on every
    /// step. On by default; SUDO_CPU_CACHE=0 at start-up leaves libtorch's own allocator in place.</summary>
    public static class cpu
    {
        public static bool caching_allocator_enabled { get { Library.EnsureLoaded(); return Native.sudo_cpu_cache_installed() != 0; } }

        /// <summary>Bytes in tensors (live), free blocks kept for reuse (cached), the live peak, and the
        /// cache's hits, misses and releases — blocks of ≥ 256 KiB only; zeros when the cache is off.</summary>
        public static unsafe CpuMemoryStats memory_stats()
        {
            Library.EnsureLoaded();
            var o = stackalloc long[6];
            Native.CheckStatus(Native.sudo_cpu_cache_stats(o), "cpu.memory_stats");
            return new CpuMemoryStats(o[0], o[1], o[2], o[3], o[4], o[5]);
        }

        /// <summary>Returns every cached free block to the C library (torch.cuda.empty_cache's CPU twin);
        /// <paramref name="reset_peak"/> also restarts the live peak, which bounds what the cache may keep.</summary>
        public static void empty_cache(bool reset_peak = false)
        {
            Library.EnsureLoaded();
            Native.CheckStatus(Native.sudo_cpu_cache_empty(reset_peak ? 1 : 0), "cpu.empty_cache");
        }
    }

    // ---- creation ----
    private static (ScalarType, Device) Resolve(ScalarType? dtype, Device? device) => (dtype ?? default_dtype, device ?? default_device);

    private static Tensor Finish(Tensor t, bool requiresGrad)
    {
        if (requiresGrad) t.requires_grad = true;
        return t;
    }

    public static Tensor empty(long[] shape, ScalarType? dtype = null, Device? device = null, bool requires_grad = false)
    {
        var (dt, dev) = Resolve(dtype, device);
        fixed (long* p = shape) return Finish(Tensor.Wrap(Native.sudo_empty(p, shape.Length, (int)dt, (int)dev.Type, dev.Index), "empty"), requires_grad);
    }

    public static Tensor full(long[] shape, Scalar value, ScalarType? dtype = null, Device? device = null, bool requires_grad = false)
    {
        var (dt, dev) = Resolve(dtype, device);
        fixed (long* p = shape) return Finish(Tensor.Wrap(Native.sudo_full(p, shape.Length, value.Value, (int)dt, (int)dev.Type, dev.Index), "full"), requires_grad);
    }

    public static Tensor zeros(long[] shape, ScalarType? dtype = null, Device? device = null, bool requires_grad = false) => full(shape, 0, dtype, device, requires_grad);
    public static Tensor ones(long[] shape, ScalarType? dtype = null, Device? device = null, bool requires_grad = false) => full(shape, 1, dtype, device, requires_grad);
    public static Tensor zeros(params long[] shape) => full(shape, 0);
    public static Tensor ones(params long[] shape) => full(shape, 1);
    public static Tensor empty_like(Tensor t, ScalarType? dtype = null) => empty(t.shape, dtype ?? t.dtype, t.device);
    public static Tensor zeros_like(Tensor t, ScalarType? dtype = null) => full(t.shape, 0, dtype ?? t.dtype, t.device);
    public static Tensor ones_like(Tensor t, ScalarType? dtype = null) => full(t.shape, 1, dtype ?? t.dtype, t.device);
    public static Tensor full_like(Tensor t, Scalar value, ScalarType? dtype = null) => full(t.shape, value, dtype ?? t.dtype, t.device);
    public static Tensor randn_like(Tensor t, Generator? generator = null) => randn(t.shape, generator, t.dtype, t.device);
    public static Tensor rand_like(Tensor t, Generator? generator = null) => rand(t.shape, generator, t.dtype, t.device);

    /// <summary>A 0-dim tensor holding <paramref name="value"/> (float32 for floating values, int64 for integers, as torch.tensor).</summary>
    public static Tensor scalar_tensor(Scalar value, ScalarType? dtype = null, Device? device = null)
    {
        var dt = dtype ?? (value.Value.Kind == 1 ? ScalarType.Int64 : value.Value.Kind == 2 ? ScalarType.Bool : default_dtype);
        var dev = device ?? default_device;
        return Tensor.Wrap(Native.sudo_scalar_tensor(value.Value, (int)dt, (int)dev.Type, dev.Index), "scalar_tensor");
    }

    public static Tensor arange(Scalar end, ScalarType? dtype = null, Device? device = null) => arange(0, end, 1, dtype, device);
    public static Tensor arange(Scalar start, Scalar end) => arange(start, end, 1);
    public static Tensor arange(Scalar start, Scalar end, Scalar step, ScalarType? dtype = null, Device? device = null)
    {
        var integral = start.IsIntegral && end.IsIntegral && step.IsIntegral;
        var dt = dtype ?? (integral ? ScalarType.Int64 : default_dtype);
        var dev = device ?? default_device;
        return Tensor.Wrap(Native.sudo_arange(start.Value, end.Value, step.Value, (int)dt, (int)dev.Type, dev.Index), "arange");
    }

    public static Tensor linspace(double start, double end, long steps, ScalarType? dtype = null, Device? device = null)
    {
        var (dt, dev) = Resolve(dtype, device);
        return Tensor.Wrap(Native.sudo_linspace(start, end, steps, (int)dt, (int)dev.Type, dev.Index), "linspace");
    }

    // The device-placement contract of every random draw: a generator draws on its own device; when the tensor is
    // wanted on another one, the values are drawn where the generator lives and moved (diffusers' randn_tensor does
    // the same), so a CPU generator gives the same numbers on every device and no caller can hand libtorch a
    // generator of the wrong device.
    internal static bool SameDevice(Device a, Device b) => a.Type == b.Type && (a.Index == b.Index || a.Index < 0 || b.Index < 0);

    private static Tensor Drawn(Generator? generator, Device dev, Func<Device, Tensor> draw)
    {
        if (generator is null || SameDevice(generator.Device, dev)) return draw(dev);
        using var there = draw(generator.Device);
        return there.to(dev);
    }

    public static Tensor randn(long[] shape, Generator? generator = null, ScalarType? dtype = null, Device? device = null, bool requires_grad = false)
    {
        var (dt, dev) = Resolve(dtype, device);
        return Finish(Drawn(generator, dev, d =>
        {
            fixed (long* p = shape)
                return Tensor.Wrap(Native.sudo_randn(p, shape.Length, Generator.HandleOf(generator), (int)dt, (int)d.Type, d.Index), "randn");
        }), requires_grad);
    }

    public static Tensor rand(long[] shape, Generator? generator = null, ScalarType? dtype = null, Device? device = null, bool requires_grad = false)
    {
        var (dt, dev) = Resolve(dtype, device);
        return Finish(Drawn(generator, dev, d =>
        {
            fixed (long* p = shape)
                return Tensor.Wrap(Native.sudo_rand(p, shape.Length, Generator.HandleOf(generator), (int)dt, (int)d.Type, d.Index), "rand");
        }), requires_grad);
    }

    /// <summary>Integers uniform in [low, high) (int64 by default).</summary>
    public static Tensor randint(long low, long high, long[] shape, Generator? generator = null, ScalarType? dtype = null, Device? device = null)
    {
        var dt = dtype ?? ScalarType.Int64;
        var dev = device ?? default_device;
        return Drawn(generator, dev, d =>
        {
            fixed (long* p = shape)
                return Tensor.Wrap(Native.sudo_randint(low, high, p, shape.Length, Generator.HandleOf(generator), (int)dt, (int)d.Type, d.Index), "randint");
        });
    }

    public static Tensor randperm(long n, Generator? generator = null, ScalarType? dtype = null, Device? device = null)
    {
        var dt = dtype ?? ScalarType.Int64;
        var dev = device ?? default_device;
        return Drawn(generator, dev, d => Tensor.Wrap(Native.sudo_randperm(n, Generator.HandleOf(generator), (int)dt, (int)d.Type, d.Index), "randperm"));
    }

    public static Tensor normal(double mean, double std, long[] shape, Generator? generator = null, ScalarType? dtype = null, Device? device = null)
    {
        var (dt, dev) = Resolve(dtype, device);
        return Drawn(generator, dev, d =>
        {
            fixed (long* p = shape)
                return Tensor.Wrap(Native.sudo_normal(mean, std, p, shape.Length, Generator.HandleOf(generator), (int)dt, (int)d.Type, d.Index), "normal");
        });
    }

    public static Tensor bernoulli(Tensor p, Generator? generator = null)
    {
        if (generator is null || SameDevice(generator.Device, p.device)) return Tensor.Wrap(Native.sudo_bernoulli(p.Handle, Generator.HandleOf(generator)), "bernoulli");
        using var there = p.to(generator.Device);
        using var drawn = bernoulli(there, generator);
        return drawn.to(p.device);
    }

    // ---- data in ----
    /// <summary>A tensor holding a copy of <paramref name="data"/> with the given shape (default: 1-D).
    /// Never aliases .NET memory.</summary>
    public static Tensor tensor<T>(ReadOnlySpan<T> data, long[]? shape = null, ScalarType? dtype = null, Device? device = null, bool requires_grad = false) where T : unmanaged
    {
        var src = DTypes.Of<T>();
        var shp = shape ?? [data.Length];
        long n = 1;
        foreach (var s in shp)
        {
            if (s < 0) throw new ArgumentException($"tensor: negative dimension in shape [{string.Join(", ", shp)}]");
            n *= s;
        }
        if (n != data.Length) throw new ArgumentException($"tensor: {data.Length} values do not fill shape [{string.Join(", ", shp)}] ({n} elements)");
        var dev = device ?? default_device;
        Tensor t;
        fixed (T* d = data)
        fixed (long* p = shp)
            t = Tensor.Wrap(Native.sudo_from_host(d, p, shp.Length, (int)src, (int)dev.Type, dev.Index), "tensor");
        if (dtype.HasValue && dtype.Value != src)
        {
            var c = t.to(dtype.Value);
            t.Dispose();
            t = c;
        }
        return Finish(t, requires_grad);
    }

    public static Tensor tensor<T>(T[] data, long[]? shape = null, ScalarType? dtype = null, Device? device = null, bool requires_grad = false) where T : unmanaged =>
        tensor((ReadOnlySpan<T>)data, shape, dtype, device, requires_grad);

    public static Tensor tensor(float[,] data) => tensor(data.Cast<float>().ToArray(), [data.GetLength(0), data.GetLength(1)]);
    public static Tensor tensor(double[,] data) => tensor(data.Cast<double>().ToArray(), [data.GetLength(0), data.GetLength(1)]);

    // ---- free functions ----
    private static Tensor Many(Tensor[] ts, Func<IntPtr, int, IntPtr> call, string op)
    {
        if (ts.Length == 0) throw new ArgumentException($"{op} expects at least one tensor");
        var hs = stackalloc IntPtr[ts.Length];
        for (var i = 0; i < ts.Length; i++) hs[i] = ts[i].Handle;
        return Tensor.Wrap(call((IntPtr)hs, ts.Length), op);
    }

    public static Tensor cat(Tensor[] ts, long dim = 0) => Many(ts, (h, n) => Native.sudo_cat((IntPtr*)h, n, dim, 0), "cat");
    public static Tensor stack(Tensor[] ts, long dim = 0) => Many(ts, (h, n) => Native.sudo_cat((IntPtr*)h, n, dim, 1), "stack");
    public static Tensor einsum(string equation, params Tensor[] ts) => Many(ts, (h, n) => Native.sudo_einsum(equation, (IntPtr*)h, n), "einsum");
    public static Tensor where(Tensor condition, Tensor a, Tensor b) => Tensor.Wrap(Native.sudo_where(condition.Handle, a.Handle, b.Handle), "where");
    public static Tensor matmul(Tensor a, Tensor b) => a.matmul(b);
    public static Tensor bmm(Tensor a, Tensor b) => a.bmm(b);

    /// <summary>beta·self + alpha·(b1 @ b2). With beta = 0, self must still hold initialised values:
    /// libtorch 1.13's CPU kernel can turn uninitialised memory into NaN.</summary>
    public static Tensor baddbmm(Tensor self, Tensor b1, Tensor b2, double beta = 1, double alpha = 1) =>
        Tensor.Wrap(Native.sudo_baddbmm(self.Handle, b1.Handle, b2.Handle, beta, alpha), "baddbmm");
    public static Tensor addmm(Tensor self, Tensor m1, Tensor m2, double beta = 1, double alpha = 1) =>
        Tensor.Wrap(Native.sudo_addmm(self.Handle, m1.Handle, m2.Handle, beta, alpha), "addmm");
    public static Tensor lerp(Tensor start, Tensor end, double weight) => start.lerp(end, weight);
    public static Tensor maximum(Tensor a, Tensor b) => a.maximum(b);
    public static Tensor minimum(Tensor a, Tensor b) => a.minimum(b);
    public static Tensor exp(Tensor a) => a.exp();
    public static Tensor log(Tensor a) => a.log();
    public static Tensor sqrt(Tensor a) => a.sqrt();
    public static Tensor rsqrt(Tensor a) => a.rsqrt();
    public static Tensor sin(Tensor a) => a.sin();
    public static Tensor cos(Tensor a) => a.cos();
    public static Tensor tanh(Tensor a) => a.tanh();
    public static Tensor sigmoid(Tensor a) => a.sigmoid();
    public static Tensor abs(Tensor a) => a.abs();
    public static Tensor pow(Tensor a, Scalar e) => a.pow(e);
    public static Tensor clamp(Tensor a, double? min = null, double? max = null) => a.clamp(min, max);
    public static Tensor softmax(Tensor a, long dim) => a.softmax(dim);
    public static Tensor log_softmax(Tensor a, long dim) => a.log_softmax(dim);
    public static Tensor logsumexp(Tensor a, long dim, bool keepdim = false) => a.logsumexp(dim, keepdim);
    public static Tensor flatten(Tensor a, long start_dim = 0, long end_dim = -1) => a.flatten(start_dim, end_dim);
    public static Tensor[] chunk(Tensor a, long chunks, long dim = 0) => a.chunk(chunks, dim);
    public static Tensor[] split(Tensor a, long size, long dim = 0) => a.split(size, dim);
    public static bool allclose(Tensor a, Tensor b, double rtol = 1e-5, double atol = 1e-8) => a.allclose(b, rtol, atol);
    public static Tensor tril(Tensor a, long diagonal = 0) => a.tril(diagonal);
    public static Tensor triu(Tensor a, long diagonal = 0) => a.triu(diagonal);

    // ---- grad modes (thread-local, as in libtorch) ----
    /// <summary>using (torch.no_grad()) { ... }: no graph is recorded inside.</summary>
    public static IDisposable no_grad() => new GradMode(false);
    public static IDisposable enable_grad() => new GradMode(true);
    public static IDisposable set_grad_enabled(bool on) => new GradMode(on);
    public static bool is_grad_enabled() => Native.sudo_grad_enabled() != 0;

    /// <summary>Inference mode: faster than no_grad, but its tensors can never be saved for backward or
    /// changed in place later (use no_grad for SPO's candidates and reward-model inputs).</summary>
    public static IDisposable inference_mode(bool on = true) => new InferenceMode(on);
    public static bool is_inference_mode_enabled() => Native.sudo_inference_mode_enabled() != 0;

    private sealed class GradMode : IDisposable
    {
        private readonly bool _prev;
        private bool _done;
        public GradMode(bool on)
        {
            Library.EnsureLoaded();
            _prev = Native.sudo_grad_enabled() != 0;
            Native.sudo_set_grad_enabled(on ? 1 : 0);
        }
        public void Dispose()
        {
            if (_done) return;
            _done = true;
            Native.sudo_set_grad_enabled(_prev ? 1 : 0);
        }
    }

    private sealed class InferenceMode : IDisposable
    {
        private IntPtr _guard;
        public InferenceMode(bool on)
        {
            Library.EnsureLoaded();
            _guard = Native.Check(Native.sudo_inference_mode_enter(on ? 1 : 0), "inference_mode");
        }
        public void Dispose()
        {
            var g = _guard;
            _guard = IntPtr.Zero;
            if (g != IntPtr.Zero) Native.sudo_inference_mode_exit(g);
        }
    }
}
