// Single-file Stable Diffusion checkpoints (the original LDM layout that webui, ComfyUI and the CompVis / Stability
// repositories read and write: model.diffusion_model.*, first_stage_model.*, cond_stage_model.*, SDXL's
// conditioner.embedders.N.*) to and from diffusers component state dicts. The name tables are data
// (SingleFileTables.json, with their sources); block indices follow from the model configs, as in diffusers'
// convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint (src/diffusers/loaders/single_file_utils.py).
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>One renaming rule: a diffusers module prefix, the original prefix it maps to, and the renames applied to
/// the rest of the key inside that module (a resnet's norm1 ↔ in_layers.0, a VAE attention's to_q ↔ q ...).</summary>
public sealed record KeyRule(string diffusers, string original, IReadOnlyList<(string diffusers, string original)> inner);

/// <summary>The name tables of <c>SingleFileTables.json</c> (pairs of diffusers name, original name).</summary>
public sealed class SingleFileTables
{
    public required IReadOnlyDictionary<string, string> prefixes { get; init; }
    public required IReadOnlyList<(string diffusers, string original)> unet_top { get; init; }
    public required IReadOnlyList<(string diffusers, string original)> unet_resnet { get; init; }
    public required IReadOnlyList<(string diffusers, string original)> vae_top { get; init; }
    public required IReadOnlyList<(string diffusers, string original)> vae_resnet { get; init; }
    public required IReadOnlyList<(string diffusers, string original)> vae_attention { get; init; }
    public required IReadOnlyList<(string diffusers, string original)> openclip_top { get; init; }
    public required IReadOnlyList<(string diffusers, string original)> openclip_layer { get; init; }

    public static SingleFileTables Load()
    {
        using var s = typeof(SingleFileTables).Assembly.GetManifestResourceStream("Sudo.Models.SingleFileTables.json")
            ?? throw new InvalidOperationException("SingleFileTables.json is not embedded in Sudo.Models");
        var root = JsonNode.Parse(s)!.AsObject();
        List<(string, string)> Pairs(string name) => root[name]!.AsArray().Select(p => ((string)p![0]!, (string)p[1]!)).ToList();
        return new SingleFileTables
        {
            prefixes = root["prefixes"]!.AsObject().ToDictionary(kv => kv.Key, kv => (string)kv.Value!),
            unet_top = Pairs("unet_top"),
            unet_resnet = Pairs("unet_resnet"),
            vae_top = Pairs("vae_top"),
            vae_resnet = Pairs("vae_resnet"),
            vae_attention = Pairs("vae_attention"),
            openclip_top = Pairs("openclip_top"),
            openclip_layer = Pairs("openclip_layer"),
        };
    }
}

public static class SingleFile
{
    public static readonly SingleFileTables Tables = SingleFileTables.Load();

    // ---------------------------------------------------------------- rules from the configs

    /// <summary>The UNet's rules: input_blocks / middle_block / output_blocks indices from the block types and layers per
    /// block (openaimodel.UNetModel's order: per down block its resnets (+ attentions), then its downsampler; the
    /// up blocks one layer longer, the upsampler in the last layer of each block but the last, at .1 without attention
    /// and .2 with it).</summary>
    public static List<KeyRule> UnetRules(UNet2DConditionConfig c)
    {
        var rules = Tables.unet_top.Select(t => new KeyRule(t.diffusers, t.original, [])).ToList();
        var n = c.down_block_types.Length;
        int Layers(int i) => c.layers_per_block.Length == 1 ? c.layers_per_block[0] : c.layers_per_block[i];
        var idx = 1;
        for (var i = 0; i < n; i++)
        {
            var attn = c.down_block_types[i].StartsWith("CrossAttn", StringComparison.Ordinal);
            for (var j = 0; j < Layers(i); j++, idx++)
            {
                rules.Add(new($"down_blocks.{i}.resnets.{j}.", $"input_blocks.{idx}.0.", Tables.unet_resnet));
                if (attn) rules.Add(new($"down_blocks.{i}.attentions.{j}.", $"input_blocks.{idx}.1.", []));
            }
            if (i < n - 1) rules.Add(new($"down_blocks.{i}.downsamplers.0.conv.", $"input_blocks.{idx++}.0.op.", []));
        }
        rules.Add(new("mid_block.resnets.0.", "middle_block.0.", Tables.unet_resnet));
        rules.Add(new("mid_block.attentions.0.", "middle_block.1.", []));
        rules.Add(new("mid_block.resnets.1.", "middle_block.2.", Tables.unet_resnet));
        idx = 0;
        for (var i = 0; i < n; i++)
        {
            var attn = c.up_block_types[i].StartsWith("CrossAttn", StringComparison.Ordinal);
            var layers = Layers(n - 1 - i) + 1;
            for (var j = 0; j < layers; j++, idx++)
            {
                rules.Add(new($"up_blocks.{i}.resnets.{j}.", $"output_blocks.{idx}.0.", Tables.unet_resnet));
                if (attn) rules.Add(new($"up_blocks.{i}.attentions.{j}.", $"output_blocks.{idx}.1.", []));
                if (j == layers - 1 && i < n - 1) rules.Add(new($"up_blocks.{i}.upsamplers.0.conv.", $"output_blocks.{idx}.{(attn ? 2 : 1)}.conv.", []));
            }
        }
        return rules;
    }

