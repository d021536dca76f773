using static Sudo.Torch.torch;

namespace Sudo.Torch;

/// <summary>CPU offload of a frozen module, as accelerate.cpu_offload: its weights live on the CPU and are copied
/// to the execution device only for the span of an <see cref="onto"/> scope. Leaving the scope drops the device
/// copies and points the parameters back at the CPU weights — frozen weights cannot have changed, so nothing
/// is copied back. Moving whole modules (not accelerate's per-leaf hooks) keeps one module's weights on the
/// device at a time, the way diffusers' enable_model_cpu_offload does. On a CPU execution device it does nothing.</summary>
public sealed class CpuOffload
{
    private readonly (Tensor live, Tensor host)[] _tensors;

    public Device execution_device { get; }
    /// <summary>Whether weights move: false on a CPU execution device.</summary>
    public bool active { get; }

    public CpuOffload(nn.Module module, Device execution_device) : this(module, execution_device, copyOnCpu: false) { }

    /// <param name="copyOnCpu">Tests: make device copies even on a CPU execution device, so the scope's
    /// mechanics can be checked on a machine without a GPU.</param>
    internal CpuOffload(nn.Module module, Device execution_device, bool copyOnCpu)
    {
        this.execution_device = execution_device;
        active = copyOnCpu || execution_device.Type != DeviceType.CPU;
        if (module.parameters().Any(p => p.requires_grad))
            throw new ArgumentException($"CpuOffload is for frozen modules: {module.GetType().Name} has parameters that require grad (call requires_grad_(false) first)");
        if (active) module.to(Device.CPU);
        // detach(): a second handle on the same CPU storage that set_data on the live tensor does not repoint.
        _tensors = module.parameters().Concat(module.buffers())
            .Select(t => (t, Owned(t.detach()))).ToArray();
    }

    // Held for the module's lifetime, whatever scope is open now.
    private static Tensor Owned(Tensor t)
    {
        DisposeScope.Current?.Detach(t);
        return t;
    }

    private int _depth;

    /// <summary>The module's weights on the execution device until the returned scope is disposed. Scopes nest:
    /// only the outermost one copies and releases.</summary>
    public IDisposable onto()
    {
        if (!active) return Nothing.Instance;
        if (_depth++ > 0) return new Scope(this);
        using (no_grad())
            foreach (var (live, host) in _tensors)
            {
                using var copy = execution_device.Type == DeviceType.CPU ? host.clone() : host.to(execution_device);
                live.set_data(copy);
            }
        return new Scope(this);
    }

    private void Release()
    {
        if (--_depth > 0) return;
        using (no_grad())
            foreach (var (live, host) in _tensors) live.set_data(host);
    }

    private sealed class Scope(CpuOffload owner) : IDisposable
    {
        private CpuOffload? _owner = owner;
        public void Dispose()
        {
            _owner?.Release();
            _owner = null;
        }
    }

    private sealed class Nothing : IDisposable
    {
        public static readonly Nothing Instance = new();
        public void Dispose() { }
    }
}
