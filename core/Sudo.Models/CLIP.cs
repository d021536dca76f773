// transformers.models.clip.modeling_clip (transformers 4.38): CLIPTextModel, CLIPTextModelWithProjection,
// CLIPVisionTransformer and CLIPModel, with the exact state-dict names.
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

internal static class Act
{
    public static Tensor Apply(string name, Tensor x) => name switch
    {
        "quick_gelu" => nn.functional.quick_gelu(x),
        "gelu" => nn.functional.gelu(x),
        "gelu_new" or "gelu_pytorch_tanh" => nn.functional.gelu(x, "tanh"),
        "relu" => x.relu(),
        _ => throw new NotSupportedException($"hidden_act '{name}' is not supported (quick_gelu, gelu, gelu_new, relu)"),
    };
}

/// <summary>CLIPAttention: q·scale, kᵀ, optional causal mask, softmax, v; q_proj/k_proj/v_proj/out_proj.</summary>
public sealed class CLIPAttention : nn.Module
{
    public readonly nn.Linear q_proj, k_proj, v_proj, out_proj;
    private readonly int _heads, _headDim;

    public CLIPAttention(int hidden, int heads)
    {
        if (hidden % heads != 0) throw new ArgumentException($"hidden_size {hidden} is not divisible by num_attention_heads {heads}");
        (_heads, _headDim) = (heads, hidden / heads);
        k_proj = register_module("k_proj", new nn.Linear(hidden, hidden));
        v_proj = register_module("v_proj", new nn.Linear(hidden, hidden));
        q_proj = register_module("q_proj", new nn.Linear(hidden, hidden));
        out_proj = register_module("out_proj", new nn.Linear(hidden, hidden));
    }

    public Tensor forward(Tensor x, bool causal, Tensor? attention_mask = null)
    {
        using var scope = NewDisposeScope();
        var (b, l) = (x.size(0), x.size(1));
        Tensor Heads(Tensor t) => t.view(b, l, _heads, _headDim).transpose(1, 2);
        var o = nn.functional.scaled_dot_product_attention(Heads(q_proj.forward(x)), Heads(k_proj.forward(x)), Heads(v_proj.forward(x)),
            attention_mask, is_causal: causal && attention_mask is null);
        return scope.MoveToOuter(out_proj.forward(o.transpose(1, 2).reshape(b, l, _heads * _headDim)));
    }
}

public sealed class CLIPMLP : nn.Module<Tensor, Tensor>
{
    public readonly nn.Linear fc1, fc2;
    private readonly string _act;

    public CLIPMLP(int hidden, int intermediate, string act)
    {
        _act = act;
        fc1 = register_module("fc1", new nn.Linear(hidden, intermediate));
        fc2 = register_module("fc2", new nn.Linear(intermediate, hidden));
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(fc2.forward(Act.Apply(_act, fc1.forward(x))));
    }
}

/// <summary>Pre-LN transformer layer: x + attn(LN1 x); x + mlp(LN2 x).</summary>
public sealed class CLIPEncoderLayer : nn.Module
{
    public readonly CLIPAttention self_attn;
    public readonly nn.LayerNorm layer_norm1, layer_norm2;
    public readonly CLIPMLP mlp;

    public CLIPEncoderLayer(int hidden, int intermediate, int heads, string act, double eps)
    {
        self_attn = register_module("self_attn", new CLIPAttention(hidden, heads));
        layer_norm1 = register_module("layer_norm1", new nn.LayerNorm(hidden, eps));
        mlp = register_module("mlp", new CLIPMLP(hidden, intermediate, act));
        layer_norm2 = register_module("layer_norm2", new nn.LayerNorm(hidden, eps));
    }

    public Tensor forward(Tensor x, bool causal, Tensor? attention_mask = null)
    {
        using var scope = NewDisposeScope();
        var h = x + self_attn.forward(layer_norm1.forward(x), causal, attention_mask);
        return scope.MoveToOuter(h + mlp.forward(layer_norm2.forward(h)));
    }
}

public sealed class CLIPEncoder : nn.Module
{
    public readonly nn.ModuleList<CLIPEncoderLayer> layers;

    public CLIPEncoder(int hidden, int intermediate, int heads, int num_layers, string act, double eps)
    {
        layers = register_module("layers", new nn.ModuleList<CLIPEncoderLayer>());
        for (var i = 0; i < num_layers; i++) layers.append(new CLIPEncoderLayer(hidden, intermediate, heads, act, eps));
    }

