// SPO's step-aware preference model (SPO time_conditioned_clip.py): a CLIPModel scorer whose
// vision tower is conditioned on the timestep with DiT-style adaLN on every block and on the pooled token.
// The new parts start at "shift = scale = 0, gate = 1", so at step 0 the model equals its base scorer.
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Preference;

public sealed class StepAwarePreferenceModel : nn.Module
{
    public readonly CLIPModel clip;
    public readonly nn.Linear t_linear_1, t_linear_2;
    public readonly nn.ModuleList<nn.Linear> adaLN_modulation;
    public readonly nn.Linear pooled_adaLN_modulation;
    public int frequency_embedding_size { get; }

    /// <summary>Wraps <paramref name="clip"/> (e.g. PickScore); the module owns it from here.</summary>
    public StepAwarePreferenceModel(CLIPModel clip, int frequency_embedding_size = 256, Generator? generator = null)
    {
        this.clip = register_module("clip", clip);
        this.frequency_embedding_size = frequency_embedding_size;
        var h = clip.config.vision_config.hidden_size;
        var dev = clip.logit_scale.device;
        t_linear_1 = register_module("t_embedder_linear_1", new nn.Linear(frequency_embedding_size, h, device: dev));
        t_linear_2 = register_module("t_embedder_linear_2", new nn.Linear(h, h, device: dev));
        adaLN_modulation = register_module("adaLN_modulation", new nn.ModuleList<nn.Linear>());
        for (var i = 0; i < clip.vision_model.encoder.layers.Count; i++) adaLN_modulation.append(new nn.Linear(h, 6 * h, device: dev));
        pooled_adaLN_modulation = register_module("pooled_adaLN_modulation", new nn.Linear(h, 2 * h, device: dev));
        shortest_edge = clip.config.vision_config.image_size;
        InitAdaLN(generator);
    }

    /// <summary>The processor's shortest_edge, image_mean and image_std (SPO reads only these from its
    /// CLIPProcessor); defaults: the vision tower's image size and the OpenAI CLIP mean/std.</summary>
    public int shortest_edge { get; set; }
    public double[] image_mean { get; set; } = Sudo.Data.Images.ClipMean.ToArray();
    public double[] image_std { get; set; } = Sudo.Data.Images.ClipStd.ToArray();

    /// <summary>The released checkpoint's file names (SPO's README / Hugging Face: SPO-Diffusion-Models).</summary>
    public static readonly string[] SpoCheckpointNames =
        ["step_aware_preference_model.bin", "sd-v1-5_step-aware_preference_model.bin", "sdxl_step-aware_preference_model.bin"];

    /// <summary>Writes the whole model (CLIP towers + timestep embedder + adaLN) as model.safetensors with a
    /// transformers CLIPConfig plus "step_aware": true and frequency_embedding_size in config.json, and the
    /// processor settings as preprocessor_config.json.</summary>
    public void save_pretrained(string folder)
    {
        var cfg = clip.config.ToJson();
        cfg["step_aware"] = true;
        cfg["frequency_embedding_size"] = frequency_embedding_size;
        Checkpoints.Save(this, folder, "model", cfg);
        WriteProcessor(folder);
    }

