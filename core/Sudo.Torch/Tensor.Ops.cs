namespace Sudo.Torch;

internal enum UnaryOp
{
    Neg, Exp, Log, Sqrt, Rsqrt, Sin, Cos, Tanh, Sigmoid, Abs, Relu, Silu, Gelu, GeluTanh, LogSigmoid, Floor, Ceil,
    Round, Sign, Square, Reciprocal, Log1p, Expm1, Erf, LogicalNot, IsNan, IsInf, IsFinite, Zero_, Sqrt_, Neg_, Exp_,
    Log2, Atan, Tan, Asin, Acos,
}

internal enum BinaryOp
{
    Add, Sub, Mul, Div, Pow, Eq, Ne, Lt, Le, Gt, Ge, Maximum, Minimum, Matmul, Bmm, Atan2, LogicalAnd, LogicalOr,
    Remainder, FloorDivide, Add_, Sub_, Mul_, Div_, Copy_, MaximumInto_,
}

internal enum ScalarOp
{
    Add, Sub, Mul, Div, Pow, Eq, Ne, Lt, Le, Gt, Ge, RSub, RDiv, RPow, Remainder, Fmod, Add_, Sub_, Mul_, Div_, Fill_, Pow_,
}

internal enum ReduceOp { Sum, Mean, Amax, Amin, LogSumExp, Prod, All, Any }

/// <summary>A slice for <see cref="Tensor.this[TensorIndex[]]"/>: an index, a range with a step, or all.</summary>
public readonly record struct TensorIndex(long? Start, long? Stop, long Step, bool IsSingle, bool IsNewAxis = false)
{
    public static TensorIndex Single(long i) => new(i, null, 1, true);
    public static TensorIndex Slice(long? start = null, long? stop = null, long step = 1) => new(start, stop, step, false);
    public static readonly TensorIndex Colon = new(null, null, 1, false);
    public static readonly TensorIndex None = new(null, null, 1, false, true);
    public static implicit operator TensorIndex(long i) => Single(i);
    public static implicit operator TensorIndex(int i) => Single(i);
    public static implicit operator TensorIndex(Range r)
    {
        long? s = r.Start.IsFromEnd ? (r.Start.Value == 0 ? null : -r.Start.Value) : r.Start.Value;
        long? e = r.End.IsFromEnd ? (r.End.Value == 0 ? null : -r.End.Value) : r.End.Value;
        return Slice(s, e);
    }
}

public partial class Tensor
{
    internal Tensor Unary(UnaryOp op) => Wrap(Native.sudo_unary((int)op, Handle), OpNames.Of(op));
    internal Tensor Binary(BinaryOp op, Tensor other) => Wrap(Native.sudo_binary((int)op, Handle, other.Handle), OpNames.Of(op));
    internal Tensor BinaryS(ScalarOp op, Scalar s) => Wrap(Native.sudo_binary_scalar((int)op, Handle, s.Value), OpNames.Of(op));

    // In-place ops return this tensor; the native result handle (same tensor) is freed at once.
    private Tensor InPlace(IntPtr result, string op)
    {
        Native.sudo_free(Native.Check(result, op));
        return this;
    }

