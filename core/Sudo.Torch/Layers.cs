namespace Sudo.Torch;

public static partial class torch
{
    public static partial class nn
    {
        /// <summary>A side branch added to a Linear or Conv2d layer's output (LoRA and friends): it gets the layer's input
        /// and returns what is added to the layer's output.</summary>
        public interface IAdapter
        {
            bool enabled { get; }
            Tensor forward(Tensor x);
        }

        /// <summary>torch.nn.init. Inside <see cref="skip"/>, initialisers do nothing: real loading builds
        /// modules with uninitialised parameters and overwrites every one of them.</summary>
        public static class init
        {
            [ThreadStatic] private static int _skip;

            public static bool skipping => _skip > 0;

            public static IDisposable skip()
            {
                _skip++;
                return new SkipScope();
            }

            private sealed class SkipScope : IDisposable
            {
                private bool _done;
                public void Dispose()
                {
                    if (_done) return;
                    _done = true;
                    _skip--;
                }
            }

            public static Tensor uniform_(Tensor t, double a = 0, double b = 1, Generator? generator = null)
            {
                if (!skipping) using (no_grad()) t.uniform_(a, b, generator);
                return t;
            }

            public static Tensor normal_(Tensor t, double mean = 0, double std = 1, Generator? generator = null)
            {
                if (!skipping) using (no_grad()) t.normal_(mean, std, generator);
                return t;
            }

            public static Tensor constant_(Tensor t, double value)
            {
                if (!skipping) using (no_grad()) t.fill_(value);
                return t;
            }

            public static Tensor zeros_(Tensor t) => constant_(t, 0);
            public static Tensor ones_(Tensor t) => constant_(t, 1);

            /// <summary>(fan_in, fan_out) as torch computes them: dims 1 and 0 times the receptive field.</summary>
            public static (long fanIn, long fanOut) calculate_fan_in_and_fan_out(Tensor t)
            {
                var s = t.shape;
                if (s.Length < 2) throw new ArgumentException("fan in and fan out need a tensor with at least 2 dims");
                long receptive = 1;
                for (var i = 2; i < s.Length; i++) receptive *= s[i];
                return (s[1] * receptive, s[0] * receptive);
            }

            /// <summary>kaiming_uniform_ with leaky_relu gain: bound = gain·√(3 / fan_in), gain = √(2 / (1 + a²)).</summary>
            public static Tensor kaiming_uniform_(Tensor t, double a = 0, Generator? generator = null)
            {
                var (fanIn, _) = calculate_fan_in_and_fan_out(t);
                var gain = Math.Sqrt(2.0 / (1 + a * a));
                var bound = gain * Math.Sqrt(3.0 / fanIn);
                return uniform_(t, -bound, bound, generator);
            }

            public static Tensor xavier_uniform_(Tensor t, double gain = 1, Generator? generator = null)
            {
                var (fanIn, fanOut) = calculate_fan_in_and_fan_out(t);
                var bound = gain * Math.Sqrt(6.0 / (fanIn + fanOut));
                return uniform_(t, -bound, bound, generator);
            }
        }

        private static Parameter NewParam(long[] shape, Device? device, ScalarType? dtype)
        {
            using var data = empty(shape, dtype, device);
            return new Parameter(data);
        }

        /// <summary>y = x Wᵀ + b; weight [out, in], PyTorch's default init (kaiming_uniform a=√5, bias ±1/√fan_in).</summary>
        public sealed class Linear : Module<Tensor, Tensor>
        {
            public Parameter weight { get; }
            public Parameter? bias { get; }
            public long in_features { get; }
            public long out_features { get; }

            public Linear(long in_features, long out_features, bool bias = true, Device? device = null, ScalarType? dtype = null)
            {
                this.in_features = in_features;
                this.out_features = out_features;
                weight = register_parameter("weight", NewParam([out_features, in_features], device, dtype))!;
                init.kaiming_uniform_(weight, Math.Sqrt(5));
                if (bias)
                {
                    this.bias = register_parameter("bias", NewParam([out_features], device, dtype));
                    var b = in_features > 0 ? 1 / Math.Sqrt(in_features) : 0;
                    init.uniform_(this.bias!, -b, b);
                }
            }

            /// <summary>An optional low-rank adapter added to the output (LoRA). It is not a child module: the
            /// layer's state_dict keeps the base model's keys; adapters are saved on their own.</summary>
            public IAdapter? adapter { get; set; }

            public override Tensor forward(Tensor x)
            {
                var y = functional.linear(x, weight, bias);
                if (adapter is not { enabled: true } a) return y;
                using var delta = a.forward(x);
                using (y) return y + delta;
            }

            protected override string ExtraRepr() => $"in_features={in_features}, out_features={out_features}, bias={bias != null}";
        }

        public sealed class Conv2d : Module<Tensor, Tensor>
        {
            public Parameter weight { get; }
            public Parameter? bias { get; }
            public (long, long) stride { get; }
            public (long, long) padding { get; }
            public (long, long) dilation { get; }
            public long groups { get; }

