// HPSv2 / v2.1 (tgxs002/HPSv2 hpsv2/img_score.py) and Diffusion-DPO's CLIP score (utils/hps_utils.py with the plain
// laion2B ViT-H-14 weights): an open_clip CLIP whose state dict is converted to transformers' CLIPModel layout
// (the two are the same network: pre-LN blocks, exact GELU unless quick_gelu, argmax(tokens) text pooling), with
// open_clip's tokenizer (padded with 0) and its eval preprocessing (ResizeMaxSize + pad + OpenAI mean/std).
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Preference;

public sealed class OpenClipReward : IRewardModel
{
    public CLIPModel model { get; }
    public CLIPTokenizer tokenizer { get; }
    public string name { get; }
    public int image_size { get; }

    /// <summary>torchvision ≥ 0.17 resizes tensors with antialias=True by default; HPSv2's reference (torchvision
    /// 0.14) did not. Default false (the reference's behaviour).</summary>
    public bool antialias { get; init; }

    public string scale => "⟨normalize(image), normalize(text)⟩: the cosine, no logit scale (HPSv2's img_score.py, Diffusion-DPO's hps_utils.py)";

    public OpenClipReward(CLIPModel model, CLIPTokenizer tokenizer, string name)
    {
        this.model = model;
        this.tokenizer = tokenizer.open_clip ? tokenizer : tokenizer.OpenClip();
        this.name = name;
        image_size = model.config.vision_config.image_size;
    }

