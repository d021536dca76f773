// Element-wise math, reductions and shape ops.
#include "common.h"

using namespace sudo;

static at::Tensor unary(int32_t op, at::Tensor& a) {
  switch (op) {
    case SU_NEG: return a.neg();
    case SU_EXP: return a.exp();
    case SU_LOG: return a.log();
    case SU_SQRT: return a.sqrt();
    case SU_RSQRT: return a.rsqrt();
    case SU_SIN: return a.sin();
    case SU_COS: return a.cos();
    case SU_TANH: return a.tanh();
    case SU_SIGMOID: return a.sigmoid();
    case SU_ABS: return a.abs();
    case SU_RELU: return a.relu();
    case SU_SILU: return at::silu(a);
    case SU_GELU: return at::gelu(a, "none");
    case SU_GELU_TANH: return at::gelu(a, "tanh");
    case SU_LOGSIGMOID: return at::log_sigmoid(a);
    case SU_FLOOR: return a.floor();
    case SU_CEIL: return a.ceil();
    case SU_ROUND: return a.round();
    case SU_SIGN: return a.sign();
    case SU_SQUARE: return a.square();
    case SU_RECIPROCAL: return a.reciprocal();
    case SU_LOG1P: return a.log1p();
    case SU_EXPM1: return a.expm1();
    case SU_ERF: return a.erf();
    case SU_LOGICAL_NOT: return a.logical_not();
    case SU_ISNAN: return a.isnan();
    case SU_ISINF: return a.isinf();
    case SU_ISFINITE: return a.isfinite();
    case SU_ZERO_: return a.zero_();
    case SU_SQRT_: return a.sqrt_();
    case SU_NEG_: return a.neg_();
    case SU_EXP_: return a.exp_();
    case SU_LOG2: return a.log2();
    case SU_ATAN: return a.atan();
    case SU_TAN: return a.tan();
    case SU_ASIN: return a.asin();
    case SU_ACOS: return a.acos();
    default: throw std::invalid_argument("unknown unary op code " + std::to_string(op));
  }
}

static at::Tensor binary(int32_t op, at::Tensor& a, at::Tensor& b) {
  switch (op) {
    case SB_ADD: return a.add(b);
    case SB_SUB: return a.sub(b);
    case SB_MUL: return a.mul(b);
    case SB_DIV: return a.div(b);
    case SB_POW: return a.pow(b);
    case SB_EQ: return a.eq(b);
    case SB_NE: return a.ne(b);
    case SB_LT: return a.lt(b);
    case SB_LE: return a.le(b);
    case SB_GT: return a.gt(b);
    case SB_GE: return a.ge(b);
    case SB_MAXIMUM: return at::maximum(a, b);
    case SB_MINIMUM: return at::minimum(a, b);
    case SB_MATMUL: return a.matmul(b);
    case SB_BMM: return a.bmm(b);
    case SB_ATAN2: return a.atan2(b);
    case SB_LOGICAL_AND: return a.logical_and(b);
    case SB_LOGICAL_OR: return a.logical_or(b);
    case SB_REMAINDER: return a.remainder(b);
    case SB_FLOOR_DIVIDE: return a.div(b, "floor");
    case SB_ADD_: return a.add_(b);
    case SB_SUB_: return a.sub_(b);
    case SB_MUL_: return a.mul_(b);
    case SB_DIV_: return a.div_(b);
    case SB_COPY_: return a.copy_(b);
    case SB_MAXIMUM_INTO_: return at::maximum_out(a, a, b);
    default: throw std::invalid_argument("unknown binary op code " + std::to_string(op));
  }
}

