// The settings of a training run. Field names and defaults are Diffusion-DPO train.py's (the SUDO fork keeps
// them: its parse_args) unless a comment says otherwise; the record initialisers are the
// only defaults (the flag binder, the CLI, recipes and the study start from them). docs/flags.md lists every flag
// of train.py and of diffusers' train_diffusion_dpo.py with what Sudo does with it.
using System.Text.Json.Serialization;
using Sudo.Preference;
using Sudo.Torch;

namespace Sudo.Training;

/// <summary>An offline run (Diffusion-DPO, SFT, SUDO, or a recipe's method over a pair folder).</summary>
public sealed record TrainConfig
{
    /// <summary>A preset of <see cref="Methods"/> (dpo, sft, sudo); a recipe's own method sets its name here.</summary>
    public string method { get; init; } = "dpo";
    public string pretrained_model_name_or_path { get; init; } = "";
    /// <summary>Hub revision of pretrained_model_name_or_path (the snapshot refs/&lt;revision&gt; names; default main).</summary>
    public string? revision { get; init; }
    /// <summary>Weight-file variant (diffusion_pytorch_model.&lt;variant&gt;.safetensors, e.g. fp16), as diffusers' --variant.</summary>
    public string? variant { get; init; }
    /// <summary>Another VAE (e.g. madebyollin/sdxl-vae-fp16-fix for SDXL).</summary>
    public string? pretrained_vae_model_name_or_path { get; init; }
    /// <summary>Start the policy and the reference from this UNet folder instead of the pipeline's.</summary>
    public string? unet_init { get; init; }
    /// <summary>A hub id (yuvalkirstain/pickapic_v2: read from the datasets cache or the Hub cache), a save_to_disk
    /// folder, a folder of parquet files, or a local pair folder (pairs.jsonl / pairs.csv). Sudo never downloads.</summary>
    public string? dataset_name { get; init; }
    /// <summary>The datasets config folder (default "default").</summary>
    public string? dataset_config_name { get; init; }
    /// <summary>A local dataset folder, used when dataset_name is not given.</summary>
    public string? train_data_dir { get; init; }
    /// <summary>Keep only pairs whose two images both come from a Dreamlike model ('dream' in model_0 and model_1).</summary>
    public bool dreamlike_pairs_only { get; init; }
    /// <summary>Sudo: skip (and count) pairs whose image is null or does not decode, instead of stopping.</summary>
    public bool skip_bad_rows { get; init; }
    /// <summary>Background threads decoding and transforming images (0: on the training thread).</summary>
    public int dataloader_num_workers { get; init; }
    /// <summary>The datasets cache (train.py's meaning). Model ids are looked up in hub_cache_dir.</summary>
    public string? cache_dir { get; init; }
    /// <summary>Sudo: the model hub cache for org/name ids (default $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).</summary>
    public string? hub_cache_dir { get; init; }
    public string caption_column { get; init; } = "caption";
    /// <summary>Records are shuffled only for the split "train" (as train.py); other splits are read in order.</summary>
    public string split { get; init; } = "train";
    /// <summary>Keep this many records after a seeded shuffle (train.py: shuffle(seed).select(range(n))).</summary>
    public int? max_train_samples { get; init; }
    public string output_dir { get; init; } = "sd-model-finetuned";
    public string logging_dir { get; init; } = "logs";
    /// <summary>tensorboard (default) or none; JSONL and CSV metrics are always written.</summary>
    public string report_to { get; init; } = "tensorboard";
    public string tracker_project_name { get; init; } = "tuning";
    public int train_batch_size { get; init; } = 1;
    public int gradient_accumulation_steps { get; init; } = 1;
    /// <summary>Optimizer steps; null trains num_train_epochs epochs instead.</summary>
    public int? max_train_steps { get; init; } = 2000;
    public int num_train_epochs { get; init; } = 100;
    public double learning_rate { get; init; } = 1e-8;
    public bool scale_lr { get; init; }
    public string lr_scheduler { get; init; } = "constant_with_warmup";
    public int lr_warmup_steps { get; init; } = 500;
    public int checkpointing_steps { get; init; } = 500;
    /// <summary>Keep at most this many checkpoint-N folders (older ones are deleted after a save); null keeps all.</summary>
    public int? checkpoints_total_limit { get; init; }
    /// <summary>"latest" (train.py's default: resume when a checkpoint exists), a checkpoint path, or null / "none".</summary>
    public string? resume_from_checkpoint { get; init; } = "latest";
    /// <summary>Sudo: settings that may differ from the checkpoint's on resume (comma-separated field names);
    /// every other difference is refused.</summary>
    public string? resume_allow_changes { get; init; }
    public double beta_dpo { get; init; } = 5000;
    /// <summary>Sudo seeds 0 by default so one command gives one result (train.py leaves it unset: a random seed).</summary>
    public long seed { get; init; }
    public bool sdxl { get; init; }
    public bool use_adafactor { get; init; }
    public int? resolution { get; init; }
    public bool random_crop { get; init; }
    public bool no_hflip { get; init; }
    public bool gradient_checkpointing { get; init; }
    /// <summary>no, bf16 or fp16. Unset: train.py's fp16 on CUDA; on a CPU, where libtorch cannot compute fp16, no.</summary>
    public string? mixed_precision { get; init; }
    /// <summary>TF32 matmuls on CUDA (train.py --allow_tf32); CPUs have no TF32 mode, so it changes nothing there.</summary>
    public bool allow_tf32 { get; init; }
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
    /// <summary>Start the LoRA adapters from an existing LoRA instead of fresh ones (sd-scripts' --network_weights): a
    /// diffusers/PEFT file or folder, a kohya/webui file, or a training output's lora/; ranks and α come from the file
    /// (leave --lora_rank and --lora_alpha unset). The reference stays the base UNet with the adapters off.</summary>
    public string? lora_weights { get; init; }
    /// <summary>The noise-prediction target: epsilon or v_prediction, overriding the scheduler config's (diffusers'
    /// train_text_to_image.py --prediction_type; an SD2-base single file read with SD2.1's 768-v configs needs epsilon).
    /// Null: the pipeline's.</summary>
    public string? prediction_type { get; init; }
    /// <summary>Whether the UNet is trained through LoRA adapters (fresh, or from --lora_weights).</summary>
    [JsonIgnore]
    public bool UsesLora => lora_rank > 0 || lora_weights != null;
    /// <summary>Keep the frozen reference UNet in bf16 (full fine-tune only), whatever frozen_precision says.</summary>
    public bool reference_bf16 { get; init; }
    /// <summary>The dtype of the frozen modules (VAE, text encoders, the frozen-copy reference UNet). "auto": train.py's
    /// weight_dtype — under --mixed_precision fp16/bf16 they are cast to that dtype (Diffusion-DPO train.py L913-939,
    /// vae/text_encoder/ref_unet .to(weight_dtype)), fp32 otherwise; "fp32": keep them fp32 (more memory, no rounding of
    /// the reference prediction or the latents).</summary>
    public string frozen_precision { get; init; } = "auto";
    /// <summary>CPU offload of the frozen modules (VAE, text encoders, frozen-copy reference): their weights stay on the CPU
    /// and are lent to the GPU for each use, as train.py's accelerate.cpu_offload for --sdxl (L928-935). Unset: on for
    /// --sdxl on CUDA, off otherwise; on a CPU device it changes nothing.</summary>
    public bool? offload { get; init; }
    public int max_nonfinite_steps { get; init; } = 5;
    /// <summary>Cache each image's VAE posterior (mean, std) and each caption's text embedding: latents are
    /// then sampled from the cached posterior (as upstream samples from the live one). Needs a fixed crop:
    /// center crop and no flip.</summary>
    public bool cache_latents { get; init; }
    /// <summary>Fixed prompts sampled into output_dir/samples/step-N.png every validation_steps steps.</summary>
    public string[]? validation_prompts { get; init; }
    /// <summary>A text file of validation prompts (one per line), used when validation_prompts is not given.</summary>
    public string? validation_prompts_file { get; init; }
    public int validation_steps { get; init; }
    /// <summary>AI-feedback relabelling (Diffusion-DPO's --choice_model): name=path with name pickscore, hps, aes, clip or
    /// imagereward (Sudo.Preference.RewardModels.Load), or a bare PickScore-like CLIPModel folder; the higher-scored
    /// image of each pair becomes the winner.</summary>
    public string? choice_model { get; init; }
    /// <summary>Keep an exponential moving average of the trained weights (0 = off), saved as unet_ema/.</summary>
    public double ema_decay { get; init; }
    public int log_every { get; init; } = 10;
    public string device { get; init; } = "cpu";

