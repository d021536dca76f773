// One training loop for the offline methods (Diffusion-DPO, SFT, SUDO, and losses defined in recipes):
// pixel pairs → VAE latents → shared noise and t → policy (and reference) UNet → per-sample MSEs → loss.
// Follows Diffusion-DPO's train.py (sudo_dpo_spec.md §2.5) and SUDO's 10-line diff (§3.2).
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Training;

/// <summary>The upstream flags (train.py names and defaults unless noted).</summary>
public sealed record TrainConfig
{
    public string method { get; init; } = "dpo";
    public required string pretrained_model_name_or_path { get; init; }
    public required string dataset_name { get; init; }
    public string? cache_dir { get; init; }
    public string output_dir { get; init; } = "sd-model-finetuned";
    public int train_batch_size { get; init; } = 1;
    public int gradient_accumulation_steps { get; init; } = 1;
    public int max_train_steps { get; init; } = 2000;
    public double learning_rate { get; init; } = 1e-8;
    public bool scale_lr { get; init; }
    public string lr_scheduler { get; init; } = "constant_with_warmup";
    public int lr_warmup_steps { get; init; } = 500;
    public int checkpointing_steps { get; init; } = 500;
    /// <summary>"latest" (upstream default: resume when a checkpoint exists), a path, or null.</summary>
    public string? resume_from_checkpoint { get; init; } = "latest";
    public double beta_dpo { get; init; } = 5000;
    public long seed { get; init; }
    public bool sdxl { get; init; }
    public bool use_adafactor { get; init; }
    public int? resolution { get; init; }
    public bool random_crop { get; init; }
    public bool no_hflip { get; init; }
    public bool gradient_checkpointing { get; init; }
    /// <summary>"no" or "bf16" on CPU (fp16 needs CUDA).</summary>
    public string mixed_precision { get; init; } = "no";
    /// <summary>Run bf16 (mixed precision or the bf16 reference) on a CPU even where the probe measures it slower than
    /// fp32; without it such a run is refused with the measured slow-down (Precision.Judge).</summary>
    public bool allow_slow_bf16 { get; init; }
    public double proportion_empty_prompts { get; init; } = 0.2;
    public double adam_beta1 { get; init; } = 0.9;
    public double adam_beta2 { get; init; } = 0.999;
    public double adam_weight_decay { get; init; } = 1e-2;
    public double adam_epsilon { get; init; } = 1e-8;
    public double max_grad_norm { get; init; } = 1.0;
    /// <summary>SUDO: forbid self-pairs (upstream's randperm allows them; off by default).</summary>
    public bool sudo_derangement { get; init; }
    public double sudo_lambda_dpo { get; init; } = 0.5;
    public double sudo_lambda_mse { get; init; } = 0.5;
    /// <summary>LoRA rank (0 = full fine-tune). With LoRA the reference is the same UNet with adapters off.</summary>
    public int lora_rank { get; init; }
    public double? lora_alpha { get; init; }
    /// <summary>Keep the frozen reference UNet in bf16 (full fine-tune only).</summary>
    public bool reference_bf16 { get; init; }
    public int max_nonfinite_steps { get; init; } = 5;
    /// <summary>Cache each image's VAE posterior (mean, std) and each caption's text embedding: latents are
    /// then sampled from the cached posterior (as upstream samples from the live one). Needs a fixed crop:
    /// center crop and no flip.</summary>
    public bool cache_latents { get; init; }
    /// <summary>Fixed prompts sampled into output_dir/samples/step-N.png every validation_steps steps.</summary>
    public string[]? validation_prompts { get; init; }
    public int validation_steps { get; init; }
    /// <summary>AI-feedback relabelling: a CLIPModel folder (PickScore/HPS-like) whose preference replaces the labels.</summary>
    public string? choice_model { get; init; }
    /// <summary>Keep an exponential moving average of the trained weights (0 = off), saved as ema/.</summary>
    public double ema_decay { get; init; }
    public int log_every { get; init; } = 10;
    public string device { get; init; } = "cpu";

