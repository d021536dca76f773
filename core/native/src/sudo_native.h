// C ABI of the Sudo libtorch shim. Opaque handles; every entry point catches every C++ exception.
// Tensor-returning calls return NULL on error; int-returning calls return 0 on success, -1 on error.
// The error text (libtorch's what_without_backtrace) is kept per thread: sudo_last_error().
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SUDO_EXPORT __attribute__((visibility("default")))

// Bumped whenever a signature or an op code below changes; checked by the C# side at start-up.
#define SUDO_ABI_VERSION 7

typedef void* sudo_tensor;
typedef void* sudo_generator;
typedef void* sudo_mapping;

typedef struct {
  double d;
  int64_t i;
  int32_t kind;  // 0 = floating, 1 = integer, 2 = bool
} sudo_scalar;

// Unary op codes. The C# enums (Tensor.Ops.cs: UnaryOp, BinaryOp, ScalarOp, ReduceOp) mirror these tables; at start-up
// the binding compares every code's name with sudo_op_name, so an entry out of order fails loudly instead of running
// another op.
enum {
  SU_NEG = 0, SU_EXP, SU_LOG, SU_SQRT, SU_RSQRT, SU_SIN, SU_COS, SU_TANH, SU_SIGMOID, SU_ABS,
  SU_RELU, SU_SILU, SU_GELU, SU_GELU_TANH, SU_LOGSIGMOID, SU_FLOOR, SU_CEIL, SU_ROUND, SU_SIGN,
  SU_SQUARE, SU_RECIPROCAL, SU_LOG1P, SU_EXPM1, SU_ERF, SU_LOGICAL_NOT, SU_ISNAN, SU_ISINF,
  SU_ISFINITE, SU_ZERO_, SU_SQRT_, SU_NEG_, SU_EXP_, SU_LOG2, SU_ATAN, SU_TAN, SU_ASIN, SU_ACOS,
  SU_COUNT
};

// Binary (tensor, tensor) op codes; *_ codes are in place on the first operand.
enum {
  SB_ADD = 0, SB_SUB, SB_MUL, SB_DIV, SB_POW, SB_EQ, SB_NE, SB_LT, SB_LE, SB_GT, SB_GE,
  SB_MAXIMUM, SB_MINIMUM, SB_MATMUL, SB_BMM, SB_ATAN2, SB_LOGICAL_AND, SB_LOGICAL_OR,
  SB_REMAINDER, SB_FLOOR_DIVIDE, SB_ADD_, SB_SUB_, SB_MUL_, SB_DIV_, SB_COPY_, SB_MAXIMUM_INTO_,
  SB_COUNT
};

// Binary (tensor, scalar) op codes.
enum {
  SS_ADD = 0, SS_SUB, SS_MUL, SS_DIV, SS_POW, SS_EQ, SS_NE, SS_LT, SS_LE, SS_GT, SS_GE,
  SS_RSUB, SS_RDIV, SS_RPOW, SS_REMAINDER, SS_FMOD, SS_ADD_, SS_SUB_, SS_MUL_, SS_DIV_, SS_FILL_,
  SS_POW_, SS_COUNT
};

// Reductions over dims (ndims == 0 means all dims).
enum { SR_SUM = 0, SR_MEAN, SR_AMAX, SR_AMIN, SR_LOGSUMEXP, SR_PROD, SR_ALL, SR_ANY, SR_COUNT };

