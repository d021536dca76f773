using System.Text.Json.Nodes;
// The SPO training loop over the step-wise resampler (core/Sudo.Preference/Spo.cs): sample, keep the pairs the
// step-aware preference model separates, per-step DPO on DDIM transition log-probabilities (SPO train_spo.py).
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Training;

/// <summary>The SPO loop: per round, sample chains for a batch of prompts with the current policy (LoRA),
/// keep the pairs the preference model separates, and take optimizer steps on minibatches of them. Checkpoints,
/// metrics and the run record are <see cref="TrainingRun"/>'s, as for the offline trainer.</summary>
public sealed class SpoTrainer : IDisposable
{
    public StableDiffusionPipeline pipe { get; }
    public Lora lora { get; }
    public SpoSampler sampler { get; }
    public torch.optim.AdamW optimizer { get; }
    /// <summary>The sampling settings (from the model's preset, SpoConfig.For).</summary>
    public SpoConfig config { get; }
    /// <summary>The run settings (recorded in run_config.json and every checkpoint).</summary>
    public SpoTrainConfig settings { get; private set; }
    public Method method { get; }
    public int global_step { get; private set; }
    /// <summary>The data-parallel job (DataParallel.Single for one process).</summary>
    public DataParallel data_parallel { get; }
    private readonly bool _ownsParallel;
    private readonly Generator _rng;
    private readonly TransitionLossFn _loss;
    private readonly StableDiffusionPipeline? _ownedPipe;
    private readonly IDisposable? _ownedScorer;
    private int _promptEpoch, _promptPosition, _rounds;
    private int[] _promptOrder = [];

    /// <summary>SPO's defaults: LoRA rank 4 (α = r, gaussian init) on to_q/k/v/out, AdamW lr 6e-5 (SD-1.5
    /// config), weight decay 1e-4; gradient clipping 1.0 that really clips (upstream's clips nothing).</summary>
    public SpoTrainer(StableDiffusionPipeline pipe, StepAwarePreferenceModel spm, CLIPTokenizer scorerTokenizer, SpoConfig config,
        int lora_rank = 4, double learning_rate = 6e-5, double max_grad_norm = 1.0, long seed = 0)
        : this(pipe, config, new SpoSampler(pipe, spm, scorerTokenizer, config),
            new SpoTrainConfig { lora_rank = lora_rank, learning_rate = learning_rate, max_grad_norm = max_grad_norm, seed = seed, resolution = config.resolution }, null) =>
        spm.requires_grad_(false).eval();

    /// <summary>SPO with any step-aware reward in place of the preference model (see <see cref="StepReward"/>).</summary>
    public SpoTrainer(StableDiffusionPipeline pipe, StepReward reward, SpoConfig config,
        int lora_rank = 4, double learning_rate = 6e-5, double max_grad_norm = 1.0, long seed = 0)
        : this(pipe, config, new SpoSampler(pipe, config, reward),
            new SpoTrainConfig { lora_rank = lora_rank, learning_rate = learning_rate, max_grad_norm = max_grad_norm, seed = seed, resolution = config.resolution }, null)
    {
    }

