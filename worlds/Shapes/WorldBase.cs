using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Torch;
using Sudo.Training;
using static Sudo.Torch.torch;
namespace Sudo.Worlds.Shapes;

/// <summary>Settings of the shapes world's tiny SD-style base model (the same classes as SD-1.5, tiny configs).</summary>
public sealed record WorldBaseConfig
{
    public int resolution { get; init; } = 32;
    public int bpe_merges { get; init; } = 300;
    public int train_prompts { get; init; } = 3000;
    public int vae_steps { get; init; } = 1500;
    /// <summary>Length of the UNet + text encoder pre-training schedule (its cosine learning-rate decay spans these steps).</summary>
    public int unet_steps { get; init; } = 1500;
    /// <summary>The base is the checkpoint at this step of the <see cref="unet_steps"/> schedule (0: the end). An early
    /// checkpoint, as SD-1.5 is one point of a longer training: later checkpoints of the same run are the pair
    /// population's stronger generators, so the pairs hold images better than the base's own, as Pick-a-Pic's do.
    /// At step 600 the base scores about 0.44 on the judge, the full run about 0.62 (measured on the shipped base).</summary>
    public int release_step { get; init; } = 600;
    public int batch_size { get; init; } = 32;
    public double vae_learning_rate { get; init; } = 1e-3;
    public double unet_learning_rate { get; init; } = 5e-4;
    /// <summary>Captions replaced by "" this often (so classifier-free guidance works).</summary>
    public double caption_dropout { get; init; } = 0.1;
    public double vae_kl_weight { get; init; } = 1e-6;
    /// <summary>Both phases decay their learning rate on a half cosine to this fraction of the start (over the configured steps).</summary>
    public double final_lr_fraction { get; init; } = 0.05;
    public long seed { get; init; } = 0;
    public string device { get; init; } = "cpu";
    /// <summary>dtype of the written weights: "float16" halves the folder (the shipped base), loading casts back to fp32.</summary>
    public string save_dtype { get; init; } = "float16";

    /// <summary>The step the base is saved at: <see cref="release_step"/>, or the schedule's end when it is 0.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public int ReleaseStep => release_step == 0 ? unet_steps : release_step;

    public void Validate()
    {
        if (vae_steps < 1 || unet_steps < 1) throw new ArgumentException($"world base: vae_steps and unet_steps must be ≥ 1 (got {vae_steps}, {unet_steps})");
        if (release_step < 0 || release_step > unet_steps)
            throw new ArgumentException($"world base: release_step must lie in [0, unet_steps = {unet_steps}] (got {release_step}; 0 means the schedule's end)");
    }

    /// <summary>A short key of every field: the cache folder is reused only for identical settings.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string Key => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(JsonSerializer.Serialize(this))))[..12].ToLowerInvariant();
}

