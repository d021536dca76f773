// A new method in a few lines: SUDO-style self-pairs whose loser is the winner of the micro-batch pair whose
// caption shares the fewest words with this pair's (a different prompt cluster, not any random other image),
// trained with DPO + λ·MSE. Pair source, loss and reference are values; the loop, data and checkpoints are the library's.
// dotnet fsi recipes/sudo_far_caption.fsx -- --pretrained_model_name_or_path <pipeline> --dataset_name <pair folder> [--mse_weight 1]
#load "../scripts/_load.fsx"
open _load
open Sudo.Torch
open Sudo.Preference
open Sudo.Training

let config, recipeFlag = trainConfig [ ("mse_weight", "1.0") ]
let words (c: string) = set (c.ToLowerInvariant().Split(' ', System.StringSplitOptions.RemoveEmptyEntries))
let overlap (a: string) (b: string) = float (Set.intersect (words a) (words b)).Count / float (max 1 (Set.union (words a) (words b)).Count)

let farthestCaption =
    { new OfflinePairSource() with
        member _.name = "farthest_caption"
        member _.uses_dataset_losers = false
        member _.Validate(batchSize) = if batchSize < 2 then invalidArg "train_batch_size" "farthest_caption pairs captions within a micro-batch: --train_batch_size must be ≥ 2"
        member _.Plan(batch, generator) =
            use order = torch.randperm(int64 batch.Count, generator)          // random tie-break, drawn from the checkpointed generator
            let rank = order.ToArray<int64>()
            let loserOf i = [ 0 .. batch.Count - 1 ] |> List.filter ((<>) i) |> List.minBy (fun j -> overlap batch.[i].caption batch.[j].caption, rank.[j])
            PairPlan([| for i in 0 .. batch.Count - 1 -> ImageRef(i, true) |], [| for i in 0 .. batch.Count - 1 -> ImageRef(loserOf i, true) |]) }

let lambda = float (recipeFlag "mse_weight")
let dpoPlusMse =
    LossFn(fun s ->
        use scope = torch.NewDisposeScope()
        let dpo = Losses.diffusion_dpo(s.model_mse, s.ref_mse, config.beta_dpo)
        let mse = s.model_mse.narrow(0L, 0L, int64 s.pairs).mean()
        let diagnostics = readOnlyDict [ "dpo_loss", scope.MoveToOuter(dpo.loss.detach()); "implicit_acc", scope.MoveToOuter(dpo.diagnostics.["implicit_acc"]) ]
        LossOutput(scope.MoveToOuter(dpo.loss + mse * lambda), diagnostics))

let method = Method("sudo_far_caption", farthestCaption, dpoPlusMse, ReferencePolicy.FrozenCopy, loss_description = sprintf "DPO (β %g) + %g·MSE" config.beta_dpo lambda)
let trainer = new Trainer(config, method)
trainer.Train()
