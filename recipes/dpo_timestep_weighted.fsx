// Prototyping a new loss inline: Diffusion-DPO with a per-timestep weight w(t) = SNR(t)^γ / mean, a
// variant the papers leave at ω(λ_t) = 1. The loop, data, reference and checkpoints are the library's.
// dotnet fsi recipes/dpo_timestep_weighted.fsx -- --model <pipeline> --data <pair folder> [--gamma 0.5]
#load "../scripts/_load.fsx"
open _load
open Sudo.Torch
open Sudo.Preference
open Sudo.Training

let gamma = float (arg "gamma" "0.5")
let trainer = new Trainer(offlineConfig "dpo" "runs/dpo_timestep_weighted")
let beta = trainer.config.beta_dpo
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
