// Training SPO's step-aware preference model (SPO's step_aware_preference_model trainer, SPMTask.train_step): each
// labelled pair's two images are VAE-encoded (a posterior sample), noised to one t ~ U{0..999} with one shared
// noise, denoised by the frozen base model with CFG 5 to x̂₀, decoded, and scored with t; PickScore's pairwise loss.
// AdamW (weight decay 0.3), linear warmup then linear decay to 0 (DeepSpeed's WarmupDecayLR), clipping 1.0. Data
// parallel like the other trainers: each rank scores its slice of every global batch, gradients averaged.
using System.Diagnostics;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Training;

/// <summary>The settings of a step-aware preference model run; defaults are SPO's SD-1.5 SPM config (batch 16 per
/// GPU, lr 3e-6, weight decay 0.3, 500 warmup of 8000 steps, clipping 1.0, seed 42, CFG 5).</summary>
public sealed record SpmTrainConfig
{
    public string method { get; init; } = "spm";
    /// <summary>The frozen base pipeline whose CFG x̂₀ the model learns to score (SD-1.5 for the SD-1.5 SPM).</summary>
    public string pretrained_model_name_or_path { get; init; } = "";
    /// <summary>Where the model starts: a CLIPModel folder (PickScore_v1: wrapped with time conditioning that starts
    /// as the identity) or a step-aware model (SPO's .bin, or a folder saved by Sudo) to continue.</summary>
    public string scorer_init { get; init; } = "";
    public string? revision { get; init; }
    public string? variant { get; init; }
    public string? hub_cache_dir { get; init; }
    public string? dataset_name { get; init; }
    public string? dataset_config_name { get; init; }
    public string? cache_dir { get; init; }
    public string split { get; init; } = "train";
    public string caption_column { get; init; } = "caption";
    public int? max_train_samples { get; init; }
    public bool skip_bad_rows { get; init; }
    public int dataloader_num_workers { get; init; }
    /// <summary>Pixels the pairs are resized and center-cropped to before VAE encoding (512 SD-1.5, 1024 SDXL).</summary>
    public int resolution { get; init; } = 512;
    /// <summary>Pairs per process per step.</summary>
    public int train_batch_size { get; init; } = 16;
    public double learning_rate { get; init; } = 3e-6;
    public double adam_beta1 { get; init; } = 0.9;
    public double adam_beta2 { get; init; } = 0.999;
    public double adam_epsilon { get; init; } = 1e-8;
    public double adam_weight_decay { get; init; } = 0.3;
    public double max_grad_norm { get; init; } = 1.0;
    public int max_train_steps { get; init; } = 8000;
    public int lr_warmup_steps { get; init; } = 500;
    /// <summary>CFG of the base model's x̂₀ (SPO: 5.0, against the empty prompt).</summary>
    public double guidance_scale { get; init; } = 5.0;
    public long seed { get; init; } = 42;
    public string output_dir { get; init; } = "spm-model";
    public string logging_dir { get; init; } = "logs";
    public string report_to { get; init; } = "tensorboard";
    public string tracker_project_name { get; init; } = "spm";
    public int checkpointing_steps { get; init; } = 500;
    public int? checkpoints_total_limit { get; init; }
    public string? resume_from_checkpoint { get; init; } = "latest";
    public string? resume_allow_changes { get; init; }
    public int log_every { get; init; } = 10;
    public string device { get; init; } = "cpu";

    /// <summary>The dataset folder or hub id (dataset_name).</summary>
    public string DatasetFolder => dataset_name ?? throw new ArgumentException("--dataset_name is required (Pick-a-Pic v1 or a pair folder)");

    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(pretrained_model_name_or_path)) throw new ArgumentException("--pretrained_model_name_or_path (the frozen base pipeline) is required");
        if (string.IsNullOrWhiteSpace(scorer_init)) throw new ArgumentException("--scorer_init is required: PickScore_v1's CLIPModel folder, or a step-aware model to continue");
        if (train_batch_size < 1 || max_train_steps < 1) throw new ArgumentException("--train_batch_size and --max_train_steps must be ≥ 1");
        if (lr_warmup_steps < 0 || learning_rate <= 0) throw new ArgumentException("--learning_rate must be > 0 and --lr_warmup_steps ≥ 0");
        if (resolution % 8 != 0) throw new ArgumentException($"--resolution {resolution} must be a multiple of 8 (the VAE's downsampling)");
        if (report_to is not ("tensorboard" or "none" or "all")) throw new ArgumentException($"--report_to {report_to}: use tensorboard or none");
    }
}

/// <summary>Trains a <see cref="StepAwarePreferenceModel"/> on labelled pairs; saves it in SPO's released layout
/// (output_dir/step_aware_preference_model.bin + config.json), which SpoTrainer's --scorer reads.</summary>
public sealed class SpmTrainer : IDisposable
{
    public SpmTrainConfig config { get; }
    public StepAwarePreferenceModel model { get; }
    public StableDiffusionPipeline basePipe { get; }
    public CLIPTokenizer tokenizer { get; }
    public PreferenceData data { get; }
    public PairLoader loader { get; }
    public torch.optim.AdamW optimizer { get; }
    public torch.optim.lr_scheduler.LambdaLR scheduler { get; }
    public DataParallel data_parallel { get; }
    public int global_step { get; private set; }
    private readonly bool _ownsParallel;
    private readonly Parameter[] _trainable;

