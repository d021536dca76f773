/// The sudoml subcommands: thin wrappers over the public API (a recipe can do all of this).
module Sudo.Cli.Commands

open System
open System.Text.Json
open Sudo.Torch

let private json (o: obj) =
    JsonSerializer.Serialize(o, JsonSerializerOptions(WriteIndented = false))

let info (asJson: bool) =
    let i = Library.Info()
    if asJson then
        printfn "%s" (json i)
    else
        printfn "sudoml (Sudo %s)" (Reflection.Assembly.GetExecutingAssembly().GetName().Version.ToString())
        printfn "libtorch       %s (%s build)" i.TorchVersion i.Flavour
        printfn "libtorch file  %s" i.TorchLibrary
        printfn "native shim    %s (C ABI v%d)" i.NativePath i.AbiVersion
        let cuda =
            if not i.CudaCompiled then "not compiled (CPU libtorch)"
            elif i.CudaAvailable then sprintf "available, %d device(s)" i.CudaDevices
            else "compiled, no device available"
        printfn "devices        cpu%s" (if i.CudaAvailable then sprintf ", cuda:0..%d" (i.CudaDevices - 1) else "")
        printfn "cuda           %s" cuda
        if i.CudaCompiled then
            let v (s: string) = if isNull s then "unknown" else s
            printfn "cuda versions  runtime %s, cuDNN %s, NCCL %s" (v i.CudaRuntime) (v i.Cudnn) (if isNull i.Nccl then "not loaded" else i.Nccl)
        for d in i.CudaDeviceList do
            printfn "  cuda:%d        %s, compute capability %s%s, %.1f GiB" d.Index d.Name d.ComputeCapability
                (if d.NativeBf16 then " (native bf16)" else " (no native bf16: use fp16)") (float d.TotalMemoryBytes / 1073741824.0)
        printfn "cpu            %s (%s)" i.Cpu.Model i.Cpu.Vendor
        printfn "cpu features   %s" i.Cpu.Summary
        let bf16 =
            if i.Cpu.NativeBf16 then "native (avx512_bf16 or amx_bf16)"
            elif i.Cpu.OneDnnBf16 then "emulated by oneDNN on AVX-512 (no avx512_bf16/amx_bf16)"
            else "no bf16 kernels (no avx512bw/vl/dq): bf16 runs in a scalar loop, far slower than fp32"
        let probe = Precision.ProbeBf16()
        let measured =
            if not (isNull probe.bf16_error) then sprintf "fails here: %s" probe.bf16_error
            else sprintf "measured %.2f× the fp32 time (linear + conv probe)%s" probe.slowdown (if probe.slowdown > Precision.SlowBf16Factor then ": bf16 requests are refused without --allow_slow_bf16" else "")
        printfn "cpu bf16       %s; %s" bf16 measured
        printfn "threads        torch intra-op %d, BLAS %d (SUDO_TORCH_THREADS / SUDO_BLAS_THREADS override), %d cores" i.TorchThreads i.BlasThreads Environment.ProcessorCount
        let spins =
            Library.ThreadPoolEnvironment.Keys
            |> Seq.map (fun k -> sprintf "%s=%s" k (Environment.GetEnvironmentVariable k |> Option.ofObj |> Option.defaultValue Library.ThreadPoolEnvironment.[k]))
        printfn "thread spins   %s" (String.Join(" ", spins))
        printfn "BLAS           %s" i.Blas
        printfn "oneDNN         %s" (if i.OneDnnEnabled then "on (CPU convolutions)" else "off (SUDO_MKLDNN=0)")
        printfn "attention      %s" (if i.FusedAttention then "fused scaled_dot_product_attention" else "composed matmul-softmax-matmul (libtorch < 2.1)")
    0

