// Typed configs read from diffusers' / transformers' config.json: unknown fields are ignored, missing
// fields take the library's defaults (diffusers 0.27.2, transformers 4.38).
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Sudo.Models;

/// <summary>Reads config.json fields with the reference library's defaults and clear errors.</summary>
internal sealed class ConfigReader(JsonObject obj, string source)
{
    public string Source { get; } = source;

    public static ConfigReader Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"config not found: {path}", path);
        try
        {
            var node = JsonNode.Parse(File.ReadAllText(path)) as JsonObject
                ?? throw new InvalidDataException($"{path}: config.json must be a JSON object");
            return new ConfigReader(node, path);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }
    }

    public ConfigReader Sub(string key) =>
        new(obj[key] as JsonObject ?? [], $"{Source}:{key}");

    public bool Has(string key) => obj[key] is not null;

    private InvalidDataException Bad(string key, string expected) =>
        new($"{Source}: field '{key}' = {obj[key]?.ToJsonString()} is not {expected}");

    public int Int(string key, int dflt)
    {
        var n = obj[key];
        if (n is null) return dflt;
        try { return n.GetValue<int>(); }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Bad(key, "an integer"); }
    }

    public int? IntOrNull(string key)
    {
        var n = obj[key];
        return n is null ? null : Int(key, 0);
    }

    public double Double(string key, double dflt)
    {
        var n = obj[key];
        if (n is null) return dflt;
        try { return n.GetValue<double>(); }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Bad(key, "a number"); }
    }

    public double? DoubleOrNull(string key) => obj[key] is null ? null : Double(key, 0);

    public bool Bool(string key, bool dflt)
    {
        var n = obj[key];
        if (n is null) return dflt;
        try { return n.GetValue<bool>(); }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Bad(key, "true/false"); }
    }

    public string? Str(string key, string? dflt)
    {
        var n = obj[key];
        if (n is null) return dflt;
        try { return n.GetValue<string>(); }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Bad(key, "a string"); }
    }

    public string[] Strs(string key, string[] dflt)
    {
        var n = obj[key];
        if (n is null) return dflt;
        if (n is not JsonArray a) throw Bad(key, "a list of strings");
        return a.Select(x => x?.GetValue<string>() ?? throw Bad(key, "a list of strings")).ToArray();
    }

    /// <summary>An int or a list of ints (diffusers accepts both for per-block settings); null when absent.</summary>
    public int[]? IntOrList(string key)
    {
        var n = obj[key];
        if (n is null) return null;
        if (n is JsonArray a)
        {
            try { return a.Select(x => x!.GetValue<int>()).ToArray(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException) { throw Bad(key, "an integer or a list of integers"); }
        }
        return [Int(key, 0)];
    }

    public bool[]? BoolOrList(string key)
    {
        var n = obj[key];
        if (n is null) return null;
        if (n is JsonArray a) return a.Select(x => x!.GetValue<bool>()).ToArray();
        return [Bool(key, false)];
    }
}

/// <summary>Broadcasts a per-block setting given as one value or one per block.</summary>
internal static class PerBlock
{
    public static int[] Expand(int[]? v, int n, int dflt, string name)
    {
        if (v is null) return Enumerable.Repeat(dflt, n).ToArray();
        if (v.Length == 1) return Enumerable.Repeat(v[0], n).ToArray();
        if (v.Length != n) throw new InvalidDataException($"{name} has {v.Length} entries for {n} blocks");
        return v;
    }
}