    /// <summary>The VAE's rules: encoder.down.i.block.j / downsample, decoder.up.(n−1−i).block.j / upsample (the original
    /// numbers the decoder's levels from the bottom), mid.block_1/2 and mid.attn_1 (q, k, v, proj_out as 1×1 convs).</summary>
    public static List<KeyRule> VaeRules(AutoencoderKLConfig c)
    {
        var rules = Tables.vae_top.Select(t => new KeyRule(t.diffusers, t.original, [])).ToList();
        // Same names on both sides.
        foreach (var same in new[] { "encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.", "quant_conv.", "post_quant_conv." })
            rules.Add(new(same, same, []));
        var n = c.block_out_channels.Length;
        for (var i = 0; i < n; i++)
        {
            for (var j = 0; j < c.layers_per_block; j++)
                rules.Add(new($"encoder.down_blocks.{i}.resnets.{j}.", $"encoder.down.{i}.block.{j}.", Tables.vae_resnet));
            if (i < n - 1) rules.Add(new($"encoder.down_blocks.{i}.downsamplers.0.", $"encoder.down.{i}.downsample.", []));
            for (var j = 0; j < c.layers_per_block + 1; j++)
                rules.Add(new($"decoder.up_blocks.{i}.resnets.{j}.", $"decoder.up.{n - 1 - i}.block.{j}.", Tables.vae_resnet));
            if (i < n - 1) rules.Add(new($"decoder.up_blocks.{i}.upsamplers.0.", $"decoder.up.{n - 1 - i}.upsample.", []));
        }
        foreach (var part in new[] { "encoder", "decoder" })
        {
            rules.Add(new($"{part}.mid_block.resnets.0.", $"{part}.mid.block_1.", Tables.vae_resnet));
            rules.Add(new($"{part}.mid_block.resnets.1.", $"{part}.mid.block_2.", Tables.vae_resnet));
            rules.Add(new($"{part}.mid_block.attentions.0.", $"{part}.mid.attn_1.", Tables.vae_attention));
        }
        return rules;
    }

    /// <summary>A key through the rules (toOriginal: diffusers → original; else back); null when no rule covers it.</summary>
    public static string? MapKey(string key, IReadOnlyList<KeyRule> rules, bool toOriginal)
    {
        KeyRule? best = null;
        var bestLen = -1;
        foreach (var r in rules)
        {
            var p = toOriginal ? r.diffusers : r.original;
            if (p.Length > bestLen && key.StartsWith(p, StringComparison.Ordinal))
            {
                best = r;
                bestLen = p.Length;
            }
        }
        if (best is null) return null;
        var rest = key[bestLen..];
        foreach (var (d, o) in best.inner)
        {
            var from = toOriginal ? d : o;
            if (rest.StartsWith(from, StringComparison.Ordinal))
            {
                rest = (toOriginal ? o : d) + rest[from.Length..];
                break;
            }
        }
        return (toOriginal ? best.original : best.diffusers) + rest;
    }

