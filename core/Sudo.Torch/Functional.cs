namespace Sudo.Torch;

public static unsafe partial class torch
{
    public static partial class nn
    {
        public enum Reduction { None = 0, Mean = 1, Sum = 2 }
        public enum InterpolationMode { Nearest = 0, Bilinear = 1, Bicubic = 2, NearestExact = 3 }
        public enum PaddingMode { Constant = 0, Reflect = 1, Replicate = 2, Circular = 3 }

        /// <summary>torch.nn.functional.</summary>
        public static class functional
        {
            private static IntPtr H(Tensor? t) => t?.Handle ?? IntPtr.Zero;

            public static Tensor linear(Tensor x, Tensor weight, Tensor? bias = null) =>
                Tensor.Wrap(Native.sudo_linear(x.Handle, weight.Handle, H(bias)), "linear");

            public static Tensor conv2d(Tensor x, Tensor weight, Tensor? bias = null, long stride = 1, long padding = 0, long dilation = 1, long groups = 1) =>
                conv2d(x, weight, bias, (stride, stride), (padding, padding), (dilation, dilation), groups);

            public static Tensor conv2d(Tensor x, Tensor weight, Tensor? bias, (long, long) stride, (long, long) padding, (long, long) dilation, long groups = 1)
            {
                var s = stackalloc long[] { stride.Item1, stride.Item2 };
                var p = stackalloc long[] { padding.Item1, padding.Item2 };
                var d = stackalloc long[] { dilation.Item1, dilation.Item2 };
                return Tensor.Wrap(Native.sudo_conv2d(x.Handle, weight.Handle, H(bias), s, p, d, groups), "conv2d");
            }

            public static Tensor group_norm(Tensor x, long num_groups, Tensor? weight = null, Tensor? bias = null, double eps = 1e-5) =>
                Tensor.Wrap(Native.sudo_group_norm(x.Handle, num_groups, H(weight), H(bias), eps), "group_norm");

            public static Tensor layer_norm(Tensor x, long[] normalized_shape, Tensor? weight = null, Tensor? bias = null, double eps = 1e-5)
            {
                fixed (long* p = normalized_shape)
                    return Tensor.Wrap(Native.sudo_layer_norm(x.Handle, p, normalized_shape.Length, H(weight), H(bias), eps), "layer_norm");
            }

            public static Tensor silu(Tensor x) => x.Unary(UnaryOp.Silu);
            public static Tensor relu(Tensor x) => x.Unary(UnaryOp.Relu);
            public static Tensor sigmoid(Tensor x) => x.Unary(UnaryOp.Sigmoid);
            public static Tensor tanh(Tensor x) => x.Unary(UnaryOp.Tanh);

            /// <summary>GELU: approximate "none" (erf, exact) or "tanh".</summary>
            public static Tensor gelu(Tensor x, string approximate = "none") => approximate switch
            {
                "none" => x.Unary(UnaryOp.Gelu),
                "tanh" => x.Unary(UnaryOp.GeluTanh),
                _ => throw new ArgumentException($"gelu: approximate must be \"none\" or \"tanh\", got \"{approximate}\""),
            };

            /// <summary>x·sigmoid(1.702·x): CLIP's quick_gelu.</summary>
            public static Tensor quick_gelu(Tensor x)
            {
                using var s = (x * 1.702).Unary(UnaryOp.Sigmoid);
                return x * s;
            }

            public static Tensor softplus(Tensor x, double beta = 1, double threshold = 20) =>
                Tensor.Wrap(Native.sudo_softplus(x.Handle, beta, threshold), "softplus");
            public static Tensor logsigmoid(Tensor x) => x.Unary(UnaryOp.LogSigmoid);
            public static Tensor leaky_relu(Tensor x, double negative_slope = 0.01) => Tensor.Wrap(Native.sudo_leaky_relu(x.Handle, negative_slope), "leaky_relu");
            public static Tensor softmax(Tensor x, long dim, ScalarType? dtype = null) => x.softmax(dim, dtype);
            public static Tensor log_softmax(Tensor x, long dim, ScalarType? dtype = null) => x.log_softmax(dim, dtype);

            /// <summary>Dropout with the default generator; identity when !training or p == 0.</summary>
            public static Tensor dropout(Tensor x, double p = 0.5, bool training = true)
            {
                if (p < 0 || p > 1) throw new ArgumentOutOfRangeException(nameof(p), $"dropout probability has to be between 0 and 1, but got {p}");
                return Tensor.Wrap(Native.sudo_dropout(x.Handle, p, training ? 1 : 0), "dropout");
            }