    /// <summary>Writes the model in SPO's released layout: torch.save(StepAwarePreferenceModel.state_dict()) as
    /// <paramref name="binName"/> (keys "model." + the CLIPModel keys, adaLN and t_embedder as SPO names them,
    /// the position_ids buffers transformers 4.27 wrote) plus the base CLIPConfig as config.json and the
    /// processor settings, so SPO's own loader and <see cref="from_pretrained"/> both read it.</summary>
    public void save_spo(string folder, string binName = "step_aware_preference_model.bin")
    {
        Directory.CreateDirectory(folder);
        using var scope = NewDisposeScope();
        var sd = new List<KeyValuePair<string, Tensor>>();
        foreach (var (k, t) in state_dict()) sd.Add(new(ToSpoKey(k), t));
        var text = clip.config.text_config;
        var vision = clip.config.vision_config;
        var patches = (vision.image_size / vision.patch_size) * (vision.image_size / vision.patch_size);
        sd.Add(new("model.text_model.embeddings.position_ids", arange(0, text.max_position_embeddings, 1, ScalarType.Int64).unsqueeze(0)));
        sd.Add(new("model.vision_model.embeddings.position_ids", arange(0, patches + 1, 1, ScalarType.Int64).unsqueeze(0)));
        TorchPickle.SaveStateDict(sd, Path.Combine(folder, binName));
        AtomicFile.WriteAllText(Path.Combine(folder, "config.json"), clip.config.ToJson().ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        WriteProcessor(folder);
    }

    private void WriteProcessor(string folder)
    {
        var size = clip.config.vision_config.image_size;
        var o = new System.Text.Json.Nodes.JsonObject
        {
            ["image_processor_type"] = "CLIPImageProcessor",
            ["size"] = new System.Text.Json.Nodes.JsonObject { ["shortest_edge"] = shortest_edge },
            ["crop_size"] = new System.Text.Json.Nodes.JsonObject { ["height"] = size, ["width"] = size },
            ["image_mean"] = new System.Text.Json.Nodes.JsonArray(image_mean.Select(v => (System.Text.Json.Nodes.JsonNode)v).ToArray()),
            ["image_std"] = new System.Text.Json.Nodes.JsonArray(image_std.Select(v => (System.Text.Json.Nodes.JsonNode)v).ToArray()),
            ["resample"] = 3,
            ["do_resize"] = true,
            ["do_center_crop"] = true,
            ["do_normalize"] = true,
        };
        AtomicFile.WriteAllText(Path.Combine(folder, "preprocessor_config.json"), o.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Sudo's parameter name → SPO's (spo/preference_models/models/step_aware_preference_model.py and
    /// time_conditioned_clip.py): clip.* → model.*, t_embedder_linear_{1,2} → model.t_embedder.mlp.{0,2},
    /// adaLN_modulation.i → model.vision_model.encoder.layers.i.adaLN_modulation.1, pooled_adaLN_modulation →
    /// model.vision_model.adaLN_modulation.1.</summary>
    public static string ToSpoKey(string key)
    {
        if (key.StartsWith("clip.", StringComparison.Ordinal)) return "model." + key["clip.".Length..];
        if (key.StartsWith("t_embedder_linear_1.", StringComparison.Ordinal)) return "model.t_embedder.mlp.0." + key["t_embedder_linear_1.".Length..];
        if (key.StartsWith("t_embedder_linear_2.", StringComparison.Ordinal)) return "model.t_embedder.mlp.2." + key["t_embedder_linear_2.".Length..];
        if (key.StartsWith("pooled_adaLN_modulation.", StringComparison.Ordinal)) return "model.vision_model.adaLN_modulation.1." + key["pooled_adaLN_modulation.".Length..];
        if (key.StartsWith("adaLN_modulation.", StringComparison.Ordinal))
        {
            var rest = key["adaLN_modulation.".Length..];
            var dot = rest.IndexOf('.');
            return $"model.vision_model.encoder.layers.{rest[..dot]}.adaLN_modulation.1{rest[dot..]}";
        }
        throw new ArgumentException($"'{key}' is not a step-aware preference model parameter");
    }

    /// <summary>SPO's key → Sudo's; null for the position_ids buffers older transformers saved (ignored, as SPO's
    /// loader does after checking them).</summary>
    public static string? FromSpoKey(string key)
    {
        if (key.EndsWith("embeddings.position_ids", StringComparison.Ordinal)) return null;
        if (!key.StartsWith("model.", StringComparison.Ordinal)) throw new InvalidDataException($"'{key}' is not a key of SPO's StepAwarePreferenceModel (all start with 'model.')");
        var k = key["model.".Length..];
        if (k.StartsWith("t_embedder.mlp.0.", StringComparison.Ordinal)) return "t_embedder_linear_1." + k["t_embedder.mlp.0.".Length..];
        if (k.StartsWith("t_embedder.mlp.2.", StringComparison.Ordinal)) return "t_embedder_linear_2." + k["t_embedder.mlp.2.".Length..];
        if (k.StartsWith("vision_model.adaLN_modulation.1.", StringComparison.Ordinal)) return "pooled_adaLN_modulation." + k["vision_model.adaLN_modulation.1.".Length..];
        const string layers = "vision_model.encoder.layers.";
        if (k.StartsWith(layers, StringComparison.Ordinal))
        {
            var rest = k[layers.Length..];
            var dot = rest.IndexOf('.');
            if (dot > 0 && rest[(dot + 1)..].StartsWith("adaLN_modulation.1.", StringComparison.Ordinal))
                return $"adaLN_modulation.{rest[..dot]}.{rest[(dot + 1 + "adaLN_modulation.1.".Length)..]}";
        }
        return "clip." + k;
    }

    /// <summary>True when <paramref name="folder"/> holds a saved step-aware model (not a plain CLIPModel).</summary>
    public static bool IsStepAware(string folder) => FindSpoCheckpoint(folder) is not null || IsSudoStepAware(folder);

    private static bool IsSudoStepAware(string folder)
    {
        var path = Path.Combine(folder, "config.json");
        return File.Exists(path) && System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))?["step_aware"]?.GetValue<bool>() == true;
    }

    /// <summary>The SPO-layout .bin of a folder (a released name, or the only *.bin), or null.</summary>
    public static string? FindSpoCheckpoint(string folder)
    {
        if (File.Exists(folder) && folder.EndsWith(".bin", StringComparison.OrdinalIgnoreCase)) return folder;
        if (!Directory.Exists(folder)) return null;
        foreach (var n in SpoCheckpointNames)
            if (File.Exists(Path.Combine(folder, n))) return Path.Combine(folder, n);
        var bins = Directory.GetFiles(folder, "*step-aware*.bin").Concat(Directory.GetFiles(folder, "*step_aware*.bin")).Distinct().ToArray();
        return bins.Length == 1 ? bins[0] : null;
    }

    /// <summary>Loads a step-aware preference model: SPO's released .bin (a folder holding it with the base
    /// CLIPConfig as config.json, or the .bin path with config.json beside it), or a folder written by
    /// <see cref="save_pretrained"/>. A plain CLIPModel folder (PickScore) is refused unless
    /// <paramref name="wrapPlainClip"/>: it would be wrapped with fresh time conditioning (shift = scale = 0,
    /// gate = 1), i.e. plain PickScore at every step — the setting SPO's ablation reports as clearly worse.</summary>
    public static StepAwarePreferenceModel from_pretrained(string folder, Device? device = null, bool wrapPlainClip = false)
    {
        var bin = FindSpoCheckpoint(folder);
        var dir = File.Exists(folder) ? Path.GetDirectoryName(Path.GetFullPath(folder))! : folder;
        StepAwarePreferenceModel model;
        if (bin is not null) model = FromSpoCheckpoint(bin, dir, device);
        else if (IsSudoStepAware(folder))
        {
            var cfgPath = Path.Combine(folder, "config.json");
            var fes = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cfgPath))?["frequency_embedding_size"]?.GetValue<int>() ?? 256;
            model = Checkpoints.Load(folder, () => new StepAwarePreferenceModel(new CLIPModel(CLIPConfig.FromFile(cfgPath)), fes), "model", null, ScalarType.Float32, device);
        }
        else if (wrapPlainClip) model = new StepAwarePreferenceModel(CLIPModel.from_pretrained(folder, device: device));
        else
            throw new InvalidDataException($"{folder} holds neither SPO's step-aware preference model (*step-aware_preference_model.bin + config.json) nor one saved by Sudo; "
                + "a plain CLIPModel (PickScore) would score every step without time conditioning, which SPO's ablation reports as clearly worse. "
                + "Pass the released .bin, or ask for the plain model explicitly (--scorer_plain_clip true / wrapPlainClip).");
        model.ReadProcessor(dir);
        return model;
    }