// ---- library -------------------------------------------------------------------------------
SUDO_EXPORT int32_t sudo_abi_version(void);
// The name of op `code` in op table `table` (0 unary SU_, 1 binary SB_, 2 scalar SS_, 3 reduction SR_) without its
// prefix (e.g. "GELU_TANH"), or NULL for a code past the table's end.
SUDO_EXPORT const char* sudo_op_name(int32_t table, int32_t code);
SUDO_EXPORT const char* sudo_torch_version(void);      // libtorch headers the shim was built with
SUDO_EXPORT const char* sudo_torch_library_path(void); // libtorch file actually loaded (dladdr)
SUDO_EXPORT const char* sudo_build_torch_path(void);   // libtorch directory the shim was linked against
SUDO_EXPORT int32_t sudo_cuda_compiled(void);
SUDO_EXPORT int32_t sudo_cuda_available(void);
SUDO_EXPORT int32_t sudo_cuda_device_count(void);
SUDO_EXPORT int32_t sudo_cuda_empty_cache(void);
SUDO_EXPORT int32_t sudo_cuda_synchronize(int32_t device);
SUDO_EXPORT int64_t sudo_cuda_memory_allocated(int32_t device);
SUDO_EXPORT int32_t sudo_cuda_memory_stats(int32_t device, int64_t* out);
SUDO_EXPORT int32_t sudo_cuda_reset_peak_memory_stats(int32_t device);
SUDO_EXPORT const char* sudo_last_error(void);
SUDO_EXPORT void sudo_clear_error(void);
SUDO_EXPORT int32_t sudo_set_num_threads(int32_t n);
SUDO_EXPORT int32_t sudo_get_num_threads(void);
// Backend switches (torch.backends.*): 0 mkldnn.enabled, 1 cuda.matmul.allow_tf32, 2 cudnn.allow_tf32,
// 3 cudnn.benchmark. value < 0 only reads; returns the setting after the call, or -1 on error.
SUDO_EXPORT int32_t sudo_backend_flag(int32_t which, int32_t value);
SUDO_EXPORT int32_t sudo_cuda_versions(int64_t* out);  // out[3]: CUDART, cuDNN, NCCL (0 = unknown/absent)
SUDO_EXPORT int32_t sudo_blas_set_num_threads(int32_t n);  // -1 when the BLAS has no such call
// libtorch's legacy (RecordFunction) CPU profiler; stop writes a per-op table (name, calls, total_us, self_us).
SUDO_EXPORT int32_t sudo_profiler_start(int32_t record_shapes);
SUDO_EXPORT int32_t sudo_profiler_stop(const char* path);
// The caching CPU allocator (allocator.cpp): install once; stats out[6] = live, cached, peak live bytes, hits,
// misses, releases; empty returns the free blocks to the C library.
SUDO_EXPORT int32_t sudo_cpu_cache_install(void);
// Blocked fp32 CPU attention (attention.cpp): the score size in bytes from which it is used; set < 0 only reads.
SUDO_EXPORT int64_t sudo_sdpa_blocked_min_bytes(int64_t set);
SUDO_EXPORT int32_t sudo_cpu_cache_installed(void);
SUDO_EXPORT int32_t sudo_cpu_cache_stats(int64_t* out);
SUDO_EXPORT int32_t sudo_cpu_cache_empty(int32_t reset_peak);
SUDO_EXPORT int32_t sudo_blas_get_num_threads(void);
SUDO_EXPORT const char* sudo_blas_info(void);
SUDO_EXPORT const char* sudo_parallel_info(void);
SUDO_EXPORT int32_t sudo_manual_seed(int64_t seed);
SUDO_EXPORT int32_t sudo_has_mkldnn_bf16(void);

// ---- distributed: c10d process groups (distributed.cpp) ---------------------------------------
typedef void* sudo_pg;
SUDO_EXPORT int32_t sudo_dist_available(void);  // bit 0: Gloo, bit 1: NCCL
// backend 0 = Gloo (CPU tensors), 1 = NCCL (CUDA tensors); rank 0 hosts the TCPStore at master_addr:master_port.
SUDO_EXPORT sudo_pg sudo_pg_create(const char* master_addr, int32_t master_port, int32_t rank, int32_t world_size,
                                   int64_t timeout_ms, int32_t backend, const char* prefix);
