// `sudoml bench side` and `sudoml bench compare`: Sudo's half of ../shared/ref/bench_ref.py — the same steps, shapes,
// seeds of the work and statistics (median after one warm-up), the same JSON keys — and the table of Sudo/PyTorch
// ratios when the reference environment exists. Printed, never asserted.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using Sudo.Training;
using static Sudo.Torch.torch;
namespace Sudo.Bench;

/// <summary>One side-by-side workload: "small" (UNetBench.SmallConfig) or a UNet config file at latent size
/// <see cref="size"/>; bench_ref.py's flags.</summary>
public sealed record SideOptions(string config = "small", string? config_json = null, int? size = null, int batch = 8,
    int sample_batch = 4, bool grad_ckpt = false, int train_runs = 15, int sample_runs = 5);

public static class CompareBench
{
    // bench_ref.py: 77 text tokens, SD1.5's scheduler, AdamW lr 1e-4, β = 5000 for the DPO step, CFG 7.5.
    private const int Seq = 77;

    public static UNet2DConditionConfig Config(SideOptions o)
    {
        if (o.config == "small") return UNetBench.SmallConfig;
        if (o.config != "json" || o.config_json is null) throw new ArgumentException("bench side: CONFIG is 'small' or 'json' with --config-json FILE");
        var c = UNet2DConditionConfig.FromFile(o.config_json);
        return o.size is int s ? c with { sample_size = s } : c;
    }