/// The device acceptance checks (Sudo.Bench.SelfTest): one line per check as it finishes, a summary, optional JSON.
let selftest (device: string) (quick: bool) (golden: string) (work: string option) (out: string option) (sections: string option) (smoke: bool) =
    if not (IO.Directory.Exists golden) then
        eprintfn "sudoml selftest: golden folder '%s' not found (pass --golden or set SUDO_SHARED)" golden
        2
    else
        let dir = work |> Option.defaultWith (fun () -> IO.Path.Combine(IO.Path.GetTempPath(), sprintf "sudo-selftest-%s" (Guid.NewGuid().ToString("N"))))
        let info = Library.Info()
        printfn "selftest on %s | libtorch %s (%s) | %s%s" device info.TorchVersion info.Flavour
            (if info.CudaDeviceList.Count > 0 then info.CudaDeviceList.[0].Name else info.Cpu.Model) (if quick then " | quick" else "")
        let opts =
            Sudo.Bench.SelfTestOptions(
                device = Device.Parse device, quick = quick, golden = golden, work = dir, smoke = smoke,
                sections = (match sections with Some s -> s.Split(',', StringSplitOptions.RemoveEmptyEntries) | None -> [| "engine"; "parity"; "train"; "fullsize" |]))
        let fmt (x: Nullable<float>) (f: float -> string) = if x.HasValue then f x.Value else "-"
        let print (r: Sudo.Bench.SelfTestRow) =
            let status = if r.skipped then "SKIP" elif r.passed then "ok  " else "FAIL"
            printfn "%s %-9s %-48s value %-10s s/step %-8s peak MB %-8s %s" status r.section r.name
                (fmt r.value (sprintf "%.4g")) (fmt r.seconds_per_step (sprintf "%.3f")) (fmt r.peak_allocated_mb (sprintf "%.0f")) r.detail
        let rows =
            try Sudo.Bench.SelfTest.Run(opts, Action<_>(print))
            finally if work.IsNone && IO.Directory.Exists dir then IO.Directory.Delete(dir, true)
        let failed = rows |> Seq.filter (fun r -> not r.passed) |> Seq.length
        printfn "selftest: %d checks, %d passed, %d failed, %d skipped" rows.Count (rows.Count - failed) failed (rows |> Seq.filter (fun r -> r.skipped) |> Seq.length)
        out |> Option.iter (fun f -> AtomicFile.WriteAllText(f, JsonSerializer.Serialize(rows, JsonSerializerOptions(WriteIndented = true))))
        if failed = 0 then 0 else 1

/// `sudoml convert`: diffusers folder ↔ single-file checkpoint (Sudo.Models.SingleFile), diffusers/PEFT LoRA ↔ kohya
/// (PipelineLoading.ExportKohya / ExportPeft); recipes call the same functions.
let convert (target: string) (source: string) (config: string option) (out: string) (dtype: string option) =
    let dt =
        match dtype with
        | None -> Nullable()
        | Some("fp16" | "float16") -> Nullable Sudo.Torch.ScalarType.Float16
        | Some("bf16" | "bfloat16") -> Nullable Sudo.Torch.ScalarType.BFloat16
        | Some("fp32" | "float32") -> Nullable Sudo.Torch.ScalarType.Float32
        | Some d -> invalidArg "--dtype" (sprintf "--dtype %s: expected fp16, bf16 or fp32" d)
    match target with
    | "single-file" ->
        let n = Sudo.Models.SingleFile.Export(source, out, dt)
        printfn "wrote %s: %d tensors in the original single-file layout" out n
        0
    | "diffusers" ->
        match config with
        | None ->
            eprintfn "sudoml convert --to diffusers: give --config <a diffusers pipeline folder of the same family> (its configs, tokenizers and scheduler; Sudo does not download them)"
            2
        | Some c ->
            Sudo.Models.SingleFile.Import(source, c, out, dt)
            printfn "wrote %s (a diffusers pipeline folder; configs from %s)" out c
            0
    | "kohya" ->
        match config with
        | None ->
            eprintfn "sudoml convert --to kohya: give --config <the diffusers pipeline folder the LoRA was trained on> (its UNet config and family give the kohya names)"
            2
        | Some c ->
            let n = Sudo.Diffusion.PipelineLoading.ExportKohya(source, c, out)
            printfn "wrote %s: %d tensors with kohya/webui names" out n
            0
    | "peft" ->
        match config with
        | None ->
            eprintfn "sudoml convert --to peft: give --config <the diffusers pipeline folder the LoRA is for> (its modules resolve the kohya names)"
            2
        | Some c ->
            let n = Sudo.Diffusion.PipelineLoading.ExportPeft(source, c, out)
            printfn "wrote %s: %d tensors as a diffusers/PEFT LoRA (pytorch_lora_weights.safetensors, adapter_config.json)" out n
            0
    | t ->
        eprintfn "sudoml convert --to %s: expected single-file, diffusers, kohya or peft" t
        2

