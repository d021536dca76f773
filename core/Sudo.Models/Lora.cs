// LoRA adapters on the UNet's attention projections (to_q, to_k, to_v, to_out.0), PEFT semantics:
// y = W x + (α/r)·B(A x), B initialised to zero so training starts at the base model. Saved as
// pytorch_lora_weights.safetensors with keys unet.<module>.lora_A.weight / lora_B.weight plus a PEFT
// adapter_config.json, which diffusers' load_lora_weights reads.
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

public sealed class LoraAdapter : nn.ILinearAdapter, IDisposable
{
    public Parameter lora_A { get; }
    public Parameter lora_B { get; }
    public double scale { get; }
    public bool enabled { get; set; } = true;

    public LoraAdapter(nn.Linear layer, int rank, double alpha, string init, Generator? generator)
    {
        var dev = layer.weight.device;
        using (var a = empty([rank, layer.in_features], ScalarType.Float32, dev)) lora_A = new Parameter(a);
        using (var b = zeros([layer.out_features, rank], ScalarType.Float32, dev)) lora_B = new Parameter(b);
        if (init == "gaussian") nn.init.normal_(lora_A, 0, 1.0 / rank, generator);
        else nn.init.kaiming_uniform_(lora_A, Math.Sqrt(5), generator);
        scale = alpha / rank;
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = nn.functional.linear(x.to(lora_A.dtype), lora_A);
        var y = nn.functional.linear(h, lora_B) * scale;
        return scope.MoveToOuter(y.to(x.dtype));
    }

    /// <summary>ΔW = (α/r)·B·A.</summary>
    public Tensor delta_weight()
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(lora_B.matmul(lora_A) * scale);
    }

    public void Dispose()
    {
        lora_A.Dispose();
        lora_B.Dispose();
    }
}

public sealed record LoraConfig(int r = 4, double lora_alpha = 4, string[]? target_modules = null, string init_lora_weights = "gaussian")
{
    public string[] Targets => target_modules ?? ["to_k", "to_q", "to_v", "to_out.0"];
}

/// <summary>The LoRA adapters attached to one model, by module path.</summary>
public sealed class Lora : IDisposable
{
    public LoraConfig config { get; }
    public IReadOnlyDictionary<string, LoraAdapter> adapters => _adapters;
    private readonly Dictionary<string, LoraAdapter> _adapters = new();
    private readonly Dictionary<string, nn.Linear> _layers = new();
    private bool _merged;

    private Lora(LoraConfig config) => this.config = config;

    /// <summary>Adds adapters to every Linear whose path ends with a target (diffusers/PEFT matching:
    /// "to_q" matches "...attn1.to_q", "to_out.0" matches "...attn1.to_out.0").</summary>
    public static Lora Attach(nn.Module model, LoraConfig config, Generator? generator = null)
    {
        var lora = new Lora(config);
        foreach (var (name, m) in model.named_modules())
        {
            if (m is not nn.Linear lin) continue;
            if (!config.Targets.Any(t => name == t || name.EndsWith("." + t, StringComparison.Ordinal))) continue;
            if (lin.adapter != null) throw new InvalidOperationException($"{name} already has an adapter");
            var a = new LoraAdapter(lin, config.r, config.lora_alpha, config.init_lora_weights, generator);
            lin.adapter = a;
            lora._adapters[name] = a;
            lora._layers[name] = lin;
        }
        if (lora._adapters.Count == 0) throw new ArgumentException($"no Linear layer matches the LoRA targets [{string.Join(", ", config.Targets)}]");
        return lora;
    }

    public IEnumerable<Parameter> parameters() => _adapters.Values.SelectMany(a => new[] { a.lora_A, a.lora_B });

    /// <summary>Adapters off: the model computes as its base (the DPO reference without a second copy).</summary>
    public IDisposable disabled()
    {
        foreach (var a in _adapters.Values) a.enabled = false;
        return new Restore(() => { foreach (var a in _adapters.Values) a.enabled = !_merged; });
    }

    private sealed class Restore(Action a) : IDisposable
    {
        private Action? _a = a;
        public void Dispose()
        {
            _a?.Invoke();
            _a = null;
        }
    }