    // ---- operators ----
    public static Tensor operator +(Tensor a, Tensor b) => a.Binary(BinaryOp.Add, b);
    public static Tensor operator -(Tensor a, Tensor b) => a.Binary(BinaryOp.Sub, b);
    public static Tensor operator *(Tensor a, Tensor b) => a.Binary(BinaryOp.Mul, b);
    public static Tensor operator /(Tensor a, Tensor b) => a.Binary(BinaryOp.Div, b);
    public static Tensor operator %(Tensor a, Tensor b) => a.Binary(BinaryOp.Remainder, b);
    // Scalar operands get one overload per .NET number type (not one taking Scalar): F# does not apply
    // implicit conversions to operators, and C# must keep `intTensor + 1` integral (PyTorch's rule).
    public static Tensor operator +(Tensor a, double b) => a.BinaryS(ScalarOp.Add, b);
    public static Tensor operator +(Tensor a, long b) => a.BinaryS(ScalarOp.Add, b);
    public static Tensor operator +(Tensor a, int b) => a.BinaryS(ScalarOp.Add, b);
    public static Tensor operator -(Tensor a, double b) => a.BinaryS(ScalarOp.Sub, b);
    public static Tensor operator -(Tensor a, long b) => a.BinaryS(ScalarOp.Sub, b);
    public static Tensor operator -(Tensor a, int b) => a.BinaryS(ScalarOp.Sub, b);
    public static Tensor operator *(Tensor a, double b) => a.BinaryS(ScalarOp.Mul, b);
    public static Tensor operator *(Tensor a, long b) => a.BinaryS(ScalarOp.Mul, b);
    public static Tensor operator *(Tensor a, int b) => a.BinaryS(ScalarOp.Mul, b);
    public static Tensor operator /(Tensor a, double b) => a.BinaryS(ScalarOp.Div, b);
    public static Tensor operator /(Tensor a, long b) => a.BinaryS(ScalarOp.Div, b);
    public static Tensor operator /(Tensor a, int b) => a.BinaryS(ScalarOp.Div, b);
    public static Tensor operator %(Tensor a, double b) => a.BinaryS(ScalarOp.Remainder, b);
    public static Tensor operator %(Tensor a, long b) => a.BinaryS(ScalarOp.Remainder, b);
    public static Tensor operator %(Tensor a, int b) => a.BinaryS(ScalarOp.Remainder, b);
    public static Tensor operator +(double a, Tensor b) => b.BinaryS(ScalarOp.Add, a);
    public static Tensor operator +(long a, Tensor b) => b.BinaryS(ScalarOp.Add, a);
    public static Tensor operator +(int a, Tensor b) => b.BinaryS(ScalarOp.Add, a);
    public static Tensor operator -(double a, Tensor b) => b.BinaryS(ScalarOp.RSub, a);
    public static Tensor operator -(long a, Tensor b) => b.BinaryS(ScalarOp.RSub, a);
    public static Tensor operator -(int a, Tensor b) => b.BinaryS(ScalarOp.RSub, a);
    public static Tensor operator *(double a, Tensor b) => b.BinaryS(ScalarOp.Mul, a);
    public static Tensor operator *(long a, Tensor b) => b.BinaryS(ScalarOp.Mul, a);
    public static Tensor operator *(int a, Tensor b) => b.BinaryS(ScalarOp.Mul, a);
    public static Tensor operator /(double a, Tensor b) => b.BinaryS(ScalarOp.RDiv, a);
    public static Tensor operator /(long a, Tensor b) => b.BinaryS(ScalarOp.RDiv, a);
    public static Tensor operator /(int a, Tensor b) => b.BinaryS(ScalarOp.RDiv, a);
    public static Tensor operator -(Tensor a) => a.Unary(UnaryOp.Neg);
    public static Tensor operator !(Tensor a) => a.Unary(UnaryOp.LogicalNot);
    public static Tensor operator &(Tensor a, Tensor b) => a.Binary(BinaryOp.LogicalAnd, b);
    public static Tensor operator |(Tensor a, Tensor b) => a.Binary(BinaryOp.LogicalOr, b);

    // Comparisons are methods (eq, lt, ...) as in PyTorch; C#'s ==/!= keep reference semantics.
    public Tensor eq(Tensor o) => Binary(BinaryOp.Eq, o);
    public Tensor ne(Tensor o) => Binary(BinaryOp.Ne, o);
    public Tensor lt(Tensor o) => Binary(BinaryOp.Lt, o);
    public Tensor le(Tensor o) => Binary(BinaryOp.Le, o);
    public Tensor gt(Tensor o) => Binary(BinaryOp.Gt, o);
    public Tensor ge(Tensor o) => Binary(BinaryOp.Ge, o);
    public Tensor eq(Scalar o) => BinaryS(ScalarOp.Eq, o);
    public Tensor ne(Scalar o) => BinaryS(ScalarOp.Ne, o);
    public Tensor lt(Scalar o) => BinaryS(ScalarOp.Lt, o);
    public Tensor le(Scalar o) => BinaryS(ScalarOp.Le, o);
    public Tensor gt(Scalar o) => BinaryS(ScalarOp.Gt, o);
    public Tensor ge(Scalar o) => BinaryS(ScalarOp.Ge, o);
    public static Tensor operator <(Tensor a, Tensor b) => a.lt(b);
    public static Tensor operator >(Tensor a, Tensor b) => a.gt(b);
    public static Tensor operator <=(Tensor a, Tensor b) => a.le(b);
    public static Tensor operator >=(Tensor a, Tensor b) => a.ge(b);
    public static Tensor operator <(Tensor a, double b) => a.lt(b);
    public static Tensor operator >(Tensor a, double b) => a.gt(b);
    public static Tensor operator <=(Tensor a, double b) => a.le(b);
    public static Tensor operator >=(Tensor a, double b) => a.ge(b);

