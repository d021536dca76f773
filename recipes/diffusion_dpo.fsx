// Diffusion-DPO (Wallace et al.): DPO on human-labelled pairs with a frozen reference UNet.
// Paper defaults (SD1.5): β 5000 (−½β inside the sigmoid), lr 1e-8 × 128 accumulation (--scale_lr),
// constant_with_warmup, 500 warmup, 2000 steps. SDXL: add --sdxl true (Adafactor, grad checkpointing).
// dotnet fsi recipes/diffusion_dpo.fsx -- --model <pipeline> --data <pair folder> [--name value ...]
#load "../scripts/_load.fsx"
open _load
open Sudo.Training

let config =
    TrainConfig(
        method = "dpo",
        pretrained_model_name_or_path = arg "model" "../shared/golden/pipe_sd15",
        dataset_name = arg "data" "runs/pairs",
        output_dir = arg "output_dir" "runs/diffusion_dpo",
        train_batch_size = int (arg "train_batch_size" "4"),
        gradient_accumulation_steps = int (arg "gradient_accumulation_steps" "1"),
        max_train_steps = int (arg "max_train_steps" "200"),
        learning_rate = float (arg "learning_rate" "1e-5"),
        lr_warmup_steps = int (arg "lr_warmup_steps" "20"),
        beta_dpo = float (arg "beta_dpo" "5000"),
        sdxl = (arg "sdxl" "false" = "true"),
        lora_rank = int (arg "lora_rank" "0"),
        mixed_precision = arg "mixed_precision" "no",
        checkpointing_steps = int (arg "checkpointing_steps" "100"),
        seed = int64 (arg "seed" "0"))
let trainer = new Trainer(config)
trainer.Train()
