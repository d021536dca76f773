// `sudoml sample`: prompts → PNGs, grid.png and one JSON line per image with every setting needed to
// regenerate it (image i of a prompt uses generator seed + global index, so batch size never matters).
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion;

public sealed record SampleSettings
{
    public required string model { get; init; }
    /// <summary>A UNet replacing the pipeline's (a UNet folder, a UNet-only repository, or a training output /
    /// checkpoint-N folder holding unet/).</summary>
    public string? unet { get; init; }
    /// <summary>A LoRA merged into the UNet (pytorch_lora_weights.safetensors, or a folder holding it or lora/).</summary>
    public string? lora { get; init; }
    public double lora_scale { get; init; } = 1.0;
    /// <summary>Another VAE (e.g. madebyollin/sdxl-vae-fp16-fix).</summary>
    public string? vae { get; init; }
    public required IReadOnlyList<string> prompts { get; init; }
    public string? negative_prompt { get; init; }
    public int steps { get; init; } = 30;
    public double guidance { get; init; } = 7.5;
    public string? scheduler { get; init; }
    /// <summary>Overrides the scheduler's prediction_type (<see cref="PipelineSpec.prediction_type"/>).</summary>
    public string? prediction_type { get; init; }
    public long seed { get; init; }
    public int images_per_prompt { get; init; } = 1;
    public int? height { get; init; }
    public int? width { get; init; }
    public double eta { get; init; }
    public string dtype { get; init; } = "float32";
    public string device { get; init; } = "cpu";
    /// <summary>Run bf16 on a CPU even where the probe measures it slower than fp32 (Precision.Judge).</summary>
    public bool allow_slow_bf16 { get; init; }
    /// <summary>Images denoised together (does not change any image).</summary>
    public int batch_size { get; init; } = 4;
    public required string out_dir { get; init; }
}

public static class Sampling
{
    public static ScalarType ParseDtype(string s, Device device) => s.ToLowerInvariant() switch
    {
        "float32" or "fp32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        "float16" or "fp16" when device.Type == DeviceType.CPU =>
            throw new ArgumentException("--dtype fp16 cannot compute on CPU with libtorch 1.13: use bf16 (or fp32)"),
        "float16" or "fp16" => ScalarType.Float16,
        _ => throw new ArgumentException($"unknown --dtype '{s}' (float32, bfloat16, float16 on CUDA)"),
    };

    /// <summary>Generates every image, writing image_XXXX.png, grid.png and images.jsonl under out_dir.
    /// <paramref name="progress"/> receives (images done — fractional within a batch —, total images, step).</summary>
    public static List<string> Run(SampleSettings s, Action<double, int, int>? progress = null)
    {
        if (s.prompts.Count == 0) throw new ArgumentException("give a prompt (--prompt) or a prompts file (--prompts)");
        if (s.images_per_prompt < 1 || s.batch_size < 1 || s.steps < 1) throw new ArgumentException("images per prompt, batch size and steps must be ≥ 1");
        var device = Device.Parse(s.device);
        var dtype = ParseDtype(s.dtype, device);
        if (dtype == ScalarType.BFloat16) Precision.RequireUsableBf16(device, s.allow_slow_bf16, "--dtype bf16");
        var spec = new PipelineSpec { model = s.model, unet = s.unet, lora = s.lora, lora_scale = s.lora_scale, vae = s.vae, scheduler = s.scheduler, prediction_type = s.prediction_type };
        using var pipe = PipelineLoading.Load(spec, dtype, device);
        Directory.CreateDirectory(s.out_dir);
        var jobs = s.prompts.SelectMany((p, pi) => Enumerable.Range(0, s.images_per_prompt).Select(k => (prompt: p, index: pi * s.images_per_prompt + k))).ToList();
        var files = new List<string>();
        var lines = new List<string>();
        var images = new List<Tensor>();
        var done = 0;
        foreach (var chunk in jobs.Chunk(s.batch_size))
        {
            using var scope = NewDisposeScope();
            var gens = chunk.Select(j => new Generator(s.seed + j.index)).ToArray();
            try
            {
                var options = new GenerationOptions
                {
                    prompt = chunk.Select(j => j.prompt).ToList(),
                    negative_prompt = s.negative_prompt is null ? null : chunk.Select(_ => s.negative_prompt).ToList(),
                    num_images_per_prompt = 1,
                    height = s.height,
                    width = s.width,
                    num_inference_steps = s.steps,
                    guidance_scale = s.guidance,
                    eta = s.eta,
                    generators = gens,
                    callback_on_step_end = (i, _, _) => progress?.Invoke(done + chunk.Length * (i + 1.0) / s.steps, jobs.Count, i + 1),
                };
                using var result = pipe.call(options);
                for (var k = 0; k < chunk.Length; k++)
                {
                    var j = chunk[k];
                    var img = result.images!.select(0, k);
                    var file = Path.Combine(s.out_dir, $"image_{j.index:D4}.png");
                    ImageCodecs.Save(Images.FromTensor01(img), file);
                    files.Add(file);
                    var keep = img.clone();
                    scope.Detach(keep);
                    images.Add(keep);
                    var meta = new JsonObject
                    {
                        ["file"] = Path.GetFileName(file),
                        ["prompt"] = j.prompt,
                        ["negative_prompt"] = s.negative_prompt,
                        ["seed"] = s.seed + j.index,
                        ["generator"] = "torch.Generator('cpu').manual_seed(seed); one generator per image",
                        ["model"] = spec.Describe(),
                        ["scheduler"] = pipe.scheduler.config._class_name,
                        ["steps"] = s.steps,
                        ["guidance_scale"] = s.guidance,
                        ["eta"] = s.eta,
                        ["height"] = (int)result.images!.size(2),
                        ["width"] = (int)result.images!.size(3),
                        ["dtype"] = dtype.TorchName(),
                        ["device"] = device.ToString(),
                    };
                    lines.Add(meta.ToJsonString());
                }
                done += chunk.Length;
                progress?.Invoke(done, jobs.Count, s.steps);
            }
            finally
            {
                foreach (var g in gens) g.Dispose();
            }
        }
        using (var all = stack(images.ToArray()))
            ImageCodecs.Save(Images.Grid(all, cols: Math.Min(s.images_per_prompt > 1 ? s.images_per_prompt : 4, images.Count)), Path.Combine(s.out_dir, "grid.png"));
        foreach (var t in images) t.Dispose();
        AtomicFile.WriteAllText(Path.Combine(s.out_dir, "images.jsonl"), string.Join("\n", lines) + "\n");
        return files;
    }

    /// <summary>Prompts of a plain text file (one per line; empty and #-comment lines skipped), or of any prompt set
    /// <see cref="Sudo.Data.PromptSets"/> reads (SPO's 4k JSON, PartiPrompts TSV, HPDv2 JSON, GenEval JSONL, a
    /// parquet/Arrow file or dataset's caption column).</summary>
    public static List<string> ReadPrompts(string path) =>
        File.Exists(path) && Path.GetExtension(path).ToLowerInvariant() is not (".json" or ".jsonl" or ".tsv" or ".csv" or ".parquet" or ".arrow")
            ? File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList()
            : Sudo.Data.PromptSets.Read(path);
}