    /// <summary>All hidden states: [embeddings, layer 1, ..., layer N] (caller's scope).</summary>
    public List<Tensor> forward(Tensor x, bool causal, Tensor? attention_mask = null)
    {
        var states = new List<Tensor> { x };
        foreach (var layer in layers)
        {
            if (gradient_checkpointing && training && is_grad_enabled())
                x = attention_mask is null
                    ? utils.checkpoint.run(xs => [layer.forward(xs[0], causal)], [x], layer.parameters())[0]
                    : utils.checkpoint.run(xs => [layer.forward(xs[0], causal, xs[1])], [x, attention_mask], layer.parameters())[0];
            else
                x = layer.forward(x, causal, attention_mask);
            states.Add(x);
        }
        return states;
    }
}

public sealed class CLIPTextEmbeddings : nn.Module
{
    public readonly nn.Embedding token_embedding, position_embedding;

    public CLIPTextEmbeddings(CLIPTextConfig c)
    {
        token_embedding = register_module("token_embedding", new nn.Embedding(c.vocab_size, c.hidden_size));
        position_embedding = register_module("position_embedding", new nn.Embedding(c.max_position_embeddings, c.hidden_size));
        using var ids = arange(c.max_position_embeddings);   // disposed here: the buffer is its view (was left to the finalizer)
        register_buffer("position_ids", ids.view(1, -1), persistent: false);
    }

    public Tensor forward(Tensor input_ids)
    {
        using var scope = NewDisposeScope();
        var l = input_ids.size(-1);
        var pos = arange(l, device: input_ids.device).unsqueeze(0);
        return scope.MoveToOuter(token_embedding.forward(input_ids) + position_embedding.forward(pos));
    }
}

/// <summary>Outputs of the CLIP text transformer; tensors live in the caller's scope.</summary>
public sealed record CLIPTextOutput(Tensor last_hidden_state, Tensor pooler_output, IReadOnlyList<Tensor> hidden_states, Tensor pool_index)
{
    /// <summary>hidden_states[-2]: SDXL's (and clip-skip's) conditioning, without the final layer norm.</summary>
    public Tensor penultimate_hidden_state => hidden_states[^2];
}

public sealed class CLIPTextTransformer : nn.Module
{
    public CLIPTextConfig config { get; }
    public readonly CLIPTextEmbeddings embeddings;
    public readonly CLIPEncoder encoder;
    public readonly nn.LayerNorm final_layer_norm;

    public CLIPTextTransformer(CLIPTextConfig c)
    {
        config = c;
        embeddings = register_module("embeddings", new CLIPTextEmbeddings(c));
        encoder = register_module("encoder", new CLIPEncoder(c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_hidden_layers, c.hidden_act, c.layer_norm_eps));
        final_layer_norm = register_module("final_layer_norm", new nn.LayerNorm(c.hidden_size, c.layer_norm_eps));
    }

    /// <summary>Causal self-attention over input_ids [B, L]; an optional attention_mask [B, L] (1 = token)
    /// masks padding as transformers does. Pooling follows transformers 4.38: with eos_token_id == 2 (the
    /// legacy configs of SD1.5/SDXL) the token at argmax(input_ids), otherwise the first eos_token_id.</summary>
    public CLIPTextOutput forward(Tensor input_ids, Tensor? attention_mask = null)
    {
        using var scope = NewDisposeScope();
        var h = embeddings.forward(input_ids);
        Tensor? mask = null;
        if (attention_mask != null)
        {
            var l = input_ids.size(1);
            var pad = attention_mask.to(ScalarType.Bool).view(input_ids.size(0), 1, 1, l);
            var causal = ones([l, l], ScalarType.Bool, input_ids.device).tril();
            mask = pad.logical_and(causal);
        }
        var states = encoder.forward(h, true, mask);
        var last = final_layer_norm.forward(states[^1]);
        var index = config.eos_token_id == 2
            ? input_ids.to(ScalarType.Int32).argmax(-1)
            : input_ids.eq(config.eos_token_id).to(ScalarType.Int32).argmax(-1);
        var b = input_ids.size(0);
        var pooled = last.gather(1, index.view(b, 1, 1).expand(b, 1, last.size(2))).squeeze(1);
        foreach (var s in states) scope.MoveToOuter(s);
        return new CLIPTextOutput(scope.MoveToOuter(last), scope.MoveToOuter(pooled), states, scope.MoveToOuter(index));
    }
}