    private static StepAwarePreferenceModel FromSpoCheckpoint(string bin, string configFolder, Device? device)
    {
        var cfgPath = Path.Combine(configFolder, "config.json");
        if (!File.Exists(cfgPath))
            throw new FileNotFoundException($"{bin}: SPO's checkpoint carries no config; put the base CLIPModel's config.json (PickScore_v1's for SD1.5 and SDXL) next to it", cfgPath);
        StepAwarePreferenceModel model;
        using (nn.init.skip())
        using (device_scope(device ?? Device.CPU))
            model = new StepAwarePreferenceModel(new CLIPModel(CLIPConfig.FromFile(cfgPath)));
        try
        {
            var raw = Checkpoints.ReadPickle(bin);
            var sd = new Dictionary<string, Tensor>();
            try
            {
                foreach (var (k, t) in raw)
                {
                    var mapped = FromSpoKey(k);
                    if (mapped is null) continue;
                    if (!sd.TryAdd(mapped, t)) throw new InvalidDataException($"{bin}: two keys map to '{mapped}'");
                }
                Checkpoints.LoadInto(model, sd, bin);
            }
            finally
            {
                foreach (var t in raw.Values) t.Dispose();
            }
            model.eval();
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    private void ReadProcessor(string folder)
    {
        shortest_edge = clip.config.vision_config.image_size;
        var path = Path.Combine(folder, "preprocessor_config.json");
        if (!File.Exists(path)) return;
        var o = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path)) as System.Text.Json.Nodes.JsonObject
            ?? throw new InvalidDataException($"{path}: not a JSON object");
        shortest_edge = o["size"] switch
        {
            System.Text.Json.Nodes.JsonObject so when so["shortest_edge"] is { } se => se.GetValue<int>(),
            System.Text.Json.Nodes.JsonValue v => v.GetValue<int>(),
            _ => shortest_edge,
        };
        if (o["image_mean"] is System.Text.Json.Nodes.JsonArray m) image_mean = m.Select(x => x!.GetValue<double>()).ToArray();
        if (o["image_std"] is System.Text.Json.Nodes.JsonArray sdv) image_std = sdv.Select(x => x!.GetValue<double>()).ToArray();
    }

