using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Sudo.Torch;

internal static unsafe class Autograd
{
    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    internal static void ReleaseCallback(IntPtr ctx)
    {
        if (ctx != IntPtr.Zero) GCHandle.FromIntPtr(ctx).Free();
    }

    // Runs a checkpointed block for the shim (in forward without grad, in backward with grad). Never
    // lets an exception cross into native code: it becomes the shim's error text.
    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    internal static int BlockCallback(IntPtr ctx, IntPtr* inputs, int n, IntPtr* outs, int cap, int* nout)
    {
        *nout = 0;
        try
        {
            var fn = (Func<Tensor[], Tensor[]>)GCHandle.FromIntPtr(ctx).Target!;
            using var scope = torch.NewDisposeScope();
            var ins = new Tensor[n];
            for (var i = 0; i < n; i++) ins[i] = Tensor.Wrap(Native.sudo_shallow_copy(inputs[i]), "checkpoint");
            var res = fn(ins);
            if (res.Length > cap) throw new InvalidOperationException($"checkpointed block returned {res.Length} tensors; at most {cap} are supported");
            var hs = new IntPtr[res.Length];
            for (var i = 0; i < res.Length; i++) hs[i] = Native.Check(Native.sudo_shallow_copy(res[i].Handle), "checkpoint");
            for (var i = 0; i < hs.Length; i++) outs[i] = hs[i];
            *nout = hs.Length;
            return 0;
        }
        catch (Exception e)
        {
            Native.sudo_set_callback_error($"{e.GetType().Name}: {e.Message}");
            return -1;
        }
    }
}

public static unsafe partial class torch
{
    public static class autograd
    {
        /// <summary>Gradients of outputs w.r.t. inputs (torch.autograd.grad); null entries for unused
        /// inputs when allow_unused.</summary>
        public static Tensor?[] grad(Tensor[] outputs, Tensor[] inputs, Tensor?[]? grad_outputs = null,
            bool retain_graph = false, bool create_graph = false, bool allow_unused = false)
        {
            if (grad_outputs != null && grad_outputs.Length != outputs.Length)
                throw new ArgumentException($"autograd.grad: {grad_outputs.Length} grad_outputs for {outputs.Length} outputs");
            var o = new IntPtr[outputs.Length];
            var i = new IntPtr[inputs.Length];
            var g = grad_outputs is null ? null : new IntPtr[outputs.Length];
            for (var k = 0; k < o.Length; k++) o[k] = outputs[k].Handle;
            for (var k = 0; k < i.Length; k++) i[k] = inputs[k].Handle;
            if (g != null) for (var k = 0; k < g.Length; k++) g[k] = grad_outputs![k]?.Handle ?? IntPtr.Zero;
            var r = new IntPtr[inputs.Length];
            fixed (IntPtr* po = o, pi = i, pg = g, pr = r)
                Native.CheckStatus(Native.sudo_autograd_grad(po, o.Length, pi, i.Length, pg, retain_graph || create_graph ? 1 : 0,
                    create_graph ? 1 : 0, allow_unused ? 1 : 0, pr), "autograd.grad");
            var res = new Tensor?[r.Length];
            for (var k = 0; k < r.Length; k++) res[k] = r[k] == IntPtr.Zero ? null : new Tensor(r[k]);
            return res;
        }

        public static void set_detect_anomaly(bool on)
        {
            Library.EnsureLoaded();
            Native.sudo_set_anomaly_enabled(on ? 1 : 0);
        }

        public static bool is_anomaly_enabled() => Native.sudo_anomaly_enabled() != 0;

        /// <summary>using (torch.autograd.detect_anomaly()) { ... }: backward errors name the forward op.</summary>
        public static IDisposable detect_anomaly()
        {
            var prev = is_anomaly_enabled();
            set_detect_anomaly(true);
            return new Callback(() => set_detect_anomaly(prev));
        }
    }

