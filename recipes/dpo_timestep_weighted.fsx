// Prototyping a new loss inline: Diffusion-DPO with a per-timestep weight w(t) = SNR(t)^γ / mean, a
// variant the papers leave at ω(λ_t) = 1. The loop, data, reference and checkpoints are the library's.
// dotnet fsi recipes/dpo_timestep_weighted.fsx -- --pretrained_model_name_or_path <pipeline> --dataset_name <pair folder> [--gamma 0.5]
#load "../scripts/_load.fsx"
open _load
open Sudo.Torch
open Sudo.Preference
open Sudo.Training

let config, recipeFlag = trainConfig [ ("gamma", "0.5") ]
let gamma, beta = float (recipeFlag "gamma"), config.beta_dpo
let weighted =
    LossFn(fun s ->
        use scope = torch.NewDisposeScope()
        let b = int64 s.pairs
        let snr = s.schedule.snr(s.timesteps.narrow(0L, 0L, b))
        let w = snr.pow(gamma) / snr.pow(gamma).mean()
        let dm = s.model_mse.narrow(0L, 0L, b) - s.model_mse.narrow(0L, b, b)
        let dr = s.ref_mse.narrow(0L, 0L, b) - s.ref_mse.narrow(0L, b, b)
        let z = (dm - dr) * w * (-0.5 * beta)
        let loss = torch.nn.functional.softplus(-z).mean()
        let acc = z.gt(0.0).``float``().mean()
        LossOutput(scope.MoveToOuter(loss), readOnlyDict [ ("implicit_acc", scope.MoveToOuter(acc)) ]))
let method = Method("dpo_snr", DatasetPairs(), weighted, ReferencePolicy.FrozenCopy, loss_description = sprintf "DPO (β %g) weighted by SNR(t)^%g / mean" beta gamma)
let trainer = new Trainer(config, method)
trainer.Train()