    public SpmTrainer(SpmTrainConfig config, DataParallel? data_parallel = null)
    {
        config.Validate();
        this.config = config;
        this.data_parallel = data_parallel ?? DataParallel.FromEnvironment(config.device);
        _ownsParallel = data_parallel is null;
        var device = this.data_parallel.world_size > 1 && Device.Parse(config.device) is { Type: DeviceType.CUDA, Index: < 0 } ? this.data_parallel.device : Device.Parse(config.device);
        manual_seed(config.seed);
        data = PreferenceData.Open(config.DatasetFolder, new TableOptions
        {
            split = config.split,
            caption_column = config.caption_column,
            max_train_samples = config.max_train_samples,
            seed = config.seed,
            skip_bad_rows = config.skip_bad_rows,
        }, config.cache_dir, config.dataset_config_name, config.hub_cache_dir);
        basePipe = StableDiffusionPipeline.from_pretrained(Hub.Resolve(config.pretrained_model_name_or_path, config.hub_cache_dir, config.revision ?? "main"),
            "ddim", ScalarType.Float32, device, variant: config.variant);
        basePipe.unet.requires_grad_(false).eval();
        basePipe.vae.requires_grad_(false);
        basePipe.components.text_encoder.requires_grad_(false);
        var init = Hub.Resolve(config.scorer_init, config.hub_cache_dir);
        model = StepAwarePreferenceModel.from_pretrained(init, device, wrapPlainClip: true);
        model.train();
        // PickScore's own tokenizer when the folder has one (CLIP-H's), else the base pipeline's (the same BPE).
        var dir = File.Exists(init) ? Path.GetDirectoryName(Path.GetFullPath(init))! : init;
        tokenizer = File.Exists(Path.Combine(dir, "vocab.json")) || Directory.Exists(Path.Combine(dir, "tokenizer"))
            ? CLIPTokenizer.from_pretrained(dir) : basePipe.components.tokenizer;
        _trainable = model.parameters().Where(p => p.requires_grad).ToArray();
        this.data_parallel.BroadcastFromMain(_trainable);
        optimizer = new torch.optim.AdamW(_trainable, config.learning_rate, config.adam_beta1, config.adam_beta2, config.adam_epsilon, config.adam_weight_decay);
        // DeepSpeed's WarmupDecayLR: linear warmup to lr, then linear decay to 0 at the last step (diffusers' "linear").
        scheduler = torch.optim.lr_scheduler.get_scheduler("linear", optimizer, config.lr_warmup_steps, config.max_train_steps);
        loader = new PairLoader(data, new LoaderOptions
        {
            resolution = config.resolution,
            batch_size = config.train_batch_size,
            seed = config.seed,
            shuffle = config.split == "train",
            hflip = false,
            workers = config.dataloader_num_workers,
            skip_bad_rows = config.skip_bad_rows,
            rank = this.data_parallel.rank,
            world_size = this.data_parallel.world_size,
        }, this.data_parallel.IsMain ? null : _ => { });
    }

    /// <summary>The loss of this rank's rows of a global batch. Each pair draws t, the shared noise and both
    /// posterior samples from its own stream (seed, epoch, pair): world size 2 × b draws what 1 × 2b draws.</summary>
    public (Tensor loss, Tensor accuracy) Loss(LoadedPair[] mine, GlobalBatch global)
    {
        using var scope = NewDisposeScope();
        var device = basePipe.device;
        var c = basePipe.unet.config.in_channels;
        var h = config.resolution / basePipe.vae_scale_factor;
        long[] one = [1, c, h, h];
        var draws = mine.Select(p =>
        {
            using var g = new Generator(PairLoader.StreamSeed(config.seed, 0x59a1_0000_0000L + global.epoch, p.record.index));
            return (t: randint(0, basePipe.scheduler.config.num_train_timesteps, [1], g), noise: randn(one, g), ew: randn(one, g), el: randn(one, g));
        }).ToArray();
        var w = stack(mine.Select(p => p.winner).ToArray()).to(device);
        var l = stack(mine.Select(p => p.loser ?? throw new InvalidDataException($"{p.record.where}: no loser image")).ToArray()).to(device);
        var r = SpmTraining.Loss(model, basePipe, w, l, mine.Select(p => p.record.caption).ToList(), tokenizer,
            cat(draws.Select(d => d.t).ToArray()).to(device), config.guidance_scale,
            noise: cat(draws.Select(d => d.noise).ToArray()).to(device),
            posterior: (cat(draws.Select(d => d.ew).ToArray()).to(device), cat(draws.Select(d => d.el).ToArray()).to(device)));
        return (scope.MoveToOuter(r.loss), scope.MoveToOuter(r.accuracy));
    }