/// <summary>diffusers.UNet2DConditionModel's constructor arguments (the ones SD1.x, SD2.x and SDXL use).</summary>
public sealed record UNet2DConditionConfig
{
    public int sample_size { get; init; } = 64;
    public int in_channels { get; init; } = 4;
    public int out_channels { get; init; } = 4;
    public bool center_input_sample { get; init; }
    public bool flip_sin_to_cos { get; init; } = true;
    public int freq_shift { get; init; }
    public string[] down_block_types { get; init; } = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
    public string mid_block_type { get; init; } = "UNetMidBlock2DCrossAttn";
    public string[] up_block_types { get; init; } = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"];
    public bool[] only_cross_attention { get; init; } = [false];
    public int[] block_out_channels { get; init; } = [320, 640, 1280, 1280];
    public int[] layers_per_block { get; init; } = [2];
    public int downsample_padding { get; init; } = 1;
    public double mid_block_scale_factor { get; init; } = 1;
    public double dropout { get; init; }
    public string act_fn { get; init; } = "silu";
    public int norm_num_groups { get; init; } = 32;
    public double norm_eps { get; init; } = 1e-5;
    public int[] cross_attention_dim { get; init; } = [1280];
    public int[] transformer_layers_per_block { get; init; } = [1];
    public int[]? reverse_transformer_layers_per_block { get; init; }
    /// <summary>Historically the number of heads for SD1.x (diffusers' naming quirk).</summary>
    public int[] attention_head_dim { get; init; } = [8];
    public int[]? num_attention_heads { get; init; }
    public bool use_linear_projection { get; init; }
    public bool upcast_attention { get; init; }
    public string resnet_time_scale_shift { get; init; } = "default";
    public string? addition_embed_type { get; init; }
    public int? addition_time_embed_dim { get; init; }
    public int? projection_class_embeddings_input_dim { get; init; }
    public string? class_embed_type { get; init; }
    public int? num_class_embeds { get; init; }
    public int conv_in_kernel { get; init; } = 3;
    public int conv_out_kernel { get; init; } = 3;
    public string time_embedding_type { get; init; } = "positional";
    public int? time_embedding_dim { get; init; }
    public int? time_cond_proj_dim { get; init; }
    public string? encoder_hid_dim_type { get; init; }
    public string attention_type { get; init; } = "default";

    public int NumBlocks => down_block_types.Length;

    public static UNet2DConditionConfig FromFile(string path) => From(ConfigReader.Load(path));

    internal static UNet2DConditionConfig From(ConfigReader r)
    {
        var d = new UNet2DConditionConfig();
        var c = d with
        {
            sample_size = r.IntOrList("sample_size")?[0] ?? d.sample_size,
            in_channels = r.Int("in_channels", d.in_channels),
            out_channels = r.Int("out_channels", d.out_channels),
            center_input_sample = r.Bool("center_input_sample", false),
            flip_sin_to_cos = r.Bool("flip_sin_to_cos", true),
            freq_shift = r.Int("freq_shift", 0),
            down_block_types = r.Strs("down_block_types", d.down_block_types),
            mid_block_type = r.Str("mid_block_type", d.mid_block_type) ?? "",
            up_block_types = r.Strs("up_block_types", d.up_block_types),
            only_cross_attention = r.BoolOrList("only_cross_attention") ?? [false],
            block_out_channels = r.IntOrList("block_out_channels") ?? d.block_out_channels,
            layers_per_block = r.IntOrList("layers_per_block") ?? d.layers_per_block,
            downsample_padding = r.Int("downsample_padding", 1),
            mid_block_scale_factor = r.Double("mid_block_scale_factor", 1),
            dropout = r.Double("dropout", 0),
            act_fn = r.Str("act_fn", "silu") ?? "silu",
            norm_num_groups = r.Int("norm_num_groups", 32),
            norm_eps = r.Double("norm_eps", 1e-5),
            cross_attention_dim = r.IntOrList("cross_attention_dim") ?? d.cross_attention_dim,
            transformer_layers_per_block = r.IntOrList("transformer_layers_per_block") ?? [1],
            reverse_transformer_layers_per_block = r.IntOrList("reverse_transformer_layers_per_block"),
            attention_head_dim = r.IntOrList("attention_head_dim") ?? d.attention_head_dim,
            num_attention_heads = r.IntOrList("num_attention_heads"),
            use_linear_projection = r.Bool("use_linear_projection", false),
            upcast_attention = r.Bool("upcast_attention", false),
            resnet_time_scale_shift = r.Str("resnet_time_scale_shift", "default") ?? "default",
            addition_embed_type = r.Str("addition_embed_type", null),
            addition_time_embed_dim = r.IntOrNull("addition_time_embed_dim"),
            projection_class_embeddings_input_dim = r.IntOrNull("projection_class_embeddings_input_dim"),
            class_embed_type = r.Str("class_embed_type", null),
            num_class_embeds = r.IntOrNull("num_class_embeds"),
            conv_in_kernel = r.Int("conv_in_kernel", 3),
            conv_out_kernel = r.Int("conv_out_kernel", 3),
            time_embedding_type = r.Str("time_embedding_type", "positional") ?? "positional",
            time_embedding_dim = r.IntOrNull("time_embedding_dim"),
            time_cond_proj_dim = r.IntOrNull("time_cond_proj_dim"),
            encoder_hid_dim_type = r.Str("encoder_hid_dim_type", null),
            attention_type = r.Str("attention_type", "default") ?? "default",
        };
        c.Validate(r.Source);
        return c;
    }