    static bool IsVaeAttentionMatrix(string originalKey) =>
        originalKey.Contains(".mid.attn_1.", StringComparison.Ordinal)
        && (originalKey.EndsWith(".q.weight", StringComparison.Ordinal) || originalKey.EndsWith(".k.weight", StringComparison.Ordinal)
            || originalKey.EndsWith(".v.weight", StringComparison.Ordinal) || originalKey.EndsWith(".proj_out.weight", StringComparison.Ordinal));

    // ---------------------------------------------------------------- component state dicts

    /// <summary>A UNet state dict in the original names (prefix model.diffusion_model.). Tensors are shared, not copied.</summary>
    public static Dictionary<string, Tensor> UnetToOriginal(UNet2DConditionConfig c, IReadOnlyDictionary<string, Tensor> sd) =>
        RenameAll(sd, UnetRules(c), Tables.prefixes["unet"], "UNet", reshape: null);

    /// <summary>A VAE state dict in the original names (prefix first_stage_model.); the mid attention's q, k, v and proj_out
    /// weights become 1×1 convolutions, as the original AttnBlock holds them.</summary>
    public static Dictionary<string, Tensor> VaeToOriginal(AutoencoderKLConfig c, IReadOnlyDictionary<string, Tensor> sd) =>
        RenameAll(sd, VaeRules(c), Tables.prefixes["vae"], "VAE", reshape: (k, t) => IsVaeAttentionMatrix(k) && t.dim() == 2 ? t.view(t.size(0), t.size(1), 1, 1) : t);

    static Dictionary<string, Tensor> RenameAll(IReadOnlyDictionary<string, Tensor> sd, List<KeyRule> rules, string prefix, string what, Func<string, Tensor, Tensor>? reshape)
    {
        var result = new Dictionary<string, Tensor>();
        foreach (var (k, t) in sd)
        {
            var o = MapKey(k, rules, toOriginal: true) ?? throw new InvalidDataException($"{what} key '{k}' has no single-file name (its config does not describe it)");
            var key = prefix + o;
            if (!result.TryAdd(key, reshape?.Invoke(key, t) ?? t)) throw new InvalidDataException($"{what}: two keys map to '{key}'");
        }
        return result;
    }

    /// <summary>The UNet keys of an original checkpoint (under model.diffusion_model.) in diffusers names.</summary>
    public static Dictionary<string, Tensor> UnetFromOriginal(UNet2DConditionConfig c, IReadOnlyDictionary<string, Tensor> file, string source) =>
        FromOriginal(file, Tables.prefixes["unet"], UnetRules(c), source, "UNet", reshape: null);

    public static Dictionary<string, Tensor> VaeFromOriginal(AutoencoderKLConfig c, IReadOnlyDictionary<string, Tensor> file, string source)
    {
        // Some files keep the VAE under "vae." (LDM_VAE_KEYS).
        var prefix = file.Keys.Any(k => k.StartsWith(Tables.prefixes["vae"], StringComparison.Ordinal)) ? Tables.prefixes["vae"] : "vae.";
        return FromOriginal(file, prefix, VaeRules(c), source, "VAE", reshape: (k, t) => IsVaeAttentionMatrix(k) && t.dim() == 4 ? t.flatten(1) : t);
    }

    static Dictionary<string, Tensor> FromOriginal(IReadOnlyDictionary<string, Tensor> file, string prefix, List<KeyRule> rules, string source, string what,
        Func<string, Tensor, Tensor>? reshape)
    {
        var result = new Dictionary<string, Tensor>();
        foreach (var (k, t) in file)
        {
            if (!k.StartsWith(prefix, StringComparison.Ordinal)) continue;
            var o = k[prefix.Length..];
            var d = MapKey(o, rules, toOriginal: false)
                ?? throw new InvalidDataException($"{source}: {what} key '{k}' does not fit the {what} config (no diffusers name for it); the file looks like {DescribeFamily(file.Keys)}");
            result[d] = reshape?.Invoke(o, t) ?? t;
        }
        if (result.Count == 0) throw new InvalidDataException($"{source}: no {what} weights (keys under '{prefix}'); the file looks like {DescribeFamily(file.Keys)}");
        return result;
    }