            public Conv2d(long in_channels, long out_channels, long kernel_size, long stride = 1, long padding = 0, long dilation = 1,
                long groups = 1, bool bias = true, Device? device = null, ScalarType? dtype = null)
                : this(in_channels, out_channels, (kernel_size, kernel_size), (stride, stride), (padding, padding), (dilation, dilation), groups, bias, device, dtype) { }

            public Conv2d(long in_channels, long out_channels, (long, long) kernel_size, (long, long) stride, (long, long) padding,
                (long, long) dilation, long groups = 1, bool bias = true, Device? device = null, ScalarType? dtype = null)
            {
                if (groups < 1 || in_channels % groups != 0 || out_channels % groups != 0)
                    throw new ArgumentException($"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})");
                this.stride = stride;
                this.padding = padding;
                this.dilation = dilation;
                this.groups = groups;
                weight = register_parameter("weight", NewParam([out_channels, in_channels / groups, kernel_size.Item1, kernel_size.Item2], device, dtype))!;
                init.kaiming_uniform_(weight, Math.Sqrt(5));
                if (bias)
                {
                    this.bias = register_parameter("bias", NewParam([out_channels], device, dtype));
                    var fanIn = in_channels / groups * kernel_size.Item1 * kernel_size.Item2;
                    var b = 1 / Math.Sqrt(fanIn);
                    init.uniform_(this.bias!, -b, b);
                }
            }

            /// <summary>An optional low-rank adapter added to the output (LoRA on a convolution, as PEFT's lora.Conv2d). It
            /// is not a child module: the layer's state_dict keeps the base model's keys.</summary>
            public IAdapter? adapter { get; set; }

            public override Tensor forward(Tensor x)
            {
                var y = functional.conv2d(x, weight, bias, stride, padding, dilation, groups);
                if (adapter is not { enabled: true } a) return y;
                using var delta = a.forward(x);
                using (y) return y + delta;
            }

            protected override string ExtraRepr() => $"weight=[{string.Join(", ", weight.shape)}], stride={stride}, padding={padding}";
        }

        public sealed class GroupNorm : Module<Tensor, Tensor>
        {
            public Parameter? weight { get; }
            public Parameter? bias { get; }
            public long num_groups { get; }
            public double eps { get; }

            public GroupNorm(long num_groups, long num_channels, double eps = 1e-5, bool affine = true, Device? device = null, ScalarType? dtype = null)
            {
                if (num_channels % num_groups != 0) throw new ArgumentException($"GroupNorm: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})");
                this.num_groups = num_groups;
                this.eps = eps;
                if (affine)
                {
                    weight = register_parameter("weight", NewParam([num_channels], device, dtype));
                    bias = register_parameter("bias", NewParam([num_channels], device, dtype));
                    init.ones_(weight!);
                    init.zeros_(bias!);
                }
            }

            /// <summary>Under CPU autocast libtorch leaves group_norm in bf16: normalise in fp32 and cast back.</summary>
            public override Tensor forward(Tensor x) => Norms.Upcast(x, weight, bias, (v, w, b) => functional.group_norm(v, num_groups, w, b, eps));
            protected override string ExtraRepr() => $"{num_groups}, eps={eps}";
        }

        public sealed class LayerNorm : Module<Tensor, Tensor>
        {
            public Parameter? weight { get; }
            public Parameter? bias { get; }
            public long[] normalized_shape { get; }
            public double eps { get; }

            public LayerNorm(long normalized_shape, double eps = 1e-5, bool elementwise_affine = true, bool bias = true, Device? device = null, ScalarType? dtype = null)
                : this([normalized_shape], eps, elementwise_affine, bias, device, dtype) { }

            public LayerNorm(long[] normalized_shape, double eps = 1e-5, bool elementwise_affine = true, bool bias = true, Device? device = null, ScalarType? dtype = null)
            {
                this.normalized_shape = normalized_shape;
                this.eps = eps;
                if (elementwise_affine)
                {
                    weight = register_parameter("weight", NewParam(normalized_shape, device, dtype));
                    init.ones_(weight!);
                    if (bias)
                    {
                        this.bias = register_parameter("bias", NewParam(normalized_shape, device, dtype));
                        init.zeros_(this.bias!);
                    }
                }
            }

            public override Tensor forward(Tensor x) => Norms.Upcast(x, weight, bias, (v, w, b) => functional.layer_norm(v, normalized_shape, w, b, eps));
            protected override string ExtraRepr() => $"[{string.Join(", ", normalized_shape)}], eps={eps}";
        }

        public sealed class Embedding : Module<Tensor, Tensor>
        {
            public Parameter weight { get; }

            public Embedding(long num_embeddings, long embedding_dim, Device? device = null, ScalarType? dtype = null)
            {
                weight = register_parameter("weight", NewParam([num_embeddings, embedding_dim], device, dtype))!;
                init.normal_(weight);
            }