    /// <summary>The keys of bench_ref.py's JSON: train_step_s, fwd_b8_s, fwd_bwd_b8_s, dpo_step_4pairs_s,
    /// ddim20_cfg_s (batch-N figures under the b8 names, as there), peak_rss_mb.</summary>
    public static JsonObject RunSide(SideOptions o)
    {
        var cfg = Config(o);
        if (cfg.addition_embed_type is not null) throw new ArgumentException("bench side: SDXL-style added conditioning is not part of the side-by-side workloads");
        manual_seed(0);
        using var unet = new UNet2DConditionModel(cfg);
        if (o.grad_ckpt) unet.enable_gradient_checkpointing();
        long S = cfg.sample_size, D = cfg.cross_attention_dim[0], B = o.batch;
        using var g = new Generator(0);
        using var sched = new NoiseSchedule(SchedulerConfig.SD15);
        using var opt = new optim.AdamW(unet.parameters(), 1e-4);
        unet.train();
        using var x0 = randn([B, 4, S, S], g);
        using var ehs = randn([B, Seq, D], g);

        // Every figure: one warm-up run, then the median of the timed runs.
        static double Median(Action step, int runs) => EngineBench.MedianSeconds(step, runs);

        var result = new JsonObject
        {
            ["config"] = o.config,
            ["unet_params"] = unet.parameters().Sum(p => p.numel()),
            ["latent"] = new JsonArray(4, S, S),
            ["threads"] = get_num_threads(),
            ["blas_threads"] = Library.Info().BlasThreads,
            ["train_batch"] = B,
            ["sample_batch"] = o.sample_batch,
            ["grad_ckpt"] = o.grad_ckpt,
            ["cpu_cache"] = cpu.caching_allocator_enabled,
        };

        // (a) training step: DDPM add_noise, UNet forward, MSE(ε), backward, AdamW.
        {
            result["train_step_s"] = Round(Median(() =>
            {
                using var s = NewDisposeScope();
                var noise = randn_like(x0, g);
                var t = randint(0, 1000, [B], g);
                var pred = unet.forward(sched.add_noise(x0, noise, t), t, ehs);
                var loss = nn.functional.mse_loss(pred, noise);
                opt.zero_grad();
                loss.backward();
                opt.step();
            }, o.train_runs));
        }

        // (a2) forward alone (no grad) and forward+backward, fixed inputs.
        using var tFixed = randint(0, 1000, [B], g);
        using var xtFixed = randn([B, 4, S, S], g);
        result["fwd_b8_s"] = Round(Median(() =>
        {
            using var s = NewDisposeScope();
            using var _ = no_grad();
            unet.forward(xtFixed, tFixed, ehs);
        }, o.train_runs));
        result["fwd_bwd_b8_s"] = Round(Median(() =>
        {
            using var s = NewDisposeScope();
            unet.zero_grad();
            unet.forward(xtFixed, tFixed, ehs).square().mean().backward();
        }, o.train_runs));

        // (a3) Diffusion-DPO step: P pairs (winners then losers), policy fwd+bwd, frozen reference fwd, AdamW.
        using (var reference = Trainer.CloneFrozen(unet))
        {
            var P = Math.Max(1, B / 2);
            result["dpo_step_4pairs_s"] = Round(Median(() =>
            {
                using var s = NewDisposeScope();
                var x = x0.shape[0] >= 2 * P ? x0.narrow(0, 0, 2 * P) : x0.narrow(0, 0, 1).repeat(2 * P, 1, 1, 1);
                var e = ehs.shape[0] >= 2 * P ? ehs.narrow(0, 0, 2 * P) : ehs.narrow(0, 0, 1).repeat(2 * P, 1, 1);
                var noise = randn([P, 4, S, S], g).repeat(2, 1, 1, 1);
                var t = randint(0, 1000, [P], g).repeat(2);
                var xt = sched.add_noise(x, noise, t);
                var m = Losses.per_sample_mse(unet.forward(xt, t, e), noise);
                Tensor r;
                using (no_grad()) r = Losses.per_sample_mse(reference.forward(xt, t, e), noise);
                var loss = Losses.diffusion_dpo(m, r, beta: 5000).loss;
                opt.zero_grad();
                loss.backward();
                opt.step();
            }, o.train_runs));
            result["dpo_pairs"] = P;
        }

        // (b) 20-step DDIM with classifier-free guidance 7.5.
        unet.eval();
        using var ddim = new DDIMScheduler(SchedulerConfig.SD15 with { _class_name = "DDIMScheduler" });
        long Bs = o.sample_batch;
        using var ctx2 = cat([randn([Bs, Seq, D], g), randn([Bs, Seq, D], g)]);
        result["ddim20_cfg_s"] = Round(Median(() =>
        {
            using var s = NewDisposeScope();
            using var _ = no_grad();
            ddim.set_timesteps(20);
            var lat = randn([Bs, 4, S, S], g);
            foreach (var t in ddim.TimestepValues)
            {
                using var step = NewDisposeScope();
                var eps = unet.forward(cat([lat, lat]), scalar_tensor((long)t), ctx2).chunk(2);
                lat = step.MoveToOuter(ddim.step(eps[0] + 7.5 * (eps[1] - eps[0]), t, lat).prev_sample);
            }
        }, o.sample_runs));
        result["peak_rss_mb"] = Math.Round(ProcessMemory.PeakRssMb(), 1);
        return result;
    }

    private static double Round(double x) => Math.Round(x, 4);

    // ---- compare: each side of each workload in its own process (peak RSS is per process) ----

    /// <summary>One row of the compare table.</summary>
    public sealed record Row(string workload, string key, double? sudo, double? torch);

