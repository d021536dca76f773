// One rank of the data-parallel trainer tests (DataParallelTests.cs launches two with Launcher.Run, as
// `sudoml launch --nproc_per_node 2` does): trains with the flags given (the train.py vocabulary) and writes the
// pair indices of each micro-batch it trained on to <seen_dir>/rank<R>.txt, one line per micro-batch.
#load "../../scripts/_load.fsx"
open System.IO
open _load
open Sudo.Training

let config, extra = trainConfig [ ("seen_dir", "") ]
let trainer = new Trainer(config)
let seen = Path.Combine(extra "seen_dir", sprintf "rank%d.txt" trainer.data_parallel.rank)
Directory.CreateDirectory(extra "seen_dir") |> ignore
trainer.add_BatchLoaded(fun records ->
    File.AppendAllText(seen, (records |> Seq.map (fun r -> string r.index) |> String.concat " ") + "\n"))
trainer.Train()
printfn "world %d rank %d done at step %d" trainer.data_parallel.world_size trainer.data_parallel.rank trainer.global_step
trainer.Dispose()