let benchTrain () =
    let r = Sudo.Bench.TrainBench.Run()
    printfn "%s" (json r)
    0

/// This program's own command line up to `bench` (dotnet + dll when run through the host), for benches that time
/// their work in child processes of this same command.
let private selfArgv () =
    match Environment.ProcessPath with
    | p when IO.Path.GetFileNameWithoutExtension(p) = "dotnet" -> [| p; Environment.GetCommandLineArgs().[0]; "bench" |]
    | p -> [| p; "bench" |]

let benchData () =
    // Each measurement runs in a child process of this same command (peak RSS is per process).
    let r = Sudo.Bench.DataBench.Run(Array.append (selfArgv ()) [| "data" |])
    printfn "%s" (json r)
    0

let benchSoak (model: string) (dataset: string) (steps: int) (every: int) (methodName: string) =
    let r = Sudo.Bench.SoakBench.Run(model, dataset, steps, every, methodName, (fun l -> eprintfn "%s" l))
    printfn "%s" (json r)
    if r.flat then 0 else 1

let benchDdp () =
    // Each configuration runs as ranks of this same command under the launcher (children read SUDO_BENCH_DDP_CHILD).
    let r = Sudo.Bench.DdpBench.Run(Array.append (selfArgv ()) [| "ddp" |])
    printfn "%s" (json r)
    0

let benchSample () =
    let r = Sudo.Bench.SampleBench.Run()
    printfn "%s" (json r)
    0

let sample (settings: Sudo.Diffusion.SampleSettings) =
    let sw = Diagnostics.Stopwatch.StartNew()
    let progress (doneImages: float) (total: int) (step: int) =
        let frac = min 1.0 (doneImages / float total)
        let width = 30
        let filled = max 0 (min width (int (frac * float width)))
        eprintf "\r[%s%s] %3.0f%%  %.1f/%d images  step %d/%d  %.1fs " (String('#', filled)) (String('.', width - filled)) (100.0 * frac) doneImages total step settings.steps sw.Elapsed.TotalSeconds
    let files = Sudo.Diffusion.Sampling.Run(settings, Action<float, int, int>(progress))
    eprintfn ""
    printfn "wrote %d images, grid.png and images.jsonl to %s in %.1f s" files.Count settings.out_dir sw.Elapsed.TotalSeconds
    0

let benchUnet () =
    let r = Sudo.Bench.UNetBench.Run()
    printfn "%s" (json r)
    0

let benchSide (o: Sudo.Bench.SideOptions) =
    let r = Sudo.Bench.CompareBench.RunSide o
    printfn "%s" (r.ToJsonString())
    0

let benchCompare (full: bool) (only: string list) (configJson: string) (trainRuns: int) (sampleRuns: int) (fullRuns: int) (refEnv: string option) (out: string option) (avx2: bool) (refMalloc: string) =
    let shared = Environment.GetEnvironmentVariable "SUDO_SHARED" |> Option.ofObj |> Option.defaultValue "../shared"
    let sd15 = if isNull configJson then IO.Path.Combine(shared, "golden", "keys", "sd15_unet_config.json") else configJson
    Sudo.Bench.CompareBench.RefAllocatorEnvironment refMalloc |> ignore // a bad name or a missing library stops here, before any run
    let info = Library.Info()
    printfn "bench compare | %s [%s]%s | libtorch %s | torch threads %d, BLAS threads %d | PyTorch allocator %s | %s" info.Cpu.Model info.Cpu.Summary
        (if avx2 then " emulating AVX2-only kernels" else "") info.TorchVersion info.TorchThreads info.BlasThreads refMalloc (DateTime.UtcNow.ToString("yyyy-MM-dd"))
    let workloads = Sudo.Bench.CompareBench.Workloads(full, sd15, trainRuns, sampleRuns, fullRuns, only)
    let rows = Sudo.Bench.CompareBench.Compare(selfArgv (), workloads, Option.toObj refEnv, Action<string>(eprintfn "%s"), avx2, refMalloc)
    printf "%s" (Sudo.Bench.CompareBench.Table rows)
    out |> Option.iter (fun f -> AtomicFile.WriteAllText(f, JsonSerializer.Serialize(rows, JsonSerializerOptions(WriteIndented = true))))
    if rows.Count = 0 then 1 else 0