static at::Tensor binary_scalar(int32_t op, at::Tensor& a, const at::Scalar& s) {
  switch (op) {
    case SS_ADD: return a.add(s);
    case SS_SUB: return a.sub(s);
    case SS_MUL: return a.mul(s);
    case SS_DIV: return a.div(s);
    case SS_POW: return a.pow(s);
    case SS_EQ: return a.eq(s);
    case SS_NE: return a.ne(s);
    case SS_LT: return a.lt(s);
    case SS_LE: return a.le(s);
    case SS_GT: return a.gt(s);
    case SS_GE: return a.ge(s);
    case SS_RSUB: return at::rsub(a, s);
    case SS_RDIV: return a.reciprocal().mul(s);
    case SS_RPOW: return at::pow(s, a);
    case SS_REMAINDER: return a.remainder(s);
    case SS_FMOD: return a.fmod(s);
    case SS_ADD_: return a.add_(s);
    case SS_SUB_: return a.sub_(s);
    case SS_MUL_: return a.mul_(s);
    case SS_DIV_: return a.div_(s);
    case SS_FILL_: return a.fill_(s);
    case SS_POW_: return a.pow_(s);
    default: throw std::invalid_argument("unknown scalar op code " + std::to_string(op));
  }
}

extern "C" {

// Each name comes from the enum constant itself (#x), so this table cannot drift from the codes.
#define SUDO_OP(prefix, x) case prefix##x: return #x;
const char* sudo_op_name(int32_t table, int32_t code) {
  switch (table) {
    case 0:
      switch (code) {
        SUDO_OP(SU_, NEG) SUDO_OP(SU_, EXP) SUDO_OP(SU_, LOG) SUDO_OP(SU_, SQRT) SUDO_OP(SU_, RSQRT) SUDO_OP(SU_, SIN)
        SUDO_OP(SU_, COS) SUDO_OP(SU_, TANH) SUDO_OP(SU_, SIGMOID) SUDO_OP(SU_, ABS) SUDO_OP(SU_, RELU) SUDO_OP(SU_, SILU)
        SUDO_OP(SU_, GELU) SUDO_OP(SU_, GELU_TANH) SUDO_OP(SU_, LOGSIGMOID) SUDO_OP(SU_, FLOOR) SUDO_OP(SU_, CEIL)
        SUDO_OP(SU_, ROUND) SUDO_OP(SU_, SIGN) SUDO_OP(SU_, SQUARE) SUDO_OP(SU_, RECIPROCAL) SUDO_OP(SU_, LOG1P)
        SUDO_OP(SU_, EXPM1) SUDO_OP(SU_, ERF) SUDO_OP(SU_, LOGICAL_NOT) SUDO_OP(SU_, ISNAN) SUDO_OP(SU_, ISINF)
        SUDO_OP(SU_, ISFINITE) SUDO_OP(SU_, ZERO_) SUDO_OP(SU_, SQRT_) SUDO_OP(SU_, NEG_) SUDO_OP(SU_, EXP_)
        SUDO_OP(SU_, LOG2) SUDO_OP(SU_, ATAN) SUDO_OP(SU_, TAN) SUDO_OP(SU_, ASIN) SUDO_OP(SU_, ACOS)
        default: return code >= 0 && code < SU_COUNT ? "?" : nullptr;
      }
    case 1:
      switch (code) {
        SUDO_OP(SB_, ADD) SUDO_OP(SB_, SUB) SUDO_OP(SB_, MUL) SUDO_OP(SB_, DIV) SUDO_OP(SB_, POW) SUDO_OP(SB_, EQ)
        SUDO_OP(SB_, NE) SUDO_OP(SB_, LT) SUDO_OP(SB_, LE) SUDO_OP(SB_, GT) SUDO_OP(SB_, GE) SUDO_OP(SB_, MAXIMUM)
        SUDO_OP(SB_, MINIMUM) SUDO_OP(SB_, MATMUL) SUDO_OP(SB_, BMM) SUDO_OP(SB_, ATAN2) SUDO_OP(SB_, LOGICAL_AND)
        SUDO_OP(SB_, LOGICAL_OR) SUDO_OP(SB_, REMAINDER) SUDO_OP(SB_, FLOOR_DIVIDE) SUDO_OP(SB_, ADD_) SUDO_OP(SB_, SUB_)
        SUDO_OP(SB_, MUL_) SUDO_OP(SB_, DIV_) SUDO_OP(SB_, COPY_) SUDO_OP(SB_, MAXIMUM_INTO_)
        default: return code >= 0 && code < SB_COUNT ? "?" : nullptr;
      }
    case 2:
      switch (code) {
        SUDO_OP(SS_, ADD) SUDO_OP(SS_, SUB) SUDO_OP(SS_, MUL) SUDO_OP(SS_, DIV) SUDO_OP(SS_, POW) SUDO_OP(SS_, EQ)
        SUDO_OP(SS_, NE) SUDO_OP(SS_, LT) SUDO_OP(SS_, LE) SUDO_OP(SS_, GT) SUDO_OP(SS_, GE) SUDO_OP(SS_, RSUB)
        SUDO_OP(SS_, RDIV) SUDO_OP(SS_, RPOW) SUDO_OP(SS_, REMAINDER) SUDO_OP(SS_, FMOD) SUDO_OP(SS_, ADD_)
        SUDO_OP(SS_, SUB_) SUDO_OP(SS_, MUL_) SUDO_OP(SS_, DIV_) SUDO_OP(SS_, FILL_) SUDO_OP(SS_, POW_)
        default: return code >= 0 && code < SS_COUNT ? "?" : nullptr;
      }
    case 3:
      switch (code) {
        SUDO_OP(SR_, SUM) SUDO_OP(SR_, MEAN) SUDO_OP(SR_, AMAX) SUDO_OP(SR_, AMIN) SUDO_OP(SR_, LOGSUMEXP)
        SUDO_OP(SR_, PROD) SUDO_OP(SR_, ALL) SUDO_OP(SR_, ANY)
        default: return code >= 0 && code < SR_COUNT ? "?" : nullptr;
      }
    default: return nullptr;
  }
}
#undef SUDO_OP

sudo_tensor sudo_unary(int32_t op, sudo_tensor a) { TRY_T(return wrap(unary(op, T(a)));) }
sudo_tensor sudo_binary(int32_t op, sudo_tensor a, sudo_tensor b) { TRY_T(return wrap(binary(op, T(a), T(b)));) }
sudo_tensor sudo_binary_scalar(int32_t op, sudo_tensor a, sudo_scalar s) {
  TRY_T(return wrap(binary_scalar(op, T(a), scalar(s)));)
}
sudo_tensor sudo_add_scaled(sudo_tensor a, sudo_tensor b, sudo_scalar alpha, int32_t inplace) {
  TRY_T(return wrap(inplace ? T(a).add_(T(b), scalar(alpha)) : T(a).add(T(b), scalar(alpha)));)
}
sudo_tensor sudo_addcmul(sudo_tensor self, sudo_tensor t1, sudo_tensor t2, sudo_scalar value, int32_t inplace) {
  TRY_T(return wrap(inplace ? T(self).addcmul_(T(t1), T(t2), scalar(value)) : T(self).addcmul(T(t1), T(t2), scalar(value)));)
}
sudo_tensor sudo_addcdiv(sudo_tensor self, sudo_tensor t1, sudo_tensor t2, sudo_scalar value, int32_t inplace) {
  TRY_T(return wrap(inplace ? T(self).addcdiv_(T(t1), T(t2), scalar(value)) : T(self).addcdiv(T(t1), T(t2), scalar(value)));)
}
sudo_tensor sudo_lerp(sudo_tensor self, sudo_tensor end, sudo_tensor weight_t, double weight, int32_t inplace) {
  TRY_T(
    auto& s = T(self);
    if (weight_t) return wrap(inplace ? s.lerp_(T(end), T(weight_t)) : s.lerp(T(end), T(weight_t)));
    return wrap(inplace ? s.lerp_(T(end), weight) : s.lerp(T(end), weight));)
}
sudo_tensor sudo_clamp(sudo_tensor a, int32_t has_min, double min, int32_t has_max, double max, int32_t inplace) {
  TRY_T(
    c10::optional<at::Scalar> lo = has_min ? c10::optional<at::Scalar>(min) : c10::nullopt;
    c10::optional<at::Scalar> hi = has_max ? c10::optional<at::Scalar>(max) : c10::nullopt;
    return wrap(inplace ? T(a).clamp_(lo, hi) : T(a).clamp(lo, hi));)
}
sudo_tensor sudo_clamp_t(sudo_tensor a, sudo_tensor min, sudo_tensor max) {
  TRY_T(c10::optional<at::Tensor> lo, hi; if (min) lo = T(min); if (max) hi = T(max); return wrap(T(a).clamp(lo, hi));)
}
sudo_tensor sudo_where(sudo_tensor cond, sudo_tensor a, sudo_tensor b) { TRY_T(return wrap(at::where(T(cond), T(a), T(b)));) }
sudo_tensor sudo_masked_fill(sudo_tensor a, sudo_tensor mask, sudo_scalar v, int32_t inplace) {
  TRY_T(return wrap(inplace ? T(a).masked_fill_(T(mask), scalar(v)) : T(a).masked_fill(T(mask), scalar(v)));)
}
sudo_tensor sudo_baddbmm(sudo_tensor self, sudo_tensor b1, sudo_tensor b2, double beta, double alpha) {
  TRY_T(return wrap(at::baddbmm(T(self), T(b1), T(b2), beta, alpha));)
}
sudo_tensor sudo_addmm(sudo_tensor self, sudo_tensor m1, sudo_tensor m2, double beta, double alpha) {
  TRY_T(return wrap(at::addmm(T(self), T(m1), T(m2), beta, alpha));)
}
sudo_tensor sudo_einsum(const char* eq, const sudo_tensor* ts, int32_t n) { TRY_T(return wrap(at::einsum(eq, list(ts, n)));) }
sudo_tensor sudo_softmax(sudo_tensor a, int64_t dim, int32_t dtype, int32_t log) {
  TRY_T(
    c10::optional<at::ScalarType> d = dtype < 0 ? c10::nullopt : c10::optional<at::ScalarType>(dt(dtype));
    return wrap(log ? at::log_softmax(T(a), dim, d) : at::softmax(T(a), dim, d));)
}
sudo_tensor sudo_softplus(sudo_tensor a, double beta, double threshold) { TRY_T(return wrap(at::softplus(T(a), beta, threshold));) }
sudo_tensor sudo_leaky_relu(sudo_tensor a, double slope) { TRY_T(return wrap(at::leaky_relu(T(a), slope));) }
sudo_tensor sudo_tril(sudo_tensor a, int64_t diagonal, int32_t upper) {
  TRY_T(return wrap(upper ? T(a).triu(diagonal) : T(a).tril(diagonal));)
}

// ---- reductions ----
sudo_tensor sudo_reduce(int32_t op, sudo_tensor a, const int64_t* dims, int32_t ndims, int32_t keepdim, int32_t dtype) {
  TRY_T(
    auto& x = T(a);
    c10::optional<at::ScalarType> d = dtype < 0 ? c10::nullopt : c10::optional<at::ScalarType>(dt(dtype));
    bool all = ndims == 0;
    std::vector<int64_t> alldims;
    if (all) for (int64_t i = 0; i < x.dim(); ++i) alldims.push_back(i);
    at::IntArrayRef ds = all ? at::IntArrayRef(alldims) : ints(dims, ndims);
    bool kd = keepdim != 0;
    switch (op) {
      case SR_SUM: return wrap(all && !kd ? x.sum(d) : x.sum(ds, kd, d));
      case SR_MEAN: return wrap(all && !kd ? x.mean(d) : x.mean(ds, kd, d));
      case SR_AMAX: return wrap(x.amax(ds, kd));
      case SR_AMIN: return wrap(x.amin(ds, kd));
      case SR_LOGSUMEXP: return wrap(x.logsumexp(ds, kd));
      case SR_PROD:
        if (all && !kd) return wrap(x.prod(d));
        if (ndims != 1) throw std::invalid_argument("prod reduces over one dim or all dims");
        return wrap(x.prod(dims[0], kd, d));
      case SR_ALL:
        if (all && !kd) return wrap(x.all());
        if (ndims != 1) throw std::invalid_argument("all reduces over one dim or all dims");
        return wrap(x.all(dims[0], kd));
      case SR_ANY:
        if (all && !kd) return wrap(x.any());
        if (ndims != 1) throw std::invalid_argument("any reduces over one dim or all dims");
        return wrap(x.any(dims[0], kd));
      default: throw std::invalid_argument("unknown reduction code " + std::to_string(op));
    })
}
sudo_tensor sudo_var_std(sudo_tensor a, const int64_t* dims, int32_t ndims, int64_t correction, int32_t keepdim, int32_t is_std) {
  TRY_T(
    at::OptionalIntArrayRef ds = ndims == 0 ? at::OptionalIntArrayRef() : at::OptionalIntArrayRef(ints(dims, ndims));
    c10::optional<int64_t> c = correction;
    return wrap(is_std ? at::std(T(a), ds, c, keepdim != 0) : at::var(T(a), ds, c, keepdim != 0));)
}
sudo_tensor sudo_norm(sudo_tensor a, double p, const int64_t* dims, int32_t ndims, int32_t keepdim) {
  TRY_T(
    if (ndims == 0 && !keepdim) return wrap(at::norm(T(a), p));
    std::vector<int64_t> alld;
    if (ndims == 0) for (int64_t i = 0; i < T(a).dim(); ++i) alld.push_back(i);
    return wrap(at::norm(T(a), p, ndims == 0 ? at::IntArrayRef(alld) : ints(dims, ndims), keepdim != 0));)
}
int32_t sudo_max_dim(sudo_tensor a, int64_t dim, int32_t keepdim, int32_t is_min, sudo_tensor* values, sudo_tensor* indices) {
  TRY_S(auto r = is_min ? at::min(T(a), dim, keepdim != 0) : at::max(T(a), dim, keepdim != 0);
        *values = wrap(std::get<0>(r)); *indices = wrap(std::get<1>(r));)
}
sudo_tensor sudo_max_all(sudo_tensor a, int32_t is_min) { TRY_T(return wrap(is_min ? T(a).min() : T(a).max());) }
sudo_tensor sudo_argmax(sudo_tensor a, int32_t has_dim, int64_t dim, int32_t keepdim, int32_t is_min) {
  TRY_T(c10::optional<int64_t> d = has_dim ? c10::optional<int64_t>(dim) : c10::nullopt;
        return wrap(is_min ? T(a).argmin(d, keepdim != 0) : T(a).argmax(d, keepdim != 0));)
}
sudo_tensor sudo_cumsum(sudo_tensor a, int64_t dim) { TRY_T(return wrap(T(a).cumsum(dim));) }
sudo_tensor sudo_cumprod(sudo_tensor a, int64_t dim) { TRY_T(return wrap(T(a).cumprod(dim));) }
int32_t sudo_sort(sudo_tensor a, int64_t dim, int32_t descending, sudo_tensor* values, sudo_tensor* indices) {
  TRY_S(auto r = T(a).sort(dim, descending != 0); *values = wrap(std::get<0>(r)); *indices = wrap(std::get<1>(r));)
}
int32_t sudo_allclose(sudo_tensor a, sudo_tensor b, double rtol, double atol, int32_t equal_nan) {
  try { return at::allclose(T(a), T(b), rtol, atol, equal_nan != 0) ? 1 : 0; } SUDO_CATCH return -1;
}
int32_t sudo_equal(sudo_tensor a, sudo_tensor b) {
  try { return at::equal(T(a), T(b)) ? 1 : 0; } SUDO_CATCH return -1;
}

// ---- shape ----
sudo_tensor sudo_view(sudo_tensor a, const int64_t* shape, int32_t ndim, int32_t reshape) {
  TRY_T(return wrap(reshape ? T(a).reshape(ints(shape, ndim)) : T(a).view(ints(shape, ndim)));)
}
sudo_tensor sudo_permute(sudo_tensor a, const int64_t* dims, int32_t ndim) { TRY_T(return wrap(T(a).permute(ints(dims, ndim)));) }
sudo_tensor sudo_transpose(sudo_tensor a, int64_t d0, int64_t d1) { TRY_T(return wrap(T(a).transpose(d0, d1));) }
sudo_tensor sudo_flatten(sudo_tensor a, int64_t start, int64_t end) { TRY_T(return wrap(T(a).flatten(start, end));) }
sudo_tensor sudo_squeeze(sudo_tensor a, int32_t has_dim, int64_t dim) {
  TRY_T(return wrap(has_dim ? T(a).squeeze(dim) : T(a).squeeze());)
}
sudo_tensor sudo_unsqueeze(sudo_tensor a, int64_t dim) { TRY_T(return wrap(T(a).unsqueeze(dim));) }
sudo_tensor sudo_cat(const sudo_tensor* ts, int32_t n, int64_t dim, int32_t stack) {
  TRY_T(auto v = list(ts, n); return wrap(stack ? at::stack(v, dim) : at::cat(v, dim));)
}
sudo_tensor sudo_narrow(sudo_tensor a, int64_t dim, int64_t start, int64_t length) { TRY_T(return wrap(T(a).narrow(dim, start, length));) }
sudo_tensor sudo_slice(sudo_tensor a, int64_t dim, int64_t start, int64_t end, int64_t step) {
  TRY_T(return wrap(T(a).slice(dim, start, end, step));)
}
sudo_tensor sudo_select(sudo_tensor a, int64_t dim, int64_t index) { TRY_T(return wrap(T(a).select(dim, index));) }
sudo_tensor sudo_index_select(sudo_tensor a, int64_t dim, sudo_tensor index) { TRY_T(return wrap(T(a).index_select(dim, T(index)));) }
sudo_tensor sudo_gather(sudo_tensor a, int64_t dim, sudo_tensor index) { TRY_T(return wrap(T(a).gather(dim, T(index)));) }
sudo_tensor sudo_scatter(sudo_tensor a, int64_t dim, sudo_tensor index, sudo_tensor src) {
  TRY_T(return wrap(T(a).scatter(dim, T(index), T(src)));)
}
sudo_tensor sudo_index_bool(sudo_tensor a, sudo_tensor mask) { TRY_T(return wrap(T(a).masked_select(T(mask)));) }
sudo_tensor sudo_expand(sudo_tensor a, const int64_t* shape, int32_t ndim) { TRY_T(return wrap(T(a).expand(ints(shape, ndim)));) }
sudo_tensor sudo_repeat(sudo_tensor a, const int64_t* reps, int32_t ndim) { TRY_T(return wrap(T(a).repeat(ints(reps, ndim)));) }
sudo_tensor sudo_repeat_interleave(sudo_tensor a, int64_t repeats, int64_t dim) {
  TRY_T(return wrap(T(a).repeat_interleave(repeats, dim));)
}
sudo_tensor sudo_flip(sudo_tensor a, const int64_t* dims, int32_t ndim) { TRY_T(return wrap(T(a).flip(ints(dims, ndim)));) }
sudo_tensor sudo_roll(sudo_tensor a, int64_t shift, int64_t dim) { TRY_T(return wrap(T(a).roll(shift, dim));) }
sudo_tensor sudo_pad(sudo_tensor a, const int64_t* pads, int32_t npads, int32_t mode, double value) {
  // mode: 0 constant, 1 reflect, 2 replicate, 3 circular (torch.nn.functional.pad semantics).
  TRY_T(
    auto p = ints(pads, npads);
    switch (mode) {
      case 0: return wrap(at::constant_pad_nd(T(a), p, value));
      case 1:
        if (npads == 2) return wrap(at::reflection_pad1d(T(a), p));
        if (npads == 4) return wrap(at::reflection_pad2d(T(a), p));
        return wrap(at::reflection_pad3d(T(a), p));
      case 2:
        if (npads == 2) return wrap(at::replication_pad1d(T(a), p));
        if (npads == 4) return wrap(at::replication_pad2d(T(a), p));
        return wrap(at::replication_pad3d(T(a), p));
      case 3: return wrap(at::_pad_circular(T(a), p));
      default: throw std::invalid_argument("unknown pad mode " + std::to_string(mode));
    })
}

}  // extern "C"