    /// <summary>A transformers CLIPTextModel state dict under an original prefix (SD1's cond_stage_model.transformer.,
    /// SDXL's conditioner.embedders.0.transformer.): the names are transformers' own.</summary>
    public static Dictionary<string, Tensor> ClipToOriginal(IReadOnlyDictionary<string, Tensor> sd, string prefix) =>
        sd.ToDictionary(kv => prefix + kv.Key, kv => kv.Value);

    public static Dictionary<string, Tensor> ClipFromOriginal(IReadOnlyDictionary<string, Tensor> file, string prefix, string source)
    {
        var result = new Dictionary<string, Tensor>();
        foreach (var (k, t) in file)
        {
            if (!k.StartsWith(prefix, StringComparison.Ordinal)) continue;
            var d = k[prefix.Length..];
            if (d.EndsWith("position_ids", StringComparison.Ordinal)) continue;   // a buffer older transformers saved
            // Files written by transformers < 4.x lack the text_model. level.
            result[d.StartsWith("text_model.", StringComparison.Ordinal) ? d : "text_model." + d] = t;
        }
        if (result.Count == 0) throw new InvalidDataException($"{source}: no text-encoder weights under '{prefix}'; the file looks like {DescribeFamily(file.Keys)}");
        return result;
    }

    /// <summary>An OpenCLIP text tower (SD2's cond_stage_model.model., SDXL's conditioner.embedders.1.model.) from a
    /// transformers CLIPTextModel(WithProjection) state dict: q/k/v projections joined into attn.in_proj_weight/bias,
    /// text_projection transposed (OpenCLIP computes x @ P).</summary>
    public static Dictionary<string, Tensor> OpenClipToOriginal(IReadOnlyDictionary<string, Tensor> sd, string prefix)
    {
        var result = new Dictionary<string, Tensor>();
        var top = Tables.openclip_top.ToDictionary(p => p.diffusers, p => p.original);
        const string layers = "text_model.encoder.layers.";
        foreach (var (k, t) in sd)
        {
            if (top.TryGetValue(k, out var o))
            {
                result[prefix + o] = k == "text_projection.weight" ? t.t().contiguous() : t;
                continue;
            }
            if (!k.StartsWith(layers, StringComparison.Ordinal)) throw new InvalidDataException($"text encoder key '{k}' has no OpenCLIP name");
            var dot = k.IndexOf('.', layers.Length);
            var layer = k[layers.Length..dot];
            var rest = k[(dot + 1)..];
            var lp = $"{prefix}transformer.resblocks.{layer}.";
            if (rest.StartsWith("self_attn.q_proj.", StringComparison.Ordinal))
            {
                var kind = rest["self_attn.q_proj.".Length..];   // weight or bias
                var q = t;
                var kk = sd[$"{layers}{layer}.self_attn.k_proj.{kind}"];
                var v = sd[$"{layers}{layer}.self_attn.v_proj.{kind}"];
                result[lp + $"attn.in_proj_{kind}"] = cat([q, kk, v], 0);
                continue;
            }
            if (rest.StartsWith("self_attn.k_proj.", StringComparison.Ordinal) || rest.StartsWith("self_attn.v_proj.", StringComparison.Ordinal)) continue;
            var mapped = Tables.openclip_layer.FirstOrDefault(p => rest.StartsWith(p.diffusers, StringComparison.Ordinal));
            if (mapped == default) throw new InvalidDataException($"text encoder key '{k}' has no OpenCLIP name");
            result[lp + mapped.original + rest[mapped.diffusers.Length..]] = t;
        }
        return result;
    }