    public void Validate(string source = "UNet2DConditionConfig")
    {
        var n = down_block_types.Length;
        if (up_block_types.Length != n) throw new InvalidDataException($"{source}: {n} down blocks but {up_block_types.Length} up blocks");
        if (block_out_channels.Length != n) throw new InvalidDataException($"{source}: block_out_channels has {block_out_channels.Length} entries for {n} blocks");
        foreach (var t in down_block_types)
            if (t is not ("CrossAttnDownBlock2D" or "DownBlock2D")) throw new NotSupportedException($"{source}: down block type '{t}' is not supported (CrossAttnDownBlock2D, DownBlock2D)");
        foreach (var t in up_block_types)
            if (t is not ("CrossAttnUpBlock2D" or "UpBlock2D")) throw new NotSupportedException($"{source}: up block type '{t}' is not supported (CrossAttnUpBlock2D, UpBlock2D)");
        if (mid_block_type is not "UNetMidBlock2DCrossAttn") throw new NotSupportedException($"{source}: mid_block_type '{mid_block_type}' is not supported (UNetMidBlock2DCrossAttn)");
        if (act_fn != "silu") throw new NotSupportedException($"{source}: act_fn '{act_fn}' is not supported (silu)");
        if (resnet_time_scale_shift != "default") throw new NotSupportedException($"{source}: resnet_time_scale_shift '{resnet_time_scale_shift}' is not supported (default)");
        if (addition_embed_type is not (null or "text_time")) throw new NotSupportedException($"{source}: addition_embed_type '{addition_embed_type}' is not supported (text_time)");
        if (addition_embed_type == "text_time" && (addition_time_embed_dim is null || projection_class_embeddings_input_dim is null))
            throw new InvalidDataException($"{source}: addition_embed_type text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim");
        if (class_embed_type is not null || num_class_embeds is not null) throw new NotSupportedException($"{source}: class embeddings are not supported");
        if (time_embedding_type != "positional") throw new NotSupportedException($"{source}: time_embedding_type '{time_embedding_type}' is not supported (positional)");
        if (time_cond_proj_dim is not null) throw new NotSupportedException($"{source}: time_cond_proj_dim is not supported");
        if (encoder_hid_dim_type is not null) throw new NotSupportedException($"{source}: encoder_hid_dim_type is not supported");
        if (attention_type != "default") throw new NotSupportedException($"{source}: attention_type '{attention_type}' is not supported (default)");
    }

    /// <summary>runwayml/stable-diffusion-v1-5 unet/config.json.</summary>
    public static UNet2DConditionConfig SD15 => new() { cross_attention_dim = [768], attention_head_dim = [8] };

    /// <summary>stabilityai/stable-diffusion-xl-base-1.0 unet/config.json.</summary>
    public static UNet2DConditionConfig SDXL => new()
    {
        sample_size = 128,
        down_block_types = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        block_out_channels = [320, 640, 1280],
        cross_attention_dim = [2048],
        attention_head_dim = [5, 10, 20],
        transformer_layers_per_block = [1, 2, 10],
        use_linear_projection = true,
        addition_embed_type = "text_time",
        addition_time_embed_dim = 256,
        projection_class_embeddings_input_dim = 2816,
    };
}

/// <summary>diffusers.AutoencoderKL's constructor arguments.</summary>
public sealed record AutoencoderKLConfig
{
    public int in_channels { get; init; } = 3;
    public int out_channels { get; init; } = 3;
    public string[] down_block_types { get; init; } = ["DownEncoderBlock2D"];
    public string[] up_block_types { get; init; } = ["UpDecoderBlock2D"];
    public int[] block_out_channels { get; init; } = [64];
    public int layers_per_block { get; init; } = 1;
    public string act_fn { get; init; } = "silu";
    public int latent_channels { get; init; } = 4;
    public int norm_num_groups { get; init; } = 32;
    public int sample_size { get; init; } = 32;
    public double scaling_factor { get; init; } = 0.18215;
    public double? shift_factor { get; init; }
    public bool force_upcast { get; init; } = true;
    public bool use_quant_conv { get; init; } = true;
    public bool use_post_quant_conv { get; init; } = true;
    public bool mid_block_add_attention { get; init; } = true;

    public static AutoencoderKLConfig FromFile(string path) => From(ConfigReader.Load(path));

