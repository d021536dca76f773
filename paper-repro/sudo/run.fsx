// SUDO / Self-DPO (Peng et al., arXiv 2504.14534; NeurIPS 2025), toy analogue of Table 2: average score and win rate against the base
// for SFT, DPO and SUDO, plus SUDO head-to-head against SFT and DPO. dotnet fsi paper-repro/sudo/run.fsx
#load "../_study.fsx"
open _study
open Sudo.Worlds.Shapes

let methods = [ "sft"; "dpo"; "sudo" ]
let table =
    [ for split, what in splits do
        yield sprintf "| %s (avg judge) | base | %s | — |" split (num (WorldStudy.MeanScore(report, "base", split)))
        for m in methods ->
            sprintf "| %s | %s | %s | %s |" (if m = "sft" then sprintf "%s (%s)" split what else "") (label m)
                (num (WorldStudy.MeanScore(report, m, split))) (pct (WorldStudy.WinVsBase(report, m, split))) ]
// The same models, prompts and seeds sampled without classifier-free guidance (the study's second guidance scale):
// SUDO's self-pairs teach the text conditioning the way CFG does, so its effect shows most here.
let unguided =
    [ for split, what in splits do
        let s = split + "@cfg1"
        yield sprintf "| %s (avg judge) | base | %s | — |" split (num (WorldStudy.MeanScore(report, "base", s)))
        for m in methods ->
            sprintf "| %s | %s | %s | %s |" (if m = "sft" then sprintf "%s (%s)" split what else "") (label m)
                (num (WorldStudy.MeanScore(report, m, s))) (pct (WorldStudy.WinVsBase(report, m, s))) ]
let h2h =
    [ for split, _ in splits ->
        sprintf "| %s | %s | %s |" split (pct (WorldStudy.HeadToHead(report, "sudo", "sft", split))) (pct (WorldStudy.HeadToHead(report, "sudo", "dpo", split))) ]
let attrs =
    [ for m in "base" :: methods ->
        sprintf "| %s | %s |" (label m) (String.concat " | " [ for a in [ "color"; "shape"; "size"; "count"; "relation" ] -> num (WorldStudy.MeanAttribute(report, m, a)) ]) ]

write "paper-repro/sudo/RESULTS.md" (
    "# SUDO / Self-DPO — toy reproduction\n\n" + preamble "paper-repro/sudo/run.fsx" + """
## Toy Table 2 (measured)

| set | method | avg judge | win vs base |
|---|---|---|---|
""" + String.concat "\n" table + """

| split (CFG 3) | SUDO vs SFT | SUDO vs DPO |
|---|---|---|
""" + String.concat "\n" h2h + """

Judged **without classifier-free guidance** (CFG 1; same models, prompts and seeds; the base at CFG 3 scores
""" + num (WorldStudy.MeanScore(report, "base", "test")) + """ on the test split):

| set | method | avg judge (CFG 1) | win vs base (CFG 1) |
|---|---|---|---|
""" + String.concat "\n" unguided + """

Per-attribute accuracy (CFG 3, both splits):

| model | colour | shape | size | count | relation |
|---|---|---|---|---|---|
""" + String.concat "\n" attrs + """

## Paper (SD1.5, Pick-a-Pic v2 prompts; Peng et al., SUDO)

| method | PickScore avg | HPS avg | ImageReward avg | PickScore win % | HPS win % | ImageReward win % |
|---|---|---|---|---|---|---|
| base | 20.57 | 26.17 | −14.81 | — | — | — |
| SFT | 21.10 | 27.03 | 45.03 | 75.00 | 90.20 | 80.00 |
| DPO | 20.91 | 26.46 | 4.13 | 73.80 | 71.80 | 61.00 |
| Self-DPO | 21.23 | 27.33 | 71.00 | 78.60 | 94.20 | 85.20 |

(SDXL, same table: SFT hurts — 19.4% PickScore win rate — while DPO 72.6% and Self-DPO 60.8%.) The toy table asks the
same question on the world: does SUDO, which never sees a human loser, match or beat DPO, and both beat SFT? Measured
(test split, 95% intervals over 3 training seeds): SUDO vs base """ + verdict (WorldStudy.WinVsBase(report, "sudo", "test")) + """, SUDO vs SFT """ + verdict (WorldStudy.HeadToHead(report, "sudo", "sft", "test")) + """,
SUDO vs DPO """ + verdict (WorldStudy.HeadToHead(report, "sudo", "dpo", "test")) + """; without guidance (CFG 1), SUDO vs base """ + verdict (WorldStudy.WinVsBase(report, "sudo", "test@cfg1")) + """.

## Real-scale commands (GPU; not run here)

```bash
# SD1.5, the SUDO launcher's settings: lr 1e-6 without --scale_lr, 2000 steps, 500 warmup, β 5000, 0.5·DPO + 0.5·MSE.
./sudoml train --method sudo --pretrained_model_name_or_path runwayml/stable-diffusion-v1-5 \
    --dataset_name /data/pickapic_v2 --train_batch_size 1 --gradient_accumulation_steps 128 \
    --max_train_steps 2000 --learning_rate 1e-6 --lr_scheduler constant_with_warmup --lr_warmup_steps 500 \
    --beta_dpo 5000 --mixed_precision fp16 --cache_dir /data/hf --output_dir runs/sudo-sd15
# SDXL: --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 --sdxl --use_adafactor \
#       --gradient_checkpointing --resolution 1024 --lr_warmup_steps 200
# From F#: dotnet fsi recipes/sudo.fsx -- --model runwayml/stable-diffusion-v1-5 --data /data/pickapic_v2 ...
```
""")
