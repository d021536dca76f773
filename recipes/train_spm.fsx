// SPO's step-aware preference model (Liang et al., SPO §4.2): PickScore_v1 with time conditioning, trained on
// Pick-a-Pic pairs to score the frozen base model's CFG-5 x̂₀ at a random t ~ U{0..999} (t = 0: the clean image).
// SPO's SD-1.5 SPM config: batch 16 per GPU (4 GPUs), AdamW lr 3e-6, weight decay 0.3, 500 warmup of 8000 steps
// with linear decay, clipping 1.0, seed 42. Saves SPO's layout (step_aware_preference_model.bin + config.json), which
// `sudoml train --method spo --scorer <output_dir>` reads. Data-parallel under `sudoml launch --nproc_per_node N --`.
// dotnet fsi recipes/train_spm.fsx -- --pretrained_model_name_or_path <SD1.5 pipeline> --scorer_init <PickScore_v1>
//     --dataset_name yuvalkirstain/pickapic_v1 --cache_dir <datasets cache> --output_dir runs/spm [SpmTrainConfig flags]
#load "../scripts/_load.fsx"
open _load
open Sudo.Training

let config, _ = spmConfig []
let trainer = new SpmTrainer(config)
trainer.Train()
trainer.Dispose()