    private SpoTrainer(StableDiffusionPipeline pipe, SpoConfig config, SpoSampler sampler, SpoTrainConfig settings, Method? method,
        StableDiffusionPipeline? ownedPipe = null, IDisposable? ownedScorer = null)
    {
        this.pipe = pipe;
        this.config = config;
        this.method = method ?? Methods.spo(config);
        _loss = this.method.transition_loss;
        this.settings = settings with { method = this.method.name };
        (_ownedPipe, _ownedScorer) = (ownedPipe, ownedScorer);
        data_parallel = DataParallel.FromEnvironment(pipe.device.ToString());
        _ownsParallel = true;
        _rng = new Generator(settings.seed);
        pipe.unet.requires_grad_(false);
        pipe.vae.requires_grad_(false);
        pipe.components.text_encoder.requires_grad_(false);
        lora = Lora.Attach(pipe.unet, new LoraConfig(settings.lora_rank, settings.lora_rank), _rng);
        this.sampler = sampler;
        optimizer = new torch.optim.AdamW(lora.parameters(), settings.learning_rate, eps: settings.adam_epsilon, weight_decay: settings.adam_weight_decay);
        // Resolved against the pipeline's device (the public constructors leave settings.device at its default).
        MixedPrecision.Validate(settings.mixed_precision, pipe.device);
        _mixedPrecision = MixedPrecision.Resolve(settings.mixed_precision, pipe.device);
        if (_mixedPrecision == "bf16") Precision.RequireUsableBf16(pipe.device, settings.allow_slow_bf16, "--mixed_precision bf16");
        scaler = new torch.amp.GradScaler(enabled: _mixedPrecision == "fp16");
        data_parallel.BroadcastFromMain(lora.parameters().ToArray());
    }

    /// <summary>Dynamic loss scaling under fp16 (a pass-through otherwise).</summary>
    public torch.amp.GradScaler scaler { get; }
    private readonly string _mixedPrecision;

    // Sampling and the loss under autocast in the mixed-precision dtype.
    private IDisposable? Autocast() => MixedPrecision.Autocast(_mixedPrecision, pipe.device);

    /// <summary>An SPO run from its settings: loads the pipeline (DDIM), takes SPO's sampling preset for the model
    /// (SD-1.5 or SDXL, SpoConfig.For) with the settings' threshold and resolution, and scores with
    /// <paramref name="reward"/> when given, else with a step-aware preference model from settings.scorer (a CLIPModel
    /// such as PickScore, wrapped fresh, or a saved step-aware model). <paramref name="method"/>: an SPO-style method
    /// of a recipe (its pair source must be a StepwiseResampler); default the spo preset.</summary>
    public static SpoTrainer Open(SpoTrainConfig settings, StepReward? reward = null, Method? method = null)
    {
        settings.Validate();
        var device = Device.Parse(settings.device);
        var folder = Hub.Resolve(settings.pretrained_model_name_or_path, settings.hub_cache_dir, settings.revision ?? "main");
        var pipe = StableDiffusionPipeline.from_pretrained(folder, "ddim", ScalarType.Float32, device, variant: settings.variant);
        try
        {
            var preset = SpoConfig.For(pipe);
            var c = preset with
            {
                threshold = settings.spo_threshold ?? preset.threshold,
                num_inference_steps = settings.num_inference_steps ?? preset.num_inference_steps,
                divert_start_step = settings.divert_start_step ?? preset.divert_start_step,
                num_sample_each_step = settings.num_sample_each_step ?? preset.num_sample_each_step,
                guidance_scale = settings.guidance_scale ?? preset.guidance_scale,
                num_inner_step = settings.num_inner_step ?? preset.num_inner_step,
                resolution = settings.resolution ?? (pipe.IsSDXL ? preset.resolution : pipe.unet.config.sample_size * pipe.vae_scale_factor),
            };
            if (method is { pairs: StepwiseResampler r }) c = r.settings with { threshold = c.threshold, resolution = c.resolution };
            else if (method != null) throw new ArgumentException($"method {method.name} trains on {method.pairs.Describe()}; SpoTrainer needs a StepwiseResampler pair source");
            method ??= Methods.spo(c);
            settings = settings with
            {
                resolution = c.resolution,
                spo_threshold = c.threshold,
                num_inference_steps = c.num_inference_steps,
                divert_start_step = c.divert_start_step,
                num_sample_each_step = c.num_sample_each_step,
                guidance_scale = c.guidance_scale,
                num_inner_step = c.num_inner_step,
            };
            if (reward != null) return new SpoTrainer(pipe, c, new SpoSampler(pipe, c, reward), settings, method, pipe);
            var scorer = settings.scorer ?? throw new ArgumentException("SPO needs a scorer: --scorer <SPO's *_step-aware_preference_model.bin or a folder holding it>");
            var spm = StepAwarePreferenceModel.from_pretrained(scorer, pipe.device, wrapPlainClip: settings.scorer_plain_clip);   // on the pipeline's device: it scores the pipeline's pixels
            spm.requires_grad_(false).eval();
            return new SpoTrainer(pipe, c, new SpoSampler(pipe, spm, pipe.components.tokenizer, c), settings, method, pipe, spm);
        }
        catch
        {
            pipe.Dispose();
            throw;
        }
    }

