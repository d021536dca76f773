// One rank of the data-parallel SPO tests (DataParallelTests.cs launches two with Launcher.Run).
//   --scenario gather: all-gathers synthetic step pairs of different counts per rank (one rank with none) and
//                      prints every gathered pair: t, prompt index, prompt, first value, dtypes and shapes.
//   --scenario train:  an SPO run with the flags given (SpoTrainConfig's vocabulary) on the prompts given.
#load "../../scripts/_load.fsx"
open System
open _load
open Sudo.Torch
open Sudo.Preference
open Sudo.Training

let config, extra = spoConfig [ ("scenario", "train"); ("prompts", "") ]
let prompts = (extra "prompts").Split('|', StringSplitOptions.RemoveEmptyEntries)
match extra "scenario" with
| "gather" ->
    use dp = DataParallel.FromEnvironment("cpu")
    let r = dp.rank
    let pair (i: int) (t: int64) (promptIndex: int) =
        let v = float (100 * r + i)
        let full (shape: int64[]) (x: float) = torch.full(shape, Scalar.op_Implicit x)
        StepPair(t, full [| 1L; 4L; 2L; 2L |] v, full [| 1L; 4L; 2L; 2L |] (v + 0.5), torch.zeros([| 1L; 4L; 2L; 2L |]),
                 torch.ones([| 1L; 4L; 2L; 2L |]), (full [| 1L; 3L; 5L |] v).``to``(ScalarType.Float16), torch.zeros([| 1L; 3L; 5L |]), "local",
                 prompt_index = promptIndex)
    // Round A: rank 0 keeps three pairs, rank 1 one. Round B: rank 0 none, rank 1 two.
    let rounds =
        [ "A", (if r = 0 then [ pair 0 900L 0; pair 1 800L 1; pair 2 700L 0 ] else [ pair 0 800L 1 ])
          "B", (if r = 0 then [] else [ pair 0 500L 0; pair 1 500L 1 ]) ]
    for name, local in rounds do
        let all = SpoTrainer.GatherPairs(dp, Collections.Generic.List<StepPair>(local), 2 * r, prompts)
        for p in all do
            printfn "%s t=%d prompt=%d:%s v=%g w=%g cond=%A/%A shape=%A" name p.t p.prompt_index p.prompt
                (p.x_t_w.flatten().[0L].item()) (p.x_t_l.flatten().[0L].item()) p.cond.dtype (p.cond.flatten().[0L].item()) p.x_w.shape
        printfn "%s count=%d" name all.Count
        for p in all do p.Dispose()
| _ ->
    use trainer = SpoTrainer.Open(config)
    trainer.Train(prompts)
    printfn "world %d rank %d done at step %d" trainer.data_parallel.world_size trainer.data_parallel.rank trainer.global_step
