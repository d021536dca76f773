// P/Invoke surface of core/native/src/sudo_native.h. Blittable arguments only; every result is
// checked by the caller (Check / CheckStatus) so a libtorch error becomes a TorchException.
using System.Runtime.InteropServices;

namespace Sudo.Torch;

[StructLayout(LayoutKind.Sequential)]
internal struct NativeScalar
{
    public double D;
    public long I;
    public int Kind;
}

internal static unsafe partial class Native
{
    internal const string Lib = "sudo_native";
    internal const int AbiVersion = 7;

    // Runs before the first P/Invoke of this assembly: resolve the shim next to the assembly (or
    // $SUDO_NATIVE_LIB), whichever host loaded us (dotnet test, the CLI, dotnet fsi).
    static Native() => NativeLibrary.SetDllImportResolver(typeof(Native).Assembly, Library.Resolve);

    [LibraryImport(Lib)] internal static partial int sudo_abi_version();
    [LibraryImport(Lib)] internal static partial IntPtr sudo_op_name(int table, int code);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_torch_version();
    [LibraryImport(Lib)] internal static partial IntPtr sudo_torch_library_path();
    [LibraryImport(Lib)] internal static partial IntPtr sudo_build_torch_path();
    [LibraryImport(Lib)] internal static partial int sudo_cuda_compiled();
    [LibraryImport(Lib)] internal static partial int sudo_cuda_available();
    [LibraryImport(Lib)] internal static partial int sudo_cuda_device_count();
    [LibraryImport(Lib)] internal static partial int sudo_cuda_empty_cache();
    [LibraryImport(Lib)] internal static partial int sudo_cuda_synchronize(int device);
    [LibraryImport(Lib)] internal static partial long sudo_cuda_memory_allocated(int device);
    [LibraryImport(Lib)] internal static partial int sudo_cuda_memory_stats(int device, long* out4);
    [LibraryImport(Lib)] internal static partial int sudo_cuda_reset_peak_memory_stats(int device);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_last_error();
    [LibraryImport(Lib)] internal static partial void sudo_clear_error();
    [LibraryImport(Lib)] internal static partial int sudo_set_num_threads(int n);
    [LibraryImport(Lib)] internal static partial int sudo_get_num_threads();
    [LibraryImport(Lib)] internal static partial int sudo_blas_set_num_threads(int n);
    [LibraryImport(Lib)] internal static partial int sudo_blas_get_num_threads();
    [LibraryImport(Lib)] internal static partial IntPtr sudo_blas_info();
    [LibraryImport(Lib)] internal static partial IntPtr sudo_parallel_info();
    [LibraryImport(Lib)] internal static partial int sudo_manual_seed(long seed);

    [LibraryImport(Lib)] internal static partial void sudo_free(IntPtr t);
    [LibraryImport(Lib)] internal static partial long sudo_dim(IntPtr t);
    [LibraryImport(Lib)] internal static partial int sudo_sizes(IntPtr t, long* outp, int cap);
    [LibraryImport(Lib)] internal static partial int sudo_strides(IntPtr t, long* outp, int cap);
    [LibraryImport(Lib)] internal static partial long sudo_numel(IntPtr t);
    [LibraryImport(Lib)] internal static partial int sudo_dtype(IntPtr t);
    [LibraryImport(Lib)] internal static partial int sudo_device(IntPtr t, int* type, int* index);
    [LibraryImport(Lib)] internal static partial int sudo_requires_grad(IntPtr t);
    [LibraryImport(Lib)] internal static partial int sudo_is_leaf(IntPtr t);
    [LibraryImport(Lib)] internal static partial int sudo_is_contiguous(IntPtr t);
    [LibraryImport(Lib)] internal static partial int sudo_has_grad_fn(IntPtr t);
    [LibraryImport(Lib)] internal static partial int sudo_item(IntPtr t, double* d, long* i);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_data_ptr(IntPtr t);
    [LibraryImport(Lib)] internal static partial int sudo_copy_to_host(IntPtr t, void* dst, long nbytes, int dtype);
    [LibraryImport(Lib)] internal static partial int sudo_set_requires_grad(IntPtr t, int on);
    [LibraryImport(Lib)] internal static partial int sudo_grad(IntPtr t, IntPtr* outp);
    [LibraryImport(Lib)] internal static partial int sudo_set_grad(IntPtr t, IntPtr g);
    [LibraryImport(Lib)] internal static partial int sudo_zero_grad(IntPtr t, int setToNone);
    [LibraryImport(Lib)] internal static partial int sudo_set_data(IntPtr t, IntPtr src);
    [LibraryImport(Lib)] internal static partial int sudo_retain_grad(IntPtr t);
    [LibraryImport(Lib)] internal static partial int sudo_same_storage(IntPtr a, IntPtr b);