    /// <summary>The inverse of <see cref="OpenClipToOriginal"/>. Layers at and past <paramref name="numLayers"/> (SD2's
    /// last block, which SD2 never uses: it takes the penultimate layer), and text_projection when the model has none,
    /// are skipped, as diffusers' SD_2_TEXT_ENCODER_KEYS_TO_IGNORE; so are logit_scale and attn_mask.</summary>
    public static Dictionary<string, Tensor> OpenClipFromOriginal(IReadOnlyDictionary<string, Tensor> file, string prefix, int numLayers, bool withProjection, string source)
    {
        var result = new Dictionary<string, Tensor>();
        var top = Tables.openclip_top.ToDictionary(p => p.original, p => p.diffusers);
        var resblocks = prefix + "transformer.resblocks.";
        foreach (var (k, t) in file)
        {
            if (!k.StartsWith(prefix, StringComparison.Ordinal)) continue;
            var o = k[prefix.Length..];
            if (top.TryGetValue(o, out var d))
            {
                if (d == "text_projection.weight")
                {
                    if (withProjection) result[d] = t.t().contiguous();
                }
                else result[d] = t;
                continue;
            }
            if (o is "logit_scale" or "attn_mask") continue;
            if (!k.StartsWith(resblocks, StringComparison.Ordinal))
                throw new InvalidDataException($"{source}: OpenCLIP key '{k}' is not a text-tower weight; the file looks like {DescribeFamily(file.Keys)}");
            var dot = k.IndexOf('.', resblocks.Length);
            var layer = int.Parse(k[resblocks.Length..dot], System.Globalization.CultureInfo.InvariantCulture);
            if (layer >= numLayers) continue;
            var rest = k[(dot + 1)..];
            var lp = $"text_model.encoder.layers.{layer}.";
            if (rest is "attn.in_proj_weight" or "attn.in_proj_bias")
            {
                var kind = rest.EndsWith("weight", StringComparison.Ordinal) ? "weight" : "bias";
                var parts = t.chunk(3, 0);
                result[lp + $"self_attn.q_proj.{kind}"] = parts[0];
                result[lp + $"self_attn.k_proj.{kind}"] = parts[1];
                result[lp + $"self_attn.v_proj.{kind}"] = parts[2];
                continue;
            }
            var mapped = Tables.openclip_layer.FirstOrDefault(p => rest.StartsWith(p.original, StringComparison.Ordinal));
            if (mapped == default) throw new InvalidDataException($"{source}: OpenCLIP key '{k}' has no transformers name");
            result[lp + mapped.diffusers + rest[mapped.original.Length..]] = t;
        }
        if (result.Count == 0) throw new InvalidDataException($"{source}: no OpenCLIP text-encoder weights under '{prefix}'; the file looks like {DescribeFamily(file.Keys)}");
        return result;
    }

    // ---------------------------------------------------------------- families

    /// <summary>Which model family an original checkpoint's keys belong to: "sdxl" (conditioner.embedders.0 CLIP and .1
    /// OpenCLIP), "sdxl-refiner" (one OpenCLIP embedder), "sd2" (cond_stage_model.model: OpenCLIP), "sd1"
    /// (cond_stage_model.transformer: CLIP), "unet-only", or "unknown".</summary>
    public static string Family(IEnumerable<string> keys)
    {
        bool sdxl = false, refiner = false, sd2 = false, sd1 = false, unet = false;
        foreach (var k in keys)
        {
            if (k.StartsWith("conditioner.embedders.1.model.", StringComparison.Ordinal)) sdxl = true;
            else if (k.StartsWith("conditioner.embedders.0.model.", StringComparison.Ordinal)) refiner = true;
            else if (k.StartsWith("cond_stage_model.model.", StringComparison.Ordinal)) sd2 = true;
            else if (k.StartsWith("cond_stage_model.transformer.", StringComparison.Ordinal)) sd1 = true;
            else if (k.StartsWith("model.diffusion_model.", StringComparison.Ordinal)) unet = true;
        }
        return sdxl ? "sdxl" : refiner ? "sdxl-refiner" : sd2 ? "sd2" : sd1 ? "sd1" : unet ? "unet-only" : "unknown";
    }

    static string DescribeFamily(IEnumerable<string> keys) => Family(keys) switch
    {
        "sdxl" => "an SDXL base checkpoint (conditioner.embedders.0/1)",
        "sdxl-refiner" => "an SDXL refiner checkpoint (one OpenCLIP embedder)",
        "sd2" => "a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder, cond_stage_model.model)",
        "sd1" => "a Stable Diffusion 1.x checkpoint (CLIP text encoder, cond_stage_model.transformer)",
        "unet-only" => "a UNet-only checkpoint (model.diffusion_model.* and nothing else)",
        _ => "no Stable Diffusion single-file checkpoint (none of model.diffusion_model., first_stage_model., cond_stage_model., conditioner.embedders.)",
    };

