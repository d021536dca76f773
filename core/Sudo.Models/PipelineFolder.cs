// Loading and saving a diffusers pipeline folder (model_index.json + one sub-folder per component).
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>The model components of a StableDiffusion(XL)Pipeline folder. The scheduler is returned as its
/// config path (schedulers live in Sudo.Diffusion).</summary>
public sealed class PipelineComponents : IDisposable
{
    public required string Folder { get; init; }
    public required string ClassName { get; init; }
    public required JsonObject ModelIndex { get; init; }
    public required UNet2DConditionModel unet { get; init; }
    public required AutoencoderKL vae { get; init; }
    public required CLIPTextModel text_encoder { get; init; }
    public CLIPTextModelWithProjection? text_encoder_2 { get; init; }
    public required CLIPTokenizer tokenizer { get; init; }
    public CLIPTokenizer? tokenizer_2 { get; init; }
    public string? scheduler_config { get; init; }
    /// <summary>Overrides the scheduler config's prediction_type (epsilon, v_prediction or sample) when the pipeline's
    /// scheduler is built: inferred for a single file whose family config says otherwise (an SD2-base checkpoint read with
    /// SD2.1's 768-v configs), or asked for (--prediction_type). Null: the config's.</summary>
    public string? prediction_type { get; init; }

    /// <summary>The same components with another VAE (train.py's --pretrained_vae_model_name_or_path, e.g. SDXL's
    /// fp16-fix VAE); this object's VAE is disposed and the other modules move to the returned one.</summary>
    public PipelineComponents WithVae(AutoencoderKL newVae)
    {
        vae.Dispose();
        return With(unet, newVae);
    }

    /// <summary>The same components with another UNet (a fine-tuned one); this object's UNet is disposed.</summary>
    public PipelineComponents WithUnet(UNet2DConditionModel newUnet)
    {
        unet.Dispose();
        return With(newUnet, vae);
    }

    private PipelineComponents With(UNet2DConditionModel u, AutoencoderKL v, string? predictionType = null) => new()
    {
        Folder = Folder,
        ClassName = ClassName,
        ModelIndex = ModelIndex,
        unet = u,
        vae = v,
        text_encoder = text_encoder,
        text_encoder_2 = text_encoder_2,
        tokenizer = tokenizer,
        tokenizer_2 = tokenizer_2,
        scheduler_config = scheduler_config,
        prediction_type = predictionType ?? prediction_type,
    };

    /// <summary>The same components (the modules move to the returned object) whose scheduler will predict
    /// <paramref name="predictionType"/>; null keeps this one's.</summary>
    public PipelineComponents WithPredictionType(string? predictionType)
    {
        if (predictionType is null || predictionType == prediction_type) return this;
        if (predictionType is not ("epsilon" or "v_prediction" or "sample"))
            throw new ArgumentException($"prediction_type '{predictionType}': expected epsilon, v_prediction or sample");
        return With(unet, vae, predictionType);
    }

    public bool IsSDXL => text_encoder_2 != null;

    /// <summary>Reads model_index.json and loads every model component it names (unet, vae, text_encoder,
    /// and for SDXL text_encoder_2), the tokenizers and the scheduler config path.</summary>
    /// A single-file checkpoint (.safetensors / .ckpt in the original layout) is read with the configs of its family
    /// (<see cref="SingleFile.LoadPipeline"/>).
    public static PipelineComponents from_pretrained(string path, string? variant = null, ScalarType? dtype = null, Device? device = null, string? cache_dir = null)
    {
        if (SingleFile.IsSingleFile(path)) return SingleFile.LoadPipeline(path, null, dtype, device, cache_dir);
        return Build(Hub.Resolve(path, cache_dir), variant, dtype, device, weights: true);
    }

    /// <summary>The components a pipeline folder describes, built from their configs with initialisation skipped and
    /// no weights read (the caller loads every weight, e.g. from a single-file checkpoint).</summary>
    public static PipelineComponents from_configs(string folder, ScalarType? dtype = null, Device? device = null) =>
        Build(folder, null, dtype, device, weights: false);

