// The one place F# scripts get Sudo from: `#load "../scripts/_load.fsx"` (path relative to the script).
// References the built assemblies by absolute path and prints which native library was loaded.
// Build first with `dotnet build -c Release` (./sudoml and scripts/test.sh do it).
#r "../artifacts/bin/Sudo.Torch/release/Sudo.Torch.dll"
#r "../artifacts/bin/Sudo.Models/release/Sudo.Models.dll"
#r "../artifacts/bin/Sudo.Data/release/Sudo.Data.dll"
#r "../artifacts/bin/Sudo.Diffusion/release/Sudo.Diffusion.dll"
#r "../artifacts/bin/Sudo.Preference/release/Sudo.Preference.dll"
#r "../artifacts/bin/Sudo.Training/release/Sudo.Training.dll"

open Sudo.Torch

let private info = Library.Info()
eprintfn "sudo: native %s | libtorch %s (%s, %s) | threads torch=%d blas=%d"
    info.NativePath info.TorchVersion info.TorchLibrary info.Flavour info.TorchThreads info.BlasThreads

/// Recipe arguments: `--name value` pairs after the script name (dotnet fsi recipe.fsx -- --name value).
let recipeArgs : Map<string, string> =
    let a = fsi.CommandLineArgs |> Array.skip 1 |> Array.filter (fun s -> s <> "--")
    if a.Length % 2 <> 0 then failwithf "recipe arguments come in --name value pairs, got: %s" (String.concat " " a)
    a |> Array.chunkBySize 2 |> Array.map (fun p -> p.[0].TrimStart('-').Replace('-', '_'), p.[1]) |> Map.ofArray

let arg (name: string) (dflt: string) = recipeArgs |> Map.tryFind name |> Option.defaultValue dflt
