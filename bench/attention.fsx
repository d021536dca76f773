// The 4096-token self-attention of SD1.5 at 512 px (first UNet level: 8 heads, d = 40) through Sudo's
// scaled_dot_product_attention as Sudo chooses it (on libtorch < 2.1: the blocked kernel with gradients, the composed ops
// without, at this size), the blocked kernel always and the composed ops always, taken in turn. Best of ROUNDS (3)
// runs, each after a warm-up; B images (B = 2 is a CFG step or a DPO pair).
// PyTorch side: bench/reference/attention_ref.py. Usage (same threads on both sides):
//   B=1 SUDO_TORCH_THREADS=1 SUDO_BLAS_THREADS=1 dotnet fsi bench/attention.fsx
#load "../scripts/_load.fsx"
open Sudo.Torch

let env (name: string) (fallback: string) = match System.Environment.GetEnvironmentVariable name with null -> fallback | s -> s
let time n (f: unit -> unit) =
    f ()
    [ for _ in 1..n -> let sw = System.Diagnostics.Stopwatch.StartNew() in f (); sw.Elapsed.TotalSeconds ] |> List.min
let B = int64 (env "B" "2")
let g = new Generator(0L)
let q0, k0, v0 = torch.randn([| B; 8L; 4096L; 40L |], g), torch.randn([| B; 8L; 4096L; 40L |], g), torch.randn([| B; 8L; 4096L; 40L |], g)
let fwd () =
    use _ = torch.NewDisposeScope()
    use _ng = torch.no_grad()
    torch.nn.functional.scaled_dot_product_attention(q0, k0, v0) |> ignore
let fb () =
    use _ = torch.NewDisposeScope()
    let q, k, v = q0.detach().requires_grad_(), k0.detach().requires_grad_(), v0.detach().requires_grad_()
    torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
// Sudo's choice, the blocked kernel always (bound 0) and the composed ops always (bound long.MaxValue), taken in turn
// so that a noisy machine affects all three alike.
let modes = [ "default", torch.backends.cpu.blocked_attention_min_bytes; "blocked", 0L; "composed", System.Int64.MaxValue ]
let rounds = int (env "ROUNDS" "3")
let best = System.Collections.Generic.Dictionary<string, float * float>()
for _ in 1..rounds do
    for name, bound in modes do
        torch.backends.cpu.blocked_attention_min_bytes <- bound
        let f, b = time 1 fwd, time 1 fb
        let f0, b0 = match best.TryGetValue name with | true, v -> v | _ -> (infinity, infinity)
        best.[name] <- (min f f0, min b b0)
for name, _ in modes do
    let f, b = best.[name]
    printfn "sudo %s B=%d: forward %.3f s, forward+backward %.3f s (best of %d)" name B f b rounds
