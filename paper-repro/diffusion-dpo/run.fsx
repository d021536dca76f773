// Diffusion-DPO (Wallace et al., CVPR 2024), toy analogue of the headline comparison: DPO vs SFT vs base win rates,
// plus the shuffled-label control. dotnet fsi paper-repro/diffusion-dpo/run.fsx
#load "../_study.fsx"
open _study
open Sudo.Worlds.Shapes

let rows =
    [ for split, what in splits ->
        sprintf "| %s (%s) | %s | %s | %s | %s | %s |" split what
            (pct (WorldStudy.WinVsBase(report, "dpo", split))) (pct (WorldStudy.WinVsBase(report, "sft", split)))
            (pct (WorldStudy.HeadToHead(report, "dpo", "sft", split))) (pct (WorldStudy.WinVsBase(report, "dpo_shuffled", split)))
            (pct (WorldStudy.HeadToHead(report, "dpo", "dpo_shuffled", split))) ]
let scores =
    [ for m in [ "base"; "sft"; "dpo"; "dpo_shuffled" ] ->
        sprintf "| %s | %s | %s |" (label m) (num (WorldStudy.MeanScore(report, m, "validation"))) (num (WorldStudy.MeanScore(report, m, "test"))) ]

write "paper-repro/diffusion-dpo/RESULTS.md" (
    "# Diffusion-DPO — toy reproduction\n\n" + preamble "paper-repro/diffusion-dpo/run.fsx" + """
## Toy table (measured)

| prompts | DPO vs base | SFT vs base | DPO vs SFT | DPO, shuffled labels, vs base | DPO vs DPO-shuffled |
|---|---|---|---|---|---|
""" + String.concat "\n" rows + """

| model | mean judge (validation) | mean judge (test, unseen) |
|---|---|---|
""" + String.concat "\n" scores + """

## Paper (for the reader; Wallace et al., Diffusion-DPO)

| comparison | paper |
|---|---|
| DPO-SD1.5 vs SD1.5, PartiPrompts general preference (human) | 59.8% |
| DPO-SD1.5 (PickScore-relabelled pairs) vs SD1.5 | 63.3% |
| SFT-SD1.5 vs SD1.5 | 55.5% |
| DPO-SDXL vs SDXL, PartiPrompts / HPSv2 (human, Q1 general) | 70.0% / 64.7% |
| DPO-SDXL vs SDXL + refiner, PartiPrompts / HPSv2 | 69% / 64% |

The toy numbers are not the paper's numbers: a 4.2M-parameter model on a synthetic world judged by a program. The paper's
ordering on SD1.5 is DPO > SFT > base; on SDXL any SFT hurts. Measured here (95% intervals over 3 training seeds, test
split): DPO vs base """ + verdict (WorldStudy.WinVsBase(report, "dpo", "test")) + """; SFT vs base """ + verdict (WorldStudy.WinVsBase(report, "sft", "test")) + """;
DPO vs SFT """ + verdict (WorldStudy.HeadToHead(report, "dpo", "sft", "test")) + """; shuffled-label DPO vs base """ + verdict (WorldStudy.WinVsBase(report, "dpo_shuffled", "test")) + """.

## Real-scale commands (GPU; not run here)

```bash
# Pick-a-Pic v2 as a local pair folder (caption, jpg_0, jpg_1, label_0); SD1.5, paper settings:
# β 5000, lr 1e-8 scaled by batch (1 × 128 accumulation × GPUs), 2000 steps, 500 warmup, constant_with_warmup.
./sudoml train --method dpo --pretrained_model_name_or_path runwayml/stable-diffusion-v1-5 \
    --dataset_name /data/pickapic_v2 --train_batch_size 1 --gradient_accumulation_steps 128 \
    --max_train_steps 2000 --learning_rate 1e-8 --scale_lr --lr_scheduler constant_with_warmup --lr_warmup_steps 500 \
    --beta_dpo 5000 --mixed_precision fp16 --cache_dir /data/hf --output_dir runs/dpo-sd15 --checkpointing_steps 500
# SFT baseline: same command with --method sft --learning_rate 1e-9 (spec §1: whether before or after --scale_lr is unverified).
# SDXL: --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 --sdxl --use_adafactor --gradient_checkpointing \
#       --resolution 1024 --lr_warmup_steps 200
# The same from F#: dotnet fsi recipes/diffusion_dpo.fsx -- --model runwayml/stable-diffusion-v1-5 --data /data/pickapic_v2 ...
```
""")
