// The one place F# scripts get Sudo from: `#load "../scripts/_load.fsx"` (path relative to the script).
// References the built assemblies by absolute path and prints which native library was loaded.
// Build first with `dotnet build -c Release` (./sudoml and scripts/test.sh do it).
#r "../artifacts/bin/Sudo.Torch/release/Sudo.Torch.dll"
#r "../artifacts/bin/Sudo.Models/release/Sudo.Models.dll"
#r "../artifacts/bin/Sudo.Data/release/Sudo.Data.dll"
#r "../artifacts/bin/Sudo.Diffusion/release/Sudo.Diffusion.dll"
#r "../artifacts/bin/Sudo.Preference/release/Sudo.Preference.dll"
#r "../artifacts/bin/Sudo.Training/release/Sudo.Training.dll"
#r "../artifacts/bin/Sudo.Worlds.Shapes/release/Sudo.Worlds.Shapes.dll"

open Sudo.Torch

let private info = Library.Info()
eprintfn "sudo: native %s | libtorch %s (%s, %s) | threads torch=%d blas=%d"
    info.NativePath info.TorchVersion info.TorchLibrary info.Flavour info.TorchThreads info.BlasThreads

/// The recipe's command line (after `dotnet fsi recipe.fsx --`).
let recipeArgv : string[] = fsi.CommandLineArgs |> Array.skip 1 |> Array.filter (fun s -> s <> "--")

let private bind<'T when 'T: not struct> (extras: (string * string) list) =
    let b = Sudo.Training.Flags.Bind<'T>(recipeArgv, extras = readOnlyDict extras)
    for n in b.notes do eprintfn "%s" n
    b.value, (fun (name: string) -> b.extras.[name])

/// An offline run's settings from the recipe's flags: the one vocabulary of `sudoml train` (Diffusion-DPO
/// train.py's flags and defaults, docs/flags.md), plus the recipe's own flags given as (name, default).
/// Returns the config and a lookup of the recipe's own flags.
let trainConfig (extras: (string * string) list) = bind<Sudo.Training.TrainConfig> extras

/// An SPO run's settings from the recipe's flags (SpoTrainConfig: SPO's defaults, the same flag names).
let spoConfig (extras: (string * string) list) = bind<Sudo.Training.SpoTrainConfig> extras

/// A step-aware preference model run's settings from the recipe's flags (SpmTrainConfig: SPO's SPM defaults).
let spmConfig (extras: (string * string) list) = bind<Sudo.Training.SpmTrainConfig> extras

/// Flags of a recipe that trains nothing: (name, default) pairs; unknown flags are refused.
let recipeOptions (options: (string * string) list) =
    let d = Sudo.Training.Flags.Options(recipeArgv, readOnlyDict options)
    fun (name: string) -> d.[name]
