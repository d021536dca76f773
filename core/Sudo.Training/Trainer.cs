// One training loop for the offline methods (Diffusion-DPO, SFT, SUDO, and losses defined in recipes):
// pixel pairs → VAE latents → shared noise and t → policy (and reference) UNet → per-sample MSEs → loss.
// Follows Diffusion-DPO's train.py (its training loop and DPO loss) and SUDO's changes to it (self-pairs, + MSE).
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Training;

/// <summary>Trains one <see cref="Method"/> with an offline pair source on a pair folder.</summary>
public sealed class Trainer : IDisposable
{
    public TrainConfig config { get; }
    /// <summary>What is trained: pair source, loss and reference policy (a preset, or a recipe's own).</summary>
    public Method method { get; }
    public StableDiffusionPipeline pipe { get; }
    public UNet2DConditionModel unet => pipe.unet;
    public UNet2DConditionModel? reference { get; private set; }
    public Lora? lora { get; private set; }
    /// <summary>The training pairs: a pair folder or a parquet/Arrow dataset (see PreferenceData.Open).</summary>
    public PreferenceData data { get; }
    /// <summary>Epoch order, decoding and transforms (position and epoch are checkpointed).</summary>
    public PairLoader loader { get; }
    /// <summary>Raised with each micro-batch's records before its forward (logging, data audits).</summary>
    public event Action<IReadOnlyList<PairRecord>>? BatchLoaded;
    public torch.optim.Optimizer optimizer { get; }
    public torch.optim.lr_scheduler.LambdaLR scheduler { get; }
    /// <summary>Dynamic loss scaling, enabled for fp16 (as accelerate's GradScaler); a pass-through otherwise.</summary>
    public torch.amp.GradScaler scaler { get; }
    // --offload: the VAE and text encoders (lent together: they are used together), and the reference UNet.
    private readonly CpuOffload[] _offloads = [];
    private readonly CpuOffload? _offReference;

    /// <summary>The offloaded frozen modules (VAE, text encoders) on the training device until disposed — wrap any
    /// use of <see cref="pipe"/> outside training (sampling, scoring) in it. Does nothing without --offload.</summary>
    public IDisposable FrozenModulesOnDevice() => Lend(_offloads);

    private static IDisposable Lend(params CpuOffload?[] offloads)
    {
        var scopes = offloads.Where(o => o is { active: true }).Select(o => o!.onto()).ToList();
        return new Releaser(scopes);
    }

    private sealed class Releaser(List<IDisposable> scopes) : IDisposable
    {
        public void Dispose()
        {
            for (var i = scopes.Count - 1; i >= 0; i--) scopes[i].Dispose();
            scopes.Clear();
        }
    }
    public NoiseSchedule noise_schedule { get; }
    public int global_step { get; private set; }
    /// <summary>Optimizer steps of the run: max_train_steps, or num_train_epochs × (records ÷ batch ÷ accumulation).</summary>
    public int total_steps { get; }
    /// <summary>The data-parallel job (DataParallel.Single for one process).</summary>
    public DataParallel data_parallel { get; }
    private readonly bool _ownsParallel;
    private readonly OfflinePairSource _pairs;
    private readonly LossFn _loss;
    private readonly Generator _rng;
    private int _nonfinite;
    private readonly Parameter[] _trainable;
    private readonly Dictionary<string, (Tensor mean, Tensor std)> _latentCache = new();
    private readonly Dictionary<string, Tensor> _textCache = new();
    private Tensor[]? _ema;