    /// <summary>The workloads of `bench compare`: the small UNet (bench_ref.py small), and with --full the
    /// full-size SD1.5 UNet at 512 px, batch 1 (the DPO step: one pair), sample batch 1, without and with gradient
    /// checkpointing. <paramref name="only"/> (names) keeps those workloads; naming a full-size one implies --full.</summary>
    public static List<(string name, SideOptions options)> Workloads(bool full, string? sd15Config, int trainRuns, int sampleRuns, int fullRuns,
        IReadOnlyCollection<string>? only = null)
    {
        string[] names = ["small", "sd15-512", "sd15-512-ckpt"];
        foreach (var n in only ?? [])
            if (!names.Contains(n)) throw new ArgumentException($"bench compare: unknown workload '{n}' (expected one of {string.Join(", ", names)})");
        bool Wanted(string n) => only is { Count: > 0 } ? only.Contains(n) : n == "small" || full;
        var list = new List<(string, SideOptions)>();
        if (Wanted("small")) list.Add(("small", new SideOptions(train_runs: trainRuns, sample_runs: sampleRuns)));
        if (!Wanted("sd15-512") && !Wanted("sd15-512-ckpt")) return list;
        if (sd15Config is null || !File.Exists(sd15Config))
            throw new FileNotFoundException($"bench compare: the full-size workloads need the SD1.5 UNet config ({sd15Config ?? "SUDO_SHARED/golden/keys/sd15_unet_config.json"}): set SUDO_SHARED or --config-json");
        var baseOpts = new SideOptions("json", sd15Config, 64, 1, 1, false, fullRuns, fullRuns);
        if (Wanted("sd15-512")) list.Add(("sd15-512", baseOpts));
        if (Wanted("sd15-512-ckpt")) list.Add(("sd15-512-ckpt", baseOpts with { grad_ckpt = true }));
        return list;
    }

    public static string[] SideArgs(SideOptions o)
    {
        var a = new List<string> { o.config };
        if (o.config_json != null) a.AddRange(["--config-json", o.config_json]);
        if (o.size is int s) a.AddRange(["--size", s.ToString(CultureInfo.InvariantCulture)]);
        a.AddRange(["--batch", o.batch.ToString(CultureInfo.InvariantCulture), "--sample-batch", o.sample_batch.ToString(CultureInfo.InvariantCulture),
            "--train-runs", o.train_runs.ToString(CultureInfo.InvariantCulture), "--sample-runs", o.sample_runs.ToString(CultureInfo.InvariantCulture)]);
        if (o.grad_ckpt) a.Add("--grad-ckpt");
        return a.ToArray();
    }