    /// <summary>init_adaln_paras: t_embedder N(0, 0.02); adaLN weights 0 and biases giving shift = scale = 0,
    /// gate = 1; the pooled adaLN all zero.</summary>
    public void InitAdaLN(Generator? generator = null)
    {
        using var _ = no_grad();
        foreach (var l in new[] { t_linear_1, t_linear_2 })
        {
            l.weight.normal_(0, 0.02, generator);
            l.bias!.zero_();
        }
        var h = clip.config.vision_config.hidden_size;
        foreach (var m in adaLN_modulation)
        {
            m.weight.zero_();
            m.bias!.zero_();
            m.bias!.narrow(0, 2 * h, h).fill_(1.0);    // gate_msa
            m.bias!.narrow(0, 5 * h, h).fill_(1.0);    // gate_mlp
        }
        pooled_adaLN_modulation.weight.zero_();
        pooled_adaLN_modulation.bias!.zero_();
    }

    /// <summary>DiT's timestep_embedding: [cos, sin] of t·10000^(−i/half).</summary>
    public Tensor TimestepEmbedding(Tensor t) => TimestepEmbedding(t, null);

    /// <summary>DiT's timestep_embedding then the t_embedder MLP; <paramref name="frequencies"/> receives the
    /// sinusoidal features.</summary>
    public Tensor TimestepEmbedding(Tensor t, Action<Tensor>? frequencies)
    {
        using var scope = NewDisposeScope();
        var half = frequency_embedding_size / 2;
        // DiT / SPO: exp(−ln(max_period) · arange(half, float32) / half), in that order of float32 operations.
        var freqs = (arange(0, half, 1, ScalarType.Float32, t.device) * (-Math.Log(10000.0)) / half).exp();
        var args = t.to(ScalarType.Float32).unsqueeze(1) * freqs.unsqueeze(0);
        var emb = cat([args.cos(), args.sin()], -1);
        if (frequencies is not null) frequencies(DisposeScope.HandOut(emb));
        var c = t_linear_2.forward(nn.functional.silu(t_linear_1.forward(emb.to(t_linear_1.weight.dtype))));
        return scope.MoveToOuter(c);
    }

    /// <summary>Time-conditioned image features [B, projection_dim] for preprocessed pixels and timesteps [B].</summary>
    public Tensor get_image_features(Tensor pixel_values, Tensor timesteps) => get_image_features(pixel_values, timesteps, null);

    /// <summary>As above; <paramref name="trace"/> receives intermediate values ("vision_last_hidden_state",
    /// "vision_pooled": the modulated pooled token before visual_projection).</summary>
    public Tensor get_image_features(Tensor pixel_values, Tensor timesteps, Action<string, Tensor>? trace)
    {
        using var scope = NewDisposeScope();
        var v = clip.vision_model;
        var c = nn.functional.silu(TimestepEmbedding(timesteps));
        var x = v.pre_layrnorm.forward(v.embeddings.forward(pixel_values));
        for (var i = 0; i < v.encoder.layers.Count; i++)
        {
            var layer = v.encoder.layers[i];
            var mod = adaLN_modulation[i].forward(c).unsqueeze(1).chunk(6, -1);
            var (shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gateMlp) = (mod[0], mod[1], mod[2], mod[3], mod[4], mod[5]);
            var h = layer.layer_norm1.forward(x) * (1.0 + scaleMsa) + shiftMsa;
            x = x + gateMsa * layer.self_attn.forward(h, false);
            h = layer.layer_norm2.forward(x) * (1.0 + scaleMlp) + shiftMlp;
            x = x + gateMlp * layer.mlp.forward(h);
        }
        trace?.Invoke("vision_last_hidden_state", DisposeScope.HandOut(x));
        var pooled = v.post_layernorm.forward(x.select(1, 0));
        var pm = pooled_adaLN_modulation.forward(c).chunk(2, -1);
        pooled = pooled * (1.0 + pm[1]) + pm[0];
        trace?.Invoke("vision_pooled", DisposeScope.HandOut(pooled));
        return scope.MoveToOuter(clip.visual_projection.forward(pooled));
    }