    /// <summary>Loads an open_clip checkpoint: <paramref name="path"/> is the .pt file (HPS_v2_compressed.pt,
    /// HPS_v2.1_compressed.pt, open_clip_pytorch_model.bin) or a folder holding one, with open_clip's
    /// model_config.json beside it (the real ViT-H-14.json for HPSv2). The tokenizer is
    /// bpe_simple_vocab_16e6.txt.gz or vocab.json + merges.txt in that folder, else <paramref name="tokenizerFolder"/>
    /// (any CLIP BPE folder: the vocabulary is the same).</summary>
    public static OpenClipReward from_pretrained(string path, string name = "hps", string? tokenizerFolder = null)
    {
        string folder, ckpt;
        if (File.Exists(path)) (folder, ckpt) = (Path.GetDirectoryName(Path.GetFullPath(path))!, path);
        else
        {
            folder = path;
            var found = Directory.Exists(folder)
                ? Directory.GetFiles(folder, "HPS_v2*.pt").Concat(Directory.GetFiles(folder, "open_clip_pytorch_model.bin")).Order(StringComparer.Ordinal).ToArray()
                : [];
            if (found.Length == 0) throw new FileNotFoundException($"{path}: no open_clip checkpoint (HPS_v2*_compressed.pt or open_clip_pytorch_model.bin)");
            // HPS_v2.1 before HPS_v2 when both are present? No: ask for the file when ambiguous.
            if (found.Length > 1) throw new ArgumentException($"{path} holds several checkpoints ({string.Join(", ", found.Select(Path.GetFileName))}); pass the file");
            ckpt = found[0];
        }
        var cfgPath = new[] { "model_config.json", "open_clip_config.json" }.Select(n => Path.Combine(folder, n)).FirstOrDefault(File.Exists);
        CLIPConfig config;
        if (cfgPath is not null) config = ConfigFromOpenClip(cfgPath);
        else if (Path.GetFileName(ckpt).StartsWith("HPS_v2", StringComparison.Ordinal)) config = ConfigFromOpenClip(JsonNode.Parse(ViTH14)!.AsObject(), "open_clip ViT-H-14.json (built in)");
        else throw new FileNotFoundException($"{folder}: no open_clip model_config.json / open_clip_config.json beside {Path.GetFileName(ckpt)}");
        var tok = LoadTokenizer(folder, tokenizerFolder);
        CLIPModel model;
        using (nn.init.skip()) model = new CLIPModel(config);
        try
        {
            var sd = Checkpoints.ReadWeights(ckpt);
            try
            {
                var converted = ConvertStateDict(sd, ckpt);
                Checkpoints.LoadInto(model, converted, ckpt);
                foreach (var t in converted.Values) t.Dispose();
            }
            finally
            {
                foreach (var t in sd.Values) t.Dispose();
            }
            model.eval();
            return new OpenClipReward(model, tok, name);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    private static CLIPTokenizer LoadTokenizer(string folder, string? tokenizerFolder)
    {
        var gz = Path.Combine(folder, "bpe_simple_vocab_16e6.txt.gz");
        if (File.Exists(gz)) return CLIPTokenizer.FromOpenAIVocab(gz).OpenClip();
        if (File.Exists(Path.Combine(folder, "vocab.json"))) return CLIPTokenizer.from_pretrained(folder).OpenClip();
        if (tokenizerFolder is not null) return CLIPTokenizer.from_pretrained(tokenizerFolder).OpenClip();
        throw new FileNotFoundException($"{folder}: no tokenizer (bpe_simple_vocab_16e6.txt.gz, or vocab.json + merges.txt); pass a CLIP tokenizer folder");
    }

    /// <summary>open_clip's model config (model_configs/*.json: embed_dim, vision_cfg, text_cfg, quick_gelu) as a
    /// transformers CLIPConfig. Text pooling at argmax(ids) (eos_token_id 2, transformers' legacy rule), which is
    /// open_clip's text.argmax(dim=-1).</summary>
    public static CLIPConfig ConfigFromOpenClip(string path) =>
        ConfigFromOpenClip(JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: not a JSON object"), path);

    /// <summary>open_clip's model_configs/ViT-H-14.json (open_clip 2.x), the architecture of HPSv2 / v2.1 (HPSv2's
    /// img_score.py builds create_model_and_transforms('ViT-H-14', ...)); used when the .pt comes without a config.</summary>
    public const string ViTH14 = """{"embed_dim":1024,"vision_cfg":{"image_size":224,"layers":32,"width":1280,"head_width":80,"patch_size":14},"text_cfg":{"context_length":77,"vocab_size":49408,"width":1024,"heads":16,"layers":24}}""";

    /// <summary>A model config object; open_clip_config.json (Hugging Face hub repos) nests it under "model_cfg".</summary>
    public static CLIPConfig ConfigFromOpenClip(JsonObject root, string path)
    {
        var o = root["model_cfg"] as JsonObject ?? root;
        var v = o["vision_cfg"] as JsonObject ?? throw new InvalidDataException($"{path}: no vision_cfg");
        var t = o["text_cfg"] as JsonObject ?? throw new InvalidDataException($"{path}: no text_cfg");
        int I(JsonObject j, string k, int? d = null) => j[k] is { } n ? n.GetValue<int>() : d ?? throw new InvalidDataException($"{path}: no {k}");
        var act = (bool?)o["quick_gelu"] == true ? "quick_gelu" : "gelu";
        var vw = I(v, "width");
        var tw = I(t, "width");
        var mlpRatio = v["mlp_ratio"] is { } mr ? mr.GetValue<double>() : 4.0;
        if (v["image_size"] is JsonArray) throw new NotSupportedException($"{path}: non-square open_clip image sizes are not supported");
        foreach (var unsupported in new[] { "timm_model_name", "hf_model_name" })
            if (v[unsupported] is not null || t[unsupported] is not null)
                throw new NotSupportedException($"{path}: open_clip towers from {unsupported} are not supported (only the built-in ViT / text transformer)");
        return new CLIPConfig
        {
            projection_dim = I(o, "embed_dim"),
            text_config = new CLIPTextConfig
            {
                vocab_size = I(t, "vocab_size", 49408),
                hidden_size = tw,
                intermediate_size = (int)(tw * (t["mlp_ratio"] is { } tm ? tm.GetValue<double>() : 4.0)),
                num_hidden_layers = I(t, "layers"),
                num_attention_heads = I(t, "heads", tw / 64),
                max_position_embeddings = I(t, "context_length", 77),
                hidden_act = act,
                layer_norm_eps = 1e-5,
                eos_token_id = 2,
            },
            vision_config = new CLIPVisionConfig
            {
                hidden_size = vw,
                intermediate_size = (int)(vw * mlpRatio),
                num_hidden_layers = I(v, "layers"),
                num_attention_heads = vw / I(v, "head_width", 64),
                image_size = I(v, "image_size"),
                patch_size = I(v, "patch_size"),
                hidden_act = act,
                layer_norm_eps = 1e-5,
            },
        };
    }

    /// <summary>open_clip CLIP.state_dict() → transformers CLIPModel names: in_proj split into q/k/v, proj and
    /// text_projection transposed (open_clip multiplies x @ P), ln_* / c_fc / c_proj renamed. A "module." prefix
    /// (DDP) is dropped.</summary>
    public static Dictionary<string, Tensor> ConvertStateDict(Dictionary<string, Tensor> sd, string source)
    {
        var r = new Dictionary<string, Tensor>();
        foreach (var (k0, t) in sd)
        {
            var k = k0.StartsWith("module.", StringComparison.Ordinal) ? k0["module.".Length..] : k0;
            string? tower = null, rest = null;
            if (k.StartsWith("visual.transformer.resblocks.", StringComparison.Ordinal)) (tower, rest) = ("vision_model", k["visual.transformer.resblocks.".Length..]);
            else if (k.StartsWith("transformer.resblocks.", StringComparison.Ordinal)) (tower, rest) = ("text_model", k["transformer.resblocks.".Length..]);
            if (tower is not null)
            {
                var dot = rest!.IndexOf('.');
                var (i, p) = (rest[..dot], rest[(dot + 1)..]);
                var prefix = $"{tower}.encoder.layers.{i}.";
                if (p is "attn.in_proj_weight" or "attn.in_proj_bias")
                {
                    var parts = t.chunk(3, 0);
                    var kind = p.EndsWith("weight", StringComparison.Ordinal) ? "weight" : "bias";
                    r[prefix + "self_attn.q_proj." + kind] = parts[0].contiguous();
                    r[prefix + "self_attn.k_proj." + kind] = parts[1].contiguous();
                    r[prefix + "self_attn.v_proj." + kind] = parts[2].contiguous();
                    foreach (var x in parts) x.Dispose();
                    continue;
                }
                var mapped = p
                    .Replace("attn.out_proj.", "self_attn.out_proj.", StringComparison.Ordinal)
                    .Replace("ln_1.", "layer_norm1.", StringComparison.Ordinal)
                    .Replace("ln_2.", "layer_norm2.", StringComparison.Ordinal)
                    .Replace("mlp.c_fc.", "mlp.fc1.", StringComparison.Ordinal)
                    .Replace("mlp.c_proj.", "mlp.fc2.", StringComparison.Ordinal);
                r[prefix + mapped] = t.alias();
                continue;
            }
            var name = k switch
            {
                "visual.conv1.weight" => "vision_model.embeddings.patch_embedding.weight",
                "visual.class_embedding" => "vision_model.embeddings.class_embedding",
                "visual.positional_embedding" => "vision_model.embeddings.position_embedding.weight",
                "visual.proj" => "visual_projection.weight",
                "token_embedding.weight" => "text_model.embeddings.token_embedding.weight",
                "positional_embedding" => "text_model.embeddings.position_embedding.weight",
                "text_projection" => "text_projection.weight",
                "logit_scale" => "logit_scale",
                "attn_mask" => null,
                _ when k.StartsWith("visual.ln_pre.", StringComparison.Ordinal) => "vision_model.pre_layrnorm." + k["visual.ln_pre.".Length..],
                _ when k.StartsWith("visual.ln_post.", StringComparison.Ordinal) => "vision_model.post_layernorm." + k["visual.ln_post.".Length..],
                _ when k.StartsWith("ln_final.", StringComparison.Ordinal) => "text_model.final_layer_norm." + k["ln_final.".Length..],
                _ => throw new InvalidDataException($"{source}: '{k0}' is not a key of an open_clip CLIP (ViT image tower + text transformer)"),
            };
            if (name is null) continue;
            r[name] = name is "visual_projection.weight" or "text_projection.weight" ? t.t().contiguous() : t.alias();
        }
        return r;
    }

    /// <summary>open_clip's image_transform(S, is_train=False, resize_longest_max=True) on an RGB image: ToTensor,
    /// ResizeMaxSize (longest side to S with round-half-even sizes, torchvision's tensor bicubic, no clamp; pad with 0,
    /// [w//2, h//2, rest]), Normalize(OpenAI mean/std). [3, S, S].</summary>
    public Tensor Preprocess(RgbImage image, Action<string, Tensor>? trace = null)
    {
        using var scope = NewDisposeScope();
        var s = image_size;
        var x = tensor(image.Pixels, [image.Height, image.Width, 3]).permute(2, 0, 1).to(ScalarType.Float32) / 255f;
        var scale = (double)s / Math.Max(image.Height, image.Width);
        if (scale != 1.0)
        {
            var h = (int)Math.Round(image.Height * scale, MidpointRounding.ToEven);
            var w = (int)Math.Round(image.Width * scale, MidpointRounding.ToEven);
            x = nn.functional.interpolate(x.unsqueeze(0), size: (h, w), mode: nn.InterpolationMode.Bicubic, align_corners: false, antialias: antialias).squeeze(0);
            trace?.Invoke("resized", DisposeScope.HandOut(x));
            var (padW, padH) = (s - w, s - h);
            x = nn.functional.pad(x, [padW / 2, padW - padW / 2, padH / 2, padH - padH / 2]);
        }
        var mean = tensor(Images.ClipMean.Select(v => (float)v).ToArray(), [3, 1, 1]);
        var std = tensor(Images.ClipStd.Select(v => (float)v).ToArray(), [3, 1, 1]);
        return scope.MoveToOuter((x - mean) / std);
    }

    /// <summary>F.normalize(encode_image(pixels)) [N, E] (x / max(‖x‖, 1e-12)).</summary>
    public Tensor ImageFeatures(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        var f = model.get_image_features(pixels);
        return scope.MoveToOuter(f / f.norm(2, [-1], keepdim: true).clamp_min(1e-12));
    }

    public Tensor TextFeatures(IReadOnlyList<string> prompts)
    {
        using var scope = NewDisposeScope();
        var ids = tokenizer.call(prompts, 77, model.logit_scale.device).input_ids;
        var f = model.get_text_features(ids);
        return scope.MoveToOuter(f / f.norm(2, [-1], keepdim: true).clamp_min(1e-12));
    }

    /// <summary>HPS: each image its own batch of 1 (as img_score.py), ⟨img, txt⟩ per pair.</summary>
    public double[] Score(IReadOnlyList<RgbImage> images, IReadOnlyList<string> prompts)
    {
        if (images.Count != prompts.Count) throw new ArgumentException($"{images.Count} images but {prompts.Count} prompts");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var dev = model.logit_scale.device;
        var img = cat(images.Select(i => ImageFeatures(Preprocess(i).unsqueeze(0).to(dev))).ToArray());
        var txt = TextFeatures(prompts);
        return (img * txt).sum(-1).ToArray<double>();
    }

    public void Dispose() => model.Dispose();
}