    public void Validate()
    {
        if (method is not ("dpo" or "sft" or "sudo")) throw new ArgumentException($"--method {method}: expected dpo, sft or sudo (spo trains from sampled chains; see recipes/spo.fsx)");
        if (train_batch_size < 1 || gradient_accumulation_steps < 1 || max_train_steps < 1) throw new ArgumentException("--train_batch_size, --gradient_accumulation_steps and --max_train_steps must be ≥ 1");
        if (method == "sudo" && train_batch_size == 1 && !sudo_derangement)
            Console.Error.WriteLine("warning: SUDO with --train_batch_size 1 pairs every winner with itself: the loss collapses to 0.5·SFT (upstream behaviour)");
        if (method == "sudo" && train_batch_size == 1 && sudo_derangement) throw new ArgumentException("--sudo_derangement needs --train_batch_size ≥ 2");
        if (mixed_precision is not ("no" or "bf16" or "fp16")) throw new ArgumentException($"--mixed_precision {mixed_precision}: expected no, bf16 or fp16");
        if (mixed_precision == "fp16" && Device.Parse(device).Type == DeviceType.CPU) throw new ArgumentException("--mixed_precision fp16 needs CUDA (libtorch 1.13 cannot compute fp16 on CPU): use bf16");
        if (lora_rank < 0) throw new ArgumentException("--lora_rank must be ≥ 0");
        if (proportion_empty_prompts is < 0 or > 1) throw new ArgumentException("--proportion_empty_prompts must be in [0, 1]");
        if (cache_latents && (random_crop || !no_hflip))
            throw new ArgumentException("--cache_latents needs a fixed crop: pass --no_hflip and leave --random_crop off (cached latents cannot be re-augmented)");
        if (ema_decay is < 0 or >= 1) throw new ArgumentException("--ema_decay must be in [0, 1)");
    }
}

/// <summary>Everything one micro-batch yields to a loss: per-sample MSEs of policy and reference
/// ([2B]: winners then losers; the reference is null for SFT) and the batch size B.</summary>
public sealed record StepInputs(Tensor model_mse, Tensor? ref_mse, int pairs, Tensor timesteps);

/// <summary>A loss over a micro-batch (a recipe can pass its own).</summary>
public delegate LossOutput LossFn(StepInputs inputs);

public sealed class Trainer : IDisposable
{
    public TrainConfig config { get; }
    public StableDiffusionPipeline pipe { get; }
    public UNet2DConditionModel unet => pipe.unet;
    public UNet2DConditionModel? reference { get; private set; }
    public Lora? lora { get; private set; }
    public PairDataset data { get; }
    public torch.optim.Optimizer optimizer { get; }
    public torch.optim.lr_scheduler.LambdaLR scheduler { get; }
    /// <summary>Dynamic loss scaling, enabled for fp16 (as accelerate's GradScaler); a pass-through otherwise.</summary>
    public torch.amp.GradScaler scaler { get; }
    public NoiseSchedule noise_schedule { get; }
    public int global_step { get; private set; }
    public LossFn loss_fn { get; set; }
    private readonly Generator _rng;
    private int _epoch;
    private int _position;
    private int[] _order = [];
    private int _nonfinite;
    private readonly Parameter[] _trainable;
    private readonly Dictionary<string, (Tensor mean, Tensor std)> _latentCache = new();
    private readonly Dictionary<string, Tensor> _textCache = new();
    private Tensor[]? _ema;