/// <summary>transformers.CLIPTextModel (SD1.5's text_encoder): keys text_model.*.</summary>
public sealed class CLIPTextModel : nn.Module
{
    public static CLIPTextModel from_pretrained(string path, string? variant = null, ScalarType? dtype = null, Device? device = null, string? cache_dir = null)
    {
        var folder = Hub.Resolve(path, cache_dir);
        return Checkpoints.Load(folder, () => new CLIPTextModel(CLIPTextConfig.FromFile(Path.Combine(folder, "config.json"))), "model", variant, dtype ?? ScalarType.Float32, device);
    }

    public void save_pretrained(string folder, long max_shard_bytes = 5_000_000_000) =>
        Checkpoints.Save(this, folder, "model", config.ToJson("CLIPTextModel"), max_shard_bytes);

    public readonly CLIPTextTransformer text_model;
    public CLIPTextConfig config => text_model.config;

    public CLIPTextModel(CLIPTextConfig c) => text_model = register_module("text_model", new CLIPTextTransformer(c));

    public CLIPTextOutput forward(Tensor input_ids, Tensor? attention_mask = null) => text_model.forward(input_ids, attention_mask);
}

/// <summary>transformers.CLIPTextModelWithProjection (SDXL's text_encoder_2): text_model.* + text_projection.</summary>
public sealed class CLIPTextModelWithProjection : nn.Module
{
    public static CLIPTextModelWithProjection from_pretrained(string path, string? variant = null, ScalarType? dtype = null, Device? device = null, string? cache_dir = null)
    {
        var folder = Hub.Resolve(path, cache_dir);
        return Checkpoints.Load(folder, () => new CLIPTextModelWithProjection(CLIPTextConfig.FromFile(Path.Combine(folder, "config.json"))), "model", variant, dtype ?? ScalarType.Float32, device);
    }

    public void save_pretrained(string folder, long max_shard_bytes = 5_000_000_000) =>
        Checkpoints.Save(this, folder, "model", config.ToJson("CLIPTextModelWithProjection"), max_shard_bytes);

    public readonly CLIPTextTransformer text_model;
    public readonly nn.Linear text_projection;
    public CLIPTextConfig config => text_model.config;

    public CLIPTextModelWithProjection(CLIPTextConfig c)
    {
        text_model = register_module("text_model", new CLIPTextTransformer(c));
        text_projection = register_module("text_projection", new nn.Linear(c.hidden_size, c.projection_dim, bias: false));
    }

    /// <summary>The text outputs and text_embeds = text_projection(pooled), not normalised.</summary>
    public (CLIPTextOutput output, Tensor text_embeds) forward(Tensor input_ids, Tensor? attention_mask = null)
    {
        var o = text_model.forward(input_ids, attention_mask);
        return (o, text_projection.forward(o.pooler_output));
    }
}

public sealed class CLIPVisionEmbeddings : nn.Module
{
    public readonly Parameter class_embedding;
    public readonly nn.Conv2d patch_embedding;
    public readonly nn.Embedding position_embedding;

    public CLIPVisionEmbeddings(CLIPVisionConfig c)
    {
        using (var init = randn([c.hidden_size])) class_embedding = register_parameter("class_embedding", new Parameter(init))!;
        patch_embedding = register_module("patch_embedding", new nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, stride: c.patch_size, bias: false));
        var positions = (c.image_size / c.patch_size) * (c.image_size / c.patch_size) + 1;
        position_embedding = register_module("position_embedding", new nn.Embedding(positions, c.hidden_size));
        using var ids = arange(positions);
        register_buffer("position_ids", ids.view(1, -1), persistent: false);
    }

    public Tensor forward(Tensor pixel_values)
    {
        using var scope = NewDisposeScope();
        var b = pixel_values.size(0);
        var patches = patch_embedding.forward(pixel_values.to(patch_embedding.weight.dtype)).flatten(2).transpose(1, 2);
        var cls = class_embedding.expand(b, 1, -1);
        var x = cat([cls, patches], 1);
        var pos = arange(x.size(1), device: x.device).unsqueeze(0);
        if (x.size(1) != position_embedding.weight.size(0))
            throw new ArgumentException($"CLIP vision: {x.size(1) - 1} patches but the model has {position_embedding.weight.size(0) - 1} positions (image size mismatch)");
        return scope.MoveToOuter(x + position_embedding.forward(pos));
    }
}

public sealed record CLIPVisionOutput(Tensor last_hidden_state, Tensor pooler_output, IReadOnlyList<Tensor> hidden_states);

