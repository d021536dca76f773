// LoRA adapters on the UNet's attention projections (to_q, to_k, to_v, to_out.0), PEFT semantics:
// y = W x + (α/r)·B(A x), B initialised to zero so training starts at the base model. Saved as
// pytorch_lora_weights.safetensors with keys unet.<module>.lora_A.weight / lora_B.weight plus a PEFT
// adapter_config.json, which diffusers' load_lora_weights reads.
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>One LoRA adapter on a Linear (A [r, in], B [out, r]) or a Conv2d (A [r, in, kh, kw] with the layer's stride,
/// padding and dilation, B [out, r, 1, 1]), as PEFT's lora.Linear / lora.Conv2d (peft/tuners/lora/layer.py).</summary>
public sealed class LoraAdapter : nn.IAdapter, IDisposable
{
    public Parameter lora_A { get; }
    public Parameter lora_B { get; }
    public int rank { get; }
    public double alpha { get; }
    public double scale { get; }
    public bool enabled { get; set; } = true;
    private readonly nn.Conv2d? _conv;

    public LoraAdapter(nn.Linear layer, int rank, double alpha, string init, Generator? generator)
        : this([rank, layer.in_features], [layer.out_features, rank], layer.weight.device, rank, alpha, init, generator) { }

    public LoraAdapter(nn.Conv2d layer, int rank, double alpha, string init, Generator? generator)
        : this(ConvShapeA(layer, rank), [layer.weight.size(0), rank, 1, 1], layer.weight.device, rank, alpha, init, generator) => _conv = layer;

    /// <summary>lora_A's shape for a convolution, checked before anything is allocated.</summary>
    private static long[] ConvShapeA(nn.Conv2d layer, int rank) => layer.groups == 1
        ? [rank, layer.weight.size(1), layer.weight.size(2), layer.weight.size(3)]
        : throw new NotSupportedException($"LoRA on a grouped convolution (groups {layer.groups}) is not supported");

    private LoraAdapter(long[] aShape, long[] bShape, Device dev, int rank, double alpha, string init, Generator? generator)
    {
        if (rank < 1) throw new ArgumentException($"LoRA rank must be ≥ 1, got {rank}");
        using (var a = empty(aShape, ScalarType.Float32, dev)) lora_A = new Parameter(a);
        using (var b = zeros(bShape, ScalarType.Float32, dev)) lora_B = new Parameter(b);
        if (init == "gaussian") nn.init.normal_(lora_A, 0, 1.0 / rank, generator);
        else nn.init.kaiming_uniform_(lora_A, Math.Sqrt(5), generator);
        this.rank = rank;
        this.alpha = alpha;
        scale = alpha / rank;
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        Tensor y;
        if (_conv is { } c)
        {
            var h = nn.functional.conv2d(x.to(lora_A.dtype), lora_A, null, c.stride, c.padding, c.dilation);
            y = nn.functional.conv2d(h, lora_B) * scale;
        }
        else
        {
            var h = nn.functional.linear(x.to(lora_A.dtype), lora_A);
            y = nn.functional.linear(h, lora_B) * scale;
        }
        return scope.MoveToOuter(y.to(x.dtype));
    }

    /// <summary>ΔW = (α/r)·B·A, in the layer weight's shape (for a convolution B·A over the flattened kernels, as PEFT's
    /// and sd-scripts' merges compute it).</summary>
    public Tensor delta_weight()
    {
        using var scope = NewDisposeScope();
        if (_conv is { } c) return scope.MoveToOuter((lora_B.flatten(1).matmul(lora_A.flatten(1)) * scale).reshape(c.weight.shape));
        return scope.MoveToOuter(lora_B.matmul(lora_A) * scale);
    }

    public void Dispose()
    {
        lora_A.Dispose();
        lora_B.Dispose();
    }
}

/// <summary>A PEFT LoraConfig: rank r and α for every adapted module, except the modules a <paramref name="rank_pattern"/>
/// or <paramref name="alpha_pattern"/> key matches (PEFT's get_pattern_key, peft/utils/other.py: the first key k in order
/// for which the module name matches the regular expression <c>(.*\.)?(k)$</c>), which get that key's value.</summary>
public sealed record LoraConfig(int r = 4, double lora_alpha = 4, string[]? target_modules = null, string init_lora_weights = "gaussian",
    IReadOnlyDictionary<string, int>? rank_pattern = null, IReadOnlyDictionary<string, double>? alpha_pattern = null)
{
    public string[] Targets => target_modules ?? ["to_k", "to_q", "to_v", "to_out.0"];

    public int RankFor(string module) => PatternKey(rank_pattern?.Keys, module) is { } k ? rank_pattern![k] : r;
    public double AlphaFor(string module) => PatternKey(alpha_pattern?.Keys, module) is { } k ? alpha_pattern![k] : lora_alpha;

    /// <summary>At most this many distinct rank_pattern / alpha_pattern keys of one config may be regular expressions
    /// (PEFT configs hold a few; keys that are module names, with '.' as their only special character, are matched
    /// without building one). Each compiled expression costs up to a few MB.</summary>
    public const int MaxRegexKeys = 256;

    /// <summary>The longest rank_pattern / alpha_pattern key compiled as a regular expression (module names are ~100 characters).</summary>
    public const int MaxRegexKeyLength = 1024;

    // The compiled keys live as long as their config (a process that reads many configs must not keep them all:
    // libFuzzer's lora-config run ran out of memory after 150 k configs with a process-wide cache, finding 26).
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<LoraConfig,
        System.Collections.Concurrent.ConcurrentDictionary<string, System.Text.RegularExpressions.Regex>> Compiled = new();

    private string? PatternKey(IEnumerable<string>? keys, string module)
    {
        if (keys == null) return null;
        foreach (var k in keys)
        {
            if (IsModuleName(k))
            {
                if (MatchesModuleName(k, module)) return k;
                continue;
            }
            // A key with other special characters is a regular expression (PEFT: "experts.*.w1"); NonBacktracking keeps
            // a hostile config from taking exponential time.
            var cache = Compiled.GetValue(this, _ => new());
            if (!cache.TryGetValue(k, out var re))
            {
                if (k.Length > MaxRegexKeyLength)
                    throw new InvalidDataException($"LoRA config: a rank_pattern/alpha_pattern key of {k.Length} characters is longer than Sudo compiles ({MaxRegexKeyLength}): '{k[..64]}...'");
                if (cache.Count >= MaxRegexKeys)
                    throw new InvalidDataException($"LoRA config: more than {MaxRegexKeys} rank_pattern/alpha_pattern keys are regular expressions (expected module names or a few patterns)");
                re = cache.GetOrAdd(k, key =>
                {
                    try { return new System.Text.RegularExpressions.Regex($"^(?:.*\\.)?(?:{key})$", System.Text.RegularExpressions.RegexOptions.NonBacktracking | System.Text.RegularExpressions.RegexOptions.CultureInvariant); }
                    catch (Exception e) when (e is ArgumentException or NotSupportedException)
                    {
                        throw new InvalidDataException($"LoRA config: rank_pattern/alpha_pattern key '{key}' is not a regular expression Sudo can match ({e.Message})");
                    }
                });
            }
            if (re.IsMatch(module)) return k;
        }
        return null;
    }

    /// <summary>True when <paramref name="key"/> has no regular-expression syntax but '.' (a module name such as
    /// "mid_block.attentions.0.proj_in").</summary>
    private static bool IsModuleName(string key) => key.Length > 0 && key.AsSpan().IndexOfAny("\\^$|?*+()[]{}") < 0;

    /// <summary>What the regular expression ^(?:.*\.)?(?:key)$ decides for a key that <see cref="IsModuleName"/>: '.' in the
    /// key matches any character but '\n', the part before it is empty or ends in '.' and has no '\n', and '$' also
    /// matches before a final '\n' (Python's re and .NET agree on all three).</summary>
    private static bool MatchesModuleName(string key, string module)
    {
        bool At(int end)
        {
            int start = end - key.Length;
            if (start < 0) return false;
            for (int i = 0; i < key.Length; i++)
            {
                char c = module[start + i];
                if (key[i] == '.' ? c == '\n' : c != key[i]) return false;
            }
            if (start == 0) return true;
            return module[start - 1] == '.' && module.AsSpan(0, start - 1).IndexOf('\n') < 0;
        }
        return At(module.Length) || (module.Length > 0 && module[^1] == '\n' && At(module.Length - 1));
    }

    /// <summary>This config as PEFT writes it (adapter_config.json, and diffusers' lora_adapter_metadata).</summary>
    public JsonObject ToJson() => new()
    {
        ["peft_type"] = "LORA",
        ["r"] = r,
        ["lora_alpha"] = lora_alpha,
        ["target_modules"] = new JsonArray(Targets.Select(t => (JsonNode)t).ToArray()),
        ["rank_pattern"] = new JsonObject((rank_pattern ?? new Dictionary<string, int>()).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
        ["alpha_pattern"] = new JsonObject((alpha_pattern ?? new Dictionary<string, double>()).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
        ["init_lora_weights"] = init_lora_weights == "gaussian" ? "gaussian" : true,
        ["lora_dropout"] = 0.0,
        ["bias"] = "none",
        ["use_rslora"] = false,
        ["use_dora"] = false,
        ["fan_in_fan_out"] = false,
    };

    /// <summary>A PEFT config object (adapter_config.json, or one component's part of diffusers' lora_adapter_metadata).
    /// Settings Sudo's adapters do not implement (rsLoRA, DoRA, a LoRA bias, fan_in_fan_out, a regex target_modules
    /// string) are errors rather than silently different weights.</summary>
    public static LoraConfig FromJson(JsonObject o, string source)
    {
        T Get<T>(string key, T fallback)
        {
            if (o[key] is not { } n || n.GetValueKind() == JsonValueKind.Null) return fallback;
            try { return n.GetValue<T>(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            {
                throw new InvalidDataException($"{source}: '{key}' must be {(typeof(T) == typeof(string) ? "a string" : typeof(T) == typeof(bool) ? "true or false" : "a number")}, got {n.ToJsonString()}");
            }
        }
        foreach (var flag in new[] { "use_rslora", "use_dora", "fan_in_fan_out" })
            if (Get(flag, false)) throw new NotSupportedException($"{source}: {flag} is set; Sudo's LoRA adapters implement plain LoRA only");
        if (Get("bias", "none") != "none" || Get("lora_bias", false)) throw new NotSupportedException($"{source}: LoRA bias terms are not supported");
        var r = Get("r", 8);
        if (r < 1) throw new InvalidDataException($"{source}: r must be ≥ 1, got {r}");
        string[]? targets = o["target_modules"] switch
        {
            null => null,
            JsonArray a => a.Select(x => x?.GetValueKind() == JsonValueKind.String ? x.GetValue<string>() : throw new InvalidDataException($"{source}: target_modules must be a list of strings")).ToArray(),
            var n when n.GetValueKind() == JsonValueKind.Null => null,
            _ => throw new NotSupportedException($"{source}: target_modules as a regular expression string is not supported; list the module names"),
        };
        Dictionary<string, TV>? Map<TV>(string key)
        {
            if (o[key] is not JsonObject m) return o[key] is null || o[key]!.GetValueKind() == JsonValueKind.Null ? null : throw new InvalidDataException($"{source}: '{key}' must be an object");
            var d = new Dictionary<string, TV>();
            foreach (var (k, v) in m)
            {
                try { d[k] = v!.GetValue<TV>(); }
                catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
                {
                    throw new InvalidDataException($"{source}: {key}['{k}'] must be a number");
                }
            }
            return d.Count > 0 ? d : null;
        }
        var ranks = Map<int>("rank_pattern");
        if (ranks?.Values.Any(v => v < 1) == true) throw new InvalidDataException($"{source}: rank_pattern values must be ≥ 1");
        // init_lora_weights: true is PEFT's default (kaiming-uniform A); Sudo's own default is "gaussian" (A ~ N(0, 1/r)).
        var init = o["init_lora_weights"] is JsonValue iv && iv.GetValueKind() == JsonValueKind.True ? "kaiming" : "gaussian";
        return new LoraConfig(r, Get("lora_alpha", 8.0), targets, init, ranks, Map<double>("alpha_pattern"));
    }

    /// <summary>PEFT's get_peft_kwargs (diffusers/utils/peft_utils.py) for adapters of known per-module rank and α: r and
    /// lora_alpha are the most frequent values (ties: the first seen), the other modules go to rank_pattern / alpha_pattern
    /// under their full names, and target_modules lists every module.</summary>
    public static LoraConfig ForModules(IReadOnlyList<(string module, int rank, double alpha)> modules)
    {
        if (modules.Count == 0) throw new ArgumentException("no LoRA modules");
        static T MostCommon<T>(IEnumerable<T> xs) where T : notnull =>
            xs.Select((x, i) => (x, i)).GroupBy(p => p.x).OrderByDescending(g => g.Count()).ThenBy(g => g.Min(p => p.i)).First().Key;
        var r = MostCommon(modules.Select(m => m.rank));
        var alpha = MostCommon(modules.Select(m => m.alpha));
        var ranks = modules.Where(m => m.rank != r).ToDictionary(m => m.module, m => m.rank);
        var alphas = modules.Where(m => m.alpha != alpha).ToDictionary(m => m.module, m => m.alpha);
        return new LoraConfig(r, alpha, modules.Select(m => m.module).ToArray(), "gaussian", ranks.Count > 0 ? ranks : null, alphas.Count > 0 ? alphas : null);
    }
}

/// <summary>The LoRA adapters attached to one model, by module path.</summary>
public sealed class Lora : IDisposable
{
    /// <summary>The safetensors metadata key under which diffusers (0.34+, loaders/lora_base.py LORA_ADAPTER_METADATA_KEY)
    /// stores each component's PEFT config, its keys prefixed "unet.", "text_encoder."...</summary>
    public const string MetadataKey = "lora_adapter_metadata";

    public LoraConfig config { get; }
    public IReadOnlyDictionary<string, LoraAdapter> adapters => _adapters;
    private readonly Dictionary<string, LoraAdapter> _adapters = new();
    private readonly Dictionary<string, nn.Module> _layers = new();
    private bool _merged;

    private Lora(LoraConfig config) => this.config = config;

    /// <summary>Adds adapters to every Linear or Conv2d whose path ends with a target (diffusers/PEFT matching:
    /// "to_q" matches "...attn1.to_q", "to_out.0" matches "...attn1.to_out.0"), each with the rank and α the config gives
    /// its path.</summary>
    public static Lora Attach(nn.Module model, LoraConfig config, Generator? generator = null)
    {
        var lora = new Lora(config);
        try
        {
            foreach (var (name, m) in model.named_modules())
            {
                if (m is not (nn.Linear or nn.Conv2d)) continue;
                if (!config.Targets.Any(t => name == t || name.EndsWith("." + t, StringComparison.Ordinal))) continue;
                var (rank, alpha) = (config.RankFor(name), config.AlphaFor(name));
                LoraAdapter a;
                if (m is nn.Linear lin)
                {
                    if (lin.adapter != null) throw new InvalidOperationException($"{name} already has an adapter");
                    a = new LoraAdapter(lin, rank, alpha, config.init_lora_weights, generator);
                    lin.adapter = a;
                }
                else
                {
                    var conv = (nn.Conv2d)m;
                    if (conv.adapter != null) throw new InvalidOperationException($"{name} already has an adapter");
                    a = new LoraAdapter(conv, rank, alpha, config.init_lora_weights, generator);
                    conv.adapter = a;
                }
                lora._adapters[name] = a;
                lora._layers[name] = m;
            }
        }
        catch
        {
            lora.Dispose();
            throw;
        }
        if (lora._adapters.Count == 0) throw new ArgumentException($"no Linear or Conv2d layer matches the LoRA targets [{string.Join(", ", config.Targets.Take(8))}{(config.Targets.Length > 8 ? ", ..." : "")}]");
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

    private static Parameter WeightOf(nn.Module m) => m switch
    {
        nn.Linear l => l.weight,
        nn.Conv2d c => c.weight,
        _ => throw new InvalidOperationException(m.GetType().Name),
    };

    /// <summary>W ← W + (α/r)·B·A for every adapted layer (adapters then stay off).</summary>
    public void merge()
    {
        if (_merged) return;
        using var _ = no_grad();
        foreach (var (name, a) in _adapters)
        {
            using var scope = NewDisposeScope();
            var w = WeightOf(_layers[name]);
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
            var w = WeightOf(_layers[name]);
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

    /// <summary>Writes pytorch_lora_weights.safetensors (with diffusers' lora_adapter_metadata) and adapter_config.json
    /// (atomically).</summary>
    public void save(string folder) => Save(folder, [("unet", this)]);

    /// <summary>Writes several components' adapters into one diffusers LoRA folder, as diffusers' save_lora_weights does:
    /// pytorch_lora_weights.safetensors with keys &lt;component&gt;.&lt;module&gt;.lora_A.weight / lora_B.weight and
    /// each component's PEFT config in the lora_adapter_metadata entry (keys "&lt;component&gt;.r", ...), plus the UNet's
    /// (or the first component's) config as adapter_config.json.</summary>
    public static void Save(string folder, IReadOnlyList<(string component, Lora lora)> parts)
    {
        if (parts.Count == 0) throw new ArgumentException("no LoRA to save");
        Directory.CreateDirectory(folder);
        using var scope = NewDisposeScope();
        var tensors = new Dictionary<string, Tensor>();
        var meta = new SortedDictionary<string, JsonNode?>(StringComparer.Ordinal);
        foreach (var (component, lora) in parts)
        {
            foreach (var kv in lora.state_dict(component + ".")) tensors.Add(kv.Key, kv.Value);
            foreach (var (k, v) in lora.config.ToJson()) meta[$"{component}.{k}"] = v?.DeepClone();
        }
        safetensors.save_file(tensors, Path.Combine(folder, "pytorch_lora_weights.safetensors"), new Dictionary<string, string>
        {
            ["format"] = "pt",
            [MetadataKey] = new JsonObject(meta).ToJsonString(new JsonSerializerOptions { WriteIndented = true }),
        });
        var main = parts.FirstOrDefault(p => p.component == "unet").lora ?? parts[0].lora;
        AtomicFile.WriteAllText(Path.Combine(folder, "adapter_config.json"), main.config.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>The PEFT config of a LoRA folder's adapter_config.json.</summary>
    public static LoraConfig ReadConfig(string folder)
    {
        var path = Path.Combine(folder, "adapter_config.json");
        return LoraConfig.FromJson(JsonInput.ReadObject(path), path);
    }

    /// <summary>The PEFT config a LoRA weight file carries for <paramref name="component"/>: diffusers'
    /// lora_adapter_metadata in the file, else adapter_config.json beside it; null when neither exists.</summary>
    public static LoraConfig? ReadFileConfig(string file, string component = "unet")
    {
        if (file.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)
            && safetensors.load_metadata(file).TryGetValue(MetadataKey, out var raw))
        {
            var all = JsonInput.Parse(raw, $"{file} ({MetadataKey})") as JsonObject
                ?? throw new InvalidDataException($"{file}: {MetadataKey} must be a JSON object");
            var prefix = component + ".";
            var mine = new JsonObject(all.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal))
                .Select(kv => KeyValuePair.Create(kv.Key[prefix.Length..], kv.Value?.DeepClone())));
            if (mine.Count > 0) return LoraConfig.FromJson(mine, $"{file} ({MetadataKey}, {component})");
        }
        var folder = Path.GetDirectoryName(Path.GetFullPath(file))!;
        return File.Exists(Path.Combine(folder, "adapter_config.json")) ? ReadConfig(folder) : null;
    }

    public void Dispose()
    {
        foreach (var (name, a) in _adapters)
        {
            switch (_layers[name])
            {
                case nn.Linear l: l.adapter = null; break;
                case nn.Conv2d c: c.adapter = null; break;
            }
            a.Dispose();
        }
        _adapters.Clear();
    }
}

/// <summary>One LoRA attached to a pipeline's models as live adapters: the UNet's, and each text encoder's when the
/// file adapts it (diffusers' load_lora_weights without fusing). Saving writes one diffusers LoRA folder.</summary>
public sealed class PipelineLora : IDisposable
{
    public Lora? unet { get; init; }
    public Lora? text_encoder { get; init; }
    public Lora? text_encoder_2 { get; init; }

    /// <summary>The attached parts with diffusers' component names (the key prefixes of a LoRA file).</summary>
    public IReadOnlyList<(string component, Lora lora)> Parts =>
        new (string, Lora?)[] { ("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2) }
            .Where(p => p.Item2 != null).Select(p => (p.Item1, p.Item2!)).ToList();

    public IEnumerable<Parameter> parameters() => Parts.SelectMany(p => p.lora.parameters());

    /// <summary>Folds every part into its model's weights (adapters then stay off).</summary>
    public void merge()
    {
        foreach (var (_, l) in Parts) l.merge();
    }

    public void save(string folder) => Lora.Save(folder, Parts);

    public void Dispose()
    {
        foreach (var (_, l) in Parts) l.Dispose();
    }
}