SUDO_EXPORT void sudo_pg_free(sudo_pg pg);
// The timeout of later collectives (the rendezvous used the one given at creation).
SUDO_EXPORT int32_t sudo_pg_set_timeout(sudo_pg pg, int64_t timeout_ms);
// op: 0 sum, 2 max, 3 min, 4 product (in place on every tensor)
SUDO_EXPORT int32_t sudo_pg_allreduce(sudo_pg pg, const sudo_tensor* ts, int32_t n, int32_t op);
SUDO_EXPORT int32_t sudo_pg_broadcast(sudo_pg pg, const sudo_tensor* ts, int32_t n, int32_t root);
// outputs: world_size new handles (same shape and dtype as input), in rank order
SUDO_EXPORT int32_t sudo_pg_allgather(sudo_pg pg, sudo_tensor input, sudo_tensor* outputs);
SUDO_EXPORT int32_t sudo_pg_barrier(sudo_pg pg);

// ---- tensors: lifetime and properties ---------------------------------------------------------
SUDO_EXPORT void sudo_free(sudo_tensor t);
SUDO_EXPORT int64_t sudo_dim(sudo_tensor t);
SUDO_EXPORT int32_t sudo_sizes(sudo_tensor t, int64_t* out, int32_t cap);
SUDO_EXPORT int32_t sudo_strides(sudo_tensor t, int64_t* out, int32_t cap);
SUDO_EXPORT int64_t sudo_numel(sudo_tensor t);
SUDO_EXPORT int32_t sudo_dtype(sudo_tensor t);
SUDO_EXPORT int32_t sudo_device(sudo_tensor t, int32_t* type, int32_t* index);
SUDO_EXPORT int32_t sudo_requires_grad(sudo_tensor t);
SUDO_EXPORT int32_t sudo_is_leaf(sudo_tensor t);
SUDO_EXPORT int32_t sudo_is_contiguous(sudo_tensor t);
SUDO_EXPORT int32_t sudo_defined(sudo_tensor t);
SUDO_EXPORT int32_t sudo_has_grad_fn(sudo_tensor t);
SUDO_EXPORT int32_t sudo_item(sudo_tensor t, double* d, int64_t* i);
SUDO_EXPORT void* sudo_data_ptr(sudo_tensor t);
SUDO_EXPORT int32_t sudo_copy_to_host(sudo_tensor t, void* dst, int64_t nbytes, int32_t dtype);
SUDO_EXPORT int32_t sudo_set_requires_grad(sudo_tensor t, int32_t on);
SUDO_EXPORT int32_t sudo_grad(sudo_tensor t, sudo_tensor* out);
SUDO_EXPORT int32_t sudo_set_grad(sudo_tensor t, sudo_tensor g);  // g may be NULL: clears
SUDO_EXPORT int32_t sudo_zero_grad(sudo_tensor t, int32_t set_to_none);
SUDO_EXPORT int32_t sudo_set_data(sudo_tensor t, sudo_tensor src);
SUDO_EXPORT int32_t sudo_retain_grad(sudo_tensor t);
SUDO_EXPORT int32_t sudo_same_storage(sudo_tensor a, sudo_tensor b);

// ---- creation --------------------------------------------------------------------------------
SUDO_EXPORT sudo_tensor sudo_shallow_copy(sudo_tensor t);  // a new handle to the same tensor
SUDO_EXPORT sudo_tensor sudo_from_host(const void* data, const int64_t* shape, int32_t ndim, int32_t dtype,
                                       int32_t dev_type, int32_t dev_index);