    /// <summary>The family a diffusers pipeline's components make: sdxl (two text encoders), sd2 (a 1024-wide text
    /// encoder) or sd1.</summary>
    public static string Family(PipelineComponents p) => p.IsSDXL ? "sdxl" : p.text_encoder.config.hidden_size == 1024 ? "sd2" : "sd1";

    // ---------------------------------------------------------------- whole pipelines

    /// <summary>Every component of <paramref name="p"/> in one original-layout state dict (UNet, VAE, text encoder(s));
    /// <paramref name="dtype"/> casts floating tensors (null keeps each tensor's dtype).</summary>
    public static Dictionary<string, Tensor> ToOriginal(PipelineComponents p, ScalarType? dtype = null)
    {
        var family = Family(p);
        var all = new Dictionary<string, Tensor>();
        void Add(Dictionary<string, Tensor> part)
        {
            foreach (var (k, t) in part)
                if (!all.TryAdd(k, dtype is { } dt && t.is_floating_point() && t.dtype != dt ? t.to(dt) : t)) throw new InvalidDataException($"single file: '{k}' written twice");
        }
        Add(UnetToOriginal(p.unet.config, p.unet.state_dict()));
        Add(VaeToOriginal(p.vae.config, p.vae.state_dict()));
        switch (family)
        {
            case "sd1":
                Add(ClipToOriginal(p.text_encoder.state_dict(), Tables.prefixes["sd1_text_encoder"]));
                break;
            case "sd2":
                Add(OpenClipToOriginal(p.text_encoder.state_dict(), Tables.prefixes["sd2_text_encoder"]));
                break;
            default:
                Add(ClipToOriginal(p.text_encoder.state_dict(), Tables.prefixes["sdxl_text_encoder"]));
                Add(OpenClipToOriginal(p.text_encoder_2!.state_dict(), Tables.prefixes["sdxl_text_encoder_2"]));
                break;
        }
        return all;
    }

    /// <summary>Writes <paramref name="p"/> as one .safetensors file in the original layout (atomically), with metadata
    /// naming the family; returns the number of tensors written.</summary>
    public static int Save(PipelineComponents p, string path, ScalarType? dtype = null)
    {
        using var scope = NewDisposeScope();
        var sd = ToOriginal(p, dtype);
        safetensors.save_file(sd, path, new Dictionary<string, string> { ["format"] = "pt", ["sudo.family"] = Family(p) });
        return sd.Count;
    }

    /// <summary>Loads an original single-file checkpoint's weights into the components of <paramref name="p"/> (built from
    /// a diffusers folder of the same family, which gives the configs, tokenizers and scheduler): strict, every
    /// module key must be present. A family mismatch is an error that names the file's family.</summary>
    public static void LoadInto(PipelineComponents p, IReadOnlyDictionary<string, Tensor> file, string source)
    {
        var fileFamily = Family(file.Keys);
        var want = Family(p);
        if (fileFamily != want && fileFamily != "unet-only")
            throw new InvalidDataException($"{source}: the file looks like {DescribeFamily(file.Keys)}, but the configs ({p.Folder}) describe a {want} pipeline");
        Load(p.unet, FitShapes(p.unet, UnetFromOriginal(p.unet.config, file, source)), source, "UNet");
        if (fileFamily == "unet-only") return;
        Load(p.vae, VaeFromOriginal(p.vae.config, file, source), source, "VAE");
        switch (want)
        {
            case "sd1":
                Load(p.text_encoder, ClipFromOriginal(file, Tables.prefixes["sd1_text_encoder"], source), source, "text encoder");
                break;
            case "sd2":
                Load(p.text_encoder, OpenClipFromOriginal(file, Tables.prefixes["sd2_text_encoder"], p.text_encoder.config.num_hidden_layers, false, source), source, "text encoder");
                break;
            default:
                Load(p.text_encoder, ClipFromOriginal(file, Tables.prefixes["sdxl_text_encoder"], source), source, "text encoder");
                Load(p.text_encoder_2!, OpenClipFromOriginal(file, Tables.prefixes["sdxl_text_encoder_2"], p.text_encoder_2!.config.num_hidden_layers, true, source), source, "text encoder 2");
                break;
        }
    }

