// Golden parity of the reward / preference models (golden README_rewards.md, README_imagereward.md): each runner
// loads the item folder in its upstream format, runs the inputs of io.safetensors and compares every recorded
// out_* / dbg_* tensor it can produce. The item kind is recognised from the files the folder holds.
using Sudo.Data;
using Sudo.Preference;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Parity;

public static class RewardParity
{
    /// <summary>spm, hpsv2, aesthetic or imagereward from the folder's files; null when none applies.</summary>
    public static string? Detect(string folder)
    {
        if (StepAwarePreferenceModel.FindSpoCheckpoint(folder) is not null) return "spm";
        if (Directory.Exists(folder) && Directory.GetFiles(folder, "HPS_v2*.pt").Length > 0) return "hpsv2";
        if (File.Exists(Path.Combine(folder, "sac+logos+ava1-l14-linearMSE.pth"))) return "aesthetic";
        if (File.Exists(Path.Combine(folder, "ImageReward.pt"))) return "imagereward";
        return null;
    }

    /// <summary>Per-item default tolerance factor (max |Δ| ≤ factor · max(1, max |reference|)); the SPM scores are
    /// ≈ 100 × a cosine, for which the README asks 1e-5 relative.</summary>
    public const double DefaultFactor = 1e-5;

    /// <summary>A CLIP tokenizer folder for items that ship none (hpsv2: open_clip bundles its BPE file; any CLIP BPE
    /// folder has the same vocabulary). Default: $SUDO_SHARED/clip_tokenizer/sd15_tokenizer.</summary>
    public static string? DefaultTokenizer(string itemFolder)
    {
        // The shared folder the golden item lives in (shared/golden/<item>), else $SUDO_SHARED, else ../shared.
        var candidates = new[]
        {
            Path.Combine(Path.GetFullPath(itemFolder), "..", ".."),
            Environment.GetEnvironmentVariable("SUDO_SHARED") is { Length: > 0 } s ? s : Path.Combine("..", "shared"),
        };
        return candidates.Select(c => Path.GetFullPath(Path.Combine(c, "clip_tokenizer", "sd15_tokenizer"))).FirstOrDefault(Directory.Exists);
    }

    /// <summary>Pixel tolerance of Pillow-style resizes (as golden clip_preprocess: within ~4 uint8 levels after
    /// normalisation by std ≈ 0.27).</summary>
    public const double PillowPixelTolerance = 0.016;

    public static ParityReport Run(string folder, string ioPath, string kind, double? tolerance = null, string? tokenizer = null)
    {
        tokenizer ??= DefaultTokenizer(folder);
        var pixelRows = new HashSet<string>();
        var factor = tolerance ?? DefaultFactor;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var io = safetensors.safe_open(ioPath);
        Tensor In(string k) => io.Contains(k) ? io.get(k) : throw new InvalidDataException($"{ioPath}: input '{k}' missing for {kind}");
        var produced = new Dictionary<string, Tensor>();
        var exact = new HashSet<string>();
        switch (kind)
        {
            case "spm":
                RunSpm(folder, io, In, produced, exact);
                break;
            case "hpsv2":
                RunHps(folder, io, In, produced, exact, tokenizer);
                break;
            case "aesthetic":
                RunAesthetic(folder, In, produced, pixelRows);
                break;
            case "imagereward":
                RunImageReward(folder, io, In, produced, exact, pixelRows);
                break;
            default:
                throw new ArgumentException($"unknown reward item '{kind}': expected spm, hpsv2, aesthetic or imagereward");
        }
        var rows = ModelParity.CompareRecorded(io, produced, (key, actual, reference) =>
            exact.Contains(key) ? CompareExact(key, actual, reference)
            : pixelRows.Contains(key) && reference.dtype == ScalarType.UInt8 ? Within(ModelParity.Compare(key, actual, reference, 0), 1.0, "Pillow resize: within one uint8 level")
            : pixelRows.Contains(key) ? ModelParity.Compare(key, actual, reference, PillowPixelTolerance) with { Note = "Pillow resize: clip_preprocess tolerance" }
            : ModelParity.Compare(key, actual, reference, factor));
        foreach (var t in produced.Values) t.Dispose();
        return new ParityReport(kind, $"max |Δ| ≤ {factor:G3} · max(1, max |reference|); ids, indices and flags exactly", rows);
    }

    private static ParityRow Within(ParityRow r, double tol, string note) => r with { Tolerance = tol, Passed = r.MaxAbsError <= tol, Note = note };

