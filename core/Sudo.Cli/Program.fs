module Sudo.Cli.Program

open System
open Argu

type InfoArgs =
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Json -> "print the library info as one JSON object."

type BenchArgs =
    | [<MainCommand; ExactlyOnce>] Target of target: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Target _ -> "what to measure: engine, unet."

type DemoArgs =
    | Steps of int
    | Seed of int64
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Steps _ -> "training steps (default 300)."
            | Seed _ -> "random seed (default 0)."

type ParityArgs =
    | Model of folder: string
    | Io of file: string
    | Component of name: string
    | Tolerance of factor: float
    | Tokenizer of folder: string
    | Cases of file: string
    | Schedulers of file: string
    | Pipeline of folder: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "a diffusers/transformers component folder (config.json + weights)."
            | Io _ -> "the io.safetensors with in_* inputs and out_*/dbg_* reference outputs."
            | Component _ -> "unet, vae, clip_text, clip_text_proj or clip_full (default: from config.json)."
            | Tolerance _ -> "max |error| <= factor * max(1, max |reference|) (default 1e-4 for fp32 models)."
            | Tokenizer _ -> "a CLIP tokenizer folder (vocab.json, merges.txt, special_tokens_map.json)."
            | Cases _ -> "a golden tokenizer jsonl (prompt, ids, attention_mask, unpadded_ids, *_noftfy)."
            | Schedulers _ -> "a scheduler golden io.safetensors (params.json beside it)."
            | Pipeline _ -> "a golden pipeline folder (with params.json); give its io.safetensors with --io."

[<RequireSubcommand>]
type CliArgs =
    | [<CliPrefix(CliPrefix.None)>] Info of ParseResults<InfoArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<CliPrefix(CliPrefix.None)>] Demo of ParseResults<DemoArgs>
    | [<CliPrefix(CliPrefix.None)>] Parity of ParseResults<ParityArgs>
    | Torch_Threads of int
    | Blas_Threads of int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Info _ -> "libtorch version, build flavour, devices, threads and BLAS."
            | Bench _ -> "print speed figures as JSON (sudoml bench engine)."
            | Demo _ -> "a small real training run (conv net on a synthetic task)."
            | Parity _ -> "compare a component with golden outputs of the reference libraries."
            | Torch_Threads _ -> "libtorch intra-op threads (default: all cores)."
            | Blas_Threads _ -> "OpenBLAS threads (default: all cores)."

[<EntryPoint>]
let main argv =
    let parser = ArgumentParser.Create<CliArgs>(programName = "sudoml")
    try
        let args = parser.ParseCommandLine(argv)
        args.TryGetResult Torch_Threads |> Option.iter Sudo.Torch.torch.set_num_threads
        args.TryGetResult Blas_Threads |> Option.iter Sudo.Torch.torch.set_blas_threads
        match args.GetSubCommand() with
        | Info a -> Commands.info (a.Contains Json)
        | Bench a ->
            match a.GetResult Target with
            | "engine" -> Commands.benchEngine ()
            | "unet" -> Commands.benchUnet ()
            | other ->
                eprintfn "sudoml bench: unknown target '%s' (expected: engine, unet)" other
                2
        | Demo a -> Commands.demo (a.GetResult(Steps, defaultValue = 300)) (a.GetResult(Seed, defaultValue = 0L))
        | Parity a ->
            match a.TryGetResult Model, a.TryGetResult Io, a.TryGetResult Tokenizer, a.TryGetResult Cases with
            | _ when a.Contains Schedulers -> Commands.paritySchedulers (a.GetResult Schedulers) (a.TryGetResult Tolerance)
            | _ when a.Contains Pipeline ->
                let folder = a.GetResult Pipeline
                Commands.parityPipeline folder (a.GetResult(Io, defaultValue = System.IO.Path.Combine(folder, "io.safetensors")))
            | Some m, Some io, None, None -> Commands.parityModel m io (a.TryGetResult Component) (a.TryGetResult Tolerance)
            | None, None, Some t, Some c -> Commands.parityTokenizer t c
            | _ ->
                eprintfn "sudoml parity: give --model <folder> --io <io.safetensors>, --tokenizer <folder> --cases <file.jsonl>, or --schedulers <io.safetensors>"
                2
        | _ ->
            eprintfn "%s" (parser.PrintUsage())
            2
    with
    | :? ArguParseException as e ->
        eprintfn "%s" e.Message
        2
    | :? Sudo.Torch.TorchException as e ->
        eprintfn "sudoml: libtorch error in %s: %s" e.Op e.NativeMessage
        1
    | :? ArgumentException as e ->
        eprintfn "sudoml: %s" e.Message
        2
    | :? System.IO.IOException as e ->
        eprintfn "sudoml: %s" e.Message
        1
    | :? System.IO.InvalidDataException as e ->
        eprintfn "sudoml: %s" e.Message
        1
    | :? NotSupportedException as e ->
        eprintfn "sudoml: %s" e.Message
        1