    /// <summary>Linear ↔ 1×1-conv layouts of the transformer blocks' proj_in / proj_out, fitted to the module (SD2 and
    /// SDXL use linear projections, SD1 1×1 convolutions; files converted by other tools may hold either).</summary>
    static Dictionary<string, Tensor> FitShapes(nn.Module m, Dictionary<string, Tensor> sd)
    {
        var expected = m.state_dict();
        foreach (var k in sd.Keys.ToList())
        {
            if (!expected.TryGetValue(k, out var e)) continue;
            var t = sd[k];
            if (e.dim() == 2 && t.dim() == 4 && t.size(2) == 1 && t.size(3) == 1) sd[k] = t.flatten(1);
            else if (e.dim() == 4 && t.dim() == 2 && e.size(2) == 1 && e.size(3) == 1) sd[k] = t.view(t.size(0), t.size(1), 1, 1);
        }
        return sd;
    }

    static void Load(nn.Module m, Dictionary<string, Tensor> sd, string source, string what)
    {
        try
        {
            using (no_grad()) m.load_state_dict(sd);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{source} ({what}): {e.Message}", e);
        }
    }

    /// <summary>A diffusers pipeline folder written as one original-layout .safetensors file (dtype: cast floating
    /// tensors, e.g. fp16 as webui files usually are; null keeps the folder's). Returns the tensor count.</summary>
    public static int Export(string diffusersFolder, string outFile, ScalarType? dtype = null)
    {
        using var p = PipelineComponents.from_pretrained(diffusersFolder);
        return Save(p, outFile, dtype);
    }

    /// <summary>An original single-file checkpoint (.safetensors, or a .ckpt / .pt read through the weights_only pickle
    /// loader: nothing in it executes) written as a diffusers pipeline folder. <paramref name="configFolder"/> is a
    /// diffusers pipeline of the same family (its model_index.json, component configs, tokenizers and scheduler are
    /// used; its weights are replaced), as diffusers' from_single_file(config=...) takes them. Published atomically.</summary>
    public static void Import(string file, string configFolder, string outFolder, ScalarType? dtype = null)
    {
        using var p = LoadPipeline(file, configFolder);
        // Written in the file's own floating dtype (its UNet's), or the one asked for.
        var save = dtype ?? FloatingDtype(file);
        if (save != ScalarType.Float32)
            foreach (var m in new nn.Module?[] { p.unet, p.vae, p.text_encoder, p.text_encoder_2 }) m?.to(save);
        var tmp = Path.GetFullPath(outFolder).TrimEnd('/') + $".tmp-{Environment.ProcessId}";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        p.save_pretrained(tmp);
        AtomicFile.PublishDirectory(tmp, outFolder);
    }

    /// <summary>diffusers' default pipeline per family (DIFFUSERS_DEFAULT_PIPELINE_PATHS in single_file_utils.py): the
    /// configs, tokenizers and scheduler a single file is read with when none are given. SD2 defaults to the 768-px
    /// v-prediction model, as diffusers does; SD2-base (512 px, ε) files need its folder given explicitly.</summary>
    public static readonly IReadOnlyDictionary<string, string> DefaultConfigRepo = new Dictionary<string, string>
    {
        ["sd1"] = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        ["sd2"] = "stabilityai/stable-diffusion-2-1",
        ["sdxl"] = "stabilityai/stable-diffusion-xl-base-1.0",
    };

    /// <summary>The family of a single file from its keys (a safetensors header is read without the data).</summary>
    public static string FileFamily(string file)
    {
        if (file.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) return Family(safetensors.ReadHeader(file).entries.Keys);
        using var scope = NewDisposeScope();
        return Family(Checkpoints.ReadWeights(file).Keys);
    }