    /// <summary>One optimizer step on the next global batch; returns loss, accuracy (means over the ranks), grad norm, lr.</summary>
    public Dictionary<string, double> Step()
    {
        using var scope = NewDisposeScope();
        var batch = loader.Next();
        Tensor loss, acc;
        try { (loss, acc) = Loss(batch, loader.last!); }
        finally { foreach (var p in batch) p.Dispose(); }
        optimizer.zero_grad();
        loss.backward();
        data_parallel.AverageGradients(_trainable);
        var m = data_parallel.AverageMetrics(new Dictionary<string, double> { ["loss"] = loss.item(), ["accuracy"] = acc.item() });
        if (config.max_grad_norm > 0) m["grad_norm"] = nn.utils.clip_grad_norm_(_trainable, config.max_grad_norm);
        optimizer.step();
        scheduler.step();
        global_step++;
        m["lr"] = optimizer.param_groups[0].lr;
        return m;
    }

    public JsonObject RunRecordNode() => RunRecord.WithProcesses(RunRecord.Make(config, "step-aware preference model (SPO's SPM training, PickScore loss)"), data_parallel.world_size);

    public string SaveCheckpoint(TrainingRun run) => !data_parallel.IsMain ? run.SaveCheckpoint(global_step, [], _ => { }) : run.SaveCheckpoint(global_step, new JsonObject
    {
        ["global_step"] = global_step,
        ["epoch"] = loader.epoch,
        ["position"] = loader.position,
        ["lr_scheduler"] = JsonNode.Parse(scheduler.state_dict()),
        ["method"] = config.method,
    }, tmp =>
    {
        model.save_spo(Path.Combine(tmp, "model"));
        optimizer.save(Path.Combine(tmp, "optimizer.safetensors"));
    });

    public void LoadCheckpoint(string path)
    {
        var state = TrainingRun.ReadState(path, config.method);
        using (var scope = NewDisposeScope())
        using (var saved = StepAwarePreferenceModel.from_pretrained(Path.Combine(path, "model")))
        using (no_grad())
        {
            var sd = saved.state_dict();
            foreach (var (k, t) in model.state_dict()) t.copy_(sd[k]);
        }
        optimizer.load(Path.Combine(path, "optimizer.safetensors"));
        scheduler.load_state_dict(state["lr_scheduler"]!.ToJsonString());
        global_step = state["global_step"]!.GetValue<int>();
        loader.Seek(state["epoch"]!.GetValue<int>(), state["position"]!.GetValue<int>());
    }

    /// <summary>Runs to max_train_steps: resumes, logs, checkpoints (rank 0 writes; the others wait for it) and
    /// saves the model to output_dir in SPO's layout.</summary>
    public void Train(Action<string>? log = null)
    {
        var main = data_parallel.IsMain;
        var (run, say, caller) = TrainingRun.Start(data_parallel, log, config.output_dir, RunRecordNode(),
            TrainingRun.TensorBoardDir(config.output_dir, config.report_to, config.logging_dir, config.tracker_project_name), config.checkpoints_total_limit,
            config.resume_from_checkpoint, config.resume_allow_changes, LoadCheckpoint, () => global_step);
        using var _ = run;
        log = say;
        log($"step-aware preference model from {config.scorer_init} on x̂₀ of {config.pretrained_model_name_or_path} (CFG {config.guidance_scale}); " +
            $"{data.Count} pairs from {data.Source}; {config.train_batch_size} pairs per process × {data_parallel.world_size} = {loader.GlobalBatchSize} per step; " +
            $"AdamW lr {config.learning_rate:G3} (warmup {config.lr_warmup_steps}, linear decay), {_trainable.Sum(p => p.numel()):N0} trainable parameters; {config.max_train_steps} steps");
        var sw = Stopwatch.StartNew();
        TrainingProgress.Run(config.method, config.max_train_steps, global_step, config.log_every, caller, progress =>
        {
            while (global_step < config.max_train_steps)
            {
                var m = Step();
                run.Log(global_step, m);
                progress.Step(global_step, m);
                if (config.checkpointing_steps > 0 && global_step % config.checkpointing_steps == 0)
                    progress.Log($"saved {TrainingRun.Checkpoint(data_parallel, () => SaveCheckpoint(run))}");
            }
        });
        if (main)
        {
            model.save_spo(config.output_dir);
            TrainingRun.WriteSummary(config.output_dir, config.method, global_step, sw.Elapsed.TotalSeconds);
        }
        data_parallel.Barrier();
        log($"done: {global_step} steps in {sw.Elapsed.TotalSeconds:F1} s; model in {config.output_dir} (SPO's layout: --scorer {config.output_dir})");
    }

    public void Dispose()
    {
        loader.Dispose();
        data.Dispose();
        optimizer.Dispose();
        model.Dispose();
        basePipe.Dispose();
        if (_ownsParallel) data_parallel.Dispose();
    }
}
