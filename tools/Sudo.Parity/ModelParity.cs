// Golden parity: run a component folder on the inputs of an io.safetensors file written by the reference
// libraries and compare every recorded output (`sudoml parity --model ... --io ...` and the tests).
using System.Text.Json.Nodes;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using static Sudo.Torch.torch;
namespace Sudo.Parity;

/// <summary>One compared tensor: max |Δ|, max |Δ| / max |reference|, the tolerance used, pass or not.</summary>
public sealed record ParityRow(string Name, double MaxAbsError, double MaxRelError, double Tolerance, bool Passed, string Note = "");

public sealed record ParityReport(string Component, string ToleranceRule, IReadOnlyList<ParityRow> Rows)
{
    public bool Passed => Rows.All(r => r.Passed);
}

public static class ModelParity
{
    /// <summary>Default tolerances per kind of golden file: max |Δ| ≤ factor · max(1, max |reference|).</summary>
    public static readonly IReadOnlyDictionary<string, double> Tolerances = new Dictionary<string, double>
    {
        ["model_fp32"] = 1e-4,
        ["scheduler"] = 1e-5,
        ["pipeline_latents"] = 1e-3,
        ["pipeline_images"] = 2.0 / 255,
        ["clip_preprocess"] = 0.016,
    };

    /// <summary>unet, vae, clip_text, clip_text_proj or clip_full, from config.json's _class_name / architectures.</summary>
    public static string DetectComponent(string folder)
    {
        var path = Path.Combine(folder, "config.json");
        if (!File.Exists(path)) throw new FileNotFoundException($"{folder}: no config.json (a diffusers/transformers component folder holds config.json and its weights)", path);
        JsonObject cfg;
        try
        {
            cfg = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: not a JSON object");
        }
        catch (System.Text.Json.JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e);
        }
        var cls = (string?)cfg["_class_name"] ?? (cfg["architectures"] as JsonArray)?.FirstOrDefault()?.GetValue<string>();
        return cls switch
        {
            "UNet2DConditionModel" => "unet",
            "AutoencoderKL" => "vae",
            "CLIPTextModel" => "clip_text",
            "CLIPTextModelWithProjection" => "clip_text_proj",
            "CLIPModel" => "clip_full",
            null => throw new InvalidDataException($"{path}: no _class_name or architectures field; pass the component explicitly"),
            _ => throw new NotSupportedException($"{path}: model class '{cls}' has no parity runner (unet, vae, clip_text, clip_text_proj, clip_full)"),
        };
    }

    /// <param name="device">Where the component runs (default CPU); outputs come back to the CPU for comparison.</param>
    /// <param name="dtype">Weights and floating-point inputs in this dtype (default fp32); timesteps stay fp32 (bf16 would
    /// round 999 to 1000). Pass a tolerance that fits the dtype.</param>
    public static ParityReport Run(string folder, string ioPath, string? component = null, double? tolerance = null, Device? device = null, ScalarType? dtype = null)
    {
        if (component is null or "pickle" && PickleParity.IsPickleFolder(folder)) return PickleParity.Run(folder);
        if ((component ?? RewardParity.Detect(folder)) is "spm" or "hpsv2" or "aesthetic" or "imagereward")
            return RewardParity.Run(folder, ioPath, component ?? RewardParity.Detect(folder)!, tolerance);
        var comp = component ?? DetectComponent(folder);
        var factor = tolerance ?? Tolerances["model_fp32"];
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var io = safetensors.safe_open(ioPath);
        if ((device is { } dv && dv.Type != DeviceType.CPU || dtype is not (null or ScalarType.Float32)) && comp is not ("unet" or "vae" or "clip_text" or "clip_text_proj"))
            throw new NotSupportedException($"parity of {comp} runs on the CPU in fp32 only (device and dtype are for unet, vae, clip_text, clip_text_proj)");
        Tensor In(string k)
        {
            if (!io.Contains(k)) throw new InvalidDataException($"{ioPath}: input '{k}' missing for component {comp}");
            var t = io.get(k);
            if (device is null && dtype is null) return t;
            var dt = t.is_floating_point() && !k.Contains("timestep") ? dtype ?? t.dtype : t.dtype;
            return t.to(device ?? Device.CPU, dt);
        }
        T Place<T>(T m) where T : nn.Module
        {
            if (device is not null || dtype is not null) m.to(device, dtype);
            return m;
        }
        var produced = new Dictionary<string, Tensor>();
        void Trace(string name, Tensor t) => produced.TryAdd("dbg_" + name, t);

        switch (comp)
        {
            case "unet":
                {
                    using var m = Place(Checkpoints.Load(folder, () => new UNet2DConditionModel(UNet2DConditionConfig.FromFile(Path.Combine(folder, "config.json"))),
                        "diffusion_pytorch_model", null, null, null));
                    var added = io.Contains("in_text_embeds") ? new AddedCondKwargs(In("in_text_embeds"), In("in_time_ids")) : null;
                    var sample = In("in_sample");
                    var ehs = In("in_encoder_hidden_states");
                    produced["out_sample"] = m.forward(sample, In("in_timestep_int"), ehs, added, Trace);
                    if (io.Contains("in_timestep_float")) produced["out_sample_t_float"] = m.forward(sample, In("in_timestep_float"), ehs, added);
                    // The 0-dim case: the recorded scalar, else float(in_timestep_int[0]) as the SDXL item documents.
                    var scalar = io.Contains("in_timestep_scalar") ? In("in_timestep_scalar") : In("in_timestep_int")[0].to(ScalarType.Float32);
                    produced["out_sample_t_scalar"] = m.forward(sample, scalar, ehs, added);
                    break;
                }
            case "vae":
                {
                    using var m = Place(Checkpoints.Load(folder, () => new AutoencoderKL(AutoencoderKLConfig.FromFile(Path.Combine(folder, "config.json"))),
                        "diffusion_pytorch_model", null, null, null));
                    var post = m.encode(In("in_image"), Trace);   // its tensors are compared, then disposed below
                    produced["out_mean"] = post.mean;
                    produced["out_logvar"] = post.logvar;
                    produced["out_std"] = post.std;
                    produced["out_latent_scaled"] = m.scale_latents(post.mean);
                    if (io.Contains("in_noise")) produced["out_posterior_sample"] = post.sample(noise: In("in_noise"));
                    produced["out_decoded_mean"] = m.decode(post.mean, Trace);
                    produced["out_forward_sample"] = m.forward(In("in_image"));
                    if (io.Contains("in_latent")) produced["out_decoded_latent"] = m.decode(In("in_latent"));
                    break;
                }
            case "clip_text":
            case "clip_text_proj":
                {
                    var cfg = CLIPTextConfig.FromFile(Path.Combine(folder, "config.json"));
                    CLIPTextOutput o;
                    if (comp == "clip_text")
                    {
                        using var m = Place(Checkpoints.Load(folder, () => new CLIPTextModel(cfg), "model", null, null, null));
                        o = m.forward(In("in_input_ids"));
                    }
                    else
                    {
                        using var m = Place(Checkpoints.Load(folder, () => new CLIPTextModelWithProjection(cfg), "model", null, null, null));
                        (o, var embeds) = m.forward(In("in_input_ids"));
                        produced["out_text_embeds"] = embeds;
                    }
                    produced["out_last_hidden_state"] = o.last_hidden_state;
                    produced["out_pooler_output"] = o.pooler_output;
                    produced["out_penultimate_hidden_state"] = o.penultimate_hidden_state;
                    for (var i = 0; i < o.hidden_states.Count; i++) produced[$"dbg_hidden_states_{i}"] = o.hidden_states[i];
                    produced["dbg_pool_index"] = o.pool_index;
                    break;
                }
            case "clip_full":
                {
                    using var m = Checkpoints.Load(folder, () => new CLIPModel(CLIPConfig.FromFile(Path.Combine(folder, "config.json"))), "model", null, null, null);
                    var o = m.forward(In("in_input_ids"), In("in_pixel_values"));
                    produced["out_image_features"] = m.get_image_features(In("in_pixel_values"));
                    produced["out_text_features"] = m.get_text_features(In("in_input_ids"));
                    produced["out_image_embeds_normalized"] = o.image_embeds;
                    produced["out_text_embeds_normalized"] = o.text_embeds;
                    produced["out_logits_per_image"] = o.logits_per_image;
                    produced["out_logits_per_text"] = o.logits_per_text;
                    produced["out_logit_scale"] = m.logit_scale.detach();
                    produced["out_vision_pooler_output"] = o.vision_model_output.pooler_output;
                    produced["out_vision_last_hidden_state"] = o.vision_model_output.last_hidden_state;
                    produced["out_text_pooler_output"] = o.text_model_output.pooler_output;
                    for (var i = 0; i < o.vision_model_output.hidden_states.Count; i++) produced[$"dbg_vision_hidden_states_{i}"] = o.vision_model_output.hidden_states[i];
                    for (var i = 0; i < o.text_model_output.hidden_states.Count; i++) produced[$"dbg_text_hidden_states_{i}"] = o.text_model_output.hidden_states[i];
                    break;
                }
            default:
                throw new ArgumentException($"unknown component '{comp}': expected unet, vae, clip_text, clip_text_proj or clip_full");
        }

        var rows = CompareRecorded(io, produced, (key, actual, reference) => Compare(key, actual, reference, factor));
        foreach (var t in produced.Values) t.Dispose();
        return new ParityReport(comp, $"max |Δ| ≤ {factor:G3} · max(1, max |reference|)", rows);
    }

    /// <summary>One row per recorded out_* / dbg_* tensor of <paramref name="io"/>, in name order: compared with
    /// <paramref name="compare"/> when produced; an output not produced fails, an intermediate not traced is skipped.</summary>
    public static List<ParityRow> CompareRecorded(safetensors.File io, IReadOnlyDictionary<string, Tensor> produced, Func<string, Tensor, Tensor, ParityRow> compare)
    {
        var rows = new List<ParityRow>();
        foreach (var key in io.Keys.Where(k => k.StartsWith("out_", StringComparison.Ordinal) || k.StartsWith("dbg_", StringComparison.Ordinal)).Order(StringComparer.Ordinal))
        {
            var reference = io.get(key);
            if (!produced.TryGetValue(key, out var actual))
            {
                var isOutput = key.StartsWith("out_", StringComparison.Ordinal);
                rows.Add(new ParityRow(key, double.NaN, double.NaN, double.NaN, !isOutput, isOutput ? "not computed" : "not traced"));
                continue;
            }
            rows.Add(compare(key, actual, reference));
        }
        return rows;
    }

    public static ParityRow Compare(string name, Tensor actual, Tensor reference, double factor)
    {
        using var scope = NewDisposeScope();
        if (!actual.shape.SequenceEqual(reference.shape))
            return new ParityRow(name, double.NaN, double.NaN, double.NaN, false, $"shape [{string.Join(", ", actual.shape)}] vs reference [{string.Join(", ", reference.shape)}]");
        var a = actual.to(Device.CPU, ScalarType.Float64);
        var r = reference.to(ScalarType.Float64);
        var refMax = r.numel() == 0 ? 0 : r.abs().max().item();
        var err = r.numel() == 0 ? 0 : (a - r).abs().max().item();
        var tol = factor * Math.Max(1, refMax);
        return new ParityRow(name, err, refMax > 0 ? err / refMax : err, tol, err <= tol);
    }
}