    public static class utils
    {
        public static class checkpoint
        {
            /// <summary>Gradient checkpointing (reentrant): runs <paramref name="block"/> without keeping its
            /// activations and re-runs it in backward. Pass every tensor the block reads as an input, and
            /// the trainable weights it uses as <paramref name="parameters"/> — they get gradients even when
            /// no input requires grad (LoRA on a frozen UNet). The default RNG and autocast state of the
            /// forward are replayed in backward.</summary>
            public static Tensor[] run(Func<Tensor[], Tensor[]> block, Tensor[] inputs, IEnumerable<Tensor>? parameters = null, bool preserve_rng_state = true)
            {
                Library.EnsureLoaded();
                var ps = parameters?.Where(p => p.requires_grad).ToArray() ?? [];
                var ih = new IntPtr[inputs.Length];
                var ph = new IntPtr[ps.Length];
                for (var k = 0; k < ih.Length; k++) ih[k] = inputs[k].Handle;
                for (var k = 0; k < ph.Length; k++) ph[k] = ps[k].Handle;
                const int cap = 64;
                var outs = stackalloc IntPtr[cap];
                int n;
                var ctx = GCHandle.ToIntPtr(GCHandle.Alloc(block));
                fixed (IntPtr* pi = ih, pp = ph)
                    Native.CheckStatus(Native.sudo_checkpoint(&Autograd.BlockCallback, ctx, pi, ih.Length, pp, ph.Length,
                        preserve_rng_state ? 1 : 0, outs, cap, &n), "checkpoint");
                var res = new Tensor[n];
                for (var k = 0; k < n; k++) res[k] = new Tensor(outs[k]);
                return res;
            }

            public static Tensor run(Func<Tensor, Tensor> block, Tensor input, IEnumerable<Tensor>? parameters = null, bool preserve_rng_state = true) =>
                run(xs => [block(xs[0])], [input], parameters, preserve_rng_state)[0];
        }
    }

    /// <summary>Automatic mixed precision scope (torch.autocast). On CPU it computes matmul/conv/linear in
    /// bf16 but, unlike CUDA autocast, leaves group_norm, layer_norm, softmax and silu in bf16: modules
    /// upcast those by hand (see <see cref="is_autocast_enabled"/>).</summary>
    public static IDisposable autocast(Device device, ScalarType? dtype = null, bool enabled = true)
    {
        Library.EnsureLoaded();
        var dev = (int)device.Type;
        if (device.Type is not (DeviceType.CPU or DeviceType.CUDA)) throw new ArgumentException($"autocast supports cpu and cuda, not {device}");
        var dt = dtype ?? (device.Type == DeviceType.CPU ? ScalarType.BFloat16 : ScalarType.Float16);
        if (device.Type == DeviceType.CPU && dt != ScalarType.BFloat16)
            throw new ArgumentException($"CPU autocast supports only torch.bfloat16 (libtorch cannot compute {dt.TorchName()} on CPU)");
        var prevOn = Native.sudo_autocast_enabled(dev) != 0;
        var prevDt = Native.sudo_autocast_dtype(dev);
        Native.CheckStatus(Native.sudo_autocast_set(dev, enabled ? 1 : 0, (int)dt), "autocast");
        Native.sudo_autocast_nesting(1);
        return new Callback(() =>
        {
            Native.sudo_autocast_nesting(-1);
            Native.CheckStatus(Native.sudo_autocast_set(dev, prevOn ? 1 : 0, prevDt), "autocast");
        });
    }

    public static bool is_autocast_enabled(DeviceType device = DeviceType.CPU) => Native.sudo_autocast_enabled((int)device) != 0;

    /// <summary>The dtype autocast computes in on <paramref name="device"/> (torch.get_autocast_dtype).</summary>
    public static ScalarType get_autocast_dtype(DeviceType device = DeviceType.CPU) => (ScalarType)Native.sudo_autocast_dtype((int)device);

    private sealed class Callback(Action onDispose) : IDisposable
    {
        private Action? _action = onDispose;
        public void Dispose()
        {
            var a = _action;
            _action = null;
            a?.Invoke();
        }
    }
}