    [LibraryImport(Lib)] internal static partial IntPtr sudo_shallow_copy(IntPtr t);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_from_host(void* data, long* shape, int ndim, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_scalar_tensor(NativeScalar s, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_empty(long* shape, int ndim, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_full(long* shape, int ndim, NativeScalar v, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_arange(NativeScalar start, NativeScalar end, NativeScalar step, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_linspace(double start, double end, long steps, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_randn(long* shape, int ndim, IntPtr gen, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_rand(long* shape, int ndim, IntPtr gen, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_randint(long low, long high, long* shape, int ndim, IntPtr gen, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_randperm(long n, IntPtr gen, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_normal(double mean, double std, long* shape, int ndim, IntPtr gen, int dtype, int devType, int devIndex);
    [LibraryImport(Lib)] internal static partial int sudo_normal_(IntPtr t, double mean, double std, IntPtr gen);
    [LibraryImport(Lib)] internal static partial int sudo_uniform_(IntPtr t, double from, double to, IntPtr gen);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_bernoulli(IntPtr p, IntPtr gen);

    [LibraryImport(Lib)] internal static partial IntPtr sudo_generator_new(int devType, int devIndex, long seed);
    [LibraryImport(Lib)] internal static partial void sudo_generator_free(IntPtr g);
    [LibraryImport(Lib)] internal static partial int sudo_generator_manual_seed(IntPtr g, long seed);
    [LibraryImport(Lib)] internal static partial long sudo_generator_initial_seed(IntPtr g);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_generator_get_state(IntPtr g);
    [LibraryImport(Lib)] internal static partial int sudo_generator_set_state(IntPtr g, IntPtr state);

    [LibraryImport(Lib)] internal static partial IntPtr sudo_to(IntPtr t, int dtype, int devType, int devIndex, int copy);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_contiguous(IntPtr t);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_clone(IntPtr t);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_detach(IntPtr t);

    [LibraryImport(Lib)] internal static partial IntPtr sudo_unary(int op, IntPtr a);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_binary(int op, IntPtr a, IntPtr b);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_binary_scalar(int op, IntPtr a, NativeScalar s);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_add_scaled(IntPtr a, IntPtr b, NativeScalar alpha, int inplace);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_addcmul(IntPtr self, IntPtr t1, IntPtr t2, NativeScalar value, int inplace);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_addcdiv(IntPtr self, IntPtr t1, IntPtr t2, NativeScalar value, int inplace);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_lerp(IntPtr self, IntPtr end, IntPtr weightT, double weight, int inplace);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_clamp(IntPtr a, int hasMin, double min, int hasMax, double max, int inplace);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_clamp_t(IntPtr a, IntPtr min, IntPtr max);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_where(IntPtr cond, IntPtr a, IntPtr b);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_masked_fill(IntPtr a, IntPtr mask, NativeScalar v, int inplace);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_baddbmm(IntPtr self, IntPtr b1, IntPtr b2, double beta, double alpha);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_addmm(IntPtr self, IntPtr m1, IntPtr m2, double beta, double alpha);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] internal static partial IntPtr sudo_einsum(string eq, IntPtr* ts, int n);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_softmax(IntPtr a, long dim, int dtype, int log);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_softplus(IntPtr a, double beta, double threshold);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_leaky_relu(IntPtr a, double slope);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_tril(IntPtr a, long diagonal, int upper);

    [LibraryImport(Lib)] internal static partial IntPtr sudo_reduce(int op, IntPtr a, long* dims, int ndims, int keepdim, int dtype);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_var_std(IntPtr a, long* dims, int ndims, long correction, int keepdim, int isStd);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_norm(IntPtr a, double p, long* dims, int ndims, int keepdim);
    [LibraryImport(Lib)] internal static partial int sudo_max_dim(IntPtr a, long dim, int keepdim, int isMin, IntPtr* values, IntPtr* indices);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_max_all(IntPtr a, int isMin);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_argmax(IntPtr a, int hasDim, long dim, int keepdim, int isMin);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_cumsum(IntPtr a, long dim);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_cumprod(IntPtr a, long dim);
    [LibraryImport(Lib)] internal static partial int sudo_sort(IntPtr a, long dim, int descending, IntPtr* values, IntPtr* indices);
    [LibraryImport(Lib)] internal static partial int sudo_allclose(IntPtr a, IntPtr b, double rtol, double atol, int equalNan);
    [LibraryImport(Lib)] internal static partial int sudo_equal(IntPtr a, IntPtr b);

    [LibraryImport(Lib)] internal static partial IntPtr sudo_view(IntPtr a, long* shape, int ndim, int reshape);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_permute(IntPtr a, long* dims, int ndim);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_transpose(IntPtr a, long d0, long d1);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_flatten(IntPtr a, long start, long end);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_squeeze(IntPtr a, int hasDim, long dim);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_unsqueeze(IntPtr a, long dim);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_cat(IntPtr* ts, int n, long dim, int stack);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_narrow(IntPtr a, long dim, long start, long length);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_slice(IntPtr a, long dim, long start, long end, long step);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_select(IntPtr a, long dim, long index);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_index_select(IntPtr a, long dim, IntPtr index);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_gather(IntPtr a, long dim, IntPtr index);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_scatter(IntPtr a, long dim, IntPtr index, IntPtr src);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_index_bool(IntPtr a, IntPtr mask);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_expand(IntPtr a, long* shape, int ndim);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_repeat(IntPtr a, long* reps, int ndim);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_repeat_interleave(IntPtr a, long repeats, long dim);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_flip(IntPtr a, long* dims, int ndim);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_roll(IntPtr a, long shift, long dim);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_pad(IntPtr a, long* pads, int npads, int mode, double value);

    [LibraryImport(Lib)] internal static partial IntPtr sudo_linear(IntPtr x, IntPtr w, IntPtr b);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_conv2d(IntPtr x, IntPtr w, IntPtr b, long* stride, long* padding, long* dilation, long groups);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_group_norm(IntPtr x, long groups, IntPtr w, IntPtr b, double eps);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_layer_norm(IntPtr x, long* shape, int ndim, IntPtr w, IntPtr b, double eps);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_dropout(IntPtr x, double p, int train);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_interpolate(IntPtr x, int mode, long outH, long outW, double scaleH, double scaleW, int alignCorners, int antialias);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_avg_pool2d(IntPtr x, long* kernel, long* stride, long* padding, int ceilMode, int countIncludePad);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_max_pool2d(IntPtr x, long* kernel, long* stride, long* padding, int ceilMode);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_mse_loss(IntPtr a, IntPtr b, int reduction);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_cross_entropy(IntPtr logits, IntPtr target, IntPtr weight, int reduction, long ignoreIndex, double labelSmoothing);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_embedding(IntPtr weight, IntPtr idx);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_sdpa(IntPtr q, IntPtr k, IntPtr v, IntPtr mask, double dropout, int isCausal, double scale);
    [LibraryImport(Lib)] internal static partial int sudo_sdpa_fused_available();

    [LibraryImport(Lib)] internal static partial int sudo_backward(IntPtr t, IntPtr grad, int retainGraph, int createGraph);
    [LibraryImport(Lib)] internal static partial int sudo_autograd_grad(IntPtr* outputs, int nout, IntPtr* inputs, int nin, IntPtr* gradOutputs, int retainGraph, int createGraph, int allowUnused, IntPtr* result);
    [LibraryImport(Lib)] internal static partial int sudo_grad_enabled();
    [LibraryImport(Lib)] internal static partial void sudo_set_grad_enabled(int on);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_inference_mode_enter(int on);
    [LibraryImport(Lib)] internal static partial void sudo_inference_mode_exit(IntPtr guard);
    [LibraryImport(Lib)] internal static partial int sudo_inference_mode_enabled();
    [LibraryImport(Lib)] internal static partial int sudo_is_inference(IntPtr t);
    [LibraryImport(Lib)] internal static partial void sudo_set_anomaly_enabled(int on);
    [LibraryImport(Lib)] internal static partial int sudo_anomaly_enabled();
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] internal static partial void sudo_set_callback_error(string msg);
    [LibraryImport(Lib)] internal static partial void sudo_set_checkpoint_release(delegate* unmanaged[Cdecl]<IntPtr, void> release);
    [LibraryImport(Lib)] internal static partial int sudo_checkpoint(delegate* unmanaged[Cdecl]<IntPtr, IntPtr*, int, IntPtr*, int, int*, int> fn, IntPtr ctx, IntPtr* inputs, int nInputs, IntPtr* parameters, int nParams, int preserveRng, IntPtr* outs, int cap, int* nout);

    [LibraryImport(Lib)] internal static partial int sudo_backend_flag(int which, int value);
    [LibraryImport(Lib)] internal static partial int sudo_profiler_start(int recordShapes);
    [LibraryImport(Lib)] internal static partial int sudo_cpu_cache_install();
    [LibraryImport(Lib)] internal static partial long sudo_sdpa_blocked_min_bytes(long set);
    [LibraryImport(Lib)] internal static partial int sudo_cpu_cache_installed();
    [LibraryImport(Lib)] internal static unsafe partial int sudo_cpu_cache_stats(long* out6);
    [LibraryImport(Lib)] internal static partial int sudo_cpu_cache_empty(int resetPeak);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] internal static partial int sudo_profiler_stop(string path);
    [LibraryImport(Lib)] internal static unsafe partial int sudo_cuda_versions(long* out3);
    [LibraryImport(Lib)] internal static partial int sudo_autocast_set(int devType, int enabled, int dtype);
    [LibraryImport(Lib)] internal static partial int sudo_autocast_enabled(int devType);
    [LibraryImport(Lib)] internal static partial int sudo_autocast_dtype(int devType);
    [LibraryImport(Lib)] internal static partial int sudo_autocast_nesting(int delta);

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] internal static partial IntPtr sudo_mmap_open(string path, long* size);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_mmap_data(IntPtr m);
    [LibraryImport(Lib)] internal static partial void sudo_mmap_close(IntPtr m);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_mmap_tensor(IntPtr m, long offset, long* shape, int ndim, int dtype);

    [LibraryImport(Lib)] internal static partial int sudo_foreach_zero_(IntPtr* ts, int n);
    [LibraryImport(Lib)] internal static partial IntPtr sudo_foreach_norm_sq_sum(IntPtr* ts, int n);
    [LibraryImport(Lib)] internal static partial int sudo_foreach_mul_scalar_(IntPtr* ts, int n, IntPtr scalar);

    // ---- distributed (distributed.cpp) ----
    [LibraryImport(Lib)] internal static partial int sudo_dist_available();
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial IntPtr sudo_pg_create(string master_addr, int master_port, int rank, int world_size, long timeout_ms, int backend, string prefix);
    [LibraryImport(Lib)] internal static partial void sudo_pg_free(IntPtr pg);
    [LibraryImport(Lib)] internal static partial int sudo_pg_set_timeout(IntPtr pg, long timeout_ms);
    [LibraryImport(Lib)] internal static partial int sudo_pg_allreduce(IntPtr pg, IntPtr* ts, int n, int op);
    [LibraryImport(Lib)] internal static partial int sudo_pg_broadcast(IntPtr pg, IntPtr* ts, int n, int root);
    [LibraryImport(Lib)] internal static partial int sudo_pg_allgather(IntPtr pg, IntPtr input, IntPtr* outputs);
    [LibraryImport(Lib)] internal static partial int sudo_pg_barrier(IntPtr pg);

    internal static string Str(IntPtr p) => Marshal.PtrToStringUTF8(p) ?? "";

    internal static string LastError()
    {
        var msg = Str(sudo_last_error());
        return msg.Length == 0 ? "(libtorch gave no message)" : msg.Trim();
    }

    /// <summary>Checks a tensor-returning call: NULL means libtorch raised.</summary>
    internal static IntPtr Check(IntPtr handle, string op)
    {
        if (handle == IntPtr.Zero) throw new TorchException(op, LastError());
        return handle;
    }

    internal static void CheckStatus(int status, string op)
    {
        if (status != 0) throw new TorchException(op, LastError());
    }
}
