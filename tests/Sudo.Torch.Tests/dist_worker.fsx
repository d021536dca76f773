// Rank 1 of the two-process c10d tests (DistributedTests.cs runs rank 0 in the test process): reads its place from
// the torchrun variables, takes part in the same collectives, and prints what it received.
#r "../../artifacts/bin/Sudo.Torch/release/Sudo.Torch.dll"
open System
open Sudo.Torch

let scenario = fsi.CommandLineArgs.[1]
let env = DistEnv.FromEnvironment()
let pg = ProcessGroup.init(env, "gloo", Nullable(TimeSpan.FromSeconds 120.0), "test")
let show (t: Tensor) = String.Join(",", t.ToArray<float32>())
match scenario with
| "collectives" ->
    let r = float32 (pg.rank + 1)
    let a = torch.tensor([| r; 10.0f * r |])
    pg.all_reduce(a, CollectiveOp.SUM)
    let b = torch.tensor([| r; 10.0f * r |])
    pg.all_reduce(b, CollectiveOp.AVG)
    let c = if pg.rank = 0 then torch.tensor([| 7.0f; 8.0f; 9.0f |]) else torch.zeros([| 3L |])
    pg.broadcast(c, 0)
    let g = pg.all_gather(torch.tensor([| float32 pg.rank * 2.0f |]))
    let v = pg.all_gather_variable(torch.full([| int64 pg.rank + 1L; 2L |], Scalar.op_Implicit (float pg.rank)))
    pg.barrier()
    printfn "sum %s" (show a)
    printfn "avg %s" (show b)
    printfn "bcast %s" (show c)
    printfn "gather %s" (String.Join(";", g |> Array.map show))
    printfn "variable %s" (String.Join(";", v |> Array.map (fun t -> sprintf "%d:%s" (t.size 0) (show t))))
| "hang" ->
    // Alive but never joins the collective: blocks until the test closes its stdin.
    pg.barrier()
    Console.In.ReadToEnd() |> ignore
| "die" when pg.rank > 0 ->
    // Leaves without taking part: the peer's next collective must fail, not hang.
    printfn "leaving"
    exit 3
| "die" ->
    try
        pg.all_reduce(torch.ones([| 4L |]))
        printfn "all_reduce completed without the peer"
    with e ->
        eprintfn "error: %s" e.Message
        exit 1
| s -> failwithf "unknown scenario %s" s
pg.Dispose()