    /// <summary>Reads and checks a model_index.json: the Stable Diffusion components Sudo builds (unet, vae,
    /// text_encoder, tokenizer; for SDXL text_encoder_2 and tokenizer_2) with their classes. Returns the index and
    /// whether it is SDXL; a file that is not that is an InvalidDataException (or NotSupportedException for another
    /// component class) naming it.</summary>
    public static (JsonObject index, bool sdxl) ReadModelIndex(string indexPath)
    {
        if (!File.Exists(indexPath))
            throw new FileNotFoundException($"{Path.GetDirectoryName(indexPath)} is not a diffusers pipeline folder (no model_index.json)", indexPath);
        var index = JsonInput.ReadObject(indexPath);
        // Each component is ["library", "ClassName"] (diffusers' save_config); anything else is absent or malformed.
        string? Kind(string name)
        {
            if (!index.TryGetPropertyValue(name, out var node) || node is null) return null;
            if (node is JsonArray { Count: 2 } a && a[1] is JsonValue v && v.TryGetValue<string>(out var k)) return k;
            if (node is JsonArray { Count: 2 } n && n[0] is null && n[1] is null) return null;   // a component saved as None
            throw new InvalidDataException($"{indexPath}: '{name}' must be [\"library\", \"ClassName\"], got {node.ToJsonString()}");
        }
        void Expect(string name, params string[] classes)
        {
            var k = Kind(name);
            if (k is null) throw new InvalidDataException($"{indexPath}: no '{name}' component");
            if (!classes.Contains(k)) throw new NotSupportedException($"{indexPath}: {name} is {k}; supported: {string.Join(", ", classes)}");
        }
        Expect("unet", "UNet2DConditionModel");
        Expect("vae", "AutoencoderKL");
        Expect("text_encoder", "CLIPTextModel");
        Expect("tokenizer", "CLIPTokenizer");
        var sdxl = Kind("text_encoder_2") != null;
        if (sdxl)
        {
            Expect("text_encoder_2", "CLIPTextModelWithProjection");
            Expect("tokenizer_2", "CLIPTokenizer");
        }
        return (index, sdxl);
    }

    private static PipelineComponents Build(string folder, string? variant, ScalarType? dtype, Device? device, bool weights)
    {
        var (index, sdxl) = ReadModelIndex(Path.Combine(folder, "model_index.json"));
        var cls = index["_class_name"] is JsonValue cv && cv.TryGetValue<string>(out var cn) ? cn : "";
        var disposables = new List<IDisposable>();
        try
        {
            T Make<T>(string sub, Func<string, T> load, Func<string, T> fromConfig) where T : nn.Module
            {
                var dir = Path.Combine(folder, sub);
                if (weights) return load(dir);
                var cfg = Path.Combine(dir, "config.json");
                if (!File.Exists(cfg)) throw new FileNotFoundException($"config not found: {cfg}", cfg);
                using (nn.init.skip())
                using (dtype_scope(dtype ?? ScalarType.Float32))
                using (device_scope(device ?? Device.CPU))
                    return fromConfig(cfg);
            }
            var unet = Make("unet", d => UNet2DConditionModel.from_pretrained(d, variant, dtype, device), c => new UNet2DConditionModel(UNet2DConditionConfig.FromFile(c)));
            disposables.Add(unet);
            var vae = Make("vae", d => AutoencoderKL.from_pretrained(d, variant, dtype, device), c => new AutoencoderKL(AutoencoderKLConfig.FromFile(c)));
            disposables.Add(vae);
            var te = Make("text_encoder", d => CLIPTextModel.from_pretrained(d, variant, dtype, device), c => new CLIPTextModel(CLIPTextConfig.FromFile(c)));
            disposables.Add(te);
            var te2 = sdxl ? Make("text_encoder_2", d => CLIPTextModelWithProjection.from_pretrained(d, variant, dtype, device), c => new CLIPTextModelWithProjection(CLIPTextConfig.FromFile(c))) : null;
            var sched = Path.Combine(folder, "scheduler", "scheduler_config.json");
            return new PipelineComponents
            {
                Folder = folder,
                ClassName = cls,
                ModelIndex = index,
                unet = unet,
                vae = vae,
                text_encoder = te,
                text_encoder_2 = te2,
                tokenizer = CLIPTokenizer.from_pretrained(Path.Combine(folder, "tokenizer")),
                tokenizer_2 = sdxl ? CLIPTokenizer.from_pretrained(Path.Combine(folder, "tokenizer_2")) : null,
                scheduler_config = File.Exists(sched) ? sched : null,
            };
        }
        catch
        {
            foreach (var d in disposables) d.Dispose();
            throw;
        }
    }

    /// <summary>Writes the same layout: model_index.json, each model component, the tokenizer and scheduler
    /// files copied from the source folder.</summary>
    public void save_pretrained(string folder)
    {
        Directory.CreateDirectory(folder);
        unet.save_pretrained(Path.Combine(folder, "unet"));
        vae.save_pretrained(Path.Combine(folder, "vae"));
        text_encoder.save_pretrained(Path.Combine(folder, "text_encoder"));
        text_encoder_2?.save_pretrained(Path.Combine(folder, "text_encoder_2"));
        foreach (var sub in new[] { "tokenizer", "tokenizer_2", "scheduler" })
        {
            var src = Path.Combine(Folder, sub);
            if (!Directory.Exists(src) || Path.GetFullPath(src) == Path.GetFullPath(Path.Combine(folder, sub))) continue;
            Directory.CreateDirectory(Path.Combine(folder, sub));
            foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(folder, sub, Path.GetFileName(f)), overwrite: true);
        }
        AtomicFile.WriteAllText(Path.Combine(folder, "model_index.json"), ModelIndex.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    public void Dispose()
    {
        unet.Dispose();
        vae.Dispose();
        text_encoder.Dispose();
        text_encoder_2?.Dispose();
    }
}