/// <summary>Tokenizer parity against a golden jsonl (one case per line: prompt, ids, attention_mask,
/// unpadded_ids and optionally the *_noftfy fields): exact equality is required.</summary>
public static class TokenizerParity
{
    public sealed record Case(int Line, string Prompt, string Field, int[] Expected, int[] Actual)
    {
        public bool Passed => Expected.SequenceEqual(Actual);
    }

    public static List<Case> Run(CLIPTokenizer tokenizer, string casesPath)
    {
        var plain = tokenizer.WithoutTextFix();
        var result = new List<Case>();
        var n = 0;
        foreach (var line in File.ReadLines(casesPath))
        {
            n++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            var o = JsonNode.Parse(line) as JsonObject ?? throw new InvalidDataException($"{casesPath}:{n}: not a JSON object");
            var prompt = (string?)o["prompt"] ?? throw new InvalidDataException($"{casesPath}:{n}: no prompt");
            int[] Ints(string k) => (o[k] as JsonArray)!.Select(x => x!.GetValue<int>()).ToArray();
            var (ids, mask) = tokenizer.EncodeFixed(prompt);
            if (o.ContainsKey("ids")) result.Add(new Case(n, prompt, "ids", Ints("ids"), ids));
            if (o.ContainsKey("attention_mask")) result.Add(new Case(n, prompt, "attention_mask", Ints("attention_mask"), mask));
            if (o.ContainsKey("unpadded_ids")) result.Add(new Case(n, prompt, "unpadded_ids", Ints("unpadded_ids"), tokenizer.EncodeFixed(prompt, padding: false, truncation: false).ids));
            if (o.ContainsKey("ids_noftfy")) result.Add(new Case(n, prompt, "ids_noftfy", Ints("ids_noftfy"), plain.EncodeFixed(prompt).ids));
            if (o.ContainsKey("unpadded_ids_noftfy")) result.Add(new Case(n, prompt, "unpadded_ids_noftfy", Ints("unpadded_ids_noftfy"), plain.EncodeFixed(prompt, padding: false, truncation: false).ids));
        }
        return result;
    }
}