    /// <summary>Runs <paramref name="argv"/> and parses the last line of its standard output that is a JSON object.</summary>
    public static JsonObject? RunChild(string file, IEnumerable<string> argv, IReadOnlyDictionary<string, string>? env, Action<string> log)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in argv) psi.ArgumentList.Add(a);
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {file}");
        var err = p.StandardError.ReadToEndAsync();
        var lines = new List<string>();
        while (p.StandardOutput.ReadLine() is { } line) lines.Add(line);
        p.WaitForExit();
        var stderr = err.Result;
        if (p.ExitCode != 0)
        {
            log($"{Path.GetFileName(file)} {string.Join(' ', argv)} exited with {p.ExitCode}: {Tail(stderr, 600)}");
            return null;
        }
        var json = lines.LastOrDefault(l => l.TrimStart().StartsWith('{'));
        if (json != null) log(json);   // each side as soon as it is measured: a long comparison cut short keeps them
        return json is null ? null : JsonNode.Parse(json) as JsonObject;
    }

    private static string Tail(string s, int n) => s.Length <= n ? s.Trim() : "…" + s[^n..].Trim();

    public static readonly string[] Keys = ["fwd_b8_s", "fwd_bwd_b8_s", "train_step_s", "dpo_step_4pairs_s", "ddim20_cfg_s", "peak_rss_mb"];

    public static List<Row> Rows(string workload, JsonObject? sudo, JsonObject? torchSide)
    {
        double? Get(JsonObject? o, string k) => o?[k] is JsonValue v && v.TryGetValue<double>(out var d) ? d : null;
        return Keys.Select(k => new Row(workload, k, Get(sudo, k), Get(torchSide, k))).Where(r => r.sudo != null || r.torch != null).ToList();
    }

    public static string Table(IEnumerable<Row> rows)
    {
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"{"workload",-15} {"measure",-18} {"Sudo",10} {"PyTorch",10} {"Sudo/PyTorch",13}");
        foreach (var r in rows)
        {
            string F(double? x) => x is double d ? d.ToString(d >= 100 ? "0" : "0.000", CultureInfo.InvariantCulture) : "-";
            var ratio = r.sudo is double a && r.torch is double b && b > 0 ? (a / b).ToString("0.00", CultureInfo.InvariantCulture) : "-";
            sb.AppendLine($"{r.workload,-15} {r.key,-18} {F(r.sudo),10} {F(r.torch),10} {ratio,13}");
        }
        return sb.ToString();
    }

    /// <summary>Kernel choices of an AVX2-only CPU on a newer one, for both sides: ATen's CPU capability, OpenBLAS's
    /// core type (Debian's build picks kernels at run time) and oneDNN's highest ISA.</summary>
    public static readonly IReadOnlyDictionary<string, string> Avx2Environment = new Dictionary<string, string>
    {
        ["ATEN_CPU_CAPABILITY"] = "avx2",
        ["OPENBLAS_CORETYPE"] = "Haswell",
        ["ONEDNN_MAX_CPU_ISA"] = "AVX2",
        ["DNNL_MAX_CPU_ISA"] = "AVX2",
    };

    /// <summary>The memory allocators the PyTorch side can run with, as PyTorch's own CPU launcher sets them
    /// (<c>torch/backends/xeon/run_cpu.py</c>, <c>_Launcher.set_memory_allocator</c>): <c>glibc</c> (what a plain
    /// <c>python</c> gets), <c>tcmalloc</c> (the launcher's default: libtcmalloc preloaded) and <c>jemalloc</c> (preloaded,
    /// with the launcher's <c>MALLOC_CONF</c>). Both preloaded allocators keep freed memory for reuse instead of returning
    /// it to the kernel at once, which is the page-fault cost the default pays (docs/performance.md).</summary>
    public static readonly string[] RefAllocators = ["glibc", "tcmalloc", "jemalloc"];

    /// <summary>run_cpu.py's MALLOC_CONF for JeMalloc.</summary>
    public const string JemallocConf = "oversize_threshold:1,background_thread:true,metadata_thp:auto";

    /// <summary>The environment that gives the PyTorch side <paramref name="allocator"/> (one of <see cref="RefAllocators"/>),
    /// the library looked up in <paramref name="libraryDirs"/> (default: the system's library folders, where Debian's
    /// libgoogle-perftools4 and libjemalloc2 put them).</summary>
    public static IReadOnlyDictionary<string, string> RefAllocatorEnvironment(string allocator, IEnumerable<string>? libraryDirs = null)
    {
        if (!RefAllocators.Contains(allocator))
            throw new ArgumentException($"bench: unknown --ref-malloc '{allocator}' (expected one of {string.Join(", ", RefAllocators)})");
        if (allocator == "glibc") return new Dictionary<string, string>();
        var (lib, package) = allocator == "tcmalloc" ? ("libtcmalloc.so", "libgoogle-perftools4") : ("libjemalloc.so", "libjemalloc2");
        var dirs = libraryDirs ?? ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib", "/usr/lib64"];
        // The unversioned name first (a -dev package's link), then the runtime's lib*.so.N.
        var found = dirs.Where(Directory.Exists)
            .SelectMany(d => new[] { Path.Combine(d, lib) }.Concat(Directory.EnumerateFiles(d, lib + ".*").Order(StringComparer.Ordinal)))
            .FirstOrDefault(File.Exists)
            ?? throw new FileNotFoundException($"bench: --ref-malloc {allocator} needs {lib} (Debian: apt-get install {package}); looked in {string.Join(", ", dirs)}");
        var env = new Dictionary<string, string> { ["LD_PRELOAD"] = found };
        if (allocator == "jemalloc") env["MALLOC_CONF"] = JemallocConf;
        return env;
    }

    private static Dictionary<string, string>? Merge(IReadOnlyDictionary<string, string>? a, IReadOnlyDictionary<string, string> b)
    {
        if (a is null && b.Count == 0) return null;
        var m = new Dictionary<string, string>(a ?? new Dictionary<string, string>());
        foreach (var (k, v) in b) m[k] = v;
        return m;
    }

    /// <summary>Where the PyTorch reference lives: SUDO_REF_ENV (an env.sh of ../shared/ref/setup_ref.sh) or
    /// /tmp/ref/env.sh, and bench_ref.py under SUDO_SHARED/ref.</summary>
    public static (string? env, string shared) Reference(string? refEnv)
    {
        var env = refEnv ?? Environment.GetEnvironmentVariable("SUDO_REF_ENV") ?? "/tmp/ref/env.sh";
        var shared = Environment.GetEnvironmentVariable("SUDO_SHARED") ?? Path.Combine("..", "shared");
        return (File.Exists(env) ? Path.GetFullPath(env) : null, Path.GetFullPath(shared));
    }

    /// <summary>Runs every workload on both sides (Sudo in a child process of <paramref name="self"/>, PyTorch
    /// through bench_ref.py when the reference exists) with the same torch and BLAS thread counts; the PyTorch side
    /// with <paramref name="refAllocator"/> (<see cref="RefAllocators"/>; Sudo always uses its own caching allocator).</summary>
    public static List<Row> Compare(string[] self, IEnumerable<(string name, SideOptions options)> workloads, string? refEnv, Action<string> log,
        bool emulateAvx2 = false, string refAllocator = "glibc")
    {
        var env2 = emulateAvx2 ? Avx2Environment : null;
        var torchEnv = Merge(env2, RefAllocatorEnvironment(refAllocator));
        var (env, shared) = Reference(refEnv);
        var benchRef = Path.Combine(shared, "ref", "bench_ref.py");
        var info = Library.Info();
        int threads = info.TorchThreads, blas = info.BlasThreads;
        if (env is null || !File.Exists(benchRef))
            log($"bench compare: no PyTorch reference ({(env is null ? "no env.sh: run ../shared/ref/setup_ref.sh or set SUDO_REF_ENV" : benchRef + " missing")}); Sudo's side only");
        var rows = new List<Row>();
        foreach (var (name, o) in workloads)
        {
            log($"bench compare: {name}: Sudo (torch threads {threads}, BLAS threads {blas})");
            var sudo = RunChild(self[0], self.Skip(1).Concat(["side"]).Concat(SideArgs(o)), env2, log);
            JsonObject? torchSide = null;
            if (env != null && File.Exists(benchRef))
            {
                log($"bench compare: {name}: PyTorch (torch threads {threads}, OPENBLAS_NUM_THREADS {blas}, allocator {refAllocator})");
                var cmd = $". '{env}' && OPENBLAS_NUM_THREADS={blas} \"$PY\" '{benchRef}' {string.Join(' ', SideArgs(o).Select(a => "'" + a + "'"))} --threads {threads}";
                torchSide = RunChild("bash", ["-c", cmd], torchEnv, log);
            }
            rows.AddRange(Rows(name, sudo, torchSide));
        }
        return rows;
    }

    /// <summary>`sudoml bench profile`: per-op tables (libtorch's RecordFunction profiler) of one forward (no grad)
    /// and one forward+backward of the workload's UNet after two warm-up passes; written as sudo_fwd.tsv and
    /// sudo_fwd_bwd.tsv in <paramref name="outDir"/>, with bench/reference/profile_ref.py's torch_*.tsv beside them
    /// when the reference exists. Returns the comparison text (largest self times first).</summary>
    public static string Profile(SideOptions o, string outDir, string? refEnv, string? profileRefScript, int top, Action<string> log,
        string refAllocator = "glibc")
    {
        var torchEnv = Merge(null, RefAllocatorEnvironment(refAllocator));
        Directory.CreateDirectory(outDir);
        var cfg = Config(o);
        manual_seed(0);
        using var unet = new UNet2DConditionModel(cfg);
        if (o.grad_ckpt) unet.enable_gradient_checkpointing();
        long S = cfg.sample_size, D = cfg.cross_attention_dim[0], B = o.batch;
        using var g = new Generator(0);
        using var x = randn([B, 4, S, S], g);
        using var ctx = randn([B, Seq, D], g);
        using var t = randint(0, 1000, [B], g);
        var passes = new (string name, Action run, bool train)[]
        {
            ("fwd", () => { using var s = NewDisposeScope(); using var _ = no_grad(); unet.forward(x, t, ctx); }, false),
            ("fwd_bwd", () => { using var s = NewDisposeScope(); unet.zero_grad(); unet.forward(x, t, ctx).square().mean().backward(); }, true),
        };
        foreach (var (name, run, train) in passes)
        {
            if (train) unet.train(); else unet.eval();
            run(); run();
            // The native profiler's own table is the file (sudo_<pass>.tsv), moved into place when the profile stops.
            var p = profiler.profile(save_tsv: Path.Combine(outDir, $"sudo_{name}.tsv"));
            try { run(); } finally { p.Dispose(); }
        }
        var (env, _) = Reference(refEnv);
        if (env != null && profileRefScript != null && File.Exists(profileRefScript))
        {
            var info = Library.Info();
            var args = new List<string> { outDir, "--batch", B.ToString(CultureInfo.InvariantCulture), "--threads", info.TorchThreads.ToString(CultureInfo.InvariantCulture) };
            if (o.config_json != null) args.AddRange(["--config-json", o.config_json]);
            if (o.size is int sz) args.AddRange(["--size", sz.ToString(CultureInfo.InvariantCulture)]);
            if (o.grad_ckpt) args.Add("--grad-ckpt");
            var cmd = $". '{env}' && OPENBLAS_NUM_THREADS={info.BlasThreads} \"$PY\" '{profileRefScript}' {string.Join(' ', args.Select(a => "'" + a + "'"))}";
            RunChild("bash", ["-c", cmd], torchEnv, log);
        }
        else log("bench profile: no PyTorch reference (env.sh or bench/reference/profile_ref.py missing); Sudo's tables only");
        var sb = new System.Text.StringBuilder();
        foreach (var (name, _, _) in passes) sb.Append(ProfileTable(name, Path.Combine(outDir, $"sudo_{name}.tsv"), Path.Combine(outDir, $"torch_{name}.tsv"), top));
        return sb.ToString();
    }

    /// <summary>Sudo's and PyTorch's per-op self times side by side, ops ordered by the larger of the two.</summary>
    public static string ProfileTable(string pass, string sudoTsv, string torchTsv, int top)
    {
        static Dictionary<string, OpStat> Load(string path) => File.Exists(path)
            ? torch.Profile.Parse(File.ReadAllLines(path)).GroupBy(o => o.name).ToDictionary(gr => gr.Key, gr => gr.First())
            : new Dictionary<string, OpStat>();
        var a = Load(sudoTsv);
        var b = Load(torchTsv);
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"== {pass}: self time per op (ms), libtorch's profiler");
        sb.AppendLine($"{"op",-46} {"Sudo calls",10} {"Sudo ms",9} {"PT calls",9} {"PT ms",9}");
        sb.AppendLine($"{"(all ops)",-46} {a.Values.Sum(o => o.calls),10} {a.Values.Sum(o => o.self_us) / 1000,9:0.0} {b.Values.Sum(o => o.calls),9} {b.Values.Sum(o => o.self_us) / 1000,9:0.0}");
        foreach (var k in a.Keys.Union(b.Keys).OrderByDescending(k => Math.Max(a.GetValueOrDefault(k)?.self_us ?? 0, b.GetValueOrDefault(k)?.self_us ?? 0)).Take(top))
        {
            var x = a.GetValueOrDefault(k);
            var y = b.GetValueOrDefault(k);
            var name = k.Length > 46 ? k[..45] + "…" : k;
            sb.AppendLine($"{name,-46} {x?.calls ?? 0,10} {(x?.self_us ?? 0) / 1000,9:0.0} {y?.calls ?? 0,9} {(y?.self_us ?? 0) / 1000,9:0.0}");
        }
        return sb.ToString();
    }
}