SUDO_EXPORT sudo_tensor sudo_scalar_tensor(sudo_scalar s, int32_t dtype, int32_t dev_type, int32_t dev_index);
SUDO_EXPORT sudo_tensor sudo_empty(const int64_t* shape, int32_t ndim, int32_t dtype, int32_t dev_type, int32_t dev_index);
SUDO_EXPORT sudo_tensor sudo_full(const int64_t* shape, int32_t ndim, sudo_scalar v, int32_t dtype, int32_t dev_type, int32_t dev_index);
SUDO_EXPORT sudo_tensor sudo_arange(sudo_scalar start, sudo_scalar end, sudo_scalar step, int32_t dtype, int32_t dev_type, int32_t dev_index);
SUDO_EXPORT sudo_tensor sudo_linspace(double start, double end, int64_t steps, int32_t dtype, int32_t dev_type, int32_t dev_index);
// Random creation: gen may be NULL (default generator of the device).
SUDO_EXPORT sudo_tensor sudo_randn(const int64_t* shape, int32_t ndim, sudo_generator gen, int32_t dtype, int32_t dev_type, int32_t dev_index);
SUDO_EXPORT sudo_tensor sudo_rand(const int64_t* shape, int32_t ndim, sudo_generator gen, int32_t dtype, int32_t dev_type, int32_t dev_index);
SUDO_EXPORT sudo_tensor sudo_randint(int64_t low, int64_t high, const int64_t* shape, int32_t ndim, sudo_generator gen, int32_t dtype, int32_t dev_type, int32_t dev_index);
SUDO_EXPORT sudo_tensor sudo_randperm(int64_t n, sudo_generator gen, int32_t dtype, int32_t dev_type, int32_t dev_index);
SUDO_EXPORT sudo_tensor sudo_normal(double mean, double std, const int64_t* shape, int32_t ndim, sudo_generator gen, int32_t dtype, int32_t dev_type, int32_t dev_index);
SUDO_EXPORT int32_t sudo_normal_(sudo_tensor t, double mean, double std, sudo_generator gen);
SUDO_EXPORT int32_t sudo_uniform_(sudo_tensor t, double from, double to, sudo_generator gen);
SUDO_EXPORT sudo_tensor sudo_bernoulli(sudo_tensor p, sudo_generator gen);

// ---- generators --------------------------------------------------------------------------------
SUDO_EXPORT sudo_generator sudo_generator_new(int32_t dev_type, int32_t dev_index, int64_t seed);
SUDO_EXPORT void sudo_generator_free(sudo_generator g);
SUDO_EXPORT int32_t sudo_generator_manual_seed(sudo_generator g, int64_t seed);
SUDO_EXPORT int64_t sudo_generator_initial_seed(sudo_generator g);
SUDO_EXPORT sudo_tensor sudo_generator_get_state(sudo_generator g);  // NULL gen = default CPU generator
SUDO_EXPORT int32_t sudo_generator_set_state(sudo_generator g, sudo_tensor state);

// ---- conversion -----------------------------------------------------------------------------
SUDO_EXPORT sudo_tensor sudo_to(sudo_tensor t, int32_t dtype, int32_t dev_type, int32_t dev_index, int32_t copy);
SUDO_EXPORT sudo_tensor sudo_contiguous(sudo_tensor t);
SUDO_EXPORT sudo_tensor sudo_clone(sudo_tensor t);
SUDO_EXPORT sudo_tensor sudo_detach(sudo_tensor t);

// ---- element-wise and linear algebra ----------------------------------------------------------
SUDO_EXPORT sudo_tensor sudo_unary(int32_t op, sudo_tensor a);
SUDO_EXPORT sudo_tensor sudo_binary(int32_t op, sudo_tensor a, sudo_tensor b);
SUDO_EXPORT sudo_tensor sudo_binary_scalar(int32_t op, sudo_tensor a, sudo_scalar s);
SUDO_EXPORT sudo_tensor sudo_add_scaled(sudo_tensor a, sudo_tensor b, sudo_scalar alpha, int32_t inplace);
SUDO_EXPORT sudo_tensor sudo_addcmul(sudo_tensor self, sudo_tensor t1, sudo_tensor t2, sudo_scalar value, int32_t inplace);
SUDO_EXPORT sudo_tensor sudo_addcdiv(sudo_tensor self, sudo_tensor t1, sudo_tensor t2, sudo_scalar value, int32_t inplace);
SUDO_EXPORT sudo_tensor sudo_lerp(sudo_tensor self, sudo_tensor end, sudo_tensor weight_t, double weight, int32_t inplace);
SUDO_EXPORT sudo_tensor sudo_clamp(sudo_tensor a, int32_t has_min, double min, int32_t has_max, double max, int32_t inplace);
SUDO_EXPORT sudo_tensor sudo_clamp_t(sudo_tensor a, sudo_tensor min, sudo_tensor max);
SUDO_EXPORT sudo_tensor sudo_where(sudo_tensor cond, sudo_tensor a, sudo_tensor b);
SUDO_EXPORT sudo_tensor sudo_masked_fill(sudo_tensor a, sudo_tensor mask, sudo_scalar v, int32_t inplace);
SUDO_EXPORT sudo_tensor sudo_baddbmm(sudo_tensor self, sudo_tensor b1, sudo_tensor b2, double beta, double alpha);
SUDO_EXPORT sudo_tensor sudo_addmm(sudo_tensor self, sudo_tensor m1, sudo_tensor m2, double beta, double alpha);
SUDO_EXPORT sudo_tensor sudo_einsum(const char* eq, const sudo_tensor* ts, int32_t n);
SUDO_EXPORT sudo_tensor sudo_softmax(sudo_tensor a, int64_t dim, int32_t dtype, int32_t log);  // dtype -1: keep
SUDO_EXPORT sudo_tensor sudo_softplus(sudo_tensor a, double beta, double threshold);
SUDO_EXPORT sudo_tensor sudo_leaky_relu(sudo_tensor a, double slope);
SUDO_EXPORT sudo_tensor sudo_tril(sudo_tensor a, int64_t diagonal, int32_t upper);

