namespace Sudo.Torch;

/// <summary>A trainable tensor: a leaf that requires grad by default. Lives outside every DisposeScope
/// (creating one inside a scope never lets the scope dispose it); its module disposes it.</summary>
public sealed class Parameter : Tensor
{
    public Parameter(Tensor data, bool requires_grad = true)
        : base(Native.Check(Native.sudo_detach(data.Handle), "Parameter"), registerInScope: false)
    {
        IsMapped = data.IsMapped;
        if (requires_grad) this.requires_grad = true;
    }
}

/// <summary>Result of load_state_dict: what did not match.</summary>
public sealed record LoadResult(IReadOnlyList<string> MissingKeys, IReadOnlyList<string> UnexpectedKeys, IReadOnlyList<string> ShapeMismatches)
{
    public bool IsExact => MissingKeys.Count == 0 && UnexpectedKeys.Count == 0 && ShapeMismatches.Count == 0;
}

public static partial class torch
{
    public static partial class nn
    {
        /// <summary>Base of every module: children, parameters and buffers registered under explicit names,
        /// so state-dict keys are exactly the dotted names the module chose (diffusers' keys).</summary>
        public abstract class Module : IDisposable
        {
            private readonly List<KeyValuePair<string, Parameter?>> _parameters = [];
            private readonly List<(string Name, Tensor? Tensor, bool Persistent)> _buffers = [];
            private readonly List<KeyValuePair<string, Module>> _modules = [];

            public bool training { get; private set; } = true;

            /// <summary>When true, modules that support it recompute their blocks in backward.</summary>
            public bool gradient_checkpointing { get; set; }

            protected Module() => Library.EnsureLoaded();

            protected T register_module<T>(string name, T module) where T : Module
            {
                CheckName(name);
                if (_modules.Any(m => m.Key == name)) throw new ArgumentException($"{GetType().Name}: a child module named '{name}' is already registered");
                _modules.Add(new(name, module));
                return module;
            }

            protected Parameter? register_parameter(string name, Parameter? p)
            {
                CheckName(name);
                if (_parameters.Any(x => x.Key == name)) throw new ArgumentException($"{GetType().Name}: a parameter named '{name}' is already registered");
                _parameters.Add(new(name, p));
                return p;
            }

            /// <summary>Registers a buffer; the module owns it from here (it leaves any DisposeScope).</summary>
            protected Tensor register_buffer(string name, Tensor t, bool persistent = true)
            {
                CheckName(name);
                t.Owner = null;
                _buffers.Add((name, t, persistent));
                return t;
            }

            /// <summary>Replaces a registered buffer's value (the old one is disposed).</summary>
            protected void set_buffer(string name, Tensor t)
            {
                var i = _buffers.FindIndex(b => b.Name == name);
                if (i < 0) throw new ArgumentException($"{GetType().Name} has no buffer '{name}'");
                t.Owner = null;
                var old = _buffers[i].Tensor;
                _buffers[i] = (name, t, _buffers[i].Persistent);
                if (!ReferenceEquals(old, t)) old?.Dispose();
            }

            private static void CheckName(string name)
            {
                if (string.IsNullOrEmpty(name) || name.Contains('.'))
                    throw new ArgumentException($"module attribute name '{name}' must be non-empty and contain no '.'");
            }

            public IEnumerable<(string name, Module module)> named_children() => _modules.Select(m => (m.Key, m.Value));
            public IEnumerable<Module> children() => _modules.Select(m => m.Value);

            public IEnumerable<(string name, Module module)> named_modules(string prefix = "")
            {
                yield return (prefix, this);
                foreach (var (n, m) in _modules)
                    foreach (var x in m.named_modules(prefix.Length == 0 ? n : prefix + "." + n))
                        yield return x;
            }

            public IEnumerable<(string name, Parameter parameter)> named_parameters(bool recurse = true)
            {
                foreach (var (prefix, m) in recurse ? named_modules() : [("", this)])
                    foreach (var (n, p) in m._parameters)
                        if (p != null) yield return (prefix.Length == 0 ? n : prefix + "." + n, p);
            }

            public IEnumerable<Parameter> parameters(bool recurse = true) => named_parameters(recurse).Select(x => x.parameter);

            public IEnumerable<(string name, Tensor buffer)> named_buffers(bool recurse = true, bool persistentOnly = false)
            {
                foreach (var (prefix, m) in recurse ? named_modules() : [("", this)])
                    foreach (var (n, t, persistent) in m._buffers)
                        if (t != null && (persistent || !persistentOnly)) yield return (prefix.Length == 0 ? n : prefix + "." + n, t);
            }

            public IEnumerable<Tensor> buffers(bool recurse = true) => named_buffers(recurse).Select(x => x.buffer);

            public Module get_submodule(string path)
            {
                var m = this;
                if (path.Length == 0) return m;
                foreach (var part in path.Split('.'))
                {
                    var next = m._modules.FirstOrDefault(c => c.Key == part).Value;
                    m = next ?? throw new KeyNotFoundException($"{GetType().Name} has no submodule '{path}' (no '{part}' under it)");
                }
                return m;
            }

            public long num_parameters(bool trainableOnly = false) =>
                parameters().Where(p => !trainableOnly || p.requires_grad).Sum(p => p.numel());

            public virtual Module train(bool mode = true)
            {
                foreach (var (_, m) in named_modules()) m.training = mode;
                return this;
            }

            public Module eval() => train(false);

            /// <summary>Sets requires_grad on every parameter (freeze = false).</summary>
            public Module requires_grad_(bool on = true)
            {
                foreach (var p in parameters()) p.requires_grad = on;
                return this;
            }