    /// <param name="method">the method to train; null takes the preset named by config.method with the config's
    /// β and SUDO settings. A recipe's method names the run (config.method is set to its name).</param>
    /// <param name="data_parallel">the data-parallel job this process belongs to; null joins the one the environment names
    /// (torchrun, sudoml launch, srun), or trains alone when there is none.</param>
    public Trainer(TrainConfig config, Method? method = null, DataParallel? data_parallel = null)
    {
        method ??= Methods.Preset(config.method, config.MethodSettings);
        if (method.pairs is not OfflinePairSource pairs)
            throw new ArgumentException($"method {method.name} draws its pairs from {method.pairs.Describe()}, not from a pair folder: train it with SpoTrainer (sudoml train --method spo, recipes/spo.fsx)");
        config = config with { method = method.name };
        config.Validate();
        this.data_parallel = data_parallel ?? DataParallel.FromEnvironment(config.device);
        _ownsParallel = data_parallel is null;

        pairs.Validate(config.train_batch_size * this.data_parallel.world_size);
        this.config = config;
        this.method = method;
        _loss = method.offline_loss;
        // One GPU per process: "cuda" in a CUDA job means this rank's cuda:LOCAL_RANK (as accelerate assigns it).
        var device = this.data_parallel.world_size > 1 && Device.Parse(config.device) is { Type: DeviceType.CUDA, Index: < 0 } ? this.data_parallel.device : Device.Parse(config.device);
        if (method.reference == ReferencePolicy.AdaptersOff && !config.UsesLora)
            throw new ArgumentException($"method {method.name} compares with the UNet's LoRA adapters off: pass --lora_rank ≥ 1 (or --lora_weights)");
        // Before any loading: a bf16 request on a CPU without bf16 kernels is refused (or warned about) now, not after hours.
        if (config.MixedPrecision == "bf16") Precision.RequireUsableBf16(device, config.allow_slow_bf16, "--mixed_precision bf16");
        if (config.reference_bf16) Precision.RequireUsableBf16(device, config.allow_slow_bf16, "--reference_bf16");
        if (config.FrozenDtype == ScalarType.BFloat16) Precision.RequireUsableBf16(device, config.allow_slow_bf16, "--frozen_precision auto under --mixed_precision bf16");
        // train.py: `if args.allow_tf32: torch.backends.cuda.matmul.allow_tf32 = True` (no effect on a CPU).
        if (config.allow_tf32) torch.backends.cuda.matmul.allow_tf32 = true;
        manual_seed(config.seed);
        _rng = new Generator(config.seed);
        var loaded = PreferenceData.Open(config.DatasetFolder, new TableOptions
        {
            split = config.split,
            caption_column = config.caption_column,
            dreamlike_pairs_only = config.dreamlike_pairs_only,
            max_train_samples = config.max_train_samples,
            seed = config.seed,
            skip_bad_rows = config.skip_bad_rows,
        }, config.cache_dir, config.dataset_config_name, config.hub_cache_dir);
        var modelFolder = Hub.Resolve(config.pretrained_model_name_or_path, config.hub_cache_dir, config.revision ?? "main");
        var comps = PipelineComponents.from_pretrained(modelFolder, config.variant, ScalarType.Float32, device);
        if (config.pretrained_vae_model_name_or_path is { } vaePath)
            comps = comps.WithVae(AutoencoderKL.from_pretrained(Hub.Resolve(vaePath, config.hub_cache_dir), config.variant, ScalarType.Float32, device));
        pipe = StableDiffusionPipeline.FromComponents(comps.WithPredictionType(config.prediction_type), "ddpm");
        if (config.unet_init is { } init)
        {
            using var scope = NewDisposeScope();
            var folder = Hub.Resolve(init, config.hub_cache_dir);
            unet.load_state_dict(Checkpoints.ReadWeights(Checkpoints.FindWeights(folder, "diffusion_pytorch_model", config.variant)));
        }
        if (config.choice_model is { } cm)
        {
            if (loaded is not PairDataset folder)
                throw new ArgumentException($"--choice_model relabels pair folders only; {loaded.Source} is a table dataset (relabelling it needs a scoring pass over its images: not implemented)");
            // Diffusion-DPO's train.py names: --choice_model pickscore|hps|aes|clip|imagereward=<path>; a bare path is a
            // PickScore-like CLIPModel folder (scored with the pipeline's tokenizer when the folder has none).
            var (name, path) = cm.Contains('=') ? RewardModels.ParseSpec(cm) : ("pickscore", cm);
            using IRewardModel scorer = name == "pickscore" && !File.Exists(Path.Combine(path, "vocab.json")) && !Directory.Exists(Path.Combine(path, "tokenizer"))
                ? new PickScoreReward(new ClipScorer(CLIPModel.from_pretrained(path), pipe.components.tokenizer))
                : RewardModels.Load(name, path);
            pairs = new AiFeedbackPairs((image, caption) => scorer.Score([ImageCodecs.Load(image)], [caption])[0], pairs);
            loaded = pairs.Prepare(folder);
        }
        else if (loaded is PairDataset folder) loaded = pairs.Prepare(folder);
        data = loaded;
        _pairs = pairs;
        if (config.sdxl != pipe.IsSDXL)
            throw new ArgumentException(config.sdxl ? "--sdxl given but the model is not an SDXL pipeline" : "the model is SDXL: pass --sdxl");
        noise_schedule = pipe.scheduler.schedule;
        pipe.vae.requires_grad_(false);
        pipe.components.text_encoder.requires_grad_(false);
        pipe.components.text_encoder_2?.requires_grad_(false);
        if (config.FrozenDtype is { } frozenDt)
        {
            // train.py: vae, text_encoder(s) and ref_unet .to(weight_dtype); the trained UNet keeps fp32 master weights.
            pipe.vae.to(frozenDt);
            pipe.components.text_encoder.to(frozenDt);
            pipe.components.text_encoder_2?.to(frozenDt);
        }
        if (config.UsesLora)
        {
            unet.requires_grad_(false);
            lora = config.lora_weights is { } lw ? AttachLoraWeights(pipe.components, lw, config.hub_cache_dir)
                : Lora.Attach(unet, new LoraConfig(config.lora_rank, config.lora_alpha ?? config.lora_rank), _rng);
            _trainable = lora.parameters().ToArray();
        }
        else
        {
            _trainable = unet.parameters().ToArray();
            if (method.reference == ReferencePolicy.FrozenCopy) reference = CloneFrozen(unet, config.reference_bf16 ? ScalarType.BFloat16 : config.FrozenDtype);
        }
        if (config.Offload)
        {
            _offloads = [new CpuOffload(pipe.vae, device), new CpuOffload(pipe.components.text_encoder, device),
                         .. pipe.components.text_encoder_2 is { } te2 ? [new CpuOffload(te2, device)] : Array.Empty<CpuOffload>()];
            if (reference != null) _offReference = new CpuOffload(reference, device);
        }
        unet.train();
        if (config.gradient_checkpointing || config.sdxl) unet.enable_gradient_checkpointing();
        // train.py: lr × accumulation × batch × num_processes under --scale_lr.
        var lr = config.scale_lr ? config.learning_rate * config.gradient_accumulation_steps * config.train_batch_size * this.data_parallel.world_size : config.learning_rate;
        optimizer = config.use_adafactor || config.sdxl
            ? new torch.optim.Adafactor(_trainable, lr: lr, weight_decay: config.adam_weight_decay, clip_threshold: 1.0, scale_parameter: false, relative_step: false)
            : new torch.optim.AdamW(_trainable, lr, config.adam_beta1, config.adam_beta2, config.adam_epsilon, config.adam_weight_decay);
        scaler = new torch.amp.GradScaler(enabled: config.MixedPrecision == "fp16");
        // train.py: max_train_steps, or num_train_epochs × ceil(batches per epoch ÷ accumulation) when it is unset.
        loader = new PairLoader(data, new LoaderOptions
        {
            resolution = Resolution,
            batch_size = config.train_batch_size,
            seed = config.seed,
            shuffle = config.split == "train",   // train.py: shuffle=(split == 'train')
            random_crop = config.random_crop,
            hflip = !config.no_hflip,
            workers = config.dataloader_num_workers,
            losers = pairs.uses_dataset_losers,
            skip_bad_rows = config.skip_bad_rows,
            rank = this.data_parallel.rank,
            world_size = this.data_parallel.world_size,
        }, this.data_parallel.IsMain ? null : _ => { });
        var batchesPerEpoch = loader.BatchesPerEpoch;
        total_steps = config.max_train_steps ?? config.num_train_epochs * (int)Math.Ceiling(batchesPerEpoch / (double)config.gradient_accumulation_steps);
        scheduler = torch.optim.lr_scheduler.get_scheduler(config.lr_scheduler, optimizer, config.lr_warmup_steps, total_steps);
        // DDP's constructor: every rank starts from rank 0's trainable weights.
        this.data_parallel.BroadcastFromMain(_trainable);
        if (config.ema_decay > 0)
            using (no_grad()) _ema = _trainable.Select(p => { var e = p.detach().clone(); DisposeScope.Current?.Detach(e); return e; }).ToArray();
    }