            /// <summary>torch.nn.functional.interpolate for NCHW: give size or scale_factor. align_corners and
            /// antialias as torch offers them (bilinear/bicubic only).</summary>
            public static Tensor interpolate(Tensor x, (long h, long w)? size = null, (double h, double w)? scale_factor = null,
                InterpolationMode mode = InterpolationMode.Nearest, bool? align_corners = null, bool antialias = false)
            {
                if (size.HasValue == scale_factor.HasValue) throw new ArgumentException("interpolate: give exactly one of size and scale_factor");
                var (oh, ow) = size ?? (0, 0);
                var (sh, sw) = scale_factor ?? (0, 0);
                var ac = align_corners.HasValue ? (align_corners.Value ? 1 : 0) : -1;
                return Tensor.Wrap(Native.sudo_interpolate(x.Handle, (int)mode, oh, ow, sh, sw, ac, antialias ? 1 : 0), "interpolate");
            }

            public static Tensor interpolate(Tensor x, double scale_factor, InterpolationMode mode = InterpolationMode.Nearest) =>
                interpolate(x, scale_factor: (scale_factor, scale_factor), mode: mode);

            public static Tensor avg_pool2d(Tensor x, long kernel_size, long? stride = null, long padding = 0, bool ceil_mode = false, bool count_include_pad = true)
            {
                var st = stride ?? kernel_size;
                var k = stackalloc long[] { kernel_size, kernel_size };
                var s = stackalloc long[] { st, st };
                var p = stackalloc long[] { padding, padding };
                return Tensor.Wrap(Native.sudo_avg_pool2d(x.Handle, k, s, p, ceil_mode ? 1 : 0, count_include_pad ? 1 : 0), "avg_pool2d");
            }

            public static Tensor max_pool2d(Tensor x, long kernel_size, long? stride = null, long padding = 0, bool ceil_mode = false)
            {
                var st = stride ?? kernel_size;
                var k = stackalloc long[] { kernel_size, kernel_size };
                var s = stackalloc long[] { st, st };
                var p = stackalloc long[] { padding, padding };
                return Tensor.Wrap(Native.sudo_max_pool2d(x.Handle, k, s, p, ceil_mode ? 1 : 0), "max_pool2d");
            }

            /// <summary>torch.nn.functional.pad: pads are (last-dim left, last-dim right, second-last left, ...).</summary>
            public static Tensor pad(Tensor x, long[] pad, PaddingMode mode = PaddingMode.Constant, double value = 0)
            {
                if (pad.Length % 2 != 0) throw new ArgumentException($"pad: expected an even number of pad sizes, got {pad.Length}");
                fixed (long* p = pad) return Tensor.Wrap(Native.sudo_pad(x.Handle, p, pad.Length, (int)mode, value), "pad");
            }

            public static Tensor mse_loss(Tensor input, Tensor target, Reduction reduction = Reduction.Mean) =>
                Tensor.Wrap(Native.sudo_mse_loss(input.Handle, target.Handle, (int)reduction), "mse_loss");

            public static Tensor cross_entropy(Tensor input, Tensor target, Tensor? weight = null, Reduction reduction = Reduction.Mean,
                long ignore_index = -100, double label_smoothing = 0) =>
                Tensor.Wrap(Native.sudo_cross_entropy(input.Handle, target.Handle, H(weight), (int)reduction, ignore_index, label_smoothing), "cross_entropy");

            public static Tensor embedding(Tensor input, Tensor weight) => Tensor.Wrap(Native.sudo_embedding(weight.Handle, input.Handle), "embedding");

            /// <summary>softmax(q·kᵀ·scale + mask)·v over [..., L, E] inputs (torch's scaled_dot_product_attention).
            /// A bool mask marks the positions that take part; a float mask is added to the scores. scale
            /// defaults to 1/√E. Uses libtorch's fused kernel when it has one (≥ 2.1), else a composed
            /// matmul-softmax-matmul that matches it (reduced-precision scores are normalised in fp32).</summary>
            public static Tensor scaled_dot_product_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask = null,
                double dropout_p = 0, bool is_causal = false, double? scale = null) =>
                Tensor.Wrap(Native.sudo_sdpa(query.Handle, key.Handle, value.Handle, H(attn_mask), dropout_p, is_causal ? 1 : 0, scale ?? 0), "scaled_dot_product_attention");

            public static bool fused_attention_available => Native.sudo_sdpa_fused_available() != 0;
        }
    }
}
