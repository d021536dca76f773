// The one place F# scripts get Sudo from: `#load "../scripts/_load.fsx"` (path relative to the script).
// References the built assemblies by absolute path and prints which native library was loaded.
// Build first with `dotnet build -c Release` (./sudoml and scripts/test.sh do it).
#r "../artifacts/bin/Sudo.Torch/release/Sudo.Torch.dll"

open Sudo.Torch

let private info = Library.Info()
eprintfn "sudo: native %s | libtorch %s (%s, %s) | threads torch=%d blas=%d"
    info.NativePath info.TorchVersion info.TorchLibrary info.Flavour info.TorchThreads info.BlasThreads