    public Trainer(TrainConfig config, LossFn? loss = null)
    {
        config.Validate();
        this.config = config;
        var device = Device.Parse(config.device);
        // Before any loading: a bf16 request on a CPU without bf16 kernels is refused (or warned about) now, not after hours.
        if (config.mixed_precision == "bf16") Precision.RequireUsableBf16(device, config.allow_slow_bf16, "--mixed_precision bf16");
        if (config.reference_bf16) Precision.RequireUsableBf16(device, config.allow_slow_bf16, "--reference_bf16");
        manual_seed(config.seed);
        _rng = new Generator(config.seed);
        var loaded = PairDataset.Load(config.dataset_name);
        pipe = StableDiffusionPipeline.from_pretrained(config.pretrained_model_name_or_path, "ddpm", ScalarType.Float32, device, cache_dir: config.cache_dir);
        if (config.choice_model is { } cm)
        {
            using var scorer = new ClipScorer(CLIPModel.from_pretrained(cm), pipe.components.tokenizer);
            loaded = loaded.Relabeled(scorer.Score);
        }
        data = loaded;
        if (config.sdxl != pipe.IsSDXL)
            throw new ArgumentException(config.sdxl ? "--sdxl given but the model is not an SDXL pipeline" : "the model is SDXL: pass --sdxl");
        noise_schedule = pipe.scheduler.schedule;
        pipe.vae.requires_grad_(false);
        pipe.components.text_encoder.requires_grad_(false);
        pipe.components.text_encoder_2?.requires_grad_(false);
        if (config.lora_rank > 0)
        {
            unet.requires_grad_(false);
            lora = Lora.Attach(unet, new LoraConfig(config.lora_rank, config.lora_alpha ?? config.lora_rank), _rng);
            _trainable = lora.parameters().ToArray();
        }
        else
        {
            _trainable = unet.parameters().ToArray();
            if (config.method != "sft") reference = CloneFrozen(unet, config.reference_bf16 ? ScalarType.BFloat16 : null);
        }
        unet.train();
        if (config.gradient_checkpointing || config.sdxl) unet.enable_gradient_checkpointing();
        var lr = config.scale_lr ? config.learning_rate * config.gradient_accumulation_steps * config.train_batch_size : config.learning_rate;
        optimizer = config.use_adafactor || config.sdxl
            ? new torch.optim.Adafactor(_trainable, lr: lr, weight_decay: config.adam_weight_decay, clip_threshold: 1.0, scale_parameter: false, relative_step: false)
            : new torch.optim.AdamW(_trainable, lr, config.adam_beta1, config.adam_beta2, config.adam_epsilon, config.adam_weight_decay);
        scaler = new torch.amp.GradScaler(enabled: config.mixed_precision == "fp16");
        scheduler = torch.optim.lr_scheduler.get_scheduler(config.lr_scheduler, optimizer, config.lr_warmup_steps, config.max_train_steps);
        loss_fn = loss ?? DefaultLoss(config);
        if (config.ema_decay > 0)
            using (no_grad()) _ema = _trainable.Select(p => { var e = p.detach().clone(); DisposeScope.Current?.Detach(e); return e; }).ToArray();
        NewEpoch(0);
    }

    /// <summary>A frozen copy of a UNet (no gradients; optionally in bf16) — the DPO reference.</summary>
    public static UNet2DConditionModel CloneFrozen(UNet2DConditionModel src, ScalarType? dtype = null)
    {
        UNet2DConditionModel copy;
        using (nn.init.skip())
        using (device_scope(src.conv_in.weight.device))
            copy = new UNet2DConditionModel(src.config);
        using (var scope = NewDisposeScope()) copy.load_state_dict(src.state_dict());
        copy.requires_grad_(false).eval();
        if (dtype.HasValue) copy.to(dtype.Value);
        return copy;
    }

    public static LossFn DefaultLoss(TrainConfig c) => c.method switch
    {
        "sft" => s => Losses.sft(s.model_mse.narrow(0, 0, s.pairs)),
        "sudo" => s => Losses.sudo(s.model_mse, s.ref_mse!, c.beta_dpo, c.sudo_lambda_dpo, c.sudo_lambda_mse),
        _ => s => Losses.diffusion_dpo(s.model_mse, s.ref_mse!, c.beta_dpo),
    };

    public int Resolution => config.resolution ?? (config.sdxl ? 1024 : pipe.unet.config.sample_size * pipe.vae_scale_factor);