            public Module freeze() => requires_grad_(false);
            public Module unfreeze() => requires_grad_(true);

            public void zero_grad(bool set_to_none = true)
            {
                foreach (var p in parameters()) p.zero_grad(set_to_none);
            }

            /// <summary>Moves parameters and buffers in place (their identity is kept, so optimizers still
            /// hold them). dtype changes apply to floating-point tensors only, as in PyTorch.</summary>
            public Module to(Device? device = null, ScalarType? dtype = null)
            {
                foreach (var p in parameters()) Move(p, device, dtype);
                foreach (var b in buffers()) Move(b, device, dtype);
                return this;
            }

            public Module to(ScalarType dtype) => to(null, dtype);

            private static void Move(Tensor t, Device? device, ScalarType? dtype)
            {
                var dt = dtype.HasValue && t.is_floating_point() ? dtype : null;
                if (device is null && dt is null) return;
                using var moved = t.to(device ?? t.device, dt ?? t.dtype);
                using (no_grad()) t.set_data(moved);
                t.IsMapped = false;
            }

            /// <summary>Detached aliases of every parameter and persistent buffer, keyed by dotted name, in
            /// PyTorch's order. The tensors belong to the current scope (or the caller).</summary>
            public Dictionary<string, Tensor> state_dict()
            {
                // PyTorch's order: each module's parameters, then its persistent buffers, then its children.
                var d = new Dictionary<string, Tensor>();
                foreach (var (prefix, m) in named_modules())
                {
                    var pre = prefix.Length == 0 ? "" : prefix + ".";
                    foreach (var (n, p) in m._parameters)
                        if (p != null) d[pre + n] = p.detach();
                    foreach (var (n, b, persistent) in m._buffers)
                        if (b != null && persistent) d[pre + n] = b.detach();
                }
                return d;
            }

            /// <summary>Copies tensors into parameters and buffers by name (converting dtype/device). Strict by
            /// default: missing, unexpected and shape-mismatched keys are all listed in one error.</summary>
            public LoadResult load_state_dict(IReadOnlyDictionary<string, Tensor> state, bool strict = true)
            {
                var targets = new Dictionary<string, Tensor>();
                foreach (var (n, p) in named_parameters()) targets[n] = p;
                foreach (var (n, b) in named_buffers(persistentOnly: true)) targets[n] = b;
                var missing = targets.Keys.Where(k => !state.ContainsKey(k)).ToList();
                var unexpected = state.Keys.Where(k => !targets.ContainsKey(k)).ToList();
                var mismatched = new List<string>();
                foreach (var (k, dst) in targets)
                {
                    if (!state.TryGetValue(k, out var src)) continue;
                    var ds = dst.shape;
                    var ss = src.shape;
                    if (!ds.SequenceEqual(ss))
                        mismatched.Add($"{k}: checkpoint [{string.Join(", ", ss)}] vs model [{string.Join(", ", ds)}]");
                }
                var result = new LoadResult(missing, unexpected, mismatched);
                if (mismatched.Count > 0 || (strict && !result.IsExact))
                    throw new InvalidDataException(LoadError(GetType().Name, result));
                using (no_grad())
                {
                    foreach (var (k, dst) in targets)
                    {
                        if (!state.TryGetValue(k, out var src)) continue;
                        if (dst.device.Type == DeviceType.Meta)
                            throw new InvalidOperationException($"cannot load '{k}' into a parameter on the meta device (it has no memory): build the module on cpu or cuda");
                        dst.copy_(src);
                        dst.IsMapped = false;
                    }
                }
                return result;
            }

            internal static string LoadError(string model, LoadResult r)
            {
                var parts = new List<string>();
                if (r.MissingKeys.Count > 0) parts.Add($"missing keys ({r.MissingKeys.Count}): {Preview(r.MissingKeys)}");
                if (r.UnexpectedKeys.Count > 0) parts.Add($"unexpected keys ({r.UnexpectedKeys.Count}): {Preview(r.UnexpectedKeys)}");
                if (r.ShapeMismatches.Count > 0) parts.Add($"shape mismatches ({r.ShapeMismatches.Count}): {Preview(r.ShapeMismatches)}");
                return $"Error(s) in loading state_dict for {model}: " + string.Join("; ", parts);
            }

            private static string Preview(IReadOnlyList<string> xs) =>
                string.Join(", ", xs.Take(20)) + (xs.Count > 20 ? $", ... ({xs.Count - 20} more)" : "");

            public virtual void Dispose()
            {
                foreach (var (_, p) in _parameters) p?.Dispose();
                foreach (var (_, t, _) in _buffers) t?.Dispose();
                foreach (var (_, m) in _modules) m.Dispose();
                GC.SuppressFinalize(this);
            }

            public override string ToString() => ToString(0);

            private string ToString(int indent)
            {
                var pad = new string(' ', indent + 2);
                var inner = string.Concat(_modules.Select(m => $"\n{pad}({m.Key}): {m.Value.ToString(indent + 2)}"));
                return inner.Length == 0 ? $"{GetType().Name}({ExtraRepr()})" : $"{GetType().Name}({ExtraRepr()}{inner}\n{new string(' ', indent)})";
            }

            protected virtual string ExtraRepr() => "";
        }

        /// <summary>A module with one input and one output: forward(x), callable as m.call(x).</summary>
        public abstract class Module<TIn, TOut> : Module
        {
            public abstract TOut forward(TIn input);
            public TOut call(TIn input) => forward(input);
        }
    }
}