    /// <summary>--lora_weights: the UNet part of a LoRA (diffusers/PEFT or kohya/webui; PipelineLoading.AttachLora) as the
    /// trainable adapters. A file that also adapts a text encoder is refused: Sudo trains the UNet's adapters, and merging
    /// the text-encoder part would change the reference's conditioning too.</summary>
    public static Lora AttachLoraWeights(PipelineComponents comps, string pathOrRepo, string? hubCacheDir = null)
    {
        var file = PipelineLoading.ResolveLora(pathOrRepo, hubCacheDir);
        var attached = PipelineLoading.AttachLora(comps, file);
        if (attached.text_encoder != null || attached.text_encoder_2 != null || attached.unet == null)
        {
            attached.Dispose();
            throw new ArgumentException(attached.unet == null
                ? $"--lora_weights {pathOrRepo}: the LoRA has no UNet part"
                : $"--lora_weights {pathOrRepo}: the LoRA also adapts the text encoder; Sudo trains UNet adapters only (pass a LoRA of the UNet only)");
        }
        return attached.unet;
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

    /// <summary>validation_prompts, else the lines of validation_prompts_file, else null.</summary>
    public string[]? ValidationPrompts => config.validation_prompts
        ?? (config.validation_prompts_file is { } f ? Sampling.ReadPrompts(f).ToArray() : null);

    public int Resolution => config.resolution ?? (config.sdxl ? 1024 : pipe.unet.config.sample_size * pipe.vae_scale_factor);

    public string Describe()
    {
        var eff = config.train_batch_size * config.gradient_accumulation_steps * data_parallel.world_size;
        var lines = new List<string>
        {
            method.Describe(),
            $"{data.Count} pairs from {data.Source} ({data.Counts})" + (_pairs != method.pairs ? $"; {_pairs.Describe()}" : "") +
                $"; {config.dataloader_num_workers} loader worker(s)",
            $"effective batch = {config.train_batch_size} pairs per device × {config.gradient_accumulation_steps} accumulation × {data_parallel.world_size} process{(data_parallel.world_size == 1 ? "" : "es")} = {eff} pairs; {total_steps} optimizer steps",
            $"optimizer {optimizer.GetType().Name}, lr {optimizer.param_groups[0].initial_lr:G3} ({config.lr_scheduler}, warmup {config.lr_warmup_steps}), {_trainable.Sum(p => p.numel()):N0} trainable parameters" + (lora != null ? $" (LoRA rank {lora.config.r}{(lora.config.rank_pattern != null ? " and others" : "")}{(config.lora_weights != null ? $", from {config.lora_weights}" : "")})" : ""),
            $"reference: {(method.reference == ReferencePolicy.None ? "none" : lora != null ? "the same UNet with LoRA adapters off" : "frozen copy" + (config.reference_bf16 ? " (bf16)" : config.FrozenDtype is { } fd ? $" ({fd.TorchName()})" : ""))}; mixed precision {config.MixedPrecision}" +
                $"; VAE and text encoders in {(config.FrozenDtype ?? ScalarType.Float32).TorchName()}" + (config.Offload ? "; frozen modules offloaded to the CPU" : ""),
        };
        return string.Join("\n", lines);
    }

    private Tensor EncodeCaptions(IReadOnlyList<string> captions)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var lent = FrozenModulesOnDevice();
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

    /// <summary>The forward of the given pairs (dataset indices), loaded as in the current epoch.</summary>
    public StepInputs Forward(int[] indices)
    {
        var batch = loader.Load(indices, loader.epoch);
        try { return Forward(batch); }
        finally { foreach (var p in batch) p.Dispose(); }
    }

    /// <summary>The forward of a batch of loaded pairs as one process's whole batch (epoch: the loader's).</summary>
    public StepInputs Forward(LoadedPair[] batch) =>
        Forward(batch, new GlobalBatch(loader.epoch, 0, 0, batch.Select(p => p.record.index).ToArray(), 0, batch.Length));

    /// <summary>A per-sample random stream: a function of the run seed, the epoch and the pair (not of the rank,
    /// the batch split or the resume point), so world size 2 × batch b draws what world size 1 × batch 2b draws.</summary>
    private Generator SampleGenerator(int epoch, long key) => new(PairLoader.StreamSeed(config.seed, 0x5a3b_0000_0000L + epoch, key));

    /// <summary>The micro-batch forward of this rank's rows of a global batch: returns per-sample MSEs (fp32) of policy
    /// and reference. The pair source plans over the global batch (with SUDO a loser may be another rank's winner,
    /// which this rank then decodes itself); every random draw (VAE posterior sample, noise, t, caption dropout) comes
    /// from the pair's own stream.</summary>
    public StepInputs Forward(LoadedPair[] mine, GlobalBatch global)
    {
        var b = mine.Length;
        if (b != global.count) throw new ArgumentException($"{b} loaded pairs for {global.count} rows of the global batch");
        var rows = global.indices.Length;
        var records = Enumerable.Range(0, rows).Select(i => i >= global.offset && i < global.offset + b
            ? mine[i - global.offset].record.AsPair() : loader.Record(global.indices[i]).AsPair()).ToArray();
        var res = Resolution;
        var extra = new Dictionary<int, LoadedPair>();
        var gens = Enumerable.Range(global.offset, b).Select(i => SampleGenerator(global.epoch, global.indices[i])).ToArray();
        try
        {
            PairPlan plan;
            // The pairing's stream: keyed by the global batch (its first pair and size), the same on every rank.
            using (var planGen = new Generator(PairLoader.StreamSeed(config.seed, 0x91a7_0000_0000L + global.epoch, (long)global.indices[0] * 65536 + rows)))
                plan = _pairs.Plan(records, planGen);
            var winners = plan.winners.Skip(global.offset).Take(b).ToArray();
            var losers = plan.losers.Skip(global.offset).Take(b).ToArray();
            Tensor Image(ImageRef r)
            {
                LoadedPair pair;
                if (r.row >= global.offset && r.row < global.offset + b) pair = mine[r.row - global.offset];
                else if (!extra.TryGetValue(r.row, out pair!)) extra[r.row] = pair = loader.Load([global.indices[r.row]], global.epoch)[0];
                return r.winner ? pair.winner : pair.loser ?? throw new InvalidOperationException("the pair source uses losers it said it would not");
            }
            Tensor latents, ehs, t, noise, xt, target;
            Tensor[]? added = null;
            using (no_grad())
            using (FrozenModulesOnDevice())
            {
                Tensor mean, std;
                if (config.cache_latents)
                {
                    // The loader's center-cropped, unflipped pixels (Validate requires both for --cache_latents).
                    (Tensor mean, Tensor std) Posterior(ImageRef r)
                    {
                        var file = r.winner ? records[r.row].winner : records[r.row].loser;
                        if (!_latentCache.TryGetValue(file, out var c))
                        {
                            using var post = pipe.vae.encode(Image(r).unsqueeze(0).to(pipe.device, pipe.vae.encoder.conv_in.weight.dtype));
                            c = (post.mean.clone(), post.std.clone());
                            DisposeScope.Current?.Detach(c.mean);
                            DisposeScope.Current?.Detach(c.std);
                            _latentCache[file] = c;
                        }
                        return c;
                    }
                    var posts = winners.Concat(losers).Select(Posterior).ToArray();
                    mean = cat(posts.Select(p => p.mean).ToArray());
                    std = cat(posts.Select(p => p.std).ToArray());
                }
                else
                {
                    // Every image with its own crop/flip (the loader), then the source's pairing (SUDO: losers =
                    // winners[randperm] in pixel space, as its train.py does).
                    var pix = cat([stack(winners.Select(Image).ToArray()), stack(losers.Select(Image).ToArray())]).to(pipe.device, pipe.vae.encoder.conv_in.weight.dtype);
                    using var post = pipe.vae.encode(pix);
                    (mean, std) = (post.mean.alias(), post.std.alias());
                }
                long[] one = [1, mean.size(1), mean.size(2), mean.size(3)];
                // Each pair's stream, in a fixed order: posterior samples of winner and loser, noise, t, caption dropout.
                var eps = gens.Select(g => (w: randn(one, g), l: randn(one, g))).ToArray();
                var epsAll = cat(eps.Select(e => e.w).Concat(eps.Select(e => e.l)).ToArray()).to(mean.device, mean.dtype);
                // Frozen-precision VAE: the latents are noised in fp32 (train.py keeps them in weight_dtype; the UNet's
                // autocast casts its inputs down either way).
                latents = pipe.vae.scale_latents(mean + std * epsAll).@float();
                var nB = cat(gens.Select(g => randn(one, g)).ToArray()).to(latents.device);
                noise = cat([nB, nB]);
                var tB = cat(gens.Select(g => randint(0, noise_schedule.config.num_train_timesteps, [1], g)).ToArray()).to(latents.device);
                t = cat([tB, tB]);
                xt = noise_schedule.add_noise(latents, noise, t);
                target = noise_schedule.target(latents, noise, t);
                var captions = Enumerable.Range(0, b).Select(i => rand([1], gens[i]).item() < config.proportion_empty_prompts ? "" : records[global.offset + i].caption).ToList();
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
            return ForwardModels(b, t, xt, target, ehs, added);
        }
        finally
        {
            foreach (var g in gens) g.Dispose();
            foreach (var p in extra.Values) p.Dispose();
        }
    }

    private StepInputs ForwardModels(int b, Tensor t, Tensor xt, Tensor target, Tensor ehs, Tensor[]? added)
    {
        var cond = added is null ? null : new AddedCondKwargs(added[0], added[1]);
        using var autocastScope = MixedPrecision.Autocast(config.MixedPrecision, Device.Parse(config.device));
        var pred = unet.forward(xt, t, ehs, cond);
        var m = Losses.per_sample_mse(pred, target);
        Tensor? r = null;
        if (method.reference != ReferencePolicy.None)
        {
            using var _ = no_grad();
            Tensor refPred;
            if (lora != null)
                using (lora.disabled()) refPred = unet.forward(xt, t, ehs, cond);
            else
                using (Lend(_offReference))
                    refPred = reference!.forward(xt.to(reference.conv_in.weight.dtype), t, ehs.to(reference.conv_in.weight.dtype),
                        cond is null ? null : new AddedCondKwargs(cond.text_embeds.to(reference.conv_in.weight.dtype), cond.time_ids.to(reference.conv_in.weight.dtype)));
            r = Losses.per_sample_mse(refPred, target);
        }
        return new StepInputs(m, r, b, t) { schedule = noise_schedule };
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
            var batch = loader.Next();
            BatchLoaded?.Invoke(batch.Select(p => p.record).ToArray());
            StepInputs inputs;
            try { inputs = Forward(batch, loader.last!); }
            finally { foreach (var p in batch) p.Dispose(); }
            var o = _loss(inputs);
            var lv = o.loss.item();
            // Every rank skips together (a lone skip would pair different steps in the next all-reduce).
            if (data_parallel.Any(!double.IsFinite(lv)))
            {
                _nonfinite++;
                Console.Error.WriteLine($"warning: step {global_step + 1}: loss is {(double.IsFinite(lv) ? $"{lv} here but not finite on another rank" : lv)}; skipping the step ({_nonfinite} in a row)");
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
        // DDP: the gradient of the global batch's mean loss on every rank, before unscaling and clipping.
        data_parallel.AverageGradients(_trainable);
        metrics = data_parallel.AverageMetrics(metrics);
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

    // ---- checkpoints (TrainingRun's format, shared with SPO) ----

    /// <summary>The record of this run: the resolved config (all fields, defaults included), the method and the machine.</summary>
    public System.Text.Json.Nodes.JsonObject RunRecordNode() =>
        RunRecord.WithProcesses(RunRecord.Make(config with { mixed_precision = config.MixedPrecision }, method.Describe()), data_parallel.world_size);

    /// <summary>Writes output_dir/checkpoint-N atomically: trainable weights (UNet or LoRA), optimizer, EMA, RNG
    /// states, data position, LR schedule and step, and the run record.</summary>
    public string SaveCheckpoint(TrainingRun run) => !data_parallel.IsMain ? run.SaveCheckpoint(global_step, [], _ => { }) : run.SaveCheckpoint(global_step, new JsonObject
    {
        ["global_step"] = global_step,
        ["epoch"] = loader.epoch,
        ["position"] = loader.position,
        ["lr_scheduler"] = JsonNode.Parse(scheduler.state_dict()),
        ["method"] = method.name,
        ["nonfinite_in_a_row"] = _nonfinite,
        ["grad_scaler"] = JsonNode.Parse(scaler.state_dict()),
    }, tmp =>
    {
        if (lora != null) lora.save(Path.Combine(tmp, "lora"));
        else unet.save_pretrained(Path.Combine(tmp, "unet"));
        optimizer.save(Path.Combine(tmp, "optimizer.safetensors"));
        if (_ema != null)
            safetensors.save_file(_ema.Select((t, i) => (t, i)).ToDictionary(x => $"ema.{x.i}", x => x.t), Path.Combine(tmp, "ema.safetensors"));
        RngState.Save(tmp, _rng);
    });

    /// <summary>Restores a checkpoint of this method. The caller checks the run record first (Train does).</summary>
    public void LoadCheckpoint(string path)
    {
        var state = TrainingRun.ReadState(path, method.name);
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
        loader.Seek(state["epoch"]!.GetValue<int>(), state["position"]!.GetValue<int>());
        _nonfinite = state["nonfinite_in_a_row"]?.GetValue<int>() ?? 0;
        if (state["grad_scaler"] is { } gs) scaler.load_state_dict(gs.ToJsonString());
    }

    /// <summary>A grid of the validation prompts (one fixed seed per prompt, DDIM 20 steps, CFG 7.5) with the
    /// current weights, so runs can be compared by eye.</summary>
    public string SampleGrid()
    {
        var prompts = ValidationPrompts ?? throw new InvalidOperationException("no validation_prompts configured");
        using var ddim = new DDIMScheduler(pipe.scheduler.config with { _class_name = "DDIMScheduler" });
        var sampler = new StableDiffusionPipeline(pipe.components, ddim);   // shares the models; only ddim is ours
        var wasTraining = unet.training;
        unet.eval();
        var gens = prompts.Select((_, i) => new Generator(config.seed + i)).ToArray();
        try
        {
            using var scope = NewDisposeScope();
            using var lent = FrozenModulesOnDevice();
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

    /// <summary>Runs to the last step: resumes (resume_from_checkpoint; refused when the checkpoint's recorded settings
    /// differ), writes run_config.json, logs metrics every step (JSONL, CSV, TensorBoard), prints a line every log_every
    /// steps, checkpoints every checkpointing_steps, and saves the final weights (unet/ or lora/) into output_dir.</summary>
    public void Train(Action<string>? log = null)
    {
        var main = data_parallel.IsMain;
        var (run, say, caller) = TrainingRun.Start(data_parallel, log, config.output_dir, RunRecordNode(),
            TrainingRun.TensorBoardDir(config.output_dir, config.report_to, config.logging_dir, config.tracker_project_name), config.checkpoints_total_limit,
            config.resume_from_checkpoint, config.resume_allow_changes, LoadCheckpoint, () => global_step);
        using var _ = run;
        log = say;
        log(Describe());
        var sw = Stopwatch.StartNew();
        TrainingProgress.Run(method.name, total_steps, global_step, config.log_every, caller, progress =>
        {
            while (global_step < total_steps)
            {
                var m = Step();
                if (m is null) continue;
                run.Log(global_step, m);
                progress.Step(global_step, m);
                if (config.checkpointing_steps > 0 && global_step % config.checkpointing_steps == 0)
                    progress.Log($"saved {TrainingRun.Checkpoint(data_parallel, () => SaveCheckpoint(run))}");
                if (ValidationPrompts is { Length: > 0 } && config.validation_steps > 0 && global_step % config.validation_steps == 0)
                {
                    if (main) progress.Log($"samples {SampleGrid()}");
                    data_parallel.Barrier();
                }
            }
        });
        if (main)
        {
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
            TrainingRun.WriteSummary(config.output_dir, method.name, global_step, sw.Elapsed.TotalSeconds);
        }
        data_parallel.Barrier();
        log($"done: {global_step} steps in {sw.Elapsed.TotalSeconds:F1} s (peak RSS {ProcessMemory.PeakRssMb():F0} MB); weights in {config.output_dir}");
    }

    public void Dispose()
    {
        foreach (var (m, sd) in _latentCache.Values) { m.Dispose(); sd.Dispose(); }
        foreach (var t in _textCache.Values) t.Dispose();
        if (_ema != null) foreach (var t in _ema) t.Dispose();
        loader.Dispose();
        data.Dispose();
        lora?.Dispose();
        reference?.Dispose();
        optimizer.Dispose();
        pipe.Dispose();
        _rng.Dispose();
        if (_ownsParallel) data_parallel.Dispose();
    }
}
