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
            | Target _ -> "what to measure: engine, unet, sample."

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
    | Losses of file: string
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
            | Losses _ -> "a losses golden io.safetensors (params.json and the UNets it names beside it)."

type SampleArgs =
    | [<Mandatory>] Model of folder: string
    | Prompt of text: string
    | Prompts of file: string
    | Negative_Prompt of text: string
    | Steps of int
    | Guidance of float
    | Scheduler of name: string
    | Seed of int64
    | Images_Per_Prompt of int
    | Height of int
    | Width of int
    | Eta of float
    | Dtype of name: string
    | Device of name: string
    | Batch_Size of int
    | [<Mandatory>] Out of dir: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "a diffusers pipeline folder (or an org/name in the local Hugging Face cache)."
            | Prompt _ -> "the prompt."
            | Prompts _ -> "a text file with one prompt per line."
            | Negative_Prompt _ -> "negative prompt for every image."
            | Steps _ -> "denoising steps (default 30)."
            | Guidance _ -> "classifier-free guidance scale (default 7.5)."
            | Scheduler _ -> "ddim, ddpm, euler or dpmpp2m (default: the pipeline's)."
            | Seed _ -> "base seed; image i uses seed + i (default 0)."
            | Images_Per_Prompt _ -> "images per prompt (default 1)."
            | Height _ -> "image height (multiple of 8)."
            | Width _ -> "image width (multiple of 8)."
            | Eta _ -> "DDIM eta (default 0)."
            | Dtype _ -> "float32 or bfloat16 (fp16 only on CUDA)."
            | Device _ -> "cpu or cuda:N (default cpu)."
            | Batch_Size _ -> "images denoised together (default 4; never changes an image)."
            | Out _ -> "output folder."

[<RequireSubcommand>]
type CliArgs =
    | [<CliPrefix(CliPrefix.None)>] Info of ParseResults<InfoArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<CliPrefix(CliPrefix.None)>] Demo of ParseResults<DemoArgs>
    | [<CliPrefix(CliPrefix.None)>] Parity of ParseResults<ParityArgs>
    | [<CliPrefix(CliPrefix.None)>] Sample of ParseResults<SampleArgs>
    | Torch_Threads of int
    | Blas_Threads of int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Info _ -> "libtorch version, build flavour, devices, threads and BLAS."
            | Bench _ -> "print speed figures as JSON (sudoml bench engine)."
            | Demo _ -> "a small real training run (conv net on a synthetic task)."
            | Parity _ -> "compare a component with golden outputs of the reference libraries."
            | Sample _ -> "text-to-image: PNGs, grid.png and images.jsonl."
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
            | "sample" -> Commands.benchSample ()
            | other ->
                eprintfn "sudoml bench: unknown target '%s' (expected: engine, unet, sample)" other
                2
        | Demo a -> Commands.demo (a.GetResult(DemoArgs.Steps, defaultValue = 300)) (a.GetResult(DemoArgs.Seed, defaultValue = 0L))
        | Parity a ->
            match a.TryGetResult ParityArgs.Model, a.TryGetResult ParityArgs.Io, a.TryGetResult ParityArgs.Tokenizer, a.TryGetResult ParityArgs.Cases with
            | _ when a.Contains ParityArgs.Schedulers -> Commands.paritySchedulers (a.GetResult ParityArgs.Schedulers) (a.TryGetResult ParityArgs.Tolerance)
            | _ when a.Contains ParityArgs.Losses -> Commands.parityLosses (a.GetResult ParityArgs.Losses) (a.TryGetResult ParityArgs.Tolerance)
            | _ when a.Contains ParityArgs.Pipeline ->
                let folder = a.GetResult ParityArgs.Pipeline
                Commands.parityPipeline folder (a.GetResult(ParityArgs.Io, defaultValue = System.IO.Path.Combine(folder, "io.safetensors")))
            | Some m, Some io, None, None -> Commands.parityModel m io (a.TryGetResult ParityArgs.Component) (a.TryGetResult ParityArgs.Tolerance)
            | None, None, Some t, Some c -> Commands.parityTokenizer t c
            | _ ->
                eprintfn "sudoml parity: give --model <folder> --io <io.safetensors>, --tokenizer <folder> --cases <file.jsonl>, or --schedulers <io.safetensors>"
                2
        | Sample a ->
            let prompts =
                match a.TryGetResult Prompt, a.TryGetResult Prompts with
                | Some p, None -> ResizeArray [ p ]
                | None, Some f -> Sudo.Diffusion.Sampling.ReadPrompts f
                | _ -> raise (ArgumentException "give exactly one of --prompt and --prompts")
            let settings =
                Sudo.Diffusion.SampleSettings(
                    model = a.GetResult SampleArgs.Model,
                    prompts = prompts,
                    out_dir = a.GetResult Out,
                    negative_prompt = (a.TryGetResult Negative_Prompt |> Option.toObj),
                    steps = a.GetResult(SampleArgs.Steps, defaultValue = 30),
                    guidance = a.GetResult(Guidance, defaultValue = 7.5),
                    scheduler = (a.TryGetResult Scheduler |> Option.toObj),
                    seed = a.GetResult(SampleArgs.Seed, defaultValue = 0L),
                    images_per_prompt = a.GetResult(Images_Per_Prompt, defaultValue = 1),
                    height = (a.TryGetResult Height |> Option.toNullable),
                    width = (a.TryGetResult Width |> Option.toNullable),
                    eta = a.GetResult(Eta, defaultValue = 0.0),
                    dtype = a.GetResult(Dtype, defaultValue = "float32"),
                    device = a.GetResult(Device, defaultValue = "cpu"),
                    batch_size = a.GetResult(Batch_Size, defaultValue = 4))
            Commands.sample settings
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