    /// <summary>A single-file checkpoint as pipeline components: the modules are built from the configs of
    /// <paramref name="configFolder"/> (a diffusers pipeline folder or cached repo id of the same family; default
    /// SUDO_SINGLE_FILE_CONFIG, else <see cref="DefaultConfigRepo"/> of the file's family in the Hugging Face cache —
    /// Sudo never downloads) and every weight is read from the file.</summary>
    public static PipelineComponents LoadPipeline(string file, string? configFolder = null, ScalarType? dtype = null, Device? device = null, string? cacheDir = null)
    {
        var family = FileFamily(file);
        var config = configFolder ?? Environment.GetEnvironmentVariable("SUDO_SINGLE_FILE_CONFIG");
        if (config is null)
        {
            if (!DefaultConfigRepo.TryGetValue(family, out var repo))
                throw new InvalidDataException($"{file}: the file looks like {DescribeFamily(safetensorsOrEmpty(file))}; give the configs of its family (a diffusers pipeline folder) with SUDO_SINGLE_FILE_CONFIG");
            try
            {
                config = Hub.Resolve(repo, cacheDir);
            }
            catch (DirectoryNotFoundException e)
            {
                throw new DirectoryNotFoundException($"{file} is a {family} single-file checkpoint: its configs, tokenizer and scheduler come from a diffusers pipeline of that family — {repo} is not in the Hugging Face cache ({e.Message}); point SUDO_SINGLE_FILE_CONFIG at a diffusers folder of the same family", e);
            }
        }
        var inferFromFile = configFolder is null && Environment.GetEnvironmentVariable("SUDO_SINGLE_FILE_CONFIG") is null;
        var folder = Directory.Exists(config) ? config : Hub.Resolve(config, cacheDir);
        var p = PipelineComponents.from_configs(folder, dtype, device);
        try
        {
            using var scope = NewDisposeScope();
            long? globalStep = null;
            var weights = Checkpoints.IsPickle(file) ? Checkpoints.ReadPickle(file, root => globalStep = GlobalStep(root)) : Checkpoints.ReadWeights(file);
            LoadInto(p, weights, file);
            // Only when the configs are the family default (SD2.1, 768-v): a folder given explicitly says it all.
            return inferFromFile ? p.WithPredictionType(InferPredictionType(family, globalStep)) : p;
        }
        catch
        {
            p.Dispose();
            throw;
        }
    }

    /// <summary>The prediction type diffusers gives an LDM single file (single_file_utils.py, the scheduler of an original
    /// checkpoint, L1822-1828): an SD2 file is v_prediction unless its global_step is 875000 — SD2-base's released
    /// checkpoint, which is epsilon (diffusers' own comment calls this rule brittle; --prediction_type overrides it); other
    /// families keep their config's (null).</summary>
    public static string? InferPredictionType(string family, long? globalStep) =>
        family == "sd2" ? (globalStep == 875000 ? "epsilon" : "v_prediction") : null;

    /// <summary>The global_step a Lightning checkpoint stores beside its state_dict (null when absent).</summary>
    public static long? GlobalStep(object? root) =>
        root is PyDict d && d.TryGet("global_step", out var v) && v is IConvertible c and not string ? c.ToInt64(System.Globalization.CultureInfo.InvariantCulture) : null;

    static IEnumerable<string> safetensorsOrEmpty(string file) =>
        file.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? safetensors.ReadHeader(file).entries.Keys : [];

    /// <summary>The dtype of a single file's UNet weights (fp16 for most webui files).</summary>
    public static ScalarType FloatingDtype(string file)
    {
        if (file.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            var e = safetensors.ReadHeader(file).entries;
            var k = e.Keys.FirstOrDefault(k => k.StartsWith(Tables.prefixes["unet"], StringComparison.Ordinal) && k.EndsWith(".weight", StringComparison.Ordinal));
            return k is null ? ScalarType.Float32 : e[k].DType;
        }
        using var scope = NewDisposeScope();
        var w = Checkpoints.ReadWeights(file);
        var t = w.FirstOrDefault(kv => kv.Key.StartsWith(Tables.prefixes["unet"], StringComparison.Ordinal) && kv.Value.is_floating_point()).Value;
        return t?.dtype ?? ScalarType.Float32;
    }

    /// <summary>True for a path that names one weight file (.safetensors / .ckpt / .pt / .pth / .bin) rather than a folder.</summary>
    public static bool IsSingleFile(string path) =>
        File.Exists(path) && (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) || Checkpoints.IsPickle(path));
}