    /// <summary>s(img, prompt, t) = exp(logit_scale)·cos(f_V(img, t), f_T(prompt)), one score per row.</summary>
    public Tensor score(Tensor pixel_values, Tensor input_ids, Tensor timesteps)
    {
        using var scope = NewDisposeScope();
        var img = get_image_features(pixel_values, timesteps);
        var txt = clip.get_text_features(input_ids);
        img = img / img.norm(2, [-1], keepdim: true);
        txt = txt / txt.norm(2, [-1], keepdim: true);
        return scope.MoveToOuter((img * txt).sum(-1) * clip.logit_scale.exp());
    }

    /// <summary>SPO's preprocessing of decoded images in [−1, 1] (StepAwarePreferenceModel.get_preference_score):
    /// scale = shortest_edge / min(H, W), (h, w) = (int(H·scale + 0.5), int(W·scale + 0.5)); F.interpolate bicubic
    /// (a = −0.75, align_corners False, no antialias) on the unclamped values; torchvision CenterCrop when h ≠ w
    /// (offsets int(round((h − s)/2)), half to even); then (x/2 + 0.5).clamp(0, 1) and Normalize(mean, std).</summary>
    public Tensor preprocess(Tensor images)
    {
        using var scope = NewDisposeScope();
        var s = shortest_edge;
        var x = images.to(ScalarType.Float32);
        var (hh, ww) = ((int)x.size(2), (int)x.size(3));
        var scale = (double)s / Math.Min(hh, ww);
        var (h, w) = ((int)(hh * scale + 0.5), (int)(ww * scale + 0.5));
        if (h != hh || w != ww)
            x = nn.functional.interpolate(x, size: (h, w), mode: nn.InterpolationMode.Bicubic, align_corners: false, antialias: false);
        if (h != w)
        {
            var top = (int)Math.Round((h - s) / 2.0, MidpointRounding.ToEven);
            var left = (int)Math.Round((w - s) / 2.0, MidpointRounding.ToEven);
            x = x.narrow(2, top, s).narrow(3, left, s);
        }
        x = (x / 2.0 + 0.5).clamp(0, 1);
        var mean = tensor(image_mean.Select(v => (float)v).ToArray(), [1, 3, 1, 1]).to(x.device);
        var std = tensor(image_std.Select(v => (float)v).ToArray(), [1, 3, 1, 1]).to(x.device);
        return scope.MoveToOuter((x - mean) / std);
    }

    /// <summary>SPO's preference_score_compare (spo/preference_models/compare_funcs.py): scores [K, b] of K candidates
    /// per prompt are sorted descending along K; the best (row 0) and worst (row −1) form the pair; it is valid when
    /// softmax([best, worst])[0] − softmax(…)[1] &gt; threshold. Returns indices [2, b] (best, worst) and valid [b].</summary>
    public static (Tensor indices, Tensor valid) preference_score_compare(Tensor scores, double threshold)
    {
        using var scope = NewDisposeScope();
        var (sorted, idx) = scores.sort(0, descending: true);
        var k = scores.size(0);
        var pair = stack([sorted.select(0, 0), sorted.select(0, k - 1)]);
        var indices = stack([idx.select(0, 0), idx.select(0, k - 1)]);
        var p = pair.softmax(0);
        var valid = (p.select(0, 0) - p.select(0, 1)).gt(threshold);
        return (scope.MoveToOuter(indices), scope.MoveToOuter(valid));
    }

    /// <summary>PickScore's pairwise criterion for strict pairs: −log softmax([s_w, s_l])[0], averaged; and
    /// the agreement (s_w > s_l).</summary>
    public static (Tensor loss, Tensor accuracy) pairwise_loss(Tensor score_w, Tensor score_l)
    {
        using var scope = NewDisposeScope();
        var logits = stack([score_w, score_l], 1);
        var loss = -logits.log_softmax(1).select(1, 0).mean();
        var acc = score_w.gt(score_l).to(ScalarType.Float32).mean();
        return (scope.MoveToOuter(loss), scope.MoveToOuter(acc));
    }
}