    // ---- arithmetic methods ----
    public Tensor add(Tensor o) => Binary(BinaryOp.Add, o);
    public Tensor add(Tensor o, Scalar alpha) => Wrap(Native.sudo_add_scaled(Handle, o.Handle, alpha.Value, 0), "add");
    public Tensor add(Scalar s) => BinaryS(ScalarOp.Add, s);
    public Tensor sub(Tensor o) => Binary(BinaryOp.Sub, o);
    public Tensor sub(Scalar s) => BinaryS(ScalarOp.Sub, s);
    public Tensor mul(Tensor o) => Binary(BinaryOp.Mul, o);
    public Tensor mul(Scalar s) => BinaryS(ScalarOp.Mul, s);
    public Tensor div(Tensor o) => Binary(BinaryOp.Div, o);
    public Tensor div(Scalar s) => BinaryS(ScalarOp.Div, s);
    public Tensor pow(Tensor o) => Binary(BinaryOp.Pow, o);
    public Tensor pow(Scalar s) => BinaryS(ScalarOp.Pow, s);
    public Tensor remainder(Scalar s) => BinaryS(ScalarOp.Remainder, s);
    public Tensor fmod(Scalar s) => BinaryS(ScalarOp.Fmod, s);
    public Tensor floor_divide(Tensor o) => Binary(BinaryOp.FloorDivide, o);
    public Tensor maximum(Tensor o) => Binary(BinaryOp.Maximum, o);
    public Tensor minimum(Tensor o) => Binary(BinaryOp.Minimum, o);
    public Tensor atan2(Tensor o) => Binary(BinaryOp.Atan2, o);
    public Tensor logical_and(Tensor o) => Binary(BinaryOp.LogicalAnd, o);
    public Tensor logical_or(Tensor o) => Binary(BinaryOp.LogicalOr, o);
    public Tensor logical_not() => Unary(UnaryOp.LogicalNot);
    public Tensor matmul(Tensor o) => Binary(BinaryOp.Matmul, o);
    public Tensor bmm(Tensor o) => Binary(BinaryOp.Bmm, o);
    public Tensor mm(Tensor o) => Binary(BinaryOp.Matmul, o);
    public Tensor baddbmm(Tensor b1, Tensor b2, double beta = 1, double alpha = 1) => torch.baddbmm(this, b1, b2, beta, alpha);
    public Tensor addcmul(Tensor t1, Tensor t2, Scalar value) => Wrap(Native.sudo_addcmul(Handle, t1.Handle, t2.Handle, value.Value, 0), "addcmul");
    public Tensor addcdiv(Tensor t1, Tensor t2, Scalar value) => Wrap(Native.sudo_addcdiv(Handle, t1.Handle, t2.Handle, value.Value, 0), "addcdiv");
    public Tensor lerp(Tensor end, double weight) => Wrap(Native.sudo_lerp(Handle, end.Handle, IntPtr.Zero, weight, 0), "lerp");
    public Tensor lerp(Tensor end, Tensor weight) => Wrap(Native.sudo_lerp(Handle, end.Handle, weight.Handle, 0, 0), "lerp");

