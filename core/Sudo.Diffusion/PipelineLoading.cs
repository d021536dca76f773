// Loading what training produced for sampling and evaluation: a diffusers pipeline plus, optionally, a UNet that
// replaces its own (a diffusers UNet folder, a UNet-only repository such as Diffusion-DPO's released
// mhdang/dpo-sd1.5-text2image-v1, or a training output / checkpoint-N folder holding unet/), a LoRA merged at a scale
// (our training's lora/ folder, diffusers' pytorch_lora_weights.safetensors in the lora_A/lora_B or lora.down/lora.up
// naming, or old attention-processor files), and another VAE (--pretrained_vae_model_name_or_path, e.g. SDXL's
// fp16-fix VAE).
using System.Text.Json.Nodes;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion;

public sealed record PipelineSpec
{
    /// <summary>A diffusers pipeline folder or a Hugging Face repo id in the local cache.</summary>
    public required string model { get; init; }
    public string? unet { get; init; }
    public string? lora { get; init; }
    /// <summary>Multiplies the LoRA update (diffusers' cross_attention_kwargs={"scale": s} / fuse_lora(lora_scale)).</summary>
    public double lora_scale { get; init; } = 1.0;
    public string? vae { get; init; }
    public string? scheduler { get; init; }
    /// <summary>Overrides the scheduler's prediction_type (epsilon, v_prediction; e.g. an SD2-base single file read with
    /// SD2.1's configs). Null: the pipeline's.</summary>
    public string? prediction_type { get; init; }
    public string? variant { get; init; }
    public string? cache_dir { get; init; }

    /// <summary>One line naming every part (for reports and sample metadata).</summary>
    public string Describe() => string.Join(" ", new[]
    {
        model,
        unet is null ? null : $"unet={unet}",
        lora is null ? null : $"lora={lora}×{lora_scale:G3}",
        vae is null ? null : $"vae={vae}",
        scheduler is null ? null : $"scheduler={scheduler}",
        prediction_type is null ? null : $"prediction_type={prediction_type}",
    }.Where(s => s is not null));
}

public static class PipelineLoading
{
    /// <summary>Loads the pipeline of <paramref name="spec"/> in <paramref name="dtype"/> on <paramref name="device"/>.</summary>
    public static StableDiffusionPipeline Load(PipelineSpec spec, ScalarType dtype, Device device)
    {
        var comps = PipelineComponents.from_pretrained(spec.model, spec.variant, dtype, device, spec.cache_dir);
        try
        {
            if (spec.vae is { } v)
                comps = comps.WithVae(AutoencoderKL.from_pretrained(ResolveComponent(v, "vae", "AutoencoderKL", spec.cache_dir), spec.variant, dtype, device));
            if (spec.unet is { } u)
            {
                var folder = ResolveComponent(u, "unet", "UNet2DConditionModel", spec.cache_dir);
                var fresh = UNet2DConditionModel.from_pretrained(folder, spec.variant, dtype, device);
                comps = comps.WithUnet(fresh);
            }
            if (spec.lora is { } l) MergeLora(comps, ResolveLora(l, spec.cache_dir), spec.lora_scale);
            comps = comps.WithPredictionType(spec.prediction_type);
            return StableDiffusionPipeline.FromComponents(comps, spec.scheduler);
        }
        catch
        {
            comps.Dispose();
            throw;
        }
    }

    /// <summary>A component folder from a path or repo id: the folder itself when its config.json names
    /// <paramref name="className"/>, else its <paramref name="sub"/>/ folder (a pipeline, a UNet-only repository, a
    /// training output or checkpoint-N folder).</summary>
    public static string ResolveComponent(string pathOrRepo, string sub, string className, string? cacheDir = null)
    {
        var folder = Directory.Exists(pathOrRepo) ? pathOrRepo : Hub.Resolve(pathOrRepo, cacheDir);
        foreach (var candidate in new[] { folder, Path.Combine(folder, sub) })
        {
            var cfg = Path.Combine(candidate, "config.json");
            if (!File.Exists(cfg)) continue;
            var cls = (string?)(JsonNode.Parse(File.ReadAllText(cfg)) as JsonObject)?["_class_name"];
            if (cls == className) return candidate;
        }
        var hint = sub == "unet" && Directory.Exists(Path.Combine(folder, "lora")) ? $" (it holds lora/: pass it as --lora)" : "";
        throw new FileNotFoundException($"{pathOrRepo}: neither it nor its {sub}/ folder holds a {className} (config.json with \"_class_name\": \"{className}\"){hint}");
    }

