// kohya-ss / webui LoRA files: one flat name per adapted module (lora_unet_<path>, lora_te_<path> for SD1.x/2.x's text
// encoder, lora_te1_ / lora_te2_ for SDXL's two), the path's dots written as underscores, with
// <name>.lora_down.weight [r, in(, kh, kw)], <name>.lora_up.weight [out, r(, 1, 1)] and a scalar <name>.alpha;
// ΔW = (alpha / r)·up·down. sd-scripts trains SD1.x/2.x on a diffusers-named UNet and SDXL on the original (sgm) UNet,
// so SDXL names use the original block names (lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q), as
// diffusers' _convert_non_diffusers_lora_to_diffusers / _maybe_map_sgm_blocks_to_diffusers
// (src/diffusers/loaders/lora_conversion_utils.py) and sd-scripts' networks/lora.py read them. Names are resolved
// against the model's own module list, so an underscore inside a module name is never guessed.
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

public static class KohyaLora
{
    /// <summary>The kohya name of a UNet module path (diffusers names): diffusers-style for SD1.x/2.x, original
    /// (sgm) block names when <paramref name="sgm"/> (SDXL).</summary>
    public static string UnetName(string module, UNet2DConditionConfig c, bool sgm, IReadOnlyList<KeyRule>? rules = null)
    {
        var path = module;
        if (sgm)
        {
            var mapped = SingleFile.MapKey(module + ".", rules ?? SingleFile.UnetRules(c), toOriginal: true)
                ?? throw new ArgumentException($"UNet module '{module}' has no original (sgm) name");
            path = mapped.TrimEnd('.');
        }
        return "lora_unet_" + path.Replace('.', '_');
    }

    /// <summary>The kohya name prefix of a text encoder: lora_te_ (SD1.x/2.x), lora_te1_ / lora_te2_ (SDXL).</summary>
    public static string TextPrefix(bool sdxl, int which) => !sdxl ? "lora_te_" : which == 1 ? "lora_te1_" : "lora_te2_";

    /// <summary>Sudo's adapters as a kohya state dict: down = lora_A, up = lora_B, alpha = each adapter's α.</summary>
    public static Dictionary<string, Tensor> FromAdapters(Lora lora, Func<string, string> name, IReadOnlySet<string>? only = null)
    {
        var d = new Dictionary<string, Tensor>();
        foreach (var (module, a) in lora.adapters)
        {
            if (only != null && !only.Contains(module)) continue;
            var n = name(module);
            if (!d.TryAdd($"{n}.lora_down.weight", a.lora_A.detach())) throw new InvalidDataException($"two modules map to the kohya name {n}");
            d[$"{n}.lora_up.weight"] = a.lora_B.detach();
            d[$"{n}.alpha"] = scalar_tensor(a.alpha, ScalarType.Float32);   // per module: ranks and α may differ (rank_pattern)
        }
        return d;
    }

    /// <summary>Writes a kohya/webui LoRA file (UNet adapters, and text-encoder adapters when trained) for the pipeline
    /// family (SDXL: original block names and lora_te1_/lora_te2_), with sd-scripts' metadata keys; <paramref name="only"/>
    /// limits the UNet modules written.</summary>
    public static int Save(string path, UNet2DConditionConfig unetConfig, bool sdxl, Lora unet, Lora? textEncoder = null, Lora? textEncoder2 = null,
        IReadOnlySet<string>? only = null)
    {
        using var scope = NewDisposeScope();
        var rules = SingleFile.UnetRules(unetConfig);
        var all = FromAdapters(unet, m => UnetName(m, unetConfig, sdxl, rules), only);
        if (textEncoder != null) foreach (var kv in FromAdapters(textEncoder, m => TextPrefix(sdxl, 1) + m.Replace('.', '_'))) all.Add(kv.Key, kv.Value);
        if (textEncoder2 != null) foreach (var kv in FromAdapters(textEncoder2, m => TextPrefix(sdxl, 2) + m.Replace('.', '_'))) all.Add(kv.Key, kv.Value);
        safetensors.save_file(all, path, new Dictionary<string, string>
        {
            ["format"] = "pt",
            ["ss_network_module"] = "networks.lora",
            ["ss_network_dim"] = unet.config.r.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["ss_network_alpha"] = unet.config.lora_alpha.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
            ["ss_base_model_version"] = sdxl ? "sdxl_base_v1-0" : "sd_v1",
        });
        return all.Count;
    }

