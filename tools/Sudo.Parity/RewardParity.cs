// Golden parity of the reward / preference models (golden README_rewards.md, README_imagereward.md): each runner
// loads the item folder in its upstream format, runs the inputs of io.safetensors and compares every recorded
// out_* / dbg_* tensor it can produce. The item kind is recognised from the files the folder holds.
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

    public static ParityReport Run(string folder, string ioPath, string kind, double? tolerance = null)
    {
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
            default:
                throw new ArgumentException($"unknown reward item '{kind}': expected spm, hpsv2, aesthetic or imagereward");
        }
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
            rows.Add(exact.Contains(key) ? CompareExact(key, actual, reference) : ModelParity.Compare(key, actual, reference, factor));
        }
        foreach (var t in produced.Values) t.Dispose();
        return new ParityReport(kind, $"max |Δ| ≤ {factor:G3} · max(1, max |reference|); ids, indices and flags exactly", rows);
    }

    private static ParityRow CompareExact(string name, Tensor actual, Tensor reference)
    {
        if (!actual.shape.SequenceEqual(reference.shape))
            return new ParityRow(name, double.NaN, double.NaN, 0, false, $"shape [{string.Join(", ", actual.shape)}] vs reference [{string.Join(", ", reference.shape)}]");
        using var scope = NewDisposeScope();
        var same = actual.to(reference.dtype).equal(reference);
        var diff = same ? 0 : actual.to(ScalarType.Float64).ne(reference.to(ScalarType.Float64)).sum().item();
        return new ParityRow(name, diff, diff, 0, same, same ? "exact" : $"{diff} elements differ");
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