    /// <summary>W ← W + (α/r)·B·A for every adapted layer (adapters then stay off).</summary>
    public void merge()
    {
        if (_merged) return;
        using var _ = no_grad();
        foreach (var (name, a) in _adapters)
        {
            using var scope = NewDisposeScope();
            var w = _layers[name].weight;
            w.add_(a.delta_weight().to(w.dtype));
            a.enabled = false;
        }
        _merged = true;
    }

    public void unmerge()
    {
        if (!_merged) return;
        using var _ = no_grad();
        foreach (var (name, a) in _adapters)
        {
            using var scope = NewDisposeScope();
            var w = _layers[name].weight;
            w.sub_(a.delta_weight().to(w.dtype));
            a.enabled = true;
        }
        _merged = false;
    }

    /// <summary>Keys unet.&lt;module&gt;.lora_A.weight [r, in] / lora_B.weight [out, r].</summary>
    public Dictionary<string, Tensor> state_dict(string prefix = "unet.")
    {
        var d = new Dictionary<string, Tensor>();
        foreach (var (name, a) in _adapters)
        {
            d[$"{prefix}{name}.lora_A.weight"] = a.lora_A.detach();
            d[$"{prefix}{name}.lora_B.weight"] = a.lora_B.detach();
        }
        return d;
    }

    public void load_state_dict(IReadOnlyDictionary<string, Tensor> sd, string prefix = "unet.")
    {
        var missing = new List<string>();
        using var _ = no_grad();
        foreach (var (name, a) in _adapters)
        {
            foreach (var (key, p) in new[] { ($"{prefix}{name}.lora_A.weight", a.lora_A), ($"{prefix}{name}.lora_B.weight", a.lora_B) })
            {
                // Also accept diffusers' older lora.down / lora.up naming.
                var alt = key.Replace(".lora_A.", ".lora.down.").Replace(".lora_B.", ".lora.up.");
                if (sd.TryGetValue(key, out var t) || sd.TryGetValue(alt, out t))
                {
                    if (!t.shape.SequenceEqual(p.shape))
                        throw new InvalidDataException($"LoRA weight {key}: checkpoint [{string.Join(", ", t.shape)}] vs adapter [{string.Join(", ", p.shape)}]");
                    p.copy_(t);
                }
                else missing.Add(key);
            }
        }
        if (missing.Count > 0) throw new InvalidDataException($"LoRA weights missing {missing.Count} keys, e.g. {string.Join(", ", missing.Take(5))}");
    }

    /// <summary>Writes pytorch_lora_weights.safetensors and adapter_config.json (atomically).</summary>
    public void save(string folder)
    {
        Directory.CreateDirectory(folder);
        using var scope = NewDisposeScope();
        safetensors.save_file(state_dict(), Path.Combine(folder, "pytorch_lora_weights.safetensors"), new Dictionary<string, string> { ["format"] = "pt" });
        var cfg = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["r"] = config.r,
            ["lora_alpha"] = config.lora_alpha,
            ["target_modules"] = new JsonArray(config.Targets.Select(t => (JsonNode)t).ToArray()),
            ["init_lora_weights"] = config.init_lora_weights,
            ["lora_dropout"] = 0.0,
            ["bias"] = "none",
            ["use_rslora"] = false,
            ["use_dora"] = false,
            ["fan_in_fan_out"] = false,
        };
        AtomicFile.WriteAllText(Path.Combine(folder, "adapter_config.json"), cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    public static LoraConfig ReadConfig(string folder)
    {
        var o = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "adapter_config.json")))!.AsObject();
        return new LoraConfig(o["r"]!.GetValue<int>(), o["lora_alpha"]!.GetValue<double>(),
            (o["target_modules"] as JsonArray)?.Select(x => x!.GetValue<string>()).ToArray(), o["init_lora_weights"]?.ToString() ?? "gaussian");
    }

    public void Dispose()
    {
        foreach (var (name, a) in _adapters)
        {
            _layers[name].adapter = null;
            a.Dispose();
        }
        _adapters.Clear();
    }
}