    public string Describe()
    {
        var eff = config.train_batch_size * config.gradient_accumulation_steps;
        var lines = new List<string>
        {
            $"method {config.method}; {data.Pairs.Count} pairs ({data.DroppedTies} ties dropped) from {data.Folder}",
            $"effective batch = {config.train_batch_size} pairs per device × {config.gradient_accumulation_steps} accumulation × 1 process = {eff} pairs",
            $"optimizer {optimizer.GetType().Name}, lr {optimizer.param_groups[0].initial_lr:G3} ({config.lr_scheduler}, warmup {config.lr_warmup_steps}), {_trainable.Sum(p => p.numel()):N0} trainable parameters" + (lora != null ? $" (LoRA rank {config.lora_rank})" : ""),
        };
        if (config.method != "sft")
            lines.Add($"β = {config.beta_dpo} in −log σ(−½·β·Δ) (Diffusion-DPO train.py); the diffusers example's β_d = {config.beta_dpo / 2} gives the same loss");
        lines.Add($"reference: {(lora != null ? "the same UNet with LoRA adapters off" : reference != null ? "frozen copy" + (config.reference_bf16 ? " (bf16)" : "") : "none (SFT)")}; mixed precision {config.mixed_precision}");
        return string.Join("\n", lines);
    }

    private void NewEpoch(int epoch)
    {
        _epoch = epoch;
        using var g = new Generator(config.seed + 1_000_003L * (epoch + 1));
        using var perm = randperm(data.Pairs.Count, g);
        _order = perm.ToArray<long>().Select(v => (int)v).ToArray();
        _position = 0;
    }

    private int[] NextBatch()
    {
        var b = config.train_batch_size;
        if (b > data.Pairs.Count) throw new ArgumentException($"--train_batch_size {b} exceeds the {data.Pairs.Count} pairs of the dataset");
        if (_position + b > _order.Length) NewEpoch(_epoch + 1);   // drop_last, as upstream
        var idx = _order[_position..(_position + b)];
        _position += b;
        return idx;
    }