    private static ParityRow CompareExact(string name, Tensor actual, Tensor reference)
    {
        if (!actual.shape.SequenceEqual(reference.shape))
            return new ParityRow(name, double.NaN, double.NaN, 0, false, $"shape [{string.Join(", ", actual.shape)}] vs reference [{string.Join(", ", reference.shape)}]");
        using var scope = NewDisposeScope();
        var same = actual.to(reference.dtype).equal(reference);
        var diff = same ? 0 : actual.to(ScalarType.Float64).ne(reference.to(ScalarType.Float64)).sum().item();
        return new ParityRow(name, diff, diff, 0, same, same ? "exact" : $"{diff} elements differ");
    }

    private static List<RgbImage> Pngs(string folder, IEnumerable<string> names) =>
        names.Select(n => ImageCodecs.Load(Path.Combine(folder, n))).ToList();

    private static string[] ParamList(string folder, string key)
    {
        var p = Path.Combine(folder, "params.json");
        var o = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(p))!;
        var node = o[key] ?? o["cfg"]?[key] ?? throw new InvalidDataException($"{p}: no '{key}' list");
        return node.AsArray().Select(x => (string)x!).ToArray();
    }

    private static void RunHps(string folder, safetensors.File io, Func<string, Tensor> In, Dictionary<string, Tensor> produced, HashSet<string> exact, string? tokenizer)
    {
        var images = Pngs(folder, ParamList(folder, "images"));
        var prompts = ParamList(folder, "prompts");
        produced["in_image_hw"] = tensor(images.SelectMany(i => new long[] { i.Height, i.Width }).ToArray(), [images.Count, 2]);
        var versions = Directory.GetFiles(folder, "HPS_v2*.pt").Order(StringComparer.Ordinal).ToArray();
        var first = true;
        foreach (var ckpt in versions)
        {
            // HPS_v2_compressed.pt → v2_0, HPS_v2.1_compressed.pt → v2_1
            var tag = Path.GetFileName(ckpt).StartsWith("HPS_v2.1", StringComparison.Ordinal) ? "v2_1" : "v2_0";
            using var hps = OpenClipReward.from_pretrained(ckpt, "hps", tokenizer);
            var resized = new List<Tensor>();
            var pixels = stack(images.Select((im, i) => hps.Preprocess(im, (n, t) => { if (n == "resized") produced.TryAdd($"dbg_resized_{i}", t); else t.Dispose(); })).ToArray());
            if (first)
            {
                produced["out_pixel_values"] = pixels;
                produced["out_tokens"] = hps.tokenizer.call(prompts, 77).input_ids;
                if (io.Contains("out_tokens_extra"))
                    produced["out_tokens_extra"] = hps.tokenizer.call(ParamList(folder, "tokenizer_prompts"), 77).input_ids;
                produced["dbg_text_pool_index"] = produced["out_tokens"].argmax(-1);
                produced["dbg_pad_ltrb"] = tensor(images.SelectMany(i =>
                {
                    var sc = (double)hps.image_size / Math.Max(i.Height, i.Width);
                    if (sc == 1.0) return new long[4];
                    var (pw, ph) = (hps.image_size - (long)Math.Round(i.Width * sc, MidpointRounding.ToEven), hps.image_size - (long)Math.Round(i.Height * sc, MidpointRounding.ToEven));
                    return [pw / 2, ph / 2, pw - pw / 2, ph - ph / 2];
                }).ToArray(), [images.Count, 4]);
                produced["dbg_resized_hw"] = tensor(images.SelectMany(i =>
                {
                    var sc = (double)hps.image_size / Math.Max(i.Height, i.Width);
                    return sc == 1.0 ? new long[] { i.Height, i.Width }
                        : [(long)Math.Round(i.Height * sc, MidpointRounding.ToEven), (long)Math.Round(i.Width * sc, MidpointRounding.ToEven)];
                }).ToArray(), [images.Count, 2]);
                first = false;
            }
            var antiHps = new OpenClipReward(hps.model, hps.tokenizer, "hps") { antialias = true };
            var pixelsAa = stack(images.Select(im => antiHps.Preprocess(im)).ToArray());
            produced.TryAdd("dbg_pixel_values_antialias", pixelsAa);
            if (tag == "v2_0")
            {
                var fa = cat(Enumerable.Range(0, images.Count).Select(i => hps.ImageFeatures(pixelsAa.narrow(0, i, 1))).ToArray());
                produced["dbg_hps_v2_0_antialias"] = hps.TextFeatures(prompts).matmul(fa.t());
            }
            var raw = cat(Enumerable.Range(0, images.Count).Select(i => hps.model.get_image_features(pixels.narrow(0, i, 1))).ToArray());
            produced[$"dbg_image_features_raw_{tag}"] = raw;
            var img = cat(Enumerable.Range(0, images.Count).Select(i => hps.ImageFeatures(pixels.narrow(0, i, 1))).ToArray());
            produced[$"out_image_features_{tag}"] = img;
            var ids = hps.tokenizer.call(prompts, 77).input_ids;
            produced[$"dbg_text_features_raw_{tag}"] = hps.model.get_text_features(ids);
            var txt = hps.TextFeatures(prompts);
            produced[$"out_text_features_{tag}"] = txt;
            // One row per prompt [P, N], each image scored through the public Score path.
            produced[$"out_hps_{tag}"] = stack(prompts.Select(p => tensor(hps.Score(images, Enumerable.Repeat(p, images.Count).ToList()).Select(v => (float)v).ToArray())).ToArray());
            produced[$"dbg_hps_dot_{tag}"] = txt.matmul(img.t());
            if (tag == "v2_0")
            {
                var v = hps.model.vision_model;
                var x0 = pixels.narrow(0, 0, 1);
                var lnPre = v.pre_layrnorm.forward(v.embeddings.forward(x0));
                produced["dbg_visual_ln_pre_img0_v2_0"] = lnPre;
                produced["dbg_visual_transformer_img0_v2_0"] = v.encoder.forward(lnPre, false)[^1];
                var to = hps.model.text_model.forward(ids.narrow(0, 0, 1));
                produced["dbg_text_ln_final_p0_v2_0"] = to.last_hidden_state;
                produced["dbg_text_transformer_p0_v2_0"] = to.hidden_states[^1];
            }
        }
        exact.UnionWith(["out_tokens", "out_tokens_extra", "dbg_text_pool_index", "dbg_resized_hw", "dbg_pad_ltrb", "in_image_hw"]);
    }

    private static void RunAesthetic(string folder, Func<string, Tensor> In, Dictionary<string, Tensor> produced, HashSet<string> pixelRows)
    {
        using var aes = AestheticReward.from_pretrained(folder);
        var images = Pngs(folder, ParamList(folder, "images"));
        produced["out_pixel_values"] = aes.Preprocess(images);
        pixelRows.Add("out_pixel_values");
        // The model is compared on the reference pixels (the PIL resize is checked on its own, above).
        var pixels = In("out_pixel_values");
        produced["dbg_vision_pooler_output"] = aes.clip.vision_model.forward(pixels).pooler_output;
        produced["out_image_embeds"] = aes.clip.get_image_features(pixels);
        var emb = aes.Embeddings(pixels);
        produced["out_image_embeds_normalized"] = emb;
        produced["out_scores"] = aes.mlp.forward(emb, (i, t) => produced[$"dbg_mlp_layers_{i}"] = t).flatten();
    }

    private static void RunImageReward(string folder, safetensors.File io, Func<string, Tensor> In, Dictionary<string, Tensor> produced, HashSet<string> exact, HashSet<string> pixelRows)
    {
        // The ViT head count is not stored in ImageReward.pt: taken from the generator's params.json when it says.
        int? heads = null;
        var paramsPath = Path.Combine(folder, "params.json");
        if (File.Exists(paramsPath) && System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(paramsPath))?["cfg"]?["vit"]?["num_heads"] is { } h) heads = h.GetValue<int>();
        using var ir = ImageRewardModel.from_pretrained(folder, vitHeads: heads);
        var images = Pngs(folder, ParamList(folder, "images"));
        var prompts = ParamList(folder, "prompts");
        produced["in_image_hw"] = tensor(images.SelectMany(i => new long[] { i.Height, i.Width }).ToArray(), [images.Count, 2]);
        var pix = new List<Tensor>();
        for (var i = 0; i < images.Count; i++)
        {
            var idx = i;
            Tensor? resized = null;
            pix.Add(ir.Preprocess(images[i], (n, t) => resized = t));
            produced[$"dbg_resized_{idx}"] = resized!.squeeze(0).permute(1, 2, 0).to(ScalarType.UInt8);
            var (hh, ww) = Images.ShorterSideSize(images[i].Height, images[i].Width, ir.config.image_size);
            var std = tensor(Images.ClipStd.Select(v => (float)v).ToArray(), [3, 1, 1]);
            var mean = tensor(Images.ClipMean.Select(v => (float)v).ToArray(), [3, 1, 1]);
            produced[$"dbg_cropped_{idx}"] = pix[^1] * std + mean;
            pixelRows.Add($"dbg_cropped_{idx}");
            pixelRows.Add($"dbg_resized_{idx}");
        }
        produced["dbg_resized_hw"] = tensor(images.SelectMany(i =>
        {
            var (hh, ww) = Images.ShorterSideSize(i.Height, i.Width, ir.config.image_size);
            return new long[] { hh, ww };
        }).ToArray(), [images.Count, 2]);
        var pixels = stack(pix.ToArray());
        produced["out_pixel_values"] = pixels;
        pixelRows.Add("out_pixel_values");
        Tensor Ids(IReadOnlyList<string> ps, bool mask) => stack(ps.Select(p => tensor(mask ? ir.Tokenize(p).mask : ir.Tokenize(p).ids)).ToArray());
        produced["out_input_ids"] = Ids(prompts, false);
        produced["out_attention_mask"] = Ids(prompts, true);
        if (io.Contains("out_input_ids_extra"))
        {
            var extra = ParamList(folder, "tokenizer_prompts");
            produced["out_input_ids_extra"] = Ids(extra, false);
            produced["out_attention_mask_extra"] = Ids(extra, true);
        }
        var tk = ir.tokenizer;
        produced["dbg_special_ids"] = tensor(new long[] { tk.pad_token_id, tk.unk_token_id, tk.cls_token_id, tk.sep_token_id, tk.mask_token_id,
            tk.special_tokens["[DEC]"], tk.special_tokens["[ENC]"] });
        // The model on the reference pixels (the Pillow resize is compared on its own above).
        var refPixels = In("out_pixel_values");
        var feats = new List<Tensor>();
        var hidden = new List<Tensor>();
        var embeds = new List<Tensor>();
        foreach (var p in prompts)
        {
            var hs = new List<Tensor>();
            var em = new List<Tensor>();
            feats.Add(ir.Features(refPixels, p, (n, t) => (n == "image_embeds" ? em : hs).Add(t)));
            hidden.Add(stack(hs.Select(t => t.squeeze(0)).ToArray()));
            if (embeds.Count == 0) embeds.AddRange(em.Select(t => t.squeeze(0)));
        }
        var f = stack(feats.ToArray());
        produced["out_text_cls_features"] = f;
        produced["dbg_text_cls_delta_vs_img0"] = f - f.narrow(1, 0, 1);
        produced["dbg_text_last_hidden_state"] = stack(hidden.ToArray());
        produced["out_image_embeds"] = stack(embeds.ToArray());
        var raw = ir.mlp.forward(f).squeeze(-1);
        produced["out_mlp_raw"] = raw;
        var rewards = stack(prompts.Select(p => ir.Rewards(refPixels, p)).ToArray());
        produced["out_rewards"] = rewards;
        produced["dbg_rewards_score_gard_batched"] = rewards.clone();
        produced["out_rewards_single"] = stack(prompts.Select(p => cat(Enumerable.Range(0, images.Count).Select(i => ir.Rewards(refPixels.narrow(0, i, 1), p)).ToArray())).ToArray());
        // inference_rank: 1-based rank from a descending sort.
        var order = rewards.sort(-1, descending: true).indices;
        produced["out_ranks"] = order.sort(-1).indices + 1;
        var x0 = refPixels.narrow(0, 0, 1);
        var v = ir.blip.visual_encoder;
        var patches = v.PatchEmbeddings(x0);
        produced["dbg_vit_patch_embed_img0"] = patches;
        produced["dbg_vit_block0_img0"] = v.blocks[0].forward(cat([v.cls_token.expand(1, -1, -1), patches], 1) + v.pos_embed);
        var e = ir.blip.text_encoder.embeddings;
        var ids0 = tensor(ir.Tokenize(prompts[0]).ids, [1, ImageRewardModel.MaxLength]);
        produced["dbg_text_embeddings_p0"] = e.LayerNorm.forward(e.word_embeddings.forward(ids0) + e.position_embeddings.forward(arange(0, ImageRewardModel.MaxLength, 1, ScalarType.Int64)));
        // The public Score path end to end on the PNGs (Pillow-like resize): the single-image rewards of prompt 0.
        produced["dbg_rewards_single_pil_p0"] = tensor(ir.Score(images, Enumerable.Repeat(prompts[0], images.Count).ToList()).Select(d => (float)d).ToArray());
        pixelRows.Add("dbg_rewards_single_pil_p0");
        exact.UnionWith(["out_input_ids", "out_attention_mask", "out_input_ids_extra", "out_attention_mask_extra", "dbg_special_ids", "out_ranks", "dbg_resized_hw", "in_image_hw"]);
    }

    private static void RunSpm(string folder, safetensors.File io, Func<string, Tensor> In, Dictionary<string, Tensor> produced, HashSet<string> exact)
    {
        using var spm = StepAwarePreferenceModel.from_pretrained(folder);
        var images = In("in_images");
        var ids = In("in_input_ids");
        var b = ids.size(0);
        var n = images.size(0);
        var k = n / b;
        var idsPool = ids.repeat(k, 1);
        var threshold = io.Contains("in_threshold") ? In("in_threshold").item() : 0.3;
        // Resized (before crop) for dbg_resized: the same interpolate the preprocessing applies.
        var s = spm.shortest_edge;
        var scale = (double)s / Math.Min(images.size(2), images.size(3));
        produced["dbg_resized"] = nn.functional.interpolate(images, size: ((int)(images.size(2) * scale + 0.5), (int)(images.size(3) * scale + 0.5)),
            mode: nn.InterpolationMode.Bicubic, align_corners: false, antialias: false);
        var pixels = spm.preprocess(images);
        produced["dbg_pixel_values"] = pixels;
        var txt = spm.clip.get_text_features(ids);
        produced["out_text_features"] = txt;
        produced["dbg_text_features_pool"] = spm.clip.get_text_features(idsPool);
        produced["out_logit_scale"] = spm.clip.logit_scale.detach();

        var pool = In("in_timesteps_pool");
        var scores = new List<Tensor>();
        var feats = new List<Tensor>();
        var pooled = new List<Tensor>();
        var temb = new List<Tensor>();
        var tfreq = new List<Tensor>();
        var indices = new List<Tensor>();
        var valid = new List<Tensor>();
        for (var i = 0; i < pool.size(0); i++)
        {
            var t = pool[i].repeat(n);
            Tensor? last = null, pooledT = null;
            feats.Add(spm.get_image_features(pixels, t, (name, v) =>
            {
                if (name == "vision_last_hidden_state") last = v;
                else if (name == "vision_pooled") pooledT = v;
                else v.Dispose();
            }));
            if (i == 0) produced["dbg_vision_last_hidden_state_t0"] = last!;
            else last?.Dispose();
            pooled.Add(pooledT!);
            Tensor? freq = null;
            temb.Add(spm.TimestepEmbedding(t, f => freq = f)[0]);
            tfreq.Add(freq![0]);
            var sc = spm.score(pixels, idsPool, t);
            scores.Add(sc);
            var (idx, ok) = StepAwarePreferenceModel.preference_score_compare(sc.view(k, b), threshold);
            indices.Add(idx);
            valid.Add(ok);
        }
        produced["out_scores_pool"] = stack(scores.ToArray());
        produced["out_image_features_pool"] = stack(feats.ToArray());
        produced["dbg_vision_pooled_pool"] = stack(pooled.ToArray());
        produced["dbg_t_emb_pool"] = stack(temb.ToArray());
        produced["dbg_t_freq_pool"] = stack(tfreq.ToArray());
        produced["out_compare_indices"] = stack(indices.ToArray());
        produced["out_compare_valid"] = stack(valid.ToArray());

        var mixed = In("in_timesteps_mixed");
        var m = mixed.size(0);
        produced["out_scores_mixed"] = spm.score(pixels.narrow(0, 0, m), idsPool.narrow(0, 0, m), mixed);
        produced["out_image_features_mixed"] = spm.get_image_features(pixels.narrow(0, 0, m), mixed);
        produced["dbg_t_emb_mixed"] = spm.TimestepEmbedding(mixed);
        if (io.Contains("in_compare_scores"))
        {
            var (si, sv) = StepAwarePreferenceModel.preference_score_compare(In("in_compare_scores"), threshold);
            produced["out_compare_indices_synthetic"] = si;
            produced["out_compare_valid_synthetic"] = sv;
        }
        exact.UnionWith(["out_compare_indices", "out_compare_valid", "out_compare_indices_synthetic", "out_compare_valid_synthetic"]);
    }
}