    public Tensor neg() => Unary(UnaryOp.Neg);
    public Tensor exp() => Unary(UnaryOp.Exp);
    public Tensor log() => Unary(UnaryOp.Log);
    public Tensor log2() => Unary(UnaryOp.Log2);
    public Tensor log1p() => Unary(UnaryOp.Log1p);
    public Tensor expm1() => Unary(UnaryOp.Expm1);
    public Tensor sqrt() => Unary(UnaryOp.Sqrt);
    public Tensor rsqrt() => Unary(UnaryOp.Rsqrt);
    public Tensor sin() => Unary(UnaryOp.Sin);
    public Tensor cos() => Unary(UnaryOp.Cos);
    public Tensor tan() => Unary(UnaryOp.Tan);
    public Tensor atan() => Unary(UnaryOp.Atan);
    public Tensor asin() => Unary(UnaryOp.Asin);
    public Tensor acos() => Unary(UnaryOp.Acos);
    public Tensor tanh() => Unary(UnaryOp.Tanh);
    public Tensor sigmoid() => Unary(UnaryOp.Sigmoid);
    public Tensor abs() => Unary(UnaryOp.Abs);
    public Tensor relu() => Unary(UnaryOp.Relu);
    public Tensor floor() => Unary(UnaryOp.Floor);
    public Tensor ceil() => Unary(UnaryOp.Ceil);
    public Tensor round() => Unary(UnaryOp.Round);
    public Tensor sign() => Unary(UnaryOp.Sign);
    public Tensor square() => Unary(UnaryOp.Square);
    public Tensor reciprocal() => Unary(UnaryOp.Reciprocal);
    public Tensor erf() => Unary(UnaryOp.Erf);
    public Tensor isnan() => Unary(UnaryOp.IsNan);
    public Tensor isinf() => Unary(UnaryOp.IsInf);
    public Tensor isfinite() => Unary(UnaryOp.IsFinite);

    public Tensor clamp(double? min = null, double? max = null) =>
        Wrap(Native.sudo_clamp(Handle, min.HasValue ? 1 : 0, min ?? 0, max.HasValue ? 1 : 0, max ?? 0, 0), "clamp");
    public Tensor clamp(Tensor? min, Tensor? max) => Wrap(Native.sudo_clamp_t(Handle, min?.Handle ?? IntPtr.Zero, max?.Handle ?? IntPtr.Zero), "clamp");
    public Tensor clamp_min(double min) => clamp(min, null);
    public Tensor clamp_max(double max) => clamp(null, max);
    public Tensor masked_fill(Tensor mask, Scalar value) => Wrap(Native.sudo_masked_fill(Handle, mask.Handle, value.Value, 0), "masked_fill");
    public Tensor softmax(long dim, ScalarType? dtype = null) => Wrap(Native.sudo_softmax(Handle, dim, dtype.HasValue ? (int)dtype.Value : -1, 0), "softmax");
    public Tensor log_softmax(long dim, ScalarType? dtype = null) => Wrap(Native.sudo_softmax(Handle, dim, dtype.HasValue ? (int)dtype.Value : -1, 1), "log_softmax");
    public Tensor tril(long diagonal = 0) => Wrap(Native.sudo_tril(Handle, diagonal, 0), "tril");
    public Tensor triu(long diagonal = 0) => Wrap(Native.sudo_tril(Handle, diagonal, 1), "triu");