    private Tensor EncodeCaptions(IReadOnlyList<string> captions)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        if (config.cache_latents && !pipe.IsSDXL)
        {
            foreach (var c in captions.Distinct().Where(c => !_textCache.ContainsKey(c)))
            {
                var e1 = pipe.encode_prompt([c], 1, false);
                var keep = e1.prompt_embeds.clone();
                DisposeScope.Current?.Detach(keep);
                _textCache[c] = keep;
            }
            return scope.MoveToOuter(cat(captions.Select(c => _textCache[c]).ToArray()));
        }
        var e = pipe.encode_prompt(captions, 1, false);
        return scope.MoveToOuter(e.prompt_embeds.alias());
    }

    /// <summary>The micro-batch forward: returns per-sample MSEs (fp32) of policy and reference.</summary>
    public StepInputs Forward(int[] indices)
    {
        var b = indices.Length;
        var res = Resolution;
        Tensor latents, ehs, t, noise, xt, target;
        Tensor[]? added = null;
        using (no_grad())
            if (config.cache_latents)
            {
                (Tensor mean, Tensor std) Posterior(string file)
                {
                    if (!_latentCache.TryGetValue(file, out var c))
                    {
                        var pix = Sudo.Data.Images.ToTensor(Sudo.Data.ImageCodecs.Load(Path.Combine(data.Folder, file)));
                        pix = Sudo.Data.Images.CenterCrop(Sudo.Data.Images.ResizeShorterSide(pix, res, nn.InterpolationMode.Bilinear), res, res);
                        using var post = pipe.vae.encode(pix.unsqueeze(0).to(pipe.device, pipe.vae.encoder.conv_in.weight.dtype));
                        c = (post.mean.clone(), post.std.clone());
                        DisposeScope.Current?.Detach(c.mean);
                        DisposeScope.Current?.Detach(c.std);
                        _latentCache[file] = c;
                    }
                    return c;
                }
                var wFiles = indices.Select(i => data.Pairs[i].winner).ToArray();
                var lFiles = config.method == "sudo" ? Permutation(b).Select(j => wFiles[j]).ToArray() : indices.Select(i => data.Pairs[i].loser).ToArray();
                var posts = wFiles.Concat(lFiles).Select(Posterior).ToArray();
                var mean = cat(posts.Select(p => p.mean).ToArray());
                var std = cat(posts.Select(p => p.std).ToArray());
                latents = pipe.vae.scale_latents(mean + std * randn(mean.shape, _rng).to(mean.device));
            }
            else
            {
                var pairs = indices.Select(i => data.LoadPair(i, res, config.random_crop, !config.no_hflip, _rng)).ToArray();
                var winners = stack(pairs.Select(p => p[0]).ToArray());
                var losers = stack(pairs.Select(p => p[1]).ToArray());
                if (config.method == "sudo")
                {
                    // SUDO: losers := winners[randperm(B)] in pixel space (self-pairs allowed unless derangement).
                    var perm = Permutation(b);
                    losers = winners.index_select(0, tensor(perm));
                }
                var pix = cat([winners, losers]).to(pipe.device, pipe.vae.encoder.conv_in.weight.dtype);
                using var post = pipe.vae.encode(pix);
                latents = pipe.vae.scale_latents(post.sample(_rng));
            }
        using (no_grad())
        {
            var nB = randn([b, latents.size(1), latents.size(2), latents.size(3)], _rng).to(latents.device);
            noise = cat([nB, nB]);
            var tB = randint(0, noise_schedule.config.num_train_timesteps, [b], _rng).to(latents.device);
            t = cat([tB, tB]);
            xt = noise_schedule.add_noise(latents, noise, t);
            target = noise_schedule.target(latents, noise, t);
            var captions = indices.Select(i => rand([1], _rng).item() < config.proportion_empty_prompts ? "" : data.Pairs[i].caption).ToList();
            var e = EncodeCaptions(captions);
            ehs = cat([e, e]);
            if (pipe.IsSDXL)
            {
                using var pe = pipe.encode_prompt(captions, 1, false);
                var pooled = pe.pooled_prompt_embeds!;
                var ids = pipe.get_add_time_ids((res, res), (0, 0), (res, res)).repeat(2 * b, 1);
                added = [cat([pooled, pooled]), ids];
            }
        }
        var cond = added is null ? null : new AddedCondKwargs(added[0], added[1]);
        using var autocastScope = config.mixed_precision switch
        {
            "bf16" => autocast(Device.Parse(config.device)),
            "fp16" => autocast(Device.Parse(config.device), ScalarType.Float16),
            _ => null,
        };
        var pred = unet.forward(xt, t, ehs, cond);
        var m = Losses.per_sample_mse(pred, target);
        Tensor? r = null;
        if (config.method != "sft")
        {
            using var _ = no_grad();
            Tensor refPred;
            if (lora != null)
                using (lora.disabled()) refPred = unet.forward(xt, t, ehs, cond);
            else
                refPred = reference!.forward(xt.to(reference.conv_in.weight.dtype), t, ehs.to(reference.conv_in.weight.dtype),
                    cond is null ? null : new AddedCondKwargs(cond.text_embeds.to(reference.conv_in.weight.dtype), cond.time_ids.to(reference.conv_in.weight.dtype)));
            r = Losses.per_sample_mse(refPred, target);
        }
        return new StepInputs(m, r, b, t);
    }

    private long[] Permutation(int b)
    {
        using var perm = randperm(b, _rng);
        var p = perm.ToArray<long>();
        if (!config.sudo_derangement || b < 2) return p;
        // Derangement: rotate the random order by one so no index maps to itself.
        var rotated = new long[b];
        for (var i = 0; i < b; i++) rotated[p[i]] = p[(i + 1) % b];
        return rotated;
    }

    /// <summary>One optimizer step (gradient_accumulation_steps micro-batches). Returns the metrics, or null
    /// when the loss was not finite (the step is skipped; after max_nonfinite_steps in a row training stops).</summary>
    public Dictionary<string, double>? Step()
    {
        using var scope = NewDisposeScope();
        optimizer.zero_grad();
        var metrics = new Dictionary<string, double>();
        var accum = config.gradient_accumulation_steps;
        for (var k = 0; k < accum; k++)
        {
            using var micro = NewDisposeScope();
            var inputs = Forward(NextBatch());
            var o = loss_fn(inputs);
            var lv = o.loss.item();
            if (!double.IsFinite(lv))
            {
                _nonfinite++;
                Console.Error.WriteLine($"warning: step {global_step + 1}: loss is {lv}; skipping the step ({_nonfinite} in a row)");
                if (_nonfinite >= config.max_nonfinite_steps)
                    throw new InvalidOperationException($"loss was not finite for {_nonfinite} steps in a row: stopping (lower the learning rate or check the data)");
                optimizer.zero_grad();
                return null;
            }
            scaler.scale(o.loss / accum).backward();
            metrics["loss"] = metrics.GetValueOrDefault("loss") + lv / accum;
            foreach (var (key, t) in o.diagnostics)
                if (t.numel() == 1) metrics[key] = metrics.GetValueOrDefault(key) + t.item() / accum;
        }
        _nonfinite = 0;
        scaler.unscale_(optimizer);
        if (!(config.use_adafactor || config.sdxl) && config.max_grad_norm > 0)
            metrics["grad_norm"] = nn.utils.clip_grad_norm_(_trainable, config.max_grad_norm);
        // fp16: an inf/NaN gradient skips the optimizer and LR-scheduler step and halves the scale (accelerate).
        var stepped = scaler.step(optimizer);
        scaler.update();
        if (stepped) scheduler.step();
        global_step++;
        if (scaler.enabled)
        {
            metrics["grad_scale"] = scaler.get_scale();
            metrics["step_skipped"] = stepped ? 0 : 1;
        }
        if (_ema != null)
            using (no_grad())
                for (var i = 0; i < _ema.Length; i++) _ema[i].lerp_(_trainable[i], 1 - config.ema_decay);
        metrics["lr"] = optimizer.param_groups[0].lr;
        return metrics;
    }

    // ---- checkpoints ----

    /// <summary>Writes output_dir/checkpoint-N atomically (a temporary folder renamed at the end): trainable
    /// weights (UNet or LoRA), optimizer, LR schedule, RNG states, data position and step.</summary>
    public string SaveCheckpoint()
    {
        var final = Path.Combine(config.output_dir, $"checkpoint-{global_step}");
        var tmp = Path.Combine(config.output_dir, $".tmp-checkpoint-{global_step}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        try
        {
            if (lora != null) lora.save(Path.Combine(tmp, "lora"));
            else unet.save_pretrained(Path.Combine(tmp, "unet"));
            optimizer.save(Path.Combine(tmp, "optimizer.safetensors"));
            if (_ema != null)
                safetensors.save_file(_ema.Select((t, i) => (t, i)).ToDictionary(x => $"ema.{x.i}", x => x.t), Path.Combine(tmp, "ema.safetensors"));
            RngState.Save(tmp, _rng);
            var state = new JsonObject
            {
                ["global_step"] = global_step,
                ["epoch"] = _epoch,
                ["position"] = _position,
                ["lr_scheduler"] = JsonNode.Parse(scheduler.state_dict()),
                ["method"] = config.method,
                ["nonfinite_in_a_row"] = _nonfinite,
                ["grad_scaler"] = JsonNode.Parse(scaler.state_dict()),
            };
            File.WriteAllText(Path.Combine(tmp, "trainer_state.json"), state.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            AtomicFile.PublishDirectory(tmp, final);
            return final;
        }
        catch
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
            throw;
        }
    }

    /// <summary>A grid of the validation prompts (one fixed seed per prompt, DDIM 20 steps, CFG 7.5) with the
    /// current weights, so runs can be compared by eye.</summary>
    public string SampleGrid()
    {
        var prompts = config.validation_prompts ?? throw new InvalidOperationException("no validation_prompts configured");
        using var ddim = new DDIMScheduler(pipe.scheduler.config with { _class_name = "DDIMScheduler" });
        var sampler = new StableDiffusionPipeline(pipe.components, ddim);   // shares the models; only ddim is ours
        var wasTraining = unet.training;
        unet.eval();
        var gens = prompts.Select((_, i) => new Generator(config.seed + i)).ToArray();
        try
        {
            using var scope = NewDisposeScope();
            using var r = sampler.call(new GenerationOptions { prompt = prompts, num_inference_steps = 20, guidance_scale = 7.5, generators = gens, height = Resolution, width = Resolution });
            var path = Path.Combine(config.output_dir, "samples", $"step-{global_step}.png");
            Sudo.Data.ImageCodecs.Save(Sudo.Data.Images.Grid(r.images!, rows: 1), path);
            return path;
        }
        finally
        {
            foreach (var g in gens) g.Dispose();
            unet.train(wasTraining);
        }
    }

    /// <summary>output_dir/train_summary.json: method, steps, wall seconds, peak resident memory, threads.</summary>
    public static void WriteSummary(string outputDir, string method, int steps, double seconds)
    {
        Directory.CreateDirectory(outputDir);
        AtomicFile.WriteAllText(Path.Combine(outputDir, "train_summary.json"), new JsonObject
        {
            ["method"] = method,
            ["steps"] = steps,
            ["seconds"] = Math.Round(seconds, 1),
            ["peak_rss_mb"] = Math.Round(ProcessMemory.PeakRssMb(), 1),
            ["torch_threads"] = get_num_threads(),
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    public static string? LatestCheckpoint(string outputDir)
    {
        if (!Directory.Exists(outputDir)) return null;
        return Directory.GetDirectories(outputDir, "checkpoint-*")
            .Select(d => (d, ok: int.TryParse(Path.GetFileName(d)["checkpoint-".Length..], out var n), n))
            .Where(x => x.ok && File.Exists(Path.Combine(x.d, "trainer_state.json")))
            .OrderByDescending(x => x.n).Select(x => x.d).FirstOrDefault();
    }

    public void LoadCheckpoint(string path)
    {
        var statePath = Path.Combine(path, "trainer_state.json");
        if (!File.Exists(statePath)) throw new FileNotFoundException($"{path} is not a Sudo checkpoint (no trainer_state.json)", statePath);
        var state = JsonNode.Parse(File.ReadAllText(statePath))!.AsObject();
        if ((string?)state["method"] != config.method) throw new InvalidDataException($"{path} was written by method {state["method"]}, not {config.method}");
        if (lora != null)
        {
            var sd = safetensors.load_file(Path.Combine(path, "lora", "pytorch_lora_weights.safetensors"), mmap: false);
            lora.load_state_dict(sd);
            foreach (var t in sd.Values) t.Dispose();
        }
        else
        {
            using var scope = NewDisposeScope();
            var folder = Path.Combine(path, "unet");
            var sd = Checkpoints.ReadWeights(Checkpoints.FindWeights(folder, "diffusion_pytorch_model"));
            unet.load_state_dict(sd);
        }
        optimizer.load(Path.Combine(path, "optimizer.safetensors"));
        if (_ema != null)
        {
            using var ef = safetensors.safe_open(Path.Combine(path, "ema.safetensors"));
            using var _ = no_grad();
            for (var i = 0; i < _ema.Length; i++)
                using (var t = ef.get($"ema.{i}")) _ema[i].copy_(t);
        }
        scheduler.load_state_dict(state["lr_scheduler"]!.ToJsonString());
        RngState.Load(path, _rng);
        global_step = state["global_step"]!.GetValue<int>();
        NewEpoch(state["epoch"]!.GetValue<int>());
        _position = state["position"]!.GetValue<int>();
        _nonfinite = state["nonfinite_in_a_row"]?.GetValue<int>() ?? 0;
        if (state["grad_scaler"] is { } gs) scaler.load_state_dict(gs.ToJsonString());
    }

    /// <summary>Runs to max_train_steps: resumes (resume_from_checkpoint), logs metrics to metrics.jsonl and
    /// metrics.csv every step, prints a line every log_every steps, checkpoints every checkpointing_steps,
    /// and saves the final weights (unet/ or lora/) into output_dir.</summary>
    public void Train(Action<string>? log = null)
    {
        var caller = log;
        log ??= Console.WriteLine;
        Directory.CreateDirectory(config.output_dir);
        var resume = config.resume_from_checkpoint switch
        {
            null or "" => null,
            "latest" => LatestCheckpoint(config.output_dir),
            var p => Directory.Exists(p) ? p : throw new DirectoryNotFoundException($"--resume_from_checkpoint {p}: no such checkpoint"),
        };
        if (resume != null)
        {
            LoadCheckpoint(resume);
            log($"resumed from {resume} at step {global_step}");
        }
        log(Describe());
        var jsonl = Path.Combine(config.output_dir, "metrics.jsonl");
        var csv = Path.Combine(config.output_dir, "metrics.csv");
        var sw = Stopwatch.StartNew();
        using var tb = new TensorBoardWriter(Path.Combine(config.output_dir, "logs"));
        string[]? columns = File.Exists(csv) ? File.ReadLines(csv).FirstOrDefault()?.Split(',') : null;
        TrainingProgress.Run($"{config.method}", config.max_train_steps, global_step, config.log_every, caller, progress =>
        {
            while (global_step < config.max_train_steps)
            {
                var m = Step();
                if (m is null) continue;
                m["step"] = global_step;
                var line = new JsonObject();
                foreach (var (k, v) in m) line[k] = v;
                File.AppendAllText(jsonl, line.ToJsonString() + "\n");
                tb.AddScalars(global_step, m.Where(kv => kv.Key != "step").ToDictionary(kv => "train/" + kv.Key, kv => kv.Value));
                if (columns is null)
                {
                    columns = m.Keys.OrderBy(k => k == "step" ? "" : k, StringComparer.Ordinal).ToArray();
                    File.AppendAllText(csv, string.Join(",", columns) + "\n");
                }
                File.AppendAllText(csv, string.Join(",", columns.Select(c => m.TryGetValue(c, out var v) ? v.ToString("G6", CultureInfo.InvariantCulture) : "")) + "\n");
                progress.Step(global_step, m);
                if (config.checkpointing_steps > 0 && global_step % config.checkpointing_steps == 0) progress.Log($"saved {SaveCheckpoint()}");
                if (config.validation_prompts is { Length: > 0 } && config.validation_steps > 0 && global_step % config.validation_steps == 0) progress.Log($"samples {SampleGrid()}");
            }
        });
        if (lora != null) lora.save(Path.Combine(config.output_dir, "lora"));
        else unet.save_pretrained(Path.Combine(config.output_dir, "unet"));
        if (_ema != null && lora == null)
        {
            // The EMA weights as a diffusers UNet folder.
            using var copy = CloneFrozen(unet);
            using (no_grad())
                foreach (var (p, e) in copy.parameters().Zip(_ema)) p.copy_(e);
            copy.save_pretrained(Path.Combine(config.output_dir, "unet_ema"));
        }
        WriteSummary(config.output_dir, config.method, global_step, sw.Elapsed.TotalSeconds);
        log($"done: {global_step} steps in {sw.Elapsed.TotalSeconds:F1} s (peak RSS {ProcessMemory.PeakRssMb():F0} MB); weights in {config.output_dir}");
    }

    public void Dispose()
    {
        foreach (var (m, sd) in _latentCache.Values) { m.Dispose(); sd.Dispose(); }
        foreach (var t in _textCache.Values) t.Dispose();
        if (_ema != null) foreach (var t in _ema) t.Dispose();
        lora?.Dispose();
        reference?.Dispose();
        optimizer.Dispose();
        pipe.Dispose();
        _rng.Dispose();
    }
}