    /// <summary>The pair folder: dataset_name, else train_data_dir.</summary>
    [JsonIgnore]
    public string DatasetFolder => dataset_name ?? train_data_dir
        ?? throw new ArgumentException("--dataset_name is required: a hub id in the local caches (yuvalkirstain/pickapic_v2 with --cache_dir), a save_to_disk or parquet folder, or a pair folder with pairs.jsonl");

    /// <summary>mixed_precision with its default resolved for the device.</summary>
    [JsonIgnore]
    public string MixedPrecision => Sudo.Training.MixedPrecision.Resolve(mixed_precision, Device.Parse(device));

    /// <summary>The frozen modules' dtype with frozen_precision resolved: null keeps them fp32.</summary>
    [JsonIgnore]
    public ScalarType? FrozenDtype => frozen_precision == "fp32" ? null : MixedPrecision switch
    {
        "fp16" => ScalarType.Float16,
        "bf16" => ScalarType.BFloat16,
        _ => null,
    };

    /// <summary>offload with its default resolved: train.py offloads for --sdxl; only a CUDA device has anything to gain.</summary>
    [JsonIgnore]
    public bool Offload => Device.Parse(device).Type == DeviceType.CUDA && (offload ?? sdxl);

    [JsonIgnore]
    public MethodSettings MethodSettings => new()
    {
        beta_dpo = beta_dpo,
        sudo_lambda_dpo = sudo_lambda_dpo,
        sudo_lambda_mse = sudo_lambda_mse,
        sudo_derangement = sudo_derangement,
    };

    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(pretrained_model_name_or_path)) throw new ArgumentException("--pretrained_model_name_or_path is required");
        if (train_batch_size < 1 || gradient_accumulation_steps < 1 || max_train_steps is < 1 || num_train_epochs < 1)
            throw new ArgumentException("--train_batch_size, --gradient_accumulation_steps, --max_train_steps and --num_train_epochs must be ≥ 1");
        Sudo.Training.MixedPrecision.Validate(mixed_precision, Device.Parse(device));
        if (lora_rank < 0) throw new ArgumentException("--lora_rank must be ≥ 0");
        if (prediction_type is not (null or "epsilon" or "v_prediction"))
            throw new ArgumentException($"--prediction_type {prediction_type}: expected epsilon or v_prediction (or leave it unset for the scheduler's)");
        if (lora_weights != null && (lora_rank > 0 || lora_alpha != null))
            throw new ArgumentException("--lora_weights takes the adapters' ranks and α from the file: leave --lora_rank and --lora_alpha unset");
        if (frozen_precision is not ("auto" or "fp32"))
            throw new ArgumentException($"--frozen_precision {frozen_precision}: expected auto (train.py: the mixed-precision dtype) or fp32");
        if (proportion_empty_prompts is < 0 or > 1) throw new ArgumentException("--proportion_empty_prompts must be in [0, 1]");
        if (cache_latents && (random_crop || !no_hflip))
            throw new ArgumentException("--cache_latents needs a fixed crop: pass --no_hflip and leave --random_crop off (cached latents cannot be re-augmented)");
        if (ema_decay is < 0 or >= 1) throw new ArgumentException("--ema_decay must be in [0, 1)");
        if (report_to is not ("tensorboard" or "none" or "all"))
            throw new ArgumentException($"--report_to {report_to}: Sudo writes tensorboard (and always metrics.jsonl / metrics.csv); wandb and comet_ml need a network service: use tensorboard or none");
        if (max_train_samples is < 1) throw new ArgumentException("--max_train_samples must be ≥ 1");
        if (dataloader_num_workers < 0) throw new ArgumentException("--dataloader_num_workers must be ≥ 0");
        if (checkpoints_total_limit is < 1) throw new ArgumentException("--checkpoints_total_limit must be ≥ 1");
    }
}