    /// <summary>The UNet with the LoRA merged, as a diffusers folder (weights unmerged again afterwards).</summary>
    public void SaveMergedUnet(string folder)
    {
        lora.merge();
        try
        {
            pipe.unet.save_pretrained(folder);
        }
        finally
        {
            lora.unmerge();
        }
    }

    /// <summary>One round: sample, then train on the kept pairs in minibatches. Returns per-step metrics.
    /// Data-parallel (SPO's train_spo.py): <paramref name="prompts"/> are the round's prompts of all ranks, each rank
    /// samples its equal share, the kept step pairs of all ranks are all-gathered (their counts differ), every rank
    /// draws the same permutation of them, and each optimizer step trains on train_batch_size × world_size pairs,
    /// train_batch_size per rank, with the gradients averaged. Pairs beyond the last full global batch are dropped.</summary>
    public List<Dictionary<string, double>> Round(IReadOnlyList<string> prompts, int train_batch_size = 2)
    {
        var (world, rank) = (data_parallel.world_size, data_parallel.rank);
        if (prompts.Count % world != 0)
            throw new ArgumentException($"{prompts.Count} prompts do not split evenly over {world} processes");
        var per = prompts.Count / world;
        // Every rank draws every prompt's seed (the generator stays the same on all ranks) and uses its own share.
        var seeds = prompts.Select(_ => randint(0, long.MaxValue / 2, [1], _rng).item<long>()).ToArray();
        var gens = seeds.Skip(rank * per).Take(per).Select(x => new Generator(x)).ToArray();
        List<StepPair> local;
        try
        {
            pipe.unet.eval();
            using var ac = Autocast();
            local = sampler.Sample(prompts.Skip(rank * per).Take(per).ToList(), gens);
        }
        finally
        {
            foreach (var g in gens) g.Dispose();
        }
        var pairs = GatherPairs(data_parallel, local, rank * per, prompts);
        var metrics = new List<Dictionary<string, double>>();
        try
        {
            using var perm = randperm(pairs.Count, _rng);
            var order = perm.ToArray<long>();
            var global = train_batch_size * world;
            pipe.unet.train();
            var parameters = lora.parameters().ToArray();
            for (var s = 0; s + global <= order.Length; s += global)
            {
                using var scope = NewDisposeScope();
                var batch = order[(s + rank * train_batch_size)..(s + (rank + 1) * train_batch_size)].Select(i => pairs[(int)i]).ToList();
                LossOutput o;
                using (Autocast()) o = SpoLoss.Compute(pipe, lora, batch, config, _loss);
                optimizer.zero_grad();
                scaler.scale(o.loss).backward();
                data_parallel.AverageGradients(parameters);
                scaler.unscale_(optimizer);
                var norm = settings.max_grad_norm > 0 ? nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm) : double.NaN;
                // fp16: a non-finite gradient skips the step and halves the scale (accelerate's GradScaler).
                scaler.step(optimizer);
                scaler.update();
                global_step++;
                var m = new Dictionary<string, double>
                {
                    ["loss"] = o.loss.item(),
                    ["pairs_in_round"] = pairs.Count,
                };
                foreach (var (k, t) in o.diagnostics)
                    if (k is not ("logits" or "loss_per_sample" or "ratio_w_clamped" or "ratio_l_clamped")) m[k] = t.numel() == 1 ? t.item() : t.mean().item();
                m = data_parallel.AverageMetrics(m);
                m["step"] = global_step;
                m["grad_norm"] = norm;
                metrics.Add(m);
            }
        }
        finally
        {
            foreach (var p in pairs) p.Dispose();
        }
        return metrics;
    }

    /// <summary>The step pairs of every rank, in one order on all of them: by step (t descending), then by the
    /// prompt's place among the round's <paramref name="prompts"/>. Each rank's pairs travel as one flat buffer and a
    /// header of shapes (all_gather of different sizes: train_spo.py's gather_tensor_with_diff_shape), so a rank that
    /// kept no pair takes part like the others. <paramref name="local"/> is consumed (disposed or returned).</summary>
    public static List<StepPair> GatherPairs(DataParallel dp, List<StepPair> local, int promptOffset, IReadOnlyList<string> prompts)
    {
        List<StepPair> all;
        if (dp.world_size == 1) all = local.Select(p => p with { prompt_index = p.prompt_index + promptOffset }).ToList();
        else
        {
            var device = local.Count > 0 ? local[0].x_t_w.device : dp.device;
            all = [];
            try
            {
                using var scope = NewDisposeScope();
                var (header, flat) = Pack(local, promptOffset, device);
                var headers = dp.group!.all_gather_variable(header);
                var flats = dp.group.all_gather_variable(flat);
                for (var r = 0; r < dp.world_size; r++) all.AddRange(Unpack(headers[r], flats[r], prompts));
                foreach (var p in all)
                    foreach (var t in p.Tensors) scope.Detach(t);
            }
            catch
            {
                foreach (var p in all) p.Dispose();
                throw;
            }
            finally
            {
                foreach (var p in local) p.Dispose();
            }
        }
        return all.OrderByDescending(p => p.t).ThenBy(p => p.prompt_index).ToList();
    }

    // A pair's header: t, prompt index, then per tensor slot (x_t_w, x_t_l, x_w, x_l, cond, uncond, pooled,
    // negative_pooled): dtype (−1: absent), rank, sizes. The values of all slots follow each other in the flat buffer (fp32).
    private static (Tensor header, Tensor flat) Pack(List<StepPair> pairs, int promptOffset, Device device)
    {
        var h = new List<long>();
        var parts = new List<Tensor>();
        foreach (var p in pairs)
        {
            h.Add(p.t);
            h.Add(p.prompt_index + promptOffset);
            foreach (var x in Slots(p))
            {
                if (x is null)
                {
                    h.Add(-1);
                    continue;
                }
                h.Add((long)x.dtype);
                h.Add(x.dim());
                h.AddRange(x.shape);
                parts.Add(x.reshape(-1).to(ScalarType.Float32));
            }
        }
        var flat = parts.Count > 0 ? cat(parts.ToArray()).to(device) : zeros([0], ScalarType.Float32, device);
        return (tensor(h.ToArray(), device: device), flat);
    }

    private static IEnumerable<StepPair> Unpack(Tensor header, Tensor flat, IReadOnlyList<string> prompts)
    {
        var h = header.cpu().ToArray<long>();
        var i = 0;
        long offset = 0;
        var pairs = new List<StepPair>();
        while (i < h.Length)
        {
            var (t, index) = (h[i], (int)h[i + 1]);
            i += 2;
            var slots = new Tensor?[8];
            for (var k = 0; k < 8; k++)
            {
                var dtype = h[i++];
                if (dtype < 0) continue;
                var shape = h[(i + 1)..(i + 1 + (int)h[i])];
                i += 1 + shape.Length;
                var n = shape.Aggregate(1L, (a, b) => a * b);
                slots[k] = flat.narrow(0, offset, n).view(shape).to((ScalarType)dtype).clone();
                offset += n;
            }
            pairs.Add(new StepPair(t, slots[0]!, slots[1]!, slots[2]!, slots[3]!, slots[4]!, slots[5]!, prompts[index], slots[6], slots[7]) { prompt_index = index });
        }
        return pairs;
    }

    private static Tensor?[] Slots(StepPair p) => [p.x_t_w, p.x_t_l, p.x_w, p.x_l, p.cond, p.uncond, p.pooled, p.negative_pooled];

    /// <summary>The record of this run (settings with the sampling preset resolved, the method, the machine).</summary>
    public System.Text.Json.Nodes.JsonObject RunRecordNode() => RunRecord.WithProcesses(RunRecord.Make(settings, method.Describe()), data_parallel.world_size);

    /// <summary>Trains to settings.max_train_steps optimizer steps, drawing prompts_per_round prompts per round from
    /// <paramref name="prompts"/> with the trainer's generator; checkpoints every checkpointing_steps into
    /// output_dir/checkpoint-N (TrainingRun's format) and resumes as the offline trainer does (refusing changed
    /// settings). Rounds are trained whole (every kept pair of a round is used), so the run ends at the first round
    /// boundary at or past max_train_steps and checkpoints fall on round boundaries — which keeps resuming exact.
    /// Saves the LoRA (diffusers/PEFT keys) to output_dir/lora.</summary>
    public void Train(IReadOnlyList<string> prompts, Action<string>? log = null)
    {
        if (prompts.Count == 0) throw new ArgumentException("SPO needs at least one prompt");
        var main = data_parallel.IsMain;
        var s = settings;
        var world = data_parallel.world_size;
        var (run, say, caller) = TrainingRun.Start(data_parallel, log, s.output_dir, RunRecordNode(),
            TrainingRun.TensorBoardDir(s.output_dir, s.report_to, s.logging_dir, s.tracker_project_name), s.checkpoints_total_limit,
            s.resume_from_checkpoint, s.resume_allow_changes, Load, () => global_step);
        using var _ = run;
        log = say;
        var procs = world == 1 ? "" : $" per process × {world} processes";
        log($"{method.Describe()}\n{prompts.Count} prompts, {s.prompts_per_round}{procs} per round, {s.train_batch_size}{procs} step pairs per optimizer step, LoRA rank {s.lora_rank}, lr {s.learning_rate:G3}; {s.max_train_steps} optimizer steps");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var empty = 0;
        var lastCheckpoint = global_step;
        TrainingProgress.Run(method.name, s.max_train_steps, global_step, 1, caller, progress =>
        {
            while (global_step < s.max_train_steps)
            {
                var round = NextPrompts(prompts, s.prompts_per_round * world);
                var ms = Round(round, s.train_batch_size);
                empty = ms.Count == 0 ? empty + 1 : 0;
                if (empty >= s.max_empty_rounds)
                    throw new InvalidOperationException($"{s.max_empty_rounds} rounds in a row gave fewer than {s.train_batch_size} pairs passing the threshold {config.threshold}: the preference model does not separate the candidates");
                foreach (var m in ms) run.Log((int)m["step"], m);
                if (ms.Count > 0) progress.Step(global_step, ms[^1]);
                if (s.checkpointing_steps > 0 && global_step / s.checkpointing_steps > lastCheckpoint / s.checkpointing_steps)
                {
                    progress.Log($"saved {TrainingRun.Checkpoint(data_parallel, () => Save(run))}");
                    lastCheckpoint = global_step;
                }
            }
        });
        if (main)
        {
            lora.save(Path.Combine(s.output_dir, "lora"));
            if (s.save_merged_unet) SaveMergedUnet(Path.Combine(s.output_dir, "unet"));
            TrainingRun.WriteSummary(s.output_dir, method.name, global_step, sw.Elapsed.TotalSeconds);
        }
        data_parallel.Barrier();
        log($"done: {global_step} steps in {sw.Elapsed.TotalSeconds:F1} s; LoRA in {Path.Combine(s.output_dir, "lora")}");
    }

    /// <summary>The next prompts of a shuffled pass over the prompt list (a new seeded permutation each pass, as a
    /// shuffling data loader gives SPO's prompt set): every prompt is trained equally often. The position is
    /// checkpointed, so a resumed run continues the same sequence.</summary>
    private List<string> NextPrompts(IReadOnlyList<string> prompts, int count)
    {
        _rounds++;
        var n = prompts.Count;
        if (settings.prompt_order == "cycle")
            return Enumerable.Range(0, count).Select(j => prompts[(((j - _rounds) % n) + n) % n]).ToList();
        var round = new List<string>(count);
        while (round.Count < count)
        {
            if (_promptOrder.Length != prompts.Count) ShufflePrompts(_promptEpoch, prompts.Count);
            if (_promptPosition >= _promptOrder.Length)
            {
                ShufflePrompts(_promptEpoch + 1, prompts.Count);
                _promptPosition = 0;
            }
            round.Add(prompts[_promptOrder[_promptPosition++]]);
        }
        return round;
    }

    private void ShufflePrompts(int epoch, int n)
    {
        _promptEpoch = epoch;
        using var g = new Generator(settings.seed + 1_000_003L * (epoch + 1));
        using var perm = randperm(n, g);
        _promptOrder = perm.ToArray<long>().Select(v => (int)v).ToArray();
    }

    /// <summary>Train with these run settings changed (the form tests and older recipes use).</summary>
    public void Train(IReadOnlyList<string> prompts, int max_train_steps, string output_dir, int train_batch_size = 2, int prompts_per_round = 2,
        int checkpointing_steps = 0, bool resume = true, Action<string>? log = null, int max_empty_rounds = 20, string? resume_allow_changes = null)
    {
        settings = settings with
        {
            resume_allow_changes = resume_allow_changes,
            max_train_steps = max_train_steps,
            output_dir = output_dir,
            train_batch_size = train_batch_size,
            prompts_per_round = prompts_per_round,
            checkpointing_steps = checkpointing_steps,
            resume_from_checkpoint = resume ? "latest" : null,
            max_empty_rounds = max_empty_rounds,
        };
        Train(prompts, log);
    }

    public string Save(TrainingRun run) => !data_parallel.IsMain ? run.SaveCheckpoint(global_step, [], _ => { }) : run.SaveCheckpoint(global_step, new System.Text.Json.Nodes.JsonObject
    {
        ["global_step"] = global_step,
        ["method"] = method.name,
        ["prompt_epoch"] = _promptEpoch,
        ["prompt_position"] = _promptPosition,
        ["rounds"] = _rounds,
        ["grad_scaler"] = JsonNode.Parse(scaler.state_dict()),
    }, tmp =>
    {
        lora.save(Path.Combine(tmp, "lora"));
        if (settings.save_merged_unet) SaveMergedUnet(Path.Combine(tmp, "unet"));
        optimizer.save(Path.Combine(tmp, "optimizer.safetensors"));
        RngState.Save(tmp, _rng);
    });

    public void Load(string path)
    {
        var state = TrainingRun.ReadState(path, method.name);
        var sd = safetensors.load_file(Path.Combine(path, "lora", "pytorch_lora_weights.safetensors"), mmap: false);
        lora.load_state_dict(sd);
        foreach (var t in sd.Values) t.Dispose();
        optimizer.load(Path.Combine(path, "optimizer.safetensors"));
        RngState.Load(path, _rng);
        global_step = state["global_step"]!.GetValue<int>();
        _promptEpoch = state["prompt_epoch"]?.GetValue<int>() ?? 0;
        _promptPosition = state["prompt_position"]?.GetValue<int>() ?? 0;
        _rounds = state["rounds"]?.GetValue<int>() ?? 0;
        if (state["grad_scaler"] is { } gs) scaler.load_state_dict(gs.ToJsonString());
        _promptOrder = [];   // regenerated from the epoch on the next draw
    }

    public void Dispose()
    {
        optimizer.Dispose();
        lora.Dispose();
        _rng.Dispose();
        if (_ownsParallel) data_parallel.Dispose();
        _ownedScorer?.Dispose();
        _ownedPipe?.Dispose();
    }
}
