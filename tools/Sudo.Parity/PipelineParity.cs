// `sudoml parity --pipeline <folder> --io <io.safetensors>`: every recorded run of a golden pipeline folder
// (given latents or per-image seeded generators) against the embeddings, per-step latents, UNet outputs
// and images diffusers produced.
using System.Text.Json.Nodes;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Parity;

public static class PipelineParity
{
    /// <summary>What a run of cfg.runs may say; absent settings take diffusers' __call__ defaults (guidance 7.5,
    /// 50 steps, η 0, one image per prompt). latents_seed only documents how in_&lt;name&gt;_latents was drawn.</summary>
    private static readonly string[] RunKeys =
    [
        "name", "prompt", "negative_prompt", "num_images_per_prompt", "guidance_scale", "guidance_rescale", "num_inference_steps", "eta",
        "height", "width", "seeds", "latents_seed", "original_size", "crops_coords_top_left", "target_size",
    ];

    /// <param name="device">Where the pipeline runs (default CPU; seeded generators stay on the CPU, as in the golden runs).</param>
    /// <param name="dtype">The pipeline's dtype (default fp32); pass tolerances that fit it.</param>
    public static ParityReport Run(string folder, string ioPath, double? latentTolerance = null, double? imageTolerance = null, Device? device = null,
        ScalarType? dtype = null, double? embeddingTolerance = null)
    {
        var latTol = latentTolerance ?? ModelParity.Tolerances["pipeline_latents"];
        var imgTol = imageTolerance ?? ModelParity.Tolerances["pipeline_images"];
        var embTol = embeddingTolerance ?? ModelParity.Tolerances["model_fp32"];
        var paramsPath = Path.Combine(folder, "params.json");
        if (!File.Exists(paramsPath)) throw new FileNotFoundException($"pipeline golden params not found: {paramsPath}", paramsPath);
        var p = SchedulerConfig.ParsePythonJson(File.ReadAllText(paramsPath)) as JsonObject ?? throw new InvalidDataException($"{paramsPath}: not a JSON object");
        var runs = p["cfg"]?["runs"] as JsonArray ?? throw new InvalidDataException($"{paramsPath}: no cfg.runs");
        using var io = safetensors.safe_open(ioPath);
        using var pipe = StableDiffusionPipeline.from_pretrained(folder, dtype: dtype, device: device);
        var rows = new List<ParityRow>();
        foreach (var runNode in runs)
        {
            var run = runNode as JsonObject ?? throw new InvalidDataException($"{paramsPath}: cfg.runs holds a non-object");
            var name = run["name"]?.GetValue<string>() ?? throw new InvalidDataException($"{paramsPath}: a run without a name");
            var unknown = run.Select(kv => kv.Key).Except(RunKeys).ToList();
            if (unknown.Count > 0)
                throw new InvalidDataException($"{paramsPath}: run '{name}': the pipeline harness does not understand {string.Join(", ", unknown)} (it knows {string.Join(", ", RunKeys)})");
            if (run["seeds"] is JsonArray listedSeeds && io.Contains($"in_{name}_seeds")
                && !listedSeeds.Select(x => x!.GetValue<long>()).SequenceEqual(io.get($"in_{name}_seeds").ToArray<long>()))
                throw new InvalidDataException($"{paramsPath}: run '{name}': seeds disagree with in_{name}_seeds of {ioPath}");
            using var scope = NewDisposeScope();
            List<string> Strs(string k) => (run[k] as JsonArray)?.Select(x => x!.GetValue<string>()).ToList() ?? [];
            (int, int)? Pair(string k) => run[k] is JsonArray a ? (a[0]!.GetValue<int>(), a[1]!.GetValue<int>()) : null;
            Generator[]? gens = null;
            if (io.Contains($"in_{name}_seeds"))
                gens = io.get($"in_{name}_seeds").ToArray<long>().Select(s => new Generator(s)).ToArray();
            var options = new GenerationOptions
            {
                prompt = Strs("prompt"),
                negative_prompt = run["negative_prompt"] is JsonArray ? Strs("negative_prompt") : null,
                num_images_per_prompt = run["num_images_per_prompt"]?.GetValue<int>() ?? 1,
                guidance_scale = run["guidance_scale"]?.GetValue<double>() ?? 7.5,
                num_inference_steps = run["num_inference_steps"]?.GetValue<int>() ?? 50,
                eta = run["eta"]?.GetValue<double>() ?? 0,
                guidance_rescale = run["guidance_rescale"]?.GetValue<double>() ?? 0,
                height = run["height"]?.GetValue<int>(),
                width = run["width"]?.GetValue<int>(),
                latents = io.Contains($"in_{name}_latents") ? io.get($"in_{name}_latents").to(pipe.device, pipe.dtype) : null,
                generators = gens,
                original_size = Pair("original_size"),
                crops_coords_top_left = Pair("crops_coords_top_left") ?? (0, 0),
                target_size = Pair("target_size"),
                keep_step_latents = true,
            };
            using var result = pipe.call(options);
            void Cmp(string key, Tensor actual, double tol, string? note = null)
            {
                if (!io.Contains(key)) return;
                var r = ModelParity.Compare(key, actual, io.get(key), tol);
                rows.Add(note is null ? r : r with { Note = note });
            }
            void Exact(string key, Tensor actual)
            {
                if (!io.Contains(key)) return;
                var r = ModelParity.Compare(key, actual, io.get(key), 0);
                rows.Add(r with { Passed = r.MaxAbsError == 0 });
            }
            var e = result.embeds;
            Cmp($"out_{name}_prompt_embeds", e.prompt_embeds, embTol);
            if (e.negative_prompt_embeds != null) Cmp($"out_{name}_negative_prompt_embeds", e.negative_prompt_embeds, embTol);
            if (e.pooled_prompt_embeds != null) Cmp($"out_{name}_pooled_prompt_embeds", e.pooled_prompt_embeds, embTol);
            if (e.negative_pooled_prompt_embeds != null) Cmp($"out_{name}_negative_pooled_prompt_embeds", e.negative_pooled_prompt_embeds, embTol);
            if (result.add_text_embeds != null) Cmp($"out_{name}_add_text_embeds", result.add_text_embeds, embTol);
            if (result.add_time_ids != null) Cmp($"out_{name}_add_time_ids", result.add_time_ids, embTol);
            Exact($"dbg_{name}_input_ids", e.input_ids[0]);
            if (e.input_ids.Length > 1) Exact($"dbg_{name}_input_ids_2", e.input_ids[1]);
            if (e.negative_input_ids.Length > 0) Exact($"dbg_{name}_negative_input_ids", e.negative_input_ids[0]);
            if (e.negative_input_ids.Length > 1) Exact($"dbg_{name}_negative_input_ids_2", e.negative_input_ids[1]);
            Cmp($"dbg_{name}_init_latents", result.init_latents, latTol);
            Cmp($"dbg_{name}_timesteps", pipe.scheduler.timesteps, 0);
            if (pipe.scheduler is EulerDiscreteScheduler eu) Cmp($"dbg_{name}_sigmas", tensor(eu.sigmas), ModelParity.Tolerances["scheduler"]);
            Cmp($"dbg_{name}_init_noise_sigma", scalar_tensor(pipe.scheduler.init_noise_sigma, ScalarType.Float32), ModelParity.Tolerances["scheduler"]);
            if (result.unet_outputs.Count > 0) Cmp($"dbg_{name}_unet_output", stack(result.unet_outputs.ToArray()), latTol);
            if (result.step_noise.Count > 0) Cmp($"dbg_{name}_variance_noise", stack(result.step_noise.ToArray()), latTol);
            Cmp($"out_{name}_step_latents", stack(result.step_latents.ToArray()), latTol);
            Cmp($"out_{name}_latents", result.latents, latTol);
            if (result.images != null) Cmp($"out_{name}_images", result.images, imgTol, "images (absolute tolerance)");
            foreach (var g in gens ?? []) g.Dispose();
        }
        // Images compare with an absolute tolerance (2/255), not relative to their range.
        rows = rows.Select(r => r.Note == "images (absolute tolerance)" ? r with { Tolerance = imgTol, Passed = r.MaxAbsError <= imgTol } : r).ToList();
        var recorded = io.Keys.Where(k => k.StartsWith("out_", StringComparison.Ordinal) || k.StartsWith("dbg_", StringComparison.Ordinal));
        foreach (var k in recorded.Order(StringComparer.Ordinal))
            if (rows.All(r => r.Name != k)) rows.Add(new ParityRow(k, double.NaN, double.NaN, double.NaN, !k.StartsWith("out_", StringComparison.Ordinal), "not computed"));
        return new ParityReport("pipeline", $"latents ≤ {latTol:G3} · max(1, max |ref|), images ≤ {imgTol:G3}, embeddings ≤ {embTol:G3} · max(1, max |ref|), ids exact", rows);
    }
}