/// <summary>embeddings → pre_layrnorm (sic) → encoder → post_layernorm on the class token.</summary>
public sealed class CLIPVisionTransformer : nn.Module
{
    public CLIPVisionConfig config { get; }
    public readonly CLIPVisionEmbeddings embeddings;
    public readonly nn.LayerNorm pre_layrnorm, post_layernorm;
    public readonly CLIPEncoder encoder;

    public CLIPVisionTransformer(CLIPVisionConfig c)
    {
        config = c;
        embeddings = register_module("embeddings", new CLIPVisionEmbeddings(c));
        pre_layrnorm = register_module("pre_layrnorm", new nn.LayerNorm(c.hidden_size, c.layer_norm_eps));
        encoder = register_module("encoder", new CLIPEncoder(c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_hidden_layers, c.hidden_act, c.layer_norm_eps));
        post_layernorm = register_module("post_layernorm", new nn.LayerNorm(c.hidden_size, c.layer_norm_eps));
    }

    public CLIPVisionOutput forward(Tensor pixel_values)
    {
        using var scope = NewDisposeScope();
        var h = pre_layrnorm.forward(embeddings.forward(pixel_values));
        var states = encoder.forward(h, false);
        var last = states[^1];
        var pooled = post_layernorm.forward(last.select(1, 0));
        foreach (var s in states) scope.MoveToOuter(s);
        return new CLIPVisionOutput(last, scope.MoveToOuter(pooled), states);
    }
}

public sealed record CLIPOutput(Tensor logits_per_image, Tensor logits_per_text, Tensor text_embeds, Tensor image_embeds,
    CLIPTextOutput text_model_output, CLIPVisionOutput vision_model_output);

/// <summary>transformers.CLIPModel: both towers, visual_projection, text_projection and logit_scale (the
/// backbone of PickScore/HPSv2-style reward models).</summary>
public sealed class CLIPModel : nn.Module
{
    public static CLIPModel from_pretrained(string path, string? variant = null, ScalarType? dtype = null, Device? device = null, string? cache_dir = null)
    {
        var folder = Hub.Resolve(path, cache_dir);
        return Checkpoints.Load(folder, () => new CLIPModel(CLIPConfig.FromFile(Path.Combine(folder, "config.json"))), "model", variant, dtype ?? ScalarType.Float32, device);
    }

    public void save_pretrained(string folder, long max_shard_bytes = 5_000_000_000) =>
        Checkpoints.Save(this, folder, "model", config.ToJson(), max_shard_bytes);

    public CLIPConfig config { get; }
    public readonly Parameter logit_scale;
    public readonly CLIPTextTransformer text_model;
    public readonly CLIPVisionTransformer vision_model;
    public readonly nn.Linear visual_projection, text_projection;

    public CLIPModel(CLIPConfig c)
    {
        config = c;
        using (var init = full([], c.logit_scale_init_value)) logit_scale = register_parameter("logit_scale", new Parameter(init))!;
        text_model = register_module("text_model", new CLIPTextTransformer(c.text_config));
        vision_model = register_module("vision_model", new CLIPVisionTransformer(c.vision_config));
        visual_projection = register_module("visual_projection", new nn.Linear(c.vision_config.hidden_size, c.projection_dim, bias: false));
        text_projection = register_module("text_projection", new nn.Linear(c.text_config.hidden_size, c.projection_dim, bias: false));
    }

    /// <summary>visual_projection(pooled image features), not normalised.</summary>
    public Tensor get_image_features(Tensor pixel_values)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(visual_projection.forward(vision_model.forward(pixel_values).pooler_output));
    }

    public Tensor get_text_features(Tensor input_ids, Tensor? attention_mask = null)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(text_projection.forward(text_model.forward(input_ids, attention_mask).pooler_output));
    }

    /// <summary>logits_per_image = exp(logit_scale) · normalize(image) · normalize(text)ᵀ.</summary>
    public CLIPOutput forward(Tensor input_ids, Tensor pixel_values, Tensor? attention_mask = null)
    {
        var v = vision_model.forward(pixel_values);
        var t = text_model.forward(input_ids, attention_mask);
        using var scope = NewDisposeScope();
        var img = visual_projection.forward(v.pooler_output);
        var txt = text_projection.forward(t.pooler_output);
        img = img / img.norm(2, [-1], keepdim: true);
        txt = txt / txt.norm(2, [-1], keepdim: true);
        var logitsText = txt.matmul(img.t()) * logit_scale.exp();
        var logitsImage = logitsText.t();
        return new CLIPOutput(scope.MoveToOuter(logitsImage), scope.MoveToOuter(logitsText), scope.MoveToOuter(txt), scope.MoveToOuter(img), t, v);
    }
}
