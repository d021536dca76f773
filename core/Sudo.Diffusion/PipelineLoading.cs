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

    /// <summary>LoRA keys in any of the three diffusers namings → ours (unet.&lt;module&gt;.lora_A.weight / lora_B.weight):
    /// PEFT (lora_A / lora_B), diffusers' own (lora.down / lora.up), and attention processors
    /// (&lt;block&gt;.processor.to_q_lora.down.weight, to_out_lora → to_out.0). network alphas ("….alpha") are returned apart.</summary>
    public static (Dictionary<string, Tensor> weights, Dictionary<string, double> alphas) NormalizeLoraKeys(Dictionary<string, Tensor> sd, string source)
    {
        var weights = new Dictionary<string, Tensor>();
        var alphas = new Dictionary<string, double>();
        foreach (var (k0, t) in sd)
        {
            var k = k0.StartsWith("unet.", StringComparison.Ordinal) ? k0["unet.".Length..] : k0;
            if (k.StartsWith("text_encoder", StringComparison.Ordinal))
                throw new NotSupportedException($"{source}: text-encoder LoRA weights ('{k0}') are not supported; only UNet LoRAs");
            if (k.EndsWith(".alpha", StringComparison.Ordinal))
            {
                alphas[k[..^".alpha".Length]] = t.item();
                continue;
            }
            k = k.Replace(".processor.to_q_lora.", ".to_q.lora.", StringComparison.Ordinal)
                 .Replace(".processor.to_k_lora.", ".to_k.lora.", StringComparison.Ordinal)
                 .Replace(".processor.to_v_lora.", ".to_v.lora.", StringComparison.Ordinal)
                 .Replace(".processor.to_out_lora.", ".to_out.0.lora.", StringComparison.Ordinal)
                 .Replace(".lora.down.weight", ".lora_A.weight", StringComparison.Ordinal)
                 .Replace(".lora.up.weight", ".lora_B.weight", StringComparison.Ordinal)
                 .Replace(".lora_A.default.weight", ".lora_A.weight", StringComparison.Ordinal)
                 .Replace(".lora_B.default.weight", ".lora_B.weight", StringComparison.Ordinal);
            if (!k.EndsWith(".lora_A.weight", StringComparison.Ordinal) && !k.EndsWith(".lora_B.weight", StringComparison.Ordinal))
                throw new InvalidDataException($"{source}: '{k0}' is not a LoRA weight (expected …lora_A/lora_B, …lora.down/lora.up or …processor.to_*_lora.*)");
            weights["unet." + k] = t;
        }
        return (weights, alphas);
    }

    /// <summary>Merges a LoRA file into the pipeline: a kohya/webui file (lora_unet_*, lora_te_*, lora_te1_*/lora_te2_*
    /// names; <see cref="KohyaLora"/>) into the UNet and text encoders it adapts, any diffusers/PEFT file into the UNet
    /// (<see cref="MergeLora(UNet2DConditionModel, string, double)"/>).</summary>
    public static void MergeLora(PipelineComponents comps, string file, double scale)
    {
        using (var scope = NewDisposeScope())
        {
            var raw = Checkpoints.ReadWeights(file);
            if (raw.Keys.Any(k => k.StartsWith("lora_unet_", StringComparison.Ordinal) || k.StartsWith("lora_te", StringComparison.Ordinal)))
            {
                var modules = KohyaLora.Resolve(raw, comps.unet, comps.text_encoder, comps.text_encoder_2, file);
                KohyaLora.Merge(modules, comps.unet, comps.text_encoder, comps.text_encoder_2, scale);
                return;
            }
        }
        MergeLora(comps.unet, file, scale);
    }

    /// <summary>A diffusers/PEFT LoRA file attached to <paramref name="unet"/> as Sudo adapters holding its weights, α
    /// multiplied by <paramref name="scale"/>: r from the weights, α from adapter_config.json beside the file (lora_alpha),
    /// network alphas in the file, or r (diffusers' default). The caller disposes the adapters.</summary>
    public static Lora AttachLoraFile(UNet2DConditionModel unet, string file, double scale = 1.0) => AttachLoraFile(unet, file, scale, out _);

    /// <summary><see cref="AttachLoraFile(UNet2DConditionModel, string, double)"/>, also giving the modules the file
    /// holds (layers that only match a target name get zero adapters).</summary>
    public static Lora AttachLoraFile(UNet2DConditionModel unet, string file, double scale, out IReadOnlySet<string> inFile)
    {
        using var scope = NewDisposeScope();
        var raw = Checkpoints.ReadWeights(file);
        var (weights, alphas) = NormalizeLoraKeys(raw, file);
        var modules = weights.Keys.Where(k => k.EndsWith(".lora_A.weight", StringComparison.Ordinal))
            .Select(k => k["unet.".Length..^".lora_A.weight".Length]).ToList();
        if (modules.Count == 0) throw new InvalidDataException($"{file}: no LoRA weights");
        var rank = (int)weights[$"unet.{modules[0]}.lora_A.weight"].size(0);
        var cfgPath = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(file))!, "adapter_config.json");
        double alpha = File.Exists(cfgPath) ? Lora.ReadConfig(Path.GetDirectoryName(Path.GetFullPath(file))!).lora_alpha
            : alphas.Count > 0 ? alphas.Values.First() : rank;
        if (alphas.Values.Distinct().Count() > 1) throw new NotSupportedException($"{file}: per-module network alphas differ; not supported");
        // Targets: every module the file adapts, by its trailing name (to_q, to_k, to_v, to_out.0, ...).
        var targets = modules.Select(m => m.EndsWith(".to_out.0", StringComparison.Ordinal) ? "to_out.0" : m[(m.LastIndexOf('.') + 1)..]).Distinct().ToArray();
        var config = new LoraConfig(rank, alpha * scale, targets);
        var lora = Lora.Attach(unet, config);
        try
        {
            var missing = modules.Where(m => !lora.adapters.ContainsKey(m)).ToList();
            if (missing.Count > 0) throw new InvalidDataException($"{file}: {missing.Count} LoRA modules are not in this UNet, e.g. {string.Join(", ", missing.Take(3))}");
            var extra = lora.adapters.Keys.Where(m => !weights.ContainsKey($"unet.{m}.lora_A.weight")).ToList();
            // Layers matching a target name but absent from the file keep a zero update.
            foreach (var m in extra)
            {
                weights[$"unet.{m}.lora_A.weight"] = zeros(lora.adapters[m].lora_A.shape, lora.adapters[m].lora_A.dtype);
                weights[$"unet.{m}.lora_B.weight"] = zeros(lora.adapters[m].lora_B.shape, lora.adapters[m].lora_B.dtype);
            }
            lora.load_state_dict(weights);
            inFile = modules.ToHashSet();
            return lora;
        }
        catch
        {
            lora.Dispose();
            throw;
        }
    }

    /// <summary>Merges a diffusers/PEFT LoRA file into <paramref name="unet"/>: W ← W + scale·(α/r)·B·A
    /// (<see cref="AttachLoraFile"/> for r and α).</summary>
    public static void MergeLora(UNet2DConditionModel unet, string file, double scale)
    {
        // Merged into the weights; disposing the adapters afterwards leaves the merged weights in place.
        using var lora = AttachLoraFile(unet, file, scale);
        lora.merge();
    }

    /// <summary>A diffusers/PEFT LoRA (a file or a folder <see cref="ResolveLora"/> finds) written as a kohya/webui file for
    /// the pipeline in <paramref name="pipelineFolder"/> (its UNet config and family give the names). Returns the
    /// tensor count.</summary>
    public static int ExportKohya(string lora, string pipelineFolder, string outFile, string? cacheDir = null)
    {
        using var comps = PipelineComponents.from_pretrained(pipelineFolder, cache_dir: cacheDir);
        using var adapters = AttachLoraFile(comps.unet, ResolveLora(lora, cacheDir), 1.0, out var inFile);
        return KohyaLora.Save(outFile, comps.unet.config, comps.IsSDXL, adapters, only: inFile);
    }
}