/// <summary>Builds the shapes world's base pipeline from scratch: a byte-level BPE vocabulary learned from the
/// prompt grammar, an AutoencoderKL trained to reconstruct renders (scaling_factor = 1/std of its latents, as
/// LDM sets it), then a UNet2DConditionModel and CLIP text encoder trained together on the ε-prediction loss with
/// SD-1.5's noise schedule. Written as a diffusers pipeline folder (DDIM scheduler config).</summary>
public static class WorldBase
{
    public static string Build(string folder, WorldBaseConfig c, Action<string>? log = null)
    {
        log ??= Console.WriteLine;
        c.Validate();
        var marker = Path.Combine(folder, "world_base.json");
        if (File.Exists(marker) && (string?)JsonNode.Parse(File.ReadAllText(marker))?["key"] == c.Key && File.Exists(Path.Combine(folder, "model_index.json")))
        {
            log($"world base: reusing {folder} (settings {c.Key})");
            return folder;
        }
        var sw = Stopwatch.StartNew();
        var tmp = folder.TrimEnd('/') + $".tmp-{Environment.ProcessId}";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        var device = Device.Parse(c.device);
        var prompts = World.Prompts("train", c.train_prompts, (int)c.seed);
        var tok = CLIPTokenizer.train(prompts, c.bpe_merges, model_max_length: 20);
        tok.save_pretrained(Path.Combine(tmp, "tokenizer"));
        log($"world base: tokenizer {tok.vocab_size} tokens ({tok.merges.Count} merges) from {prompts.Count} prompts");
        var curve = new List<(string phase, int step, double loss)>();
        var save = c.save_dtype == "float16" ? ScalarType.Float16 : ScalarType.Float32;

        var (vae0, scalingFactor) = TrainVae(c, prompts, c.vae_steps, device, (s, l) =>
        {
            curve.Add(("vae", s, l));
            if (s % 100 == 0 || s == c.vae_steps) log($"world base: vae step {s}/{c.vae_steps} reconstruction mse {l:F5} ({sw.Elapsed.TotalSeconds:F0} s)");
        });
        using (var vae = vae0)
        {
            vae.to(save);
            vae.save_pretrained(Path.Combine(tmp, "vae"));
            var cfgPath = Path.Combine(tmp, "vae", "config.json");
            var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
            cfg["scaling_factor"] = Math.Round(scalingFactor, 5);
            File.WriteAllText(cfgPath, cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            log($"world base: vae scaling_factor {scalingFactor:F5} (1 / latent std)");
        }
        using (var vae = AutoencoderKL.from_pretrained(Path.Combine(tmp, "vae"), device: device))
        {
            var (unet, te) = TrainUnet(c, prompts, tok, vae, c.ReleaseStep, device, (s, l) =>
            {
                curve.Add(("unet", s, l));
                if (s % 200 == 0 || s == c.ReleaseStep) log($"world base: unet step {s}/{c.ReleaseStep} (schedule {c.unet_steps}) loss {l:F5} ({sw.Elapsed.TotalSeconds:F0} s)");
            });
            using (unet)
            using (te)
            {
                unet.to(save);
                te.to(save);
                unet.save_pretrained(Path.Combine(tmp, "unet"));
                te.save_pretrained(Path.Combine(tmp, "text_encoder"));
            }
        }
        File.WriteAllLines(Path.Combine(tmp, "train_log.jsonl"), curve.Select(p =>
            new JsonObject { ["phase"] = p.phase, ["step"] = p.step, ["loss"] = p.loss }.ToJsonString()));
        Directory.CreateDirectory(Path.Combine(tmp, "scheduler"));
        File.WriteAllText(Path.Combine(tmp, "scheduler", "scheduler_config.json"), new JsonObject
        {
            ["_class_name"] = "DDIMScheduler",
            ["beta_start"] = SchedulerConfig.SD15.beta_start,
            ["beta_end"] = SchedulerConfig.SD15.beta_end,
            ["beta_schedule"] = SchedulerConfig.SD15.beta_schedule,
            ["num_train_timesteps"] = SchedulerConfig.SD15.num_train_timesteps,
            ["prediction_type"] = "epsilon",
            ["clip_sample"] = false,
            ["set_alpha_to_one"] = false,
            ["steps_offset"] = 1,
            ["timestep_spacing"] = "leading",
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(Path.Combine(tmp, "model_index.json"), new JsonObject
        {
            ["_class_name"] = "StableDiffusionPipeline",
            ["_diffusers_version"] = "0.27.2",
            ["requires_safety_checker"] = false,
            ["scheduler"] = new JsonArray("diffusers", "DDIMScheduler"),
            ["text_encoder"] = new JsonArray("transformers", "CLIPTextModel"),
            ["tokenizer"] = new JsonArray("transformers", "CLIPTokenizer"),
            ["unet"] = new JsonArray("diffusers", "UNet2DConditionModel"),
            ["vae"] = new JsonArray("diffusers", "AutoencoderKL"),
            ["safety_checker"] = new JsonArray(null, null),
            ["feature_extractor"] = new JsonArray(null, null),
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(Path.Combine(tmp, "world_base.json"), new JsonObject
        {
            ["key"] = c.Key,
            ["config"] = JsonNode.Parse(JsonSerializer.Serialize(c)),
            ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 1),
            ["torch_threads"] = get_num_threads(),
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        // Publish atomically: the finished folder replaces any previous one in one rename.
        AtomicFile.PublishDirectory(tmp, folder);
        log($"world base: built {folder} in {sw.Elapsed.TotalSeconds:F0} s");
        return folder;
    }

    /// <summary>The learning rate after <paramref name="step"/> of <paramref name="total"/>: lr·(f + (1 − f)·½(1 + cos πs/T)).</summary>
    public static double CosineLr(double lr, double finalFraction, int step, int total) =>
        lr * (finalFraction + (1 - finalFraction) * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(step, total) / total)));

    static Tensor RenderBatch(List<string> captions, int resolution, Random rng, Device device)
    {
        using var scope = NewDisposeScope();
        var imgs = captions.Select(p =>
        {
            var spec = World.Parse(p);
            return Images.ToTensor(World.Render(spec.background, World.Layout(spec, resolution, rng), resolution));
        }).ToArray();
        return scope.MoveToOuter(stack(imgs).to(device));
    }

    /// <summary>Phase 1: the AutoencoderKL (factor 4: 32 px → 8×8×4 latents), reconstruction MSE + a small KL, its
    /// own random streams (seed), so the first steps are reproducible alone; <paramref name="onStep"/> gets each
    /// step's reconstruction MSE. Sets scaling_factor = 1 / std of the latents on fresh renders (LDM's rule).</summary>
    public static (AutoencoderKL vae, double scaling_factor) TrainVae(WorldBaseConfig c, IReadOnlyList<string> prompts, int steps, Device device, Action<int, double> onStep)
    {
        manual_seed(c.seed);
        var rng = new Random((int)c.seed);
        List<string> Captions() => Enumerable.Range(0, c.batch_size).Select(_ => prompts[rng.Next(prompts.Count)]).ToList();
        var vae = new AutoencoderKL(new AutoencoderKLConfig
        {
            down_block_types = ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types = ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            block_out_channels = [32, 64, 64],
            layers_per_block = 1,
            latent_channels = 4,
            norm_num_groups = 32,
            sample_size = c.resolution,
        });
        vae.to(device);
        using (var opt = new optim.AdamW(vae.parameters(), lr: c.vae_learning_rate, weight_decay: 0))
            for (var step = 1; step <= steps; step++)
            {
                using var scope = NewDisposeScope();
                var x = RenderBatch(Captions(), c.resolution, rng, device);
                using var post = vae.encode(x);
                var rec = vae.decode(post.sample());
                var recon = nn.functional.mse_loss(rec, x);
                var kl = (0.5 * (post.mean.pow(2) + post.std.pow(2) - 1.0 - post.logvar)).sum([1, 2, 3]).mean();
                var loss = recon + kl * c.vae_kl_weight;
                opt.zero_grad();
                loss.backward();
                opt.step();
                onStep(step, recon.item());
                opt.param_groups[0].lr = CosineLr(c.vae_learning_rate, c.final_lr_fraction, step, c.vae_steps);
            }
        using (no_grad())
        using (var scope = NewDisposeScope())
        {
            var zs = Enumerable.Range(0, 4).Select(_ => { using var p = vae.encode(RenderBatch(Captions(), c.resolution, rng, device)); return p.sample(); }).ToArray();
            return (vae, 1 / cat(zs).std().item());
        }
    }

    /// <summary>Phase 2: UNet2DConditionModel + CLIP text encoder trained together on the ε-prediction loss with SD-1.5's
    /// scaled-linear schedule (caption dropout for CFG, grad-norm clip 1), random streams seeded seed + 1;
    /// <paramref name="onStep"/> gets each step's loss.</summary>
    public static (UNet2DConditionModel unet, CLIPTextModel text_encoder) TrainUnet(WorldBaseConfig c, IReadOnlyList<string> prompts, CLIPTokenizer tok,
        AutoencoderKL vae, int steps, Device device, Action<int, double> onStep)
    {
        manual_seed(c.seed + 1);
        var rng = new Random((int)c.seed + 1);
        List<string> Captions() => Enumerable.Range(0, c.batch_size).Select(_ => prompts[rng.Next(prompts.Count)]).ToList();
        var te = new CLIPTextModel(new CLIPTextConfig
        {
            vocab_size = tok.vocab_size,
            hidden_size = 64,
            intermediate_size = 256,
            projection_dim = 64,
            num_hidden_layers = 2,
            num_attention_heads = 4,
            max_position_embeddings = 20,
            hidden_act = "quick_gelu",
            bos_token_id = tok.bos_token_id,
            eos_token_id = tok.eos_token_id,
            pad_token_id = tok.pad_token_id,
        });
        var unet = new UNet2DConditionModel(new UNet2DConditionConfig
        {
            sample_size = c.resolution / 4,
            in_channels = 4,
            out_channels = 4,
            down_block_types = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels = [64, 128],
            layers_per_block = [1],
            cross_attention_dim = [64],
            attention_head_dim = [4],
            norm_num_groups = 32,
        });
        te.to(device);
        unet.to(device);
        var schedCfg = SchedulerConfig.SD15;
        using var schedule = new NoiseSchedule(schedCfg);
        foreach (var p in vae.parameters()) p.requires_grad_(false);
        var trainable = unet.parameters().Concat(te.parameters()).ToArray();
        using var opt = new optim.AdamW(trainable, lr: c.unet_learning_rate, weight_decay: 1e-2);
        var scale = vae.config.scaling_factor;
        for (var step = 1; step <= steps; step++)
        {
            using var scope = NewDisposeScope();
            var caps = Captions();
            Tensor z0;
            using (no_grad())
            using (var post = vae.encode(RenderBatch(caps, c.resolution, rng, device)))
                z0 = post.sample() * scale;
            var text = caps.Select(p => rng.NextDouble() < c.caption_dropout ? "" : p).ToList();
            var ehs = te.forward(tok.call(text, tok.model_max_length, device).input_ids).last_hidden_state;
            var noise = randn(z0.shape, dtype: z0.dtype, device: device);
            var t = randint(0, schedCfg.num_train_timesteps, [z0.size(0)], device: device);
            var pred = unet.forward(schedule.add_noise(z0, noise, t), t, ehs);
            var loss = nn.functional.mse_loss(pred, noise);
            opt.zero_grad();
            loss.backward();
            nn.utils.clip_grad_norm_(trainable, 1.0);
            opt.step();
            onStep(step, loss.item());
            opt.param_groups[0].lr = CosineLr(c.unet_learning_rate, c.final_lr_fraction, step, c.unet_steps);
        }
        return (unet, te);
    }

    /// <summary>Samples each prompt with fixed seeds (the pipeline's scheduler, CFG; prompt i of the list uses generator
    /// seed·100003 + i) in batches of 16 and returns the judge's results in order. <paramref name="eta"/> is DDIM's
    /// η: 0 (deterministic, the default) or 1 (the stochastic sampler SPO trains).</summary>
    public static List<Judge.Result> Evaluate(StableDiffusionPipeline pipe, IReadOnlyList<string> prompts, int seed = 0, int steps = 20, double guidance = 3.0,
        List<RgbImage>? images = null, double eta = 0)
    {
        var made = Sample(pipe, prompts, Enumerable.Range(0, prompts.Count).Select(i => (long)seed * 100_003 + i).ToList(), steps, guidance, eta);
        images?.AddRange(made);
        return made.Select((img, i) => Judge.Score(img, prompts[i])).ToList();
    }

    /// <summary>Samples prompt k with a generator seeded seeds[k], in batches of 16 (the pipeline's scheduler, CFG
    /// <paramref name="guidance"/>, DDIM η <paramref name="eta"/>); each image depends only on its prompt and seed.</summary>
    public static List<RgbImage> Sample(StableDiffusionPipeline pipe, IReadOnlyList<string> prompts, IReadOnlyList<long> seeds, int steps, double guidance, double eta = 0)
    {
        if (seeds.Count != prompts.Count) throw new ArgumentException($"one seed per prompt: {seeds.Count} seeds for {prompts.Count} prompts");
        var res = pipe.unet.config.sample_size * pipe.vae_scale_factor;
        var images = new List<RgbImage>(prompts.Count);
        for (var i = 0; i < prompts.Count; i += 16)
        {
            using var scope = NewDisposeScope();
            var chunk = prompts.Skip(i).Take(16).ToList();
            var gens = chunk.Select((_, k) => new Generator(seeds[i + k])).ToArray();
            try
            {
                using var r = pipe.call(new GenerationOptions
                {
                    prompt = chunk,
                    height = res,
                    width = res,
                    num_inference_steps = steps,
                    guidance_scale = guidance,
                    eta = eta,
                    generators = gens,
                });
                for (var k = 0; k < chunk.Count; k++) images.Add(Images.FromTensor01(r.images!.select(0, k)));
            }
            finally
            {
                foreach (var g in gens) g.Dispose();
            }
        }
        return images;
    }
}