    internal static AutoencoderKLConfig From(ConfigReader r)
    {
        var d = new AutoencoderKLConfig();
        var c = d with
        {
            in_channels = r.Int("in_channels", 3),
            out_channels = r.Int("out_channels", 3),
            down_block_types = r.Strs("down_block_types", d.down_block_types),
            up_block_types = r.Strs("up_block_types", d.up_block_types),
            block_out_channels = r.IntOrList("block_out_channels") ?? d.block_out_channels,
            layers_per_block = r.Int("layers_per_block", 1),
            act_fn = r.Str("act_fn", "silu") ?? "silu",
            latent_channels = r.Int("latent_channels", 4),
            norm_num_groups = r.Int("norm_num_groups", 32),
            sample_size = r.IntOrList("sample_size")?[0] ?? 32,
            scaling_factor = r.Double("scaling_factor", 0.18215),
            shift_factor = r.DoubleOrNull("shift_factor"),
            force_upcast = r.Bool("force_upcast", true),
            use_quant_conv = r.Bool("use_quant_conv", true),
            use_post_quant_conv = r.Bool("use_post_quant_conv", true),
            mid_block_add_attention = r.Bool("mid_block_add_attention", true),
        };
        if (c.down_block_types.Any(t => t != "DownEncoderBlock2D") || c.up_block_types.Any(t => t != "UpDecoderBlock2D"))
            throw new NotSupportedException($"{r.Source}: only DownEncoderBlock2D / UpDecoderBlock2D VAEs are supported");
        if (c.block_out_channels.Length != c.down_block_types.Length)
            throw new InvalidDataException($"{r.Source}: block_out_channels has {c.block_out_channels.Length} entries for {c.down_block_types.Length} blocks");
        return c;
    }

    /// <summary>The SD1.5 / SDXL VAE (SDXL's differs only in scaling_factor 0.13025).</summary>
    public static AutoencoderKLConfig SD15 => new()
    {
        down_block_types = ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types = ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        block_out_channels = [128, 256, 512, 512],
        layers_per_block = 2,
        sample_size = 512,
    };
}

/// <summary>transformers.CLIPTextConfig.</summary>
public sealed record CLIPTextConfig
{
    public int vocab_size { get; init; } = 49408;
    public int hidden_size { get; init; } = 512;
    public int intermediate_size { get; init; } = 2048;
    public int projection_dim { get; init; } = 512;
    public int num_hidden_layers { get; init; } = 12;
    public int num_attention_heads { get; init; } = 8;
    public int max_position_embeddings { get; init; } = 77;
    public string hidden_act { get; init; } = "quick_gelu";
    public double layer_norm_eps { get; init; } = 1e-5;
    public int pad_token_id { get; init; } = 1;
    public int bos_token_id { get; init; } = 49406;
    public int eos_token_id { get; init; } = 49407;

    public static CLIPTextConfig FromFile(string path) => From(ConfigReader.Load(path));

    internal static CLIPTextConfig From(ConfigReader r)
    {
        var d = new CLIPTextConfig();
        return d with
        {
            vocab_size = r.Int("vocab_size", d.vocab_size),
            hidden_size = r.Int("hidden_size", d.hidden_size),
            intermediate_size = r.Int("intermediate_size", d.intermediate_size),
            projection_dim = r.Int("projection_dim", d.projection_dim),
            num_hidden_layers = r.Int("num_hidden_layers", d.num_hidden_layers),
            num_attention_heads = r.Int("num_attention_heads", d.num_attention_heads),
            max_position_embeddings = r.Int("max_position_embeddings", d.max_position_embeddings),
            hidden_act = r.Str("hidden_act", d.hidden_act) ?? d.hidden_act,
            layer_norm_eps = r.Double("layer_norm_eps", d.layer_norm_eps),
            pad_token_id = r.Int("pad_token_id", d.pad_token_id),
            bos_token_id = r.Int("bos_token_id", d.bos_token_id),
            eos_token_id = r.Int("eos_token_id", d.eos_token_id),
        };
    }

    /// <summary>openai/clip-vit-large-patch14 text tower (SD1.5 text_encoder).</summary>
    public static CLIPTextConfig SD15 => new()
    {
        hidden_size = 768,
        intermediate_size = 3072,
        projection_dim = 768,
        num_hidden_layers = 12,
        num_attention_heads = 12,
        hidden_act = "quick_gelu",
        eos_token_id = 2,
        bos_token_id = 0,
    };

    /// <summary>SDXL text_encoder_2 (OpenCLIP ViT-bigG/14 text tower).</summary>
    public static CLIPTextConfig SDXL2 => new()
    {
        hidden_size = 1280,
        intermediate_size = 5120,
        projection_dim = 1280,
        num_hidden_layers = 32,
        num_attention_heads = 20,
        hidden_act = "gelu",
        eos_token_id = 2,
        bos_token_id = 0,
    };
}

