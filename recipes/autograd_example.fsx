// Autograd from F#: fit y = 3x + 2 with a hand-written SGD loop, then take a second derivative.
// Run: dotnet fsi recipes/autograd_example.fsx   (after `dotnet build -c Release` or ./sudoml info)
#load "../scripts/_load.fsx"

open Sudo.Torch

let g = new Generator(0L)
let x = torch.randn([| 64L; 1L |], g)
let y = x * 3.0 + 2.0
let w = new Parameter(torch.zeros([| 1L |]))
let b = new Parameter(torch.zeros([| 1L |]))
let opt = new torch.optim.SGD([ w; b ], lr = 0.1)

for step in 0..99 do
    use _ = torch.NewDisposeScope()
    let loss = torch.nn.functional.mse_loss(x * w + b, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 25 = 0 then printfn "step %3d  loss %.6f" step (loss.item())

printfn "w = %.4f, b = %.4f (true 3, 2)" (w.item()) (b.item())

// d²/dt² of t⁴ at t = 2 is 12·t² = 48, through autograd.grad with create_graph.
let t = torch.tensor([| 2.0 |], requires_grad = true)
let dt = torch.autograd.grad([| t.pow(4.0).sum() |], [| t |], create_graph = true).[0]
let d2t = torch.autograd.grad([| dt.sum() |], [| t |]).[0]
printfn "d/dt t^4 = %.1f, d2/dt2 t^4 = %.1f at t = 2" (dt.item()) (d2t.item())