    /// <summary>The LoRA weight file of a path: a .safetensors file, a folder holding pytorch_lora_weights.safetensors,
    /// or a training output / checkpoint-N folder holding lora/.</summary>
    public static string ResolveLora(string pathOrRepo, string? cacheDir = null)
    {
        if (File.Exists(pathOrRepo)) return pathOrRepo;
        var folder = Directory.Exists(pathOrRepo) ? pathOrRepo : Hub.Resolve(pathOrRepo, cacheDir);
        foreach (var candidate in new[] { folder, Path.Combine(folder, "lora") })
        {
            var f = Path.Combine(candidate, "pytorch_lora_weights.safetensors");
            if (File.Exists(f)) return f;
            var bin = Path.Combine(candidate, "pytorch_lora_weights.bin");
            if (File.Exists(bin)) return bin;
        }
        throw new FileNotFoundException($"{pathOrRepo}: no pytorch_lora_weights.safetensors (in it or in its lora/ folder)");
    }

    /// <summary>LoRA keys in any of the diffusers namings → ours (&lt;component&gt;.&lt;module&gt;.lora_A.weight / lora_B.weight,
    /// component unet, text_encoder or text_encoder_2; a key without a component prefix is the UNet's): PEFT (lora_A /
    /// lora_B), diffusers' own (lora.down / lora.up, lora_linear_layer.down / up), and attention processors
    /// (&lt;block&gt;.processor.to_q_lora.down.weight, to_out_lora → to_out.0). Network alphas ("….alpha") are returned apart,
    /// keyed &lt;component&gt;.&lt;module&gt;.</summary>
    public static (Dictionary<string, Tensor> weights, Dictionary<string, double> alphas) NormalizeLoraKeys(Dictionary<string, Tensor> sd, string source)
    {
        var weights = new Dictionary<string, Tensor>();
        var alphas = new Dictionary<string, double>();
        foreach (var (k0, t) in sd)
        {
            var component = "unet";
            var k = k0;
            foreach (var c in new[] { "unet", "text_encoder_2", "text_encoder" })
                if (k0.StartsWith(c + ".", StringComparison.Ordinal))
                {
                    (component, k) = (c, k0[(c.Length + 1)..]);
                    break;
                }
            if (k.EndsWith(".alpha", StringComparison.Ordinal))
            {
                if (t.numel() != 1) throw new InvalidDataException($"{source}: '{k0}' must be a scalar (a network alpha), has shape [{string.Join(", ", t.shape)}]");
                alphas[$"{component}.{k[..^".alpha".Length]}"] = t.item();
                continue;
            }
            k = k.Replace(".processor.to_q_lora.", ".to_q.lora.", StringComparison.Ordinal)
                 .Replace(".processor.to_k_lora.", ".to_k.lora.", StringComparison.Ordinal)
                 .Replace(".processor.to_v_lora.", ".to_v.lora.", StringComparison.Ordinal)
                 .Replace(".processor.to_out_lora.", ".to_out.0.lora.", StringComparison.Ordinal)
                 .Replace(".lora_linear_layer.down.weight", ".lora_A.weight", StringComparison.Ordinal)
                 .Replace(".lora_linear_layer.up.weight", ".lora_B.weight", StringComparison.Ordinal)
                 .Replace(".lora.down.weight", ".lora_A.weight", StringComparison.Ordinal)
                 .Replace(".lora.up.weight", ".lora_B.weight", StringComparison.Ordinal)
                 .Replace(".lora_A.default.weight", ".lora_A.weight", StringComparison.Ordinal)
                 .Replace(".lora_B.default.weight", ".lora_B.weight", StringComparison.Ordinal);
            if (!k.EndsWith(".lora_A.weight", StringComparison.Ordinal) && !k.EndsWith(".lora_B.weight", StringComparison.Ordinal))
                throw new InvalidDataException($"{source}: '{k0}' is not a LoRA weight (expected …lora_A/lora_B, …lora.down/lora.up or …processor.to_*_lora.*{(k.Contains("lora_magnitude_vector") ? "; DoRA is not supported" : "")})");
            weights[$"{component}.{k}"] = t;
        }
        return (weights, alphas);
    }