/// <summary>transformers.CLIPVisionConfig.</summary>
public sealed record CLIPVisionConfig
{
    public int hidden_size { get; init; } = 768;
    public int intermediate_size { get; init; } = 3072;
    public int projection_dim { get; init; } = 512;
    public int num_hidden_layers { get; init; } = 12;
    public int num_attention_heads { get; init; } = 12;
    public int num_channels { get; init; } = 3;
    public int image_size { get; init; } = 224;
    public int patch_size { get; init; } = 32;
    public string hidden_act { get; init; } = "quick_gelu";
    public double layer_norm_eps { get; init; } = 1e-5;

    internal static CLIPVisionConfig From(ConfigReader r)
    {
        var d = new CLIPVisionConfig();
        return d with
        {
            hidden_size = r.Int("hidden_size", d.hidden_size),
            intermediate_size = r.Int("intermediate_size", d.intermediate_size),
            projection_dim = r.Int("projection_dim", d.projection_dim),
            num_hidden_layers = r.Int("num_hidden_layers", d.num_hidden_layers),
            num_attention_heads = r.Int("num_attention_heads", d.num_attention_heads),
            num_channels = r.Int("num_channels", d.num_channels),
            image_size = r.Int("image_size", d.image_size),
            patch_size = r.Int("patch_size", d.patch_size),
            hidden_act = r.Str("hidden_act", d.hidden_act) ?? d.hidden_act,
            layer_norm_eps = r.Double("layer_norm_eps", d.layer_norm_eps),
        };
    }
}

/// <summary>transformers.CLIPConfig: text and vision towers plus the shared projection.</summary>
public sealed record CLIPConfig
{
    public CLIPTextConfig text_config { get; init; } = new();
    public CLIPVisionConfig vision_config { get; init; } = new();
    public int projection_dim { get; init; } = 512;
    public double logit_scale_init_value { get; init; } = 2.6592;

    public static CLIPConfig FromFile(string path) => From(ConfigReader.Load(path));

    internal static CLIPConfig From(ConfigReader r) => new()
    {
        text_config = CLIPTextConfig.From(r.Sub("text_config")),
        vision_config = CLIPVisionConfig.From(r.Sub("vision_config")),
        projection_dim = r.Int("projection_dim", 512),
        logit_scale_init_value = r.Double("logit_scale_init_value", 2.6592),
    };
}

/// <summary>Writes a config record as the reference library's config.json: property names are the JSON
/// field names; one-element per-block lists are written as a single value (diffusers rejects a
/// one-element list where it expects one entry per block).</summary>
public static class ConfigWriter
{
    private static readonly HashSet<string> AlwaysList = ["block_out_channels", "down_block_types", "up_block_types"];

    public static JsonObject ToJson(object config, IReadOnlyDictionary<string, JsonNode?> header)
    {
        var o = new JsonObject();
        foreach (var (k, v) in header) o[k] = v?.DeepClone();
        foreach (var p in config.GetType().GetProperties(System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Public).Where(p => p.CanRead && p.GetIndexParameters().Length == 0 && p.Name != "NumBlocks"))
        {
            var v = p.GetValue(config);
            o[p.Name] = v switch
            {
                null => null,
                int[] a when a.Length == 1 && !AlwaysList.Contains(p.Name) => a[0],
                bool[] a when a.Length == 1 => a[0],
                CLIPTextConfig or CLIPVisionConfig => ToJson(v, new Dictionary<string, JsonNode?>()),
                _ => JsonSerializer.SerializeToNode(v, v.GetType()),
            };
        }
        return o;
    }

    public static JsonObject ToJson(this UNet2DConditionConfig c) =>
        ToJson(c, new Dictionary<string, JsonNode?> { ["_class_name"] = "UNet2DConditionModel", ["_diffusers_version"] = "0.27.2" });

    public static JsonObject ToJson(this AutoencoderKLConfig c) =>
        ToJson(c, new Dictionary<string, JsonNode?> { ["_class_name"] = "AutoencoderKL", ["_diffusers_version"] = "0.27.2" });

    public static JsonObject ToJson(this CLIPTextConfig c, string architecture) =>
        ToJson(c, new Dictionary<string, JsonNode?> { ["architectures"] = new JsonArray(architecture), ["model_type"] = "clip_text_model" });

    public static JsonObject ToJson(this CLIPConfig c)
    {
        var o = ToJson(c, new Dictionary<string, JsonNode?> { ["architectures"] = new JsonArray("CLIPModel"), ["model_type"] = "clip" });
        return o;
    }
}
