namespace Sudo.Torch;

public static partial class torch
{
    /// <summary>torch.backends: process-wide switches of libtorch's kernels.</summary>
    public static class backends
    {
        private static bool Flag(int which, bool? set = null)
        {
            Library.EnsureLoaded();
            var r = Native.sudo_backend_flag(which, set is null ? -1 : set.Value ? 1 : 0);
            if (r < 0) Native.CheckStatus(-1, "torch.backends");
            return r != 0;
        }

        /// <summary>torch.backends.mkldnn: oneDNN kernels for CPU convolutions (and some matmuls). SUDO_MKLDNN=0 turns
        /// them off at start-up — the way round a oneDNN build whose convolution backward is wrong (Debian trixie's
        /// libtorch 2.6 with its system oneDNN 3.7: scripts/check-libtorch2.sh detects it).</summary>
        public static class mkldnn
        {
            public static bool enabled { get => Flag(0); set => Flag(0, value); }
        }

        /// <summary>CPU attention on libtorch builds without a fused CPU kernel (&lt; 2.1).</summary>
        public static class cpu
        {
            /// <summary>fp32 scaled_dot_product_attention without a mask runs a blocked kernel (never holding the
            /// [.., L, S] scores; core/native/src/attention.cpp) once the scores would take this many bytes
            /// (default 512 MiB: SD1.5's 4096-token self-attention at 512 px) with gradients, twice as many without
            /// (nothing is kept for backward then, and the composed ops are faster on some CPUs); 0 = always,
            /// long.MaxValue = never.</summary>
            public static long blocked_attention_min_bytes
            {
                get { Library.EnsureLoaded(); return Native.sudo_sdpa_blocked_min_bytes(-1); }
                set
                {
                    ArgumentOutOfRangeException.ThrowIfNegative(value);
                    Library.EnsureLoaded();
                    Native.sudo_sdpa_blocked_min_bytes(value);
                }
            }
        }

        public static class cuda
        {
            public static class matmul
            {
                /// <summary>TF32 tensor-core matmuls on Ampere and newer (PyTorch's default: off for matmul).</summary>
                public static bool allow_tf32 { get => Flag(1); set => Flag(1, value); }
            }
        }

        public static class cudnn
        {
            /// <summary>TF32 in cuDNN convolutions (PyTorch's default: on).</summary>
            public static bool allow_tf32 { get => Flag(2); set => Flag(2, value); }
            /// <summary>Let cuDNN time its algorithms for each new input shape and keep the fastest.</summary>
            public static bool benchmark { get => Flag(3); set => Flag(3, value); }
        }
    }
}