    // ---- in place (the optimizers' vocabulary) ----
    public Tensor add_(Tensor o) => InPlace(Native.sudo_binary((int)BinaryOp.Add_, Handle, o.Handle), "add_");
    public Tensor add_(Tensor o, Scalar alpha) => InPlace(Native.sudo_add_scaled(Handle, o.Handle, alpha.Value, 1), "add_");
    public Tensor add_(Scalar s) => InPlace(Native.sudo_binary_scalar((int)ScalarOp.Add_, Handle, s.Value), "add_");
    public Tensor sub_(Tensor o) => InPlace(Native.sudo_binary((int)BinaryOp.Sub_, Handle, o.Handle), "sub_");
    public Tensor sub_(Scalar s) => InPlace(Native.sudo_binary_scalar((int)ScalarOp.Sub_, Handle, s.Value), "sub_");
    public Tensor mul_(Tensor o) => InPlace(Native.sudo_binary((int)BinaryOp.Mul_, Handle, o.Handle), "mul_");
    public Tensor mul_(Scalar s) => InPlace(Native.sudo_binary_scalar((int)ScalarOp.Mul_, Handle, s.Value), "mul_");
    public Tensor div_(Tensor o) => InPlace(Native.sudo_binary((int)BinaryOp.Div_, Handle, o.Handle), "div_");
    public Tensor div_(Scalar s) => InPlace(Native.sudo_binary_scalar((int)ScalarOp.Div_, Handle, s.Value), "div_");
    public Tensor pow_(Scalar s) => InPlace(Native.sudo_binary_scalar((int)ScalarOp.Pow_, Handle, s.Value), "pow_");
    public Tensor fill_(Scalar s) => InPlace(Native.sudo_binary_scalar((int)ScalarOp.Fill_, Handle, s.Value), "fill_");
    public Tensor copy_(Tensor src) => InPlace(Native.sudo_binary((int)BinaryOp.Copy_, Handle, src.Handle), "copy_");
    public Tensor zero_() => InPlace(Native.sudo_unary((int)UnaryOp.Zero_, Handle), "zero_");
    public Tensor sqrt_() => InPlace(Native.sudo_unary((int)UnaryOp.Sqrt_, Handle), "sqrt_");
    public Tensor neg_() => InPlace(Native.sudo_unary((int)UnaryOp.Neg_, Handle), "neg_");
    public Tensor exp_() => InPlace(Native.sudo_unary((int)UnaryOp.Exp_, Handle), "exp_");
    public Tensor maximum_(Tensor o) => InPlace(Native.sudo_binary((int)BinaryOp.MaximumInto_, Handle, o.Handle), "maximum_");
    public Tensor addcmul_(Tensor t1, Tensor t2, Scalar value) => InPlace(Native.sudo_addcmul(Handle, t1.Handle, t2.Handle, value.Value, 1), "addcmul_");
    public Tensor addcdiv_(Tensor t1, Tensor t2, Scalar value) => InPlace(Native.sudo_addcdiv(Handle, t1.Handle, t2.Handle, value.Value, 1), "addcdiv_");
    public Tensor lerp_(Tensor end, double weight) => InPlace(Native.sudo_lerp(Handle, end.Handle, IntPtr.Zero, weight, 1), "lerp_");
    public Tensor lerp_(Tensor end, Tensor weight) => InPlace(Native.sudo_lerp(Handle, end.Handle, weight.Handle, 0, 1), "lerp_");
    public Tensor clamp_(double? min = null, double? max = null) =>
        InPlace(Native.sudo_clamp(Handle, min.HasValue ? 1 : 0, min ?? 0, max.HasValue ? 1 : 0, max ?? 0, 1), "clamp_");
    public Tensor masked_fill_(Tensor mask, Scalar value) => InPlace(Native.sudo_masked_fill(Handle, mask.Handle, value.Value, 1), "masked_fill_");
    /// <summary>Fills with N(mean, std²) draws; a generator of another device draws there and the values are copied
    /// in (the device-placement contract of torch.randn and friends).</summary>
    public Tensor normal_(double mean = 0, double std = 1, Generator? generator = null)
    {
        if (generator != null && !torch.SameDevice(generator.Device, device))
        {
            using var there = torch.empty(shape, dtype, generator.Device);
            there.normal_(mean, std, generator);
            return copy_(there);
        }
        Native.CheckStatus(Native.sudo_normal_(Handle, mean, std, Generator.HandleOf(generator)), "normal_");
        return this;
    }
    public Tensor uniform_(double from = 0, double to = 1, Generator? generator = null)
    {
        if (generator != null && !torch.SameDevice(generator.Device, device))
        {
            using var there = torch.empty(shape, dtype, generator.Device);
            there.uniform_(from, to, generator);
            return copy_(there);
        }
        Native.CheckStatus(Native.sudo_uniform_(Handle, from, to, Generator.HandleOf(generator)), "uniform_");
        return this;
    }

    // ---- reductions ----
    private unsafe Tensor Reduce(ReduceOp op, ReadOnlySpan<long> dims, bool keepdim, ScalarType? dtype, string name)
    {
        fixed (long* p = dims)
            return Wrap(Native.sudo_reduce((int)op, Handle, p, dims.Length, keepdim ? 1 : 0, dtype.HasValue ? (int)dtype.Value : -1), name);
    }

