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
        InitAdaLN(generator);
    }

    /// <summary>Writes the whole model (CLIP towers + timestep embedder + adaLN) as model.safetensors with a
    /// transformers CLIPConfig plus "step_aware": true and frequency_embedding_size in config.json.</summary>
    public void save_pretrained(string folder)
    {
        var cfg = clip.config.ToJson();
        cfg["step_aware"] = true;
        cfg["frequency_embedding_size"] = frequency_embedding_size;
        Checkpoints.Save(this, folder, "model", cfg);
    }

    /// <summary>True when <paramref name="folder"/> holds a saved step-aware model (not a plain CLIPModel).</summary>
    public static bool IsStepAware(string folder)
    {
        var path = Path.Combine(folder, "config.json");
        return File.Exists(path) && System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))?["step_aware"]?.GetValue<bool>() == true;
    }

    /// <summary>Loads a folder written by <see cref="save_pretrained"/>; a plain CLIPModel folder (PickScore) is wrapped
    /// with fresh adaLN (shift = scale = 0, gate = 1), as SPO starts from its scorer.</summary>
    public static StepAwarePreferenceModel from_pretrained(string folder, Device? device = null)
    {
        if (!IsStepAware(folder)) return new StepAwarePreferenceModel(CLIPModel.from_pretrained(folder, device: device));
        var cfgPath = Path.Combine(folder, "config.json");
        var fes = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cfgPath))?["frequency_embedding_size"]?.GetValue<int>() ?? 256;
        return Checkpoints.Load(folder, () => new StepAwarePreferenceModel(new CLIPModel(CLIPConfig.FromFile(cfgPath)), fes), "model", null, ScalarType.Float32, device);
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
    private Tensor TimestepEmbedding(Tensor t)
    {
        using var scope = NewDisposeScope();
        var half = frequency_embedding_size / 2;
        var freqs = (arange(0, half, 1, ScalarType.Float32, t.device) * (-Math.Log(10000.0) / half)).exp();
        var args = t.to(ScalarType.Float32).unsqueeze(1) * freqs.unsqueeze(0);
        var emb = cat([args.cos(), args.sin()], -1);
        var c = t_linear_2.forward(nn.functional.silu(t_linear_1.forward(emb.to(t_linear_1.weight.dtype))));
        return scope.MoveToOuter(c);
    }

    /// <summary>Time-conditioned image features [B, projection_dim] for preprocessed pixels and timesteps [B].</summary>
    public Tensor get_image_features(Tensor pixel_values, Tensor timesteps)
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
        var pooled = v.post_layernorm.forward(x.select(1, 0));
        var pm = pooled_adaLN_modulation.forward(c).chunk(2, -1);
        pooled = pooled * (1.0 + pm[1]) + pm[0];
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

    /// <summary>CLIP preprocessing of decoded images in [−1, 1] (tensor path, as SPO's pipeline: bicubic
    /// shortest side to the model's image size, center crop, CLIP mean/std).</summary>
    public Tensor preprocess(Tensor images)
    {
        using var scope = NewDisposeScope();
        var size = clip.config.vision_config.image_size;
        var x = ((images.to(ScalarType.Float32) + 1.0) / 2.0).clamp(0, 1);
        var (h, w) = Sudo.Data.Images.ShorterSideSize((int)x.size(2), (int)x.size(3), size);
        x = nn.functional.interpolate(x, size: (h, w), mode: nn.InterpolationMode.Bicubic, align_corners: false, antialias: true);
        x = Sudo.Data.Images.CenterCrop(x, size, size);
        var mean = tensor(Sudo.Data.Images.ClipMean.Select(v => (float)v).ToArray(), [1, 3, 1, 1]).to(x.device);
        var std = tensor(Sudo.Data.Images.ClipStd.Select(v => (float)v).ToArray(), [1, 3, 1, 1]).to(x.device);
        return scope.MoveToOuter((x - mean) / std);
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