    /// <summary>One adapted module of a kohya file, resolved to the model: which component, its path, down, up, alpha.</summary>
    public sealed record Module(string component, string path, Tensor down, Tensor up, double alpha);

    /// <summary>Resolves every module of a kohya state dict against the pipeline's modules (UNet names in both the
    /// diffusers and the original spelling; text encoders by transformers path). Unknown names, missing halves and
    /// a family mismatch (lora_te2_ on a one-encoder pipeline, sgm names on a diffusers-named family...) are errors
    /// that say what the file looks like.</summary>
    public static List<Module> Resolve(IReadOnlyDictionary<string, Tensor> file, UNet2DConditionModel unet, nn.Module? textEncoder, nn.Module? textEncoder2, string source)
    {
        var sdxl = textEncoder2 != null;
        var lookup = new Dictionary<string, (string component, string path)>();
        var rules = SingleFile.UnetRules(unet.config);
        foreach (var (name, m) in unet.named_modules())
        {
            if (m is not (nn.Linear or nn.Conv2d) || name.Length == 0) continue;
            lookup.TryAdd("lora_unet_" + name.Replace('.', '_'), ("unet", name));
            var sgm = SingleFile.MapKey(name + ".", rules, toOriginal: true);
            if (sgm != null) lookup.TryAdd("lora_unet_" + sgm.TrimEnd('.').Replace('.', '_'), ("unet", name));
        }
        void AddText(nn.Module? te, string component, string prefix)
        {
            if (te == null) return;
            foreach (var (name, m) in te.named_modules())
                if (m is nn.Linear && name.Length > 0) lookup.TryAdd(prefix + name.Replace('.', '_'), (component, name));
        }
        AddText(textEncoder, "text_encoder", sdxl ? "lora_te1_" : "lora_te_");
        AddText(textEncoder2, "text_encoder_2", "lora_te2_");

        var names = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var k in file.Keys)
        {
            var dot = k.IndexOf('.');
            var suffix = dot < 0 ? "" : k[dot..];
            if (suffix is not (".lora_down.weight" or ".lora_up.weight" or ".alpha"))
                throw new InvalidDataException($"{source}: '{k}' is not a kohya LoRA key (expected <name>.lora_down.weight, .lora_up.weight or .alpha{(suffix.Contains("dora_scale") ? "; DoRA is not supported" : "")})");
            names.Add(k[..dot]);
        }
        var result = new List<Module>();
        foreach (var n in names)
        {
            if (!lookup.TryGetValue(n, out var target))
                throw new InvalidDataException($"{source}: LoRA module '{n}' is not in this {(sdxl ? "SDXL" : "SD1.x/2.x")} pipeline{Hint(n, sdxl)}");
            if (!file.TryGetValue(n + ".lora_down.weight", out var down) || !file.TryGetValue(n + ".lora_up.weight", out var up))
                throw new InvalidDataException($"{source}: LoRA module '{n}' lacks its lora_down or lora_up weight");
            var rank = down.size(0);
            if (up.size(1) != rank) throw new InvalidDataException($"{source}: '{n}': lora_up [{string.Join(", ", up.shape)}] does not fit lora_down [{string.Join(", ", down.shape)}] (rank {rank})");
            var alpha = file.TryGetValue(n + ".alpha", out var a) ? a.item() : rank;   // no alpha: α = r (scale 1), as sd-scripts
            result.Add(new Module(target.component, target.path, down, up, alpha));
        }
        if (result.Count == 0) throw new InvalidDataException($"{source}: no LoRA modules");
        return result;
    }

    static string Hint(string name, bool sdxl) =>
        name.StartsWith("lora_te2_", StringComparison.Ordinal) || name.StartsWith("lora_te1_", StringComparison.Ordinal) ? (sdxl ? "" : " (lora_te1_/lora_te2_ names: the file looks like an SDXL LoRA)")
        : name.StartsWith("lora_te_", StringComparison.Ordinal) && sdxl ? " (lora_te_ names: the file looks like an SD1.x/2.x LoRA)"
        : name.StartsWith("lora_unet_", StringComparison.Ordinal) ? " (no UNet module of that name, in diffusers or original spelling: another architecture?)"
        : " (kohya names start with lora_unet_, lora_te_, lora_te1_ or lora_te2_)";

    /// <summary>Merges resolved modules into the models: W ← W + multiplier·(α/r)·up·down (for convolutions the product
    /// is reshaped to the kernel, as sd-scripts' merge does).</summary>
    public static void Merge(IEnumerable<Module> modules, UNet2DConditionModel unet, nn.Module? textEncoder, nn.Module? textEncoder2, double multiplier = 1.0)
    {
        var byComponent = new Dictionary<string, Dictionary<string, nn.Module>>
        {
            ["unet"] = unet.named_modules().ToDictionary(x => x.name, x => x.module),
            ["text_encoder"] = textEncoder?.named_modules().ToDictionary(x => x.name, x => x.module) ?? new(),
            ["text_encoder_2"] = textEncoder2?.named_modules().ToDictionary(x => x.name, x => x.module) ?? new(),
        };
        using var _ = no_grad();
        foreach (var m in modules)
        {
            using var scope = NewDisposeScope();
            var w = byComponent[m.component][m.path] switch
            {
                nn.Linear l => l.weight,
                nn.Conv2d c => c.weight,
                var other => throw new InvalidDataException($"{m.component}.{m.path} is a {other.GetType().Name}, not a Linear or Conv2d"),
            };
            var r = m.down.size(0);
            // Same operation order as Lora.merge (B·A, then the α/r scale), so the two merges agree bit for bit.
            var delta = m.up.flatten(1).to(ScalarType.Float32).matmul(m.down.flatten(1).to(ScalarType.Float32)) * (m.alpha / r);
            if (multiplier != 1.0) delta = delta * multiplier;
            if (delta.numel() != w.numel())
                throw new InvalidDataException($"{m.component}.{m.path}: the LoRA product has {delta.numel()} elements, the weight [{string.Join(", ", w.shape)}] {w.numel()}");
            w.add_(delta.reshape(w.shape).to(w.dtype));
        }
    }

    /// <summary>Resolved modules attached as live Sudo adapters (trainable, switchable, savable as a diffusers/PEFT LoRA):
    /// per component, one <see cref="LoraConfig.ForModules"/> config (the most frequent rank and α, the rest in
    /// rank_pattern / alpha_pattern, as diffusers' get_peft_kwargs builds it from a kohya file), the file's down/up as
    /// lora_A/lora_B and α multiplied by <paramref name="multiplier"/>. Convolutions get convolution adapters (LoCon's 3×3
    /// down with a 1×1 up included).</summary>
    public static PipelineLora Attach(IReadOnlyList<Module> modules, UNet2DConditionModel unet, nn.Module? textEncoder, nn.Module? textEncoder2, double multiplier = 1.0)
    {
        Lora? Part(string component, nn.Module? model)
        {
            var mine = modules.Where(m => m.component == component).ToList();
            if (mine.Count == 0) return null;
            if (model == null) throw new InvalidDataException($"the LoRA adapts {component}, which this pipeline does not have");
            var config = LoraConfig.ForModules(mine.Select(m => (m.path, (int)m.down.size(0), m.alpha * multiplier)).ToList());
            var lora = Lora.Attach(model, config);
            try
            {
                using var _ = no_grad();
                foreach (var m in mine)
                {
                    var a = lora.adapters[m.path];
                    foreach (var (src, dst, half) in new[] { (m.down, a.lora_A, "lora_down"), (m.up, a.lora_B, "lora_up") })
                    {
                        if (src.numel() != dst.numel())
                            throw new InvalidDataException($"{component}.{m.path}: {half} [{string.Join(", ", src.shape)}] does not fit the layer (adapter [{string.Join(", ", dst.shape)}])");
                        dst.copy_(src.reshape(dst.shape));
                    }
                }
                return lora;
            }
            catch
            {
                lora.Dispose();
                throw;
            }
        }
        Lora? u = null, t1 = null;
        try
        {
            u = Part("unet", unet);
            t1 = Part("text_encoder", textEncoder);
            return new PipelineLora { unet = u, text_encoder = t1, text_encoder_2 = Part("text_encoder_2", textEncoder2) };
        }
        catch
        {
            u?.Dispose();
            t1?.Dispose();
            throw;
        }
    }
}