    // No (ScalarType? dtype) overloads for the full reductions: C# converts the literal 0 to any enum,
    // so t.sum(0) would silently reduce everything. Full reduction with a dtype: t.sum([], dtype: ...).
    public Tensor sum() => Reduce(ReduceOp.Sum, default, false, null, "sum");
    public Tensor sum(long dim, bool keepdim = false, ScalarType? dtype = null) => Reduce(ReduceOp.Sum, [dim], keepdim, dtype, "sum");
    public Tensor sum(long[] dims, bool keepdim = false, ScalarType? dtype = null) => Reduce(ReduceOp.Sum, dims, keepdim, dtype, "sum");
    public Tensor mean() => Reduce(ReduceOp.Mean, default, false, null, "mean");
    public Tensor mean(long dim, bool keepdim = false, ScalarType? dtype = null) => Reduce(ReduceOp.Mean, [dim], keepdim, dtype, "mean");
    public Tensor mean(long[] dims, bool keepdim = false, ScalarType? dtype = null) => Reduce(ReduceOp.Mean, dims, keepdim, dtype, "mean");
    public Tensor amax(long[] dims, bool keepdim = false) => Reduce(ReduceOp.Amax, dims, keepdim, null, "amax");
    public Tensor amin(long[] dims, bool keepdim = false) => Reduce(ReduceOp.Amin, dims, keepdim, null, "amin");
    public Tensor logsumexp(long dim, bool keepdim = false) => Reduce(ReduceOp.LogSumExp, [dim], keepdim, null, "logsumexp");
    public Tensor logsumexp(long[] dims, bool keepdim = false) => Reduce(ReduceOp.LogSumExp, dims, keepdim, null, "logsumexp");
    public Tensor prod() => Reduce(ReduceOp.Prod, default, false, null, "prod");
    public Tensor prod(long dim, bool keepdim = false) => Reduce(ReduceOp.Prod, [dim], keepdim, null, "prod");
    public Tensor all() => Reduce(ReduceOp.All, default, false, null, "all");
    public Tensor all(long dim, bool keepdim = false) => Reduce(ReduceOp.All, [dim], keepdim, null, "all");
    public Tensor any() => Reduce(ReduceOp.Any, default, false, null, "any");
    public Tensor any(long dim, bool keepdim = false) => Reduce(ReduceOp.Any, [dim], keepdim, null, "any");

    private unsafe Tensor VarStd(ReadOnlySpan<long> dims, long correction, bool keepdim, bool std)
    {
        fixed (long* p = dims)
            return Wrap(Native.sudo_var_std(Handle, p, dims.Length, correction, keepdim ? 1 : 0, std ? 1 : 0), std ? "std" : "var");
    }

    /// <summary>Variance with Bessel's correction by default (unbiased = true), as torch.var.</summary>
    public Tensor var(bool unbiased = true) => VarStd(default, unbiased ? 1 : 0, false, false);
    public Tensor var(long dim, bool unbiased = true, bool keepdim = false) => VarStd([dim], unbiased ? 1 : 0, keepdim, false);
    public Tensor var(long[] dims, bool unbiased = true, bool keepdim = false) => VarStd(dims, unbiased ? 1 : 0, keepdim, false);
    public Tensor std(bool unbiased = true) => VarStd(default, unbiased ? 1 : 0, false, true);
    public Tensor std(long dim, bool unbiased = true, bool keepdim = false) => VarStd([dim], unbiased ? 1 : 0, keepdim, true);
    public Tensor std(long[] dims, bool unbiased = true, bool keepdim = false) => VarStd(dims, unbiased ? 1 : 0, keepdim, true);

    public unsafe Tensor norm(double p = 2, long[]? dims = null, bool keepdim = false)
    {
        fixed (long* d = dims)
            return Wrap(Native.sudo_norm(Handle, p, d, dims?.Length ?? 0, keepdim ? 1 : 0), "norm");
    }

