// Typed configs read from diffusers' / transformers' config.json with System.Text.Json: unknown fields are ignored,
// missing fields take the record initialisers, which are the library's defaults (diffusers 0.27.2, transformers 4.38).
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Sudo.Torch;

namespace Sudo.Models;

/// <summary>Reads a reference library's config.json into a config record with System.Text.Json: the record
/// initialisers are the only defaults (a missing field or a JSON null keeps the initialiser's value, as the
/// libraries' constructors do), unknown fields are ignored, per-block settings may be one value or a list, and
/// Python's bare NaN / Infinity are read. Errors name the file and the field.</summary>
public static class ConfigJson
{
    public static readonly JsonSerializerOptions Options = new()
    {
        Converters = { new IntOrListConverter(), new BoolOrListConverter() },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
    };

    /// <summary>Python's json writes NaN / Infinity / -Infinity bare (diffusers' lambda_min_clipped): quote
    /// them so System.Text.Json reads them as named literals.</summary>
    public static JsonNode? ParsePython(string json, string source = "config") =>
        JsonInput.Parse(System.Text.RegularExpressions.Regex.Replace(json, @"(?<=[:\[,]\s*)(-?Infinity|NaN)(?=\s*[,\]\}])", "\"$1\""), source);

    /// <param name="keepNull">fields whose JSON null means something (not "the default"): they are read as null.</param>
    public static T Read<T>(string path, params string[] keepNull)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"config not found: {path}", path);
        JsonObject o;
        try
        {
            o = ParsePython(File.ReadAllText(path), path) as JsonObject ?? throw new InvalidDataException($"{path}: config.json must be a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }
        return Read<T>(o, path, keepNull);
    }

    public static T Read<T>(JsonObject o, string source, params string[] keepNull)
    {
        var clean = (JsonObject)WithoutNulls(o)!;
        foreach (var k in keepNull)
            if (o.TryGetPropertyValue(k, out var v) && v is null) clean[k] = null;
        try
        {
            return clean.Deserialize<T>(Options) ?? throw new InvalidDataException($"{source}: empty config");
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or FormatException or OverflowException)
        {
            throw new InvalidDataException($"{source}: not a valid {typeof(T).Name}: {e.Message}", e);
        }
        catch (JsonException e)
        {
            var field = (e.Path ?? "").TrimStart('$').TrimStart('.');
            var value = field.Length > 0 ? Find(o, field)?.ToJsonString() : null;
            throw new InvalidDataException($"{source}: field '{field}'{(value is null ? "" : $" = {value}")} is not a valid {typeof(T).Name} setting: {e.Message}", e);
        }
    }

    static JsonNode? Find(JsonObject o, string path)
    {
        JsonNode? n = o;
        foreach (var part in path.Split('.'))
        {
            var key = part.Split('[')[0];
            n = n is JsonObject jo ? jo[key] : null;
        }
        return n;
    }

    static JsonNode? WithoutNulls(JsonNode? n) => n switch
    {
        JsonObject o => new JsonObject(o.Where(kv => kv.Value is not null).Select(kv => KeyValuePair.Create(kv.Key, WithoutNulls(kv.Value)))),
        JsonArray a => new JsonArray(a.Select(x => x?.DeepClone()).ToArray()),
        _ => n?.DeepClone(),
    };

    /// <summary>An int or a list of ints (diffusers accepts both for per-block settings).</summary>
    sealed class IntOrListConverter : JsonConverter<int[]>
    {
        public override int[] Read(ref Utf8JsonReader reader, Type type, JsonSerializerOptions options)
        {
            if (reader.TokenType == JsonTokenType.Number) return [reader.GetInt32()];
            if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("expected an integer or a list of integers");
            var list = new List<int>();
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                list.Add(reader.TokenType == JsonTokenType.Number ? reader.GetInt32() : throw new JsonException("expected a list of integers"));
            return list.ToArray();
        }

        public override void Write(Utf8JsonWriter writer, int[] value, JsonSerializerOptions options) => JsonSerializer.Serialize(writer, value);
    }

    sealed class BoolOrListConverter : JsonConverter<bool[]>
    {
        public override bool[] Read(ref Utf8JsonReader reader, Type type, JsonSerializerOptions options)
        {
            if (reader.TokenType is JsonTokenType.True or JsonTokenType.False) return [reader.GetBoolean()];
            if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("expected true/false or a list of them");
            var list = new List<bool>();
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                list.Add(reader.TokenType is JsonTokenType.True or JsonTokenType.False ? reader.GetBoolean() : throw new JsonException("expected a list of true/false"));
            return list.ToArray();
        }

        public override void Write(Utf8JsonWriter writer, bool[] value, JsonSerializerOptions options) => JsonSerializer.Serialize(writer, value);
    }

    /// <summary>An int, or a list whose first entry is taken (diffusers' sample_size may be [h, w]).</summary>
    public sealed class FirstIntConverter : JsonConverter<int>
    {
        public override int Read(ref Utf8JsonReader reader, Type type, JsonSerializerOptions options)
        {
            if (reader.TokenType == JsonTokenType.Number) return reader.GetInt32();
            if (reader.TokenType != JsonTokenType.StartArray || !reader.Read() || reader.TokenType != JsonTokenType.Number)
                throw new JsonException("expected an integer or a list of integers");
            var first = reader.GetInt32();
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray) { }
            return first;
        }

        public override void Write(Utf8JsonWriter writer, int value, JsonSerializerOptions options) => writer.WriteNumberValue(value);
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
    [JsonConverter(typeof(ConfigJson.FirstIntConverter))]
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

    public static UNet2DConditionConfig FromFile(string path)
    {
        // mid_block_type null is diffusers' "no mid block", which Validate refuses; other nulls mean the default.
        var c = ConfigJson.Read<UNet2DConditionConfig>(path, "mid_block_type");
        c.Validate(path);
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

    /// <summary>stabilityai/stable-diffusion-2-1 unet/config.json (768 px, v-prediction; 2-1-base differs only in sample_size 64).</summary>
    public static UNet2DConditionConfig SD21 => new()
    {
        sample_size = 96,
        cross_attention_dim = [1024],
        attention_head_dim = [5, 10, 20, 20],
        use_linear_projection = true,
        upcast_attention = true,
    };

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
    [JsonConverter(typeof(ConfigJson.FirstIntConverter))]
    public int sample_size { get; init; } = 32;
    public double scaling_factor { get; init; } = 0.18215;
    public double? shift_factor { get; init; }
    public bool force_upcast { get; init; } = true;
    public bool use_quant_conv { get; init; } = true;
    public bool use_post_quant_conv { get; init; } = true;
    public bool mid_block_add_attention { get; init; } = true;

    public static AutoencoderKLConfig FromFile(string path)
    {
        var c = ConfigJson.Read<AutoencoderKLConfig>(path);
        if (c.down_block_types.Any(t => t != "DownEncoderBlock2D") || c.up_block_types.Any(t => t != "UpDecoderBlock2D"))
            throw new NotSupportedException($"{path}: only DownEncoderBlock2D / UpDecoderBlock2D VAEs are supported");
        if (c.block_out_channels.Length != c.down_block_types.Length)
            throw new InvalidDataException($"{path}: block_out_channels has {c.block_out_channels.Length} entries for {c.down_block_types.Length} blocks");
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

    public static CLIPTextConfig FromFile(string path) => ConfigJson.Read<CLIPTextConfig>(path);

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

    /// <summary>stabilityai/stable-diffusion-2-1 text_encoder/config.json: the OpenCLIP ViT-H/14 text tower without its last
    /// block (SD2 conditions on the penultimate layer, so diffusers keeps 23 of 24).</summary>
    public static CLIPTextConfig SD21 => new()
    {
        hidden_size = 1024,
        intermediate_size = 4096,
        projection_dim = 512,
        num_hidden_layers = 23,
        num_attention_heads = 16,
        hidden_act = "gelu",
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
}

/// <summary>transformers.CLIPConfig: text and vision towers plus the shared projection.</summary>
public sealed record CLIPConfig
{
    public CLIPTextConfig text_config { get; init; } = new();
    public CLIPVisionConfig vision_config { get; init; } = new();
    public int projection_dim { get; init; } = 512;
    public double logit_scale_init_value { get; init; } = 2.6592;

    public static CLIPConfig FromFile(string path) => ConfigJson.Read<CLIPConfig>(path);
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