// ---- reductions ------------------------------------------------------------------------------
SUDO_EXPORT sudo_tensor sudo_reduce(int32_t op, sudo_tensor a, const int64_t* dims, int32_t ndims, int32_t keepdim, int32_t dtype);
SUDO_EXPORT sudo_tensor sudo_var_std(sudo_tensor a, const int64_t* dims, int32_t ndims, int64_t correction, int32_t keepdim, int32_t is_std);
SUDO_EXPORT sudo_tensor sudo_norm(sudo_tensor a, double p, const int64_t* dims, int32_t ndims, int32_t keepdim);
SUDO_EXPORT int32_t sudo_max_dim(sudo_tensor a, int64_t dim, int32_t keepdim, int32_t is_min, sudo_tensor* values, sudo_tensor* indices);
SUDO_EXPORT sudo_tensor sudo_max_all(sudo_tensor a, int32_t is_min);
SUDO_EXPORT sudo_tensor sudo_argmax(sudo_tensor a, int32_t has_dim, int64_t dim, int32_t keepdim, int32_t is_min);
SUDO_EXPORT sudo_tensor sudo_cumsum(sudo_tensor a, int64_t dim);
SUDO_EXPORT sudo_tensor sudo_cumprod(sudo_tensor a, int64_t dim);
SUDO_EXPORT int32_t sudo_sort(sudo_tensor a, int64_t dim, int32_t descending, sudo_tensor* values, sudo_tensor* indices);
SUDO_EXPORT int32_t sudo_allclose(sudo_tensor a, sudo_tensor b, double rtol, double atol, int32_t equal_nan);
SUDO_EXPORT int32_t sudo_equal(sudo_tensor a, sudo_tensor b);