    public Tensor max() => Wrap(Native.sudo_max_all(Handle, 0), "max");
    public Tensor min() => Wrap(Native.sudo_max_all(Handle, 1), "min");
    public unsafe (Tensor values, Tensor indices) max(long dim, bool keepdim = false)
    {
        IntPtr v, i;
        Native.CheckStatus(Native.sudo_max_dim(Handle, dim, keepdim ? 1 : 0, 0, &v, &i), "max");
        return (new Tensor(v), new Tensor(i));
    }
    public unsafe (Tensor values, Tensor indices) min(long dim, bool keepdim = false)
    {
        IntPtr v, i;
        Native.CheckStatus(Native.sudo_max_dim(Handle, dim, keepdim ? 1 : 0, 1, &v, &i), "min");
        return (new Tensor(v), new Tensor(i));
    }
    public Tensor argmax() => Wrap(Native.sudo_argmax(Handle, 0, 0, 0, 0), "argmax");
    public Tensor argmax(long dim, bool keepdim = false) => Wrap(Native.sudo_argmax(Handle, 1, dim, keepdim ? 1 : 0, 0), "argmax");
    public Tensor argmin() => Wrap(Native.sudo_argmax(Handle, 0, 0, 0, 1), "argmin");
    public Tensor argmin(long dim, bool keepdim = false) => Wrap(Native.sudo_argmax(Handle, 1, dim, keepdim ? 1 : 0, 1), "argmin");
    public Tensor cumsum(long dim) => Wrap(Native.sudo_cumsum(Handle, dim), "cumsum");
    public Tensor cumprod(long dim) => Wrap(Native.sudo_cumprod(Handle, dim), "cumprod");
    public unsafe (Tensor values, Tensor indices) sort(long dim = -1, bool descending = false)
    {
        IntPtr v, i;
        Native.CheckStatus(Native.sudo_sort(Handle, dim, descending ? 1 : 0, &v, &i), "sort");
        return (new Tensor(v), new Tensor(i));
    }

    public bool allclose(Tensor other, double rtol = 1e-5, double atol = 1e-8, bool equal_nan = false)
    {
        var r = Native.sudo_allclose(Handle, other.Handle, rtol, atol, equal_nan ? 1 : 0);
        if (r < 0) throw new TorchException("allclose", Native.LastError());
        return r == 1;
    }

    public bool equal(Tensor other)
    {
        var r = Native.sudo_equal(Handle, other.Handle);
        if (r < 0) throw new TorchException("equal", Native.LastError());
        return r == 1;
    }

    // ---- shape ----
    public unsafe Tensor view(params long[] shape)
    {
        fixed (long* p = shape) return Wrap(Native.sudo_view(Handle, p, shape.Length, 0), "view");
    }
    public unsafe Tensor reshape(params long[] shape)
    {
        fixed (long* p = shape) return Wrap(Native.sudo_view(Handle, p, shape.Length, 1), "reshape");
    }
    public unsafe Tensor permute(params long[] dims)
    {
        fixed (long* p = dims) return Wrap(Native.sudo_permute(Handle, p, dims.Length), "permute");
    }
    public Tensor transpose(long d0, long d1) => Wrap(Native.sudo_transpose(Handle, d0, d1), "transpose");
    public Tensor t() => transpose(0, 1);
    public Tensor mT => transpose(-2, -1);
    public Tensor flatten(long start_dim = 0, long end_dim = -1) => Wrap(Native.sudo_flatten(Handle, start_dim, end_dim), "flatten");
    public Tensor squeeze() => Wrap(Native.sudo_squeeze(Handle, 0, 0), "squeeze");
    public Tensor squeeze(long dim) => Wrap(Native.sudo_squeeze(Handle, 1, dim), "squeeze");
    public Tensor unsqueeze(long dim) => Wrap(Native.sudo_unsqueeze(Handle, dim), "unsqueeze");
    public Tensor narrow(long dim, long start, long length) => Wrap(Native.sudo_narrow(Handle, dim, start, length), "narrow");
    public Tensor slice(long dim, long start, long end, long step = 1) => Wrap(Native.sudo_slice(Handle, dim, start, end, step), "slice");
    public Tensor select(long dim, long index) => Wrap(Native.sudo_select(Handle, dim, index), "select");
    public Tensor index_select(long dim, Tensor index) => Wrap(Native.sudo_index_select(Handle, dim, index.Handle), "index_select");
    public Tensor gather(long dim, Tensor index) => Wrap(Native.sudo_gather(Handle, dim, index.Handle), "gather");
    public Tensor scatter(long dim, Tensor index, Tensor src) => Wrap(Native.sudo_scatter(Handle, dim, index.Handle, src.Handle), "scatter");
    public Tensor masked_select(Tensor mask) => Wrap(Native.sudo_index_bool(Handle, mask.Handle), "masked_select");
    public unsafe Tensor expand(params long[] shape)
    {
        fixed (long* p = shape) return Wrap(Native.sudo_expand(Handle, p, shape.Length), "expand");
    }
    public Tensor expand_as(Tensor other) => expand(other.shape);
    public Tensor view_as(Tensor other) => view(other.shape);
    public unsafe Tensor repeat(params long[] reps)
    {
        fixed (long* p = reps) return Wrap(Native.sudo_repeat(Handle, p, reps.Length), "repeat");
    }
    public Tensor repeat_interleave(long repeats, long dim) => Wrap(Native.sudo_repeat_interleave(Handle, repeats, dim), "repeat_interleave");
    public unsafe Tensor flip(params long[] dims)
    {
        fixed (long* p = dims) return Wrap(Native.sudo_flip(Handle, p, dims.Length), "flip");
    }
    public Tensor roll(long shift, long dim) => Wrap(Native.sudo_roll(Handle, shift, dim), "roll");