let benchProfile (o: Sudo.Bench.SideOptions) (outDir: string) (refEnv: string option) (top: int) (refMalloc: string) =
    Sudo.Bench.CompareBench.RefAllocatorEnvironment refMalloc |> ignore
    let script = IO.Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "bench", "reference", "profile_ref.py") |> IO.Path.GetFullPath
    let script = if IO.File.Exists script then script else IO.Path.GetFullPath(IO.Path.Combine("bench", "reference", "profile_ref.py"))
    printf "%s" (Sudo.Bench.CompareBench.Profile(o, outDir, Option.toObj refEnv, script, top, Action<string>(eprintfn "%s"), refMalloc))
    printfn "tables in %s" outDir
    0

let benchEngine () =
    let r = Sudo.Bench.EngineBench.Run()
    printfn "%s" (json r)
    0

let demo (steps: int) (seed: int64) =
    info false |> ignore
    printfn ""
    let sw = Diagnostics.Stopwatch.StartNew()
    printfn "demo: a conv net learns where a blob sits in noisy 16x16 images (4 classes), %d AdamW steps" steps
    let log (step: int) (loss: float) (lr: float) =
        if step % 25 = 0 || step = steps - 1 then
            printfn "  step %4d  loss %.4f  lr %s" step loss (lr.ToString("0.00e+0", Globalization.CultureInfo.InvariantCulture))
    let struct (first, last, acc, acc2) = Sudo.Bench.ConvNetDemo.Run(steps, seed, Action<int, float, float>(log))
    printfn "loss %.4f -> %.4f; held-out accuracy %.1f%% (after safetensors reload %.1f%%, chance 25%%); %.1f s"
        first last (100.0 * acc) (100.0 * acc2) sw.Elapsed.TotalSeconds
    if last < first && acc > 0.5 && acc = acc2 then 0
    else
        eprintfn "demo: training did not converge as expected"
        1

let private printReport (report: Sudo.Parity.ParityReport) =
    printfn "  %-40s %12s %12s %12s  %s" "tensor" "max abs err" "max rel err" "tolerance" "result"
    for r in report.Rows do
        let verdict =
            match r.Passed, Double.IsNaN r.MaxAbsError, String.IsNullOrEmpty r.Note with
            | true, false, true -> "ok"
            | true, false, false -> "ok (" + r.Note + ")"
            | true, true, _ -> "skip: " + r.Note
            | false, _, true -> "FAIL"
            | false, _, false -> "FAIL: " + r.Note
        printfn "  %-40s %12.3g %12.3g %12.3g  %s" r.Name r.MaxAbsError r.MaxRelError r.Tolerance verdict
    let failed = report.Rows |> Seq.filter (fun r -> not r.Passed) |> Seq.length
    printfn "%d compared, %d failed" (report.Rows.Count) failed
    if report.Passed then 0 else 1

let parityModel (folder: string) (io: string) (comp: string option) (tolerance: float option) =
    let report = Sudo.Parity.ModelParity.Run(folder, io, Option.toObj comp, Option.toNullable tolerance)
    printfn "parity %s: %s vs %s (%s)" report.Component folder io report.ToleranceRule
    printReport report

let paritySchedulers (io: string) (tolerance: float option) =
    let report = Sudo.Parity.SchedulerParity.Run(io, null, Option.toNullable tolerance)
    printfn "parity schedulers: %s (%s)" io report.ToleranceRule
    printReport report

let parityTokenizer (folder: string) (cases: string) =
    let tok = Sudo.Models.CLIPTokenizer.from_pretrained(folder)
    let results = Sudo.Parity.TokenizerParity.Run(tok, cases)
    let failed = results |> Seq.filter (fun c -> not c.Passed) |> Seq.toList
    printfn "parity tokenizer: %s vs %s (exact match required; pad token '%s' = %d)" folder cases tok.pad_token tok.pad_token_id
    for field in results |> Seq.map (fun c -> c.Field) |> Seq.distinct do
        let n = results |> Seq.filter (fun c -> c.Field = field) |> Seq.length
        let bad = failed |> List.filter (fun c -> c.Field = field) |> List.length
        printfn "  %-22s %4d cases, %d mismatches" field n bad
    for c in failed |> List.truncate 20 do
        printfn "  FAIL line %d %s %A: expected %A, got %A" c.Line c.Field c.Prompt c.Expected c.Actual
    printfn "%d compared, %d failed" results.Count failed.Length
    if failed.IsEmpty then 0 else 1

