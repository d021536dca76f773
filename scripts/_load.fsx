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

/// Recipe arguments: `--name value` pairs after the script name (dotnet fsi recipe.fsx -- --name value).
let recipeArgs : Map<string, string> =
    let a = fsi.CommandLineArgs |> Array.skip 1 |> Array.filter (fun s -> s <> "--")
    if a.Length % 2 <> 0 then failwithf "recipe arguments come in --name value pairs, got: %s" (String.concat " " a)
    a |> Array.chunkBySize 2 |> Array.map (fun p -> p.[0].TrimStart('-').Replace('-', '_'), p.[1]) |> Map.ofArray

let arg (name: string) (dflt: string) = recipeArgs |> Map.tryFind name |> Option.defaultValue dflt

/// The offline methods' settings (dpo, sft, sudo) from recipe arguments, with the Diffusion-DPO train.py
/// flag names; defaults are CPU-scale (tiny golden pipeline, runs/pairs), every one overridable.
let offlineConfig (methodName: string) (outputDir: string) =
    Sudo.Training.TrainConfig(
        method = methodName,
        pretrained_model_name_or_path = arg "model" "../shared/golden/pipe_sd15",
        dataset_name = arg "data" "runs/pairs",
        output_dir = arg "output_dir" outputDir,
        train_batch_size = int (arg "train_batch_size" "4"),
        gradient_accumulation_steps = int (arg "gradient_accumulation_steps" "1"),
        max_train_steps = int (arg "max_train_steps" "200"),
        learning_rate = float (arg "learning_rate" "1e-5"),
        lr_warmup_steps = int (arg "lr_warmup_steps" "20"),
        beta_dpo = float (arg "beta_dpo" "5000"),
        sdxl = (arg "sdxl" "false" = "true"),
        lora_rank = int (arg "lora_rank" "0"),
        mixed_precision = arg "mixed_precision" "no",
        allow_slow_bf16 = (arg "allow_slow_bf16" "false" = "true"),
        checkpointing_steps = int (arg "checkpointing_steps" "100"),
        sudo_derangement = (arg "sudo_derangement" "false" = "true"),
        resolution = (match arg "resolution" "" with "" -> System.Nullable() | r -> System.Nullable(int r)),
        no_hflip = (arg "no_hflip" "false" = "true"),
        cache_latents = (arg "cache_latents" "false" = "true"),
        proportion_empty_prompts = float (arg "proportion_empty_prompts" "0.2"),
        seed = int64 (arg "seed" "0"))
