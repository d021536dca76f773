// Prototyping a new loss inline: Diffusion-DPO with a per-timestep weight w(t) = SNR(t)^γ / mean, a
// variant the papers leave at ω(λ_t) = 1. The loop, data, reference and checkpoints are the library's.
// dotnet fsi recipes/dpo_timestep_weighted.fsx -- --model <pipeline> --data <pair folder> [--gamma 0.5]
#load "../scripts/_load.fsx"
open _load
open Sudo.Torch
open Sudo.Preference
open Sudo.Training

let gamma = float (arg "gamma" "0.5")
let beta = float (arg "beta_dpo" "5000")
let config =
    TrainConfig(
        method = "dpo",
        pretrained_model_name_or_path = arg "model" "../shared/golden/pipe_sd15",
        dataset_name = arg "data" "runs/pairs",
        output_dir = arg "output_dir" "runs/dpo_timestep_weighted",
        train_batch_size = 4, max_train_steps = int (arg "max_train_steps" "100"),
        learning_rate = float (arg "learning_rate" "1e-5"), lr_warmup_steps = 10, checkpointing_steps = 50)
let trainer = new Trainer(config)
trainer.loss_fn <- LossFn(fun s ->
    use scope = torch.NewDisposeScope()
    let snr = trainer.noise_schedule.snr(s.timesteps.narrow(0L, 0L, int64 s.pairs))
    let w = snr.pow(gamma) / snr.pow(gamma).mean()
    let b = int64 s.pairs
    let dm = s.model_mse.narrow(0L, 0L, b) - s.model_mse.narrow(0L, b, b)
    let dr = s.ref_mse.narrow(0L, 0L, b) - s.ref_mse.narrow(0L, b, b)
    let z = (dm - dr) * w * (-0.5 * beta)
    let loss = torch.nn.functional.softplus(-z).mean()
    let acc = z.gt(0.0).``float``().mean()
    LossOutput(scope.MoveToOuter(loss), readOnlyDict [ "implicit_acc", scope.MoveToOuter(acc) ]))
trainer.Train()