/// <summary>An SPO run (online step-wise pairs, LoRA). Shared fields keep the names of <see cref="TrainConfig"/>;
/// defaults are SPO's SD-1.5 config (SPO's SD-1.5 training config: LoRA rank 4, AdamW lr 6e-5, weight decay 1e-4); the sampling
/// settings (k, threshold, inner steps, resolution) come from the model: SpoConfig.For(pipeline).</summary>
public sealed record SpoTrainConfig
{
    public string method { get; init; } = "spo";
    public string pretrained_model_name_or_path { get; init; } = "";
    public string? revision { get; init; }
    public string? variant { get; init; }
    public string? hub_cache_dir { get; init; }
    /// <summary>A text file of prompts, one per line (../shared/prompts has the papers' sets).</summary>
    public string? prompts_file { get; init; }
    /// <summary>SPO's step-aware preference model: the released *_step-aware_preference_model.bin (or a folder
    /// holding it with the base CLIPModel's config.json), a folder saved by Sudo, or the name of a reward a world
    /// registers (e.g. world-judge).</summary>
    public string? scorer { get; init; }
    /// <summary>Accept a plain CLIPModel (PickScore) as --scorer, wrapped with untrained time conditioning: every
    /// step is then scored by the plain model (SPO's ablation: clearly worse). Off by default.</summary>
    public bool scorer_plain_clip { get; init; }
    public string output_dir { get; init; } = "sd-model-finetuned";
    public string logging_dir { get; init; } = "logs";
    public string report_to { get; init; } = "tensorboard";
    public string tracker_project_name { get; init; } = "tuning";
    /// <summary>Step pairs per optimizer step.</summary>
    public int train_batch_size { get; init; } = 2;
    /// <summary>Prompts sampled per round (each gives one chain with pairs at every step from divert_start_step).</summary>
    public int prompts_per_round { get; init; } = 2;
    public int max_train_steps { get; init; } = 2000;
    public double learning_rate { get; init; } = 6e-5;
    public double adam_weight_decay { get; init; } = 1e-4;
    /// <summary>AdamW ε (SPO's config: 1e-8).</summary>
    public double adam_epsilon { get; init; } = 1e-8;
    public double max_grad_norm { get; init; } = 1.0;
    public int lora_rank { get; init; } = 4;
    public int checkpointing_steps { get; init; } = 500;
    public int? checkpoints_total_limit { get; init; }
    public string? resume_from_checkpoint { get; init; } = "latest";
    public string? resume_allow_changes { get; init; }
    public long seed { get; init; }
    /// <summary>Override the model's preset threshold (0.3 SD-1.5, 0.4 SDXL).</summary>
    public double? spo_threshold { get; init; }
    /// <summary>Overrides of the model's sampling preset (unset: SpoConfig.For(pipeline)).</summary>
    public int? num_inference_steps { get; init; }
    public int? divert_start_step { get; init; }
    /// <summary>Candidates per branching (k).</summary>
    public int? num_sample_each_step { get; init; }
    public double? guidance_scale { get; init; }
    public int? num_inner_step { get; init; }
    public int? resolution { get; init; }
    /// <summary>Also write the UNet with the LoRA merged into every checkpoint and output_dir/unet (a diffusers UNet
    /// folder other tools load directly; large for SD-size models).</summary>
    public bool save_merged_unet { get; init; }
    /// <summary>How rounds draw their prompts: shuffle (a new seeded permutation per pass over the list, as a shuffling
    /// data loader) or cycle (round r takes the window of prompts_per_round prompts starting r places back: a fixed,
    /// overlapping sweep).</summary>
    public string prompt_order { get; init; } = "shuffle";
    /// <summary>Rounds that keep no pair in a row before the run stops (the scorer does not separate the candidates).</summary>
    public int max_empty_rounds { get; init; } = 20;
    /// <summary>no, bf16 or fp16 (autocast for sampling and the loss; fp16 with dynamic loss scaling). Unset: SPO's
    /// accelerate config, fp16, on CUDA; no on a CPU.</summary>
    public string? mixed_precision { get; init; }
    public bool allow_slow_bf16 { get; init; }
    public string device { get; init; } = "cpu";

    /// <summary>mixed_precision with its default resolved for the device.</summary>
    [JsonIgnore]
    public string MixedPrecision => Sudo.Training.MixedPrecision.Resolve(mixed_precision, Device.Parse(device));

    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(pretrained_model_name_or_path)) throw new ArgumentException("--pretrained_model_name_or_path is required");
        Sudo.Training.MixedPrecision.Validate(mixed_precision, Device.Parse(device));
        if (train_batch_size < 1 || prompts_per_round < 1 || max_train_steps < 1) throw new ArgumentException("--train_batch_size, --prompts_per_round and --max_train_steps must be ≥ 1");
        if (lora_rank < 1) throw new ArgumentException("SPO trains LoRA adapters: --lora_rank must be ≥ 1 (SPO uses 4)");
        if (prompt_order is not ("shuffle" or "cycle")) throw new ArgumentException($"--prompt_order {prompt_order}: expected shuffle or cycle");
        if (report_to is not ("tensorboard" or "none" or "all")) throw new ArgumentException($"--report_to {report_to}: use tensorboard or none");
    }
}