            public override Tensor forward(Tensor ids) => functional.embedding(ids, weight);
        }

        public sealed class Dropout(double p = 0.5) : Module<Tensor, Tensor>
        {
            public double p { get; } = p;
            public override Tensor forward(Tensor x) => training && p > 0 ? functional.dropout(x, p, true) : x.alias();
            protected override string ExtraRepr() => $"p={p}";
        }

        public sealed class Identity : Module<Tensor, Tensor>
        {
            public override Tensor forward(Tensor x) => x.alias();
        }

        public sealed class SiLU : Module<Tensor, Tensor>
        {
            public override Tensor forward(Tensor x) => Norms.Upcast(x, functional.silu);
        }

        public sealed class GELU(string approximate = "none") : Module<Tensor, Tensor>
        {
            public string approximate { get; } = approximate;
            public override Tensor forward(Tensor x) => functional.gelu(x, approximate);
        }

        public sealed class QuickGELU : Module<Tensor, Tensor>
        {
            public override Tensor forward(Tensor x) => functional.quick_gelu(x);
        }

        public sealed class ReLU : Module<Tensor, Tensor>
        {
            public override Tensor forward(Tensor x) => x.relu();
        }

        public sealed class Tanh : Module<Tensor, Tensor>
        {
            public override Tensor forward(Tensor x) => x.tanh();
        }

        public sealed class Sigmoid : Module<Tensor, Tensor>
        {
            public override Tensor forward(Tensor x) => x.sigmoid();
        }

        /// <summary>Children named "0", "1", ... applied in order.</summary>
        public sealed class Sequential : Module<Tensor, Tensor>
        {
            private readonly List<Module<Tensor, Tensor>> _layers = [];

            public Sequential(params Module<Tensor, Tensor>[] layers)
            {
                foreach (var l in layers) append(l);
            }

            public Sequential append(Module<Tensor, Tensor> layer)
            {
                register_module(_layers.Count.ToString(System.Globalization.CultureInfo.InvariantCulture), layer);
                _layers.Add(layer);
                return this;
            }

            public int Count => _layers.Count;
            public Module<Tensor, Tensor> this[int i] => _layers[i];

            public override Tensor forward(Tensor x)
            {
                var cur = x.alias();
                foreach (var l in _layers)
                {
                    var next = l.forward(cur);
                    cur.Dispose();
                    cur = next;
                }
                return cur;
            }
        }

        /// <summary>A list of modules named "0", "1", ... (diffusers' resnets, attentions, to_out, ...).</summary>
        public sealed class ModuleList<T> : Module, IReadOnlyList<T> where T : Module
        {
            private readonly List<T> _items = [];

            public ModuleList(params T[] items)
            {
                foreach (var m in items) append(m);
            }

            public ModuleList<T> append(T m)
            {
                register_module(_items.Count.ToString(System.Globalization.CultureInfo.InvariantCulture), m);
                _items.Add(m);
                return this;
            }

            public int Count => _items.Count;
            public T this[int i] => _items[i];
            public IEnumerator<T> GetEnumerator() => _items.GetEnumerator();
            System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
        }

        public sealed class ModuleList : Module
        {
            private readonly List<Module> _items = [];

            public ModuleList(params Module[] items)
            {
                foreach (var m in items) append(m);
            }

            public ModuleList append(Module m)
            {
                register_module(_items.Count.ToString(System.Globalization.CultureInfo.InvariantCulture), m);
                _items.Add(m);
                return this;
            }

            public int Count => _items.Count;
            public Module this[int i] => _items[i];
        }
    }
}

/// <summary>CPU autocast leaves norms, softmax and silu in bf16 (libtorch 1.13 autocast_mode.cpp lists them for CUDA only): for reduced-precision
/// inputs, compute them in fp32 (weights too) and cast the result back, as CUDA autocast does.</summary>
public static class Norms
{
    public static bool IsReduced(ScalarType t) => t is ScalarType.BFloat16 or ScalarType.Float16;

    public static Tensor Upcast(Tensor x, Func<Tensor, Tensor> f)
    {
        var dt = x.dtype;
        if (!IsReduced(dt)) return f(x);
        using var x32 = x.to(ScalarType.Float32);
        using var y32 = f(x32);
        return y32.to(dt);
    }

    public static Tensor Upcast(Tensor x, Tensor? w, Tensor? b, Func<Tensor, Tensor?, Tensor?, Tensor> f)
    {
        var dt = x.dtype;
        var lowW = (w != null && IsReduced(w.dtype)) || (b != null && IsReduced(b.dtype));
        if (!IsReduced(dt) && !lowW) return f(x, w, b);
        using var x32 = x.to(ScalarType.Float32);
        using var w32 = w?.to(ScalarType.Float32);
        using var b32 = b?.to(ScalarType.Float32);
        using var y32 = f(x32, w32, b32);
        return y32.to(dt);
    }
}