    /// <summary>Splits into <paramref name="chunks"/> pieces along dim (the last may be smaller), as torch.chunk.</summary>
    public Tensor[] chunk(long chunks, long dim = 0)
    {
        if (chunks <= 0) throw new ArgumentOutOfRangeException(nameof(chunks), "chunk expects chunks > 0");
        var n = size((int)dim);
        var step = (n + chunks - 1) / chunks;
        return step == 0 ? [narrow(dim, 0, 0)] : split(step, dim);
    }

    /// <summary>Pieces of <paramref name="split_size"/> along dim (the last may be smaller), as torch.split.</summary>
    public Tensor[] split(long split_size, long dim = 0)
    {
        if (split_size <= 0) throw new ArgumentOutOfRangeException(nameof(split_size), "split expects split_size > 0");
        var n = size((int)dim);
        var parts = new List<Tensor>();
        for (long s = 0; s < n; s += split_size) parts.Add(narrow(dim, s, Math.Min(split_size, n - s)));
        return parts.ToArray();
    }

    public Tensor[] split(long[] sizes, long dim = 0)
    {
        var n = size((int)dim);
        if (sizes.Sum() != n) throw new ArgumentException($"split sizes [{string.Join(", ", sizes)}] sum to {sizes.Sum()}, but dim {dim} has size {n}");
        var parts = new Tensor[sizes.Length];
        long s = 0;
        for (var i = 0; i < sizes.Length; i++)
        {
            parts[i] = narrow(dim, s, sizes[i]);
            s += sizes[i];
        }
        return parts;
    }

    public Tensor[] unbind(long dim = 0)
    {
        var n = size((int)dim);
        var r = new Tensor[n];
        for (long i = 0; i < n; i++) r[i] = select(dim, i);
        return r;
    }

    /// <summary>NumPy-style basic indexing: t[0], t[.., 1..3], t[TensorIndex.Colon, TensorIndex.None].</summary>
    public Tensor this[params TensorIndex[] index]
    {
        get
        {
            var cur = alias();
            long d = 0;
            foreach (var ix in index)
            {
                Tensor next;
                if (ix.IsNewAxis)
                {
                    next = cur.unsqueeze(d);
                    d++;
                }
                else if (ix.IsSingle)
                {
                    next = cur.select(d, ix.Start!.Value);
                }
                else
                {
                    next = cur.slice(d, ix.Start ?? 0, ix.Stop ?? long.MaxValue, ix.Step);
                    d++;
                }
                cur.Dispose();
                cur = next;
            }
            return cur;
        }
    }
}

internal static class OpNames
{
    private static readonly string[] Unary = Enum.GetNames<UnaryOp>().Select(Snake).ToArray();
    private static readonly string[] Binary = Enum.GetNames<BinaryOp>().Select(Snake).ToArray();
    private static readonly string[] Scalar = Enum.GetNames<ScalarOp>().Select(Snake).ToArray();

    internal static string Of(UnaryOp op) => Unary[(int)op];
    internal static string Of(BinaryOp op) => Binary[(int)op];
    internal static string Of(ScalarOp op) => Scalar[(int)op];

    private static string Snake(string name)
    {
        var sb = new System.Text.StringBuilder();
        for (var i = 0; i < name.Length; i++)
        {
            var c = name[i];
            if (char.IsUpper(c) && i > 0 && name[i - 1] != '_') sb.Append('_');
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }
}
