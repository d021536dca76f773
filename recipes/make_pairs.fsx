// A small local preference-pair folder for trying the recipes on a CPU: two samples per prompt from a
// pipeline folder, the one closer to the prompt's colour wins (a stand-in for human labels).
// dotnet fsi recipes/make_pairs.fsx -- --pretrained_model_name_or_path <pipeline folder> --output_dir <folder> [--pairs 16]
#load "../scripts/_load.fsx"
open _load
open Sudo.Torch
open Sudo.Data
open Sudo.Diffusion

let option = recipeOptions [ "pretrained_model_name_or_path", "../shared/golden/pipe_sd15"; "output_dir", "runs/pairs"; "pairs", "16" ]
let model = option "pretrained_model_name_or_path"
let out = option "output_dir"
let n = int (option "pairs")
let colours = [| "red", [| 1.0; 0.0; 0.0 |]; "green", [| 0.0; 1.0; 0.0 |]; "blue", [| 0.0; 0.0; 1.0 |] |]
System.IO.Directory.CreateDirectory out |> ignore
let pipe = StableDiffusionPipeline.from_pretrained(model, "ddim")
let lines = ResizeArray()
for i in 0 .. n - 1 do
    use scope = torch.NewDisposeScope()
    let name, rgb = colours.[i % colours.Length]
    let prompt = sprintf "a %s circle on a plain background" name
    let gens = [| new Generator(int64 (2 * i)); new Generator(int64 (2 * i + 1)) |]
    use r = pipe.call(GenerationOptions(prompt = [| prompt; prompt |], num_inference_steps = 8, guidance_scale = 5.0, generators = gens))
    // score = mean colour along the prompt's channel minus the others
    let score (k: int) = Array.init 3 (fun c -> r.images.[k].[c].mean().item() * (if rgb.[c] > 0.5 then 1.0 else -0.5)) |> Array.sum
    let w, l = if score 0 >= score 1 then 0, 1 else 1, 0
    for k, tag in [ w, "w"; l, "l" ] do
        ImageCodecs.Save(Images.FromTensor01(r.images.[k]), System.IO.Path.Combine(out, sprintf "%03d_%s.png" i tag))
    lines.Add(sprintf """{"caption": "%s", "winner": "%03d_w.png", "loser": "%03d_l.png"}""" prompt i i)
System.IO.File.WriteAllLines(System.IO.Path.Combine(out, "pairs.jsonl"), lines)
printfn "wrote %d pairs to %s" n out