// ---- shape ----------------------------------------------------------------------------------
SUDO_EXPORT sudo_tensor sudo_view(sudo_tensor a, const int64_t* shape, int32_t ndim, int32_t reshape);
SUDO_EXPORT sudo_tensor sudo_permute(sudo_tensor a, const int64_t* dims, int32_t ndim);
SUDO_EXPORT sudo_tensor sudo_transpose(sudo_tensor a, int64_t d0, int64_t d1);
SUDO_EXPORT sudo_tensor sudo_flatten(sudo_tensor a, int64_t start, int64_t end);
SUDO_EXPORT sudo_tensor sudo_squeeze(sudo_tensor a, int32_t has_dim, int64_t dim);
SUDO_EXPORT sudo_tensor sudo_unsqueeze(sudo_tensor a, int64_t dim);
SUDO_EXPORT sudo_tensor sudo_cat(const sudo_tensor* ts, int32_t n, int64_t dim, int32_t stack);
SUDO_EXPORT sudo_tensor sudo_narrow(sudo_tensor a, int64_t dim, int64_t start, int64_t length);
SUDO_EXPORT sudo_tensor sudo_slice(sudo_tensor a, int64_t dim, int64_t start, int64_t end, int64_t step);
SUDO_EXPORT sudo_tensor sudo_select(sudo_tensor a, int64_t dim, int64_t index);
SUDO_EXPORT sudo_tensor sudo_index_select(sudo_tensor a, int64_t dim, sudo_tensor index);
SUDO_EXPORT sudo_tensor sudo_gather(sudo_tensor a, int64_t dim, sudo_tensor index);
SUDO_EXPORT sudo_tensor sudo_scatter(sudo_tensor a, int64_t dim, sudo_tensor index, sudo_tensor src);
SUDO_EXPORT sudo_tensor sudo_index_bool(sudo_tensor a, sudo_tensor mask);
SUDO_EXPORT sudo_tensor sudo_expand(sudo_tensor a, const int64_t* shape, int32_t ndim);
SUDO_EXPORT sudo_tensor sudo_repeat(sudo_tensor a, const int64_t* reps, int32_t ndim);
SUDO_EXPORT sudo_tensor sudo_repeat_interleave(sudo_tensor a, int64_t repeats, int64_t dim);
SUDO_EXPORT sudo_tensor sudo_flip(sudo_tensor a, const int64_t* dims, int32_t ndim);
SUDO_EXPORT sudo_tensor sudo_roll(sudo_tensor a, int64_t shift, int64_t dim);
SUDO_EXPORT sudo_tensor sudo_pad(sudo_tensor a, const int64_t* pads, int32_t npads, int32_t mode, double value);

// ---- nn.functional --------------------------------------------------------------------------
SUDO_EXPORT sudo_tensor sudo_linear(sudo_tensor x, sudo_tensor w, sudo_tensor b);
SUDO_EXPORT sudo_tensor sudo_conv2d(sudo_tensor x, sudo_tensor w, sudo_tensor b, const int64_t* stride,
                                    const int64_t* padding, const int64_t* dilation, int64_t groups);
SUDO_EXPORT sudo_tensor sudo_group_norm(sudo_tensor x, int64_t groups, sudo_tensor w, sudo_tensor b, double eps);
SUDO_EXPORT sudo_tensor sudo_layer_norm(sudo_tensor x, const int64_t* shape, int32_t ndim, sudo_tensor w, sudo_tensor b, double eps);
SUDO_EXPORT sudo_tensor sudo_dropout(sudo_tensor x, double p, int32_t train);
// mode: 0 nearest, 1 bilinear, 2 bicubic, 3 nearest-exact. size or scale (h, w); align_corners < 0 = unset.
SUDO_EXPORT sudo_tensor sudo_interpolate(sudo_tensor x, int32_t mode, int64_t out_h, int64_t out_w,
                                         double scale_h, double scale_w, int32_t align_corners, int32_t antialias);
SUDO_EXPORT sudo_tensor sudo_avg_pool2d(sudo_tensor x, const int64_t* kernel, const int64_t* stride,
                                        const int64_t* padding, int32_t ceil_mode, int32_t count_include_pad);
SUDO_EXPORT sudo_tensor sudo_max_pool2d(sudo_tensor x, const int64_t* kernel, const int64_t* stride,
                                        const int64_t* padding, int32_t ceil_mode);
SUDO_EXPORT sudo_tensor sudo_mse_loss(sudo_tensor a, sudo_tensor b, int32_t reduction);  // 0 none, 1 mean, 2 sum
SUDO_EXPORT sudo_tensor sudo_cross_entropy(sudo_tensor logits, sudo_tensor target, sudo_tensor weight,
                                           int32_t reduction, int64_t ignore_index, double label_smoothing);
SUDO_EXPORT sudo_tensor sudo_embedding(sudo_tensor weight, sudo_tensor idx);
SUDO_EXPORT sudo_tensor sudo_sdpa(sudo_tensor q, sudo_tensor k, sudo_tensor v, sudo_tensor mask,
                                  double dropout, int32_t is_causal, double scale);  // scale <= 0: 1/sqrt(d)
SUDO_EXPORT int32_t sudo_sdpa_fused_available(void);