    /// <summary>Merges a LoRA file into the pipeline: a kohya/webui file (lora_unet_*, lora_te_*, lora_te1_*/lora_te2_*
    /// names; <see cref="KohyaLora"/>) into the UNet and text encoders it adapts with sd-scripts' merge, a diffusers/PEFT
    /// file (UNet and text-encoder parts) through its adapters (<see cref="AttachLora"/>).</summary>
    public static void MergeLora(PipelineComponents comps, string file, double scale)
    {
        using (var scope = NewDisposeScope())
        {
            var raw = Checkpoints.ReadWeights(file);
            if (IsKohya(raw))
            {
                var modules = KohyaLora.Resolve(raw, comps.unet, comps.text_encoder, comps.text_encoder_2, file);
                KohyaLora.Merge(modules, comps.unet, comps.text_encoder, comps.text_encoder_2, scale);
                return;
            }
        }
        // Merged into the weights; disposing the adapters afterwards leaves the merged weights in place.
        using var lora = AttachLora(comps, file, scale);
        lora.merge();
    }

    static bool IsKohya(IReadOnlyDictionary<string, Tensor> raw) =>
        raw.Keys.Any(k => k.StartsWith("lora_unet_", StringComparison.Ordinal) || k.StartsWith("lora_te", StringComparison.Ordinal));

    /// <summary>A LoRA file attached to the pipeline's models as live adapters (trainable, switchable with
    /// <see cref="Lora.disabled"/>, savable as a diffusers folder), α multiplied by <paramref name="scale"/>: a kohya/webui
    /// file through <see cref="KohyaLora.Attach"/>, a diffusers/PEFT file with each module's rank from its weights and α from
    /// the file's lora_adapter_metadata, adapter_config.json beside it (rank_pattern / alpha_pattern honoured), the file's
    /// network alphas, or r (diffusers' default: scale 1). The caller disposes the result.</summary>
    public static PipelineLora AttachLora(PipelineComponents comps, string file, double scale = 1.0)
    {
        using var scope = NewDisposeScope();
        var raw = Checkpoints.ReadWeights(file);
        if (IsKohya(raw))
            return KohyaLora.Attach(KohyaLora.Resolve(raw, comps.unet, comps.text_encoder, comps.text_encoder_2, file), comps.unet, comps.text_encoder, comps.text_encoder_2, scale);
        var (weights, alphas) = NormalizeLoraKeys(raw, file);
        var parts = new List<(string, Lora)>();
        try
        {
            foreach (var (component, model) in new (string, nn.Module?)[] { ("unet", comps.unet), ("text_encoder", comps.text_encoder), ("text_encoder_2", comps.text_encoder_2) })
            {
                if (!weights.Keys.Any(k => k.StartsWith(component + ".", StringComparison.Ordinal))) continue;
                if (model == null) throw new InvalidDataException($"{file}: the LoRA adapts {component}, which this pipeline does not have");
                parts.Add((component, AttachPart(model, component, weights, alphas, file, scale)));
            }
            if (parts.Count == 0) throw new InvalidDataException($"{file}: no LoRA weights");
            var d = parts.ToDictionary(p => p.Item1, p => p.Item2);
            return new PipelineLora { unet = d.GetValueOrDefault("unet"), text_encoder = d.GetValueOrDefault("text_encoder"), text_encoder_2 = d.GetValueOrDefault("text_encoder_2") };
        }
        catch
        {
            foreach (var (_, l) in parts) l.Dispose();
            throw;
        }
    }