let parityPipeline (folder: string) (io: string) =
    let report = Sudo.Parity.PipelineParity.Run(folder, io)
    printfn "parity pipeline: %s vs %s (%s)" folder io report.ToleranceRule
    printReport report

let parityLosses (io: string) (tolerance: float option) =
    let report = Sudo.Parity.LossParity.Run(io, Option.toNullable tolerance)
    printfn "parity losses: %s (%s)" io report.ToleranceRule
    printReport report

/// `sudoml launch`: torchrun's environment for N local processes of a command (Sudo.Training.Launcher).
let launch (argv: string[]) =
    let usage () =
        eprintfn "sudoml launch --nproc_per_node N [--nnodes M --node_rank R --master_addr A --master_port P] [--] <command ...>"
        eprintfn "  e.g. sudoml launch --nproc_per_node 2 ./sudoml train --method dpo ...   (every rank gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)"
        2
    let num (flag: string) (v: string) =
        match System.Int32.TryParse v with
        | true, n -> n
        | _ -> raise (System.ArgumentException(sprintf "launch: %s expects an integer, got '%s'" flag v))
    let mutable nproc, nnodes, nodeRank, addr, port = 1, 1, 0, "127.0.0.1", 29500
    let rec parse (rest: string list) =
        match rest with
        | "--" :: cmd -> cmd
        | ("--nproc_per_node" | "--nproc-per-node") :: v :: t -> nproc <- num "--nproc_per_node" v; parse t
        | "--nnodes" :: v :: t -> nnodes <- num "--nnodes" v; parse t
        | ("--node_rank" | "--node-rank") :: v :: t -> nodeRank <- num "--node_rank" v; parse t
        | ("--master_addr" | "--master-addr") :: v :: t -> addr <- v; parse t
        | ("--master_port" | "--master-port") :: v :: t -> port <- num "--master_port" v; parse t
        | cmd -> cmd
    match argv with
    | [||] | [| "--help" |] | [| "-h" |] -> usage ()
    | _ ->
        let cmd = parse (List.ofArray argv)
        if cmd.IsEmpty then usage ()
        else
            let o = Sudo.Training.LaunchOptions(nproc_per_node = nproc, nnodes = nnodes, node_rank = nodeRank, master_addr = addr, master_port = port)
            Sudo.Training.Launcher.Run(o, ResizeArray cmd)

/// `sudoml train <flags>`: the flags of Diffusion-DPO's train.py (docs/flags.md) bound by Sudo.Training.Flags;
/// --method spo trains SPO (SpoTrainConfig), anything else an offline method over a pair folder.
let train (argv: string[]) =
    if argv |> Array.exists (fun a -> a = "--help" || a = "-h") then
        printfn "sudoml train --pretrained_model_name_or_path <pipeline> --dataset_name <pair folder> [--method dpo|sft|sudo|spo] [flags]"
        printfn "Flags: Diffusion-DPO train.py's, as --name value or --name=value (./sudoml flags lists them; docs/flags.md explains each)."
        0
    else
    let methodName =
        Sudo.Training.Flags.Tokenize argv
        |> List.ofSeq
        |> List.choose (fun struct (n, v) -> if n = "method" then Some v else None)
        |> List.tryLast
        |> Option.bind Option.ofObj
    let printNotes (notes: string seq) = for n in notes do eprintfn "%s" n
    if methodName = Some "spo" then
        let b = Sudo.Training.Flags.Bind<Sudo.Training.SpoTrainConfig>(argv)
        printNotes b.notes
        let cfg = b.value
        let prompts =
            match cfg.prompts_file with
            | null -> raise (ArgumentException "--method spo needs --prompts_file (one prompt per line; ../shared/prompts has the papers' sets)")
            | f -> Sudo.Diffusion.Sampling.ReadPrompts f
        // A world may register rewards by name (world-judge: the shapes world's judge on x̂₀); otherwise --scorer is a model folder.
        let reward = Sudo.Worlds.Shapes.WorldScorer.Named cfg.scorer
        use trainer = Sudo.Training.SpoTrainer.Open(cfg, reward)
        trainer.Train(prompts)
        0
    else
        let b = Sudo.Training.Flags.Bind<Sudo.Training.TrainConfig>(argv)
        printNotes b.notes
        use trainer = new Sudo.Training.Trainer(b.value)
        trainer.Train()
        0