// ---- autograd ---------------------------------------------------------------------------------
SUDO_EXPORT int32_t sudo_backward(sudo_tensor t, sudo_tensor grad, int32_t retain_graph, int32_t create_graph);
SUDO_EXPORT int32_t sudo_autograd_grad(const sudo_tensor* outputs, int32_t nout, const sudo_tensor* inputs, int32_t nin,
                                       const sudo_tensor* grad_outputs, int32_t retain_graph, int32_t create_graph,
                                       int32_t allow_unused, sudo_tensor* result);
SUDO_EXPORT int32_t sudo_grad_enabled(void);
SUDO_EXPORT void sudo_set_grad_enabled(int32_t on);
SUDO_EXPORT void* sudo_inference_mode_enter(int32_t on);
SUDO_EXPORT void sudo_inference_mode_exit(void* guard);
SUDO_EXPORT int32_t sudo_inference_mode_enabled(void);
SUDO_EXPORT int32_t sudo_is_inference(sudo_tensor t);
SUDO_EXPORT void sudo_set_anomaly_enabled(int32_t on);
SUDO_EXPORT int32_t sudo_anomaly_enabled(void);

// Checkpoint callback: given n detached inputs, writes the block's outputs (new handles owned by the
// shim afterwards) into outs (capacity cap) and their count into nout. Returns 0, or -1 with a message
// written through sudo_set_callback_error.
typedef int32_t (*sudo_block_fn)(void* ctx, const sudo_tensor* inputs, int32_t n, sudo_tensor* outs, int32_t cap, int32_t* nout);
SUDO_EXPORT void sudo_set_callback_error(const char* msg);
// Called (once) with ctx when the shim no longer needs it: after the block ran without a graph, or when
// the graph that holds the checkpoint node is freed.
SUDO_EXPORT void sudo_set_checkpoint_release(void (*release)(void*));
// Runs fn without grad; in backward re-runs it with grad enabled. Tensors [0, n_inputs) are the block's
// inputs, [n_inputs, n_inputs + n_params) the trainable weights used inside (so a frozen input still
// yields weight gradients). Writes the outputs into outs.
SUDO_EXPORT int32_t sudo_checkpoint(sudo_block_fn fn, void* ctx, const sudo_tensor* inputs, int32_t n_inputs,
                                    const sudo_tensor* params, int32_t n_params, int32_t preserve_rng,
                                    sudo_tensor* outs, int32_t cap, int32_t* nout);

// ---- autocast -----------------------------------------------------------------------------
SUDO_EXPORT int32_t sudo_autocast_set(int32_t dev_type, int32_t enabled, int32_t dtype);
SUDO_EXPORT int32_t sudo_autocast_enabled(int32_t dev_type);
SUDO_EXPORT int32_t sudo_autocast_dtype(int32_t dev_type);
SUDO_EXPORT int32_t sudo_autocast_nesting(int32_t delta);  // +1 enter, -1 exit (clears the cache at 0)

// ---- memory-mapped files (safetensors) -----------------------------------------------------
SUDO_EXPORT sudo_mapping sudo_mmap_open(const char* path, int64_t* size);
SUDO_EXPORT const void* sudo_mmap_data(sudo_mapping m);
SUDO_EXPORT void sudo_mmap_close(sudo_mapping m);  // tensors made from it keep the mapping alive
SUDO_EXPORT sudo_tensor sudo_mmap_tensor(sudo_mapping m, int64_t offset, const int64_t* shape, int32_t ndim, int32_t dtype);

// ---- foreach (fewer calls per optimizer step) ----------------------------------------------
SUDO_EXPORT int32_t sudo_foreach_zero_(const sudo_tensor* ts, int32_t n);
SUDO_EXPORT sudo_tensor sudo_foreach_norm_sq_sum(const sudo_tensor* ts, int32_t n);  // sum_i ||t_i||^2 in fp32
SUDO_EXPORT int32_t sudo_foreach_mul_scalar_(const sudo_tensor* ts, int32_t n, sudo_tensor scalar);

#ifdef __cplusplus
}
#endif