    /// <summary>One component's part of a normalized diffusers LoRA as adapters holding its weights.</summary>
    static Lora AttachPart(nn.Module model, string component, Dictionary<string, Tensor> weights, Dictionary<string, double> alphas, string file, double scale)
    {
        var prefix = component + ".";
        var modules = weights.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal) && k.EndsWith(".lora_A.weight", StringComparison.Ordinal))
            .Select(k => k[prefix.Length..^".lora_A.weight".Length]).ToList();
        foreach (var k in weights.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal) && k.EndsWith(".lora_B.weight", StringComparison.Ordinal)))
            if (!weights.ContainsKey(k[..^".lora_B.weight".Length] + ".lora_A.weight"))
                throw new InvalidDataException($"{file}: '{k}' has no lora_A half");
        var fileConfig = Lora.ReadFileConfig(file, component);
        var present = model.named_modules().Where(m => m.module is nn.Linear or nn.Conv2d).Select(m => m.name).ToHashSet();
        var missing = modules.Where(m => !present.Contains(m)).ToList();
        if (missing.Count > 0)
            throw new InvalidDataException($"{file}: {missing.Count} LoRA modules are not Linear or Conv2d layers of this {component}, e.g. {string.Join(", ", missing.Take(3))}");
        var specs = modules.Select(m =>
        {
            var rank = (int)weights[$"{prefix}{m}.lora_A.weight"].size(0);
            var alpha = fileConfig?.AlphaFor(m) ?? (alphas.TryGetValue($"{component}.{m}", out var na) ? na : rank);
            return (m, rank, alpha * scale);
        }).ToList();
        var lora = Lora.Attach(model, LoraConfig.ForModules(specs));
        try
        {
            lora.load_state_dict(weights, prefix);
            return lora;
        }
        catch
        {
            lora.Dispose();
            throw;
        }
    }

    /// <summary>A diffusers/PEFT LoRA file's UNet part attached to <paramref name="unet"/> as Sudo adapters holding its
    /// weights (<see cref="AttachLora"/> for r and α); a file that also adapts text encoders is refused. The caller disposes
    /// the adapters.</summary>
    public static Lora AttachLoraFile(UNet2DConditionModel unet, string file, double scale = 1.0)
    {
        using var scope = NewDisposeScope();
        var raw = Checkpoints.ReadWeights(file);
        if (IsKohya(raw)) throw new NotSupportedException($"{file}: a kohya/webui LoRA; attach it to a pipeline (PipelineLoading.AttachLora)");
        var (weights, alphas) = NormalizeLoraKeys(raw, file);
        if (weights.Keys.FirstOrDefault(k => !k.StartsWith("unet.", StringComparison.Ordinal)) is { } te)
            throw new NotSupportedException($"{file}: it holds text-encoder LoRA weights ('{te}'); attach it to a pipeline (PipelineLoading.AttachLora) rather than to a UNet");
        return AttachPart(unet, "unet", weights, alphas, file, scale);
    }

    /// <summary>Merges a diffusers/PEFT LoRA file into <paramref name="unet"/>: W ← W + scale·(α/r)·B·A
    /// (<see cref="AttachLora"/> for r and α).</summary>
    public static void MergeLora(UNet2DConditionModel unet, string file, double scale)
    {
        // Merged into the weights; disposing the adapters afterwards leaves the merged weights in place.
        using var lora = AttachLoraFile(unet, file, scale);
        lora.merge();
    }

    /// <summary>A diffusers/PEFT LoRA (a file or a folder <see cref="ResolveLora"/> finds; UNet and text-encoder parts)
    /// written as a kohya/webui file for the pipeline in <paramref name="pipelineFolder"/> (its UNet config and family give
    /// the names). Returns the tensor count.</summary>
    public static int ExportKohya(string lora, string pipelineFolder, string outFile, string? cacheDir = null)
    {
        using var comps = PipelineComponents.from_pretrained(pipelineFolder, cache_dir: cacheDir);
        using var adapters = AttachLora(comps, ResolveLora(lora, cacheDir));
        if (adapters.unet == null) throw new InvalidDataException($"{lora}: no UNet LoRA weights (kohya files hold a UNet part)");
        return KohyaLora.Save(outFile, comps.unet.config, comps.IsSDXL, adapters.unet, adapters.text_encoder, adapters.text_encoder_2);
    }

    /// <summary>A kohya/webui (or any diffusers) LoRA file written as a diffusers/PEFT LoRA folder for the pipeline in
    /// <paramref name="pipelineFolder"/>: pytorch_lora_weights.safetensors with unet./text_encoder./text_encoder_2. keys and
    /// each part's PEFT config (per-module ranks and α in rank_pattern / alpha_pattern) in lora_adapter_metadata, plus
    /// adapter_config.json. Returns the tensor count.</summary>
    public static int ExportPeft(string lora, string pipelineFolder, string outFolder, string? cacheDir = null)
    {
        using var comps = PipelineComponents.from_pretrained(pipelineFolder, cache_dir: cacheDir);
        using var adapters = AttachLora(comps, ResolveLora(lora, cacheDir));
        var tmp = outFolder.TrimEnd('/') + $".tmp-{Environment.ProcessId}";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        adapters.save(tmp);
        AtomicFile.PublishDirectory(tmp, outFolder);
        return adapters.Parts.Sum(p => p.lora.adapters.Count * 2);
    }
}
