// `sudoml bench ddp`: what data parallelism costs and buys. Measured here: a Diffusion-DPO step of the "small" UNet
// (random weights) as 1 process × 2 threads on the global batch vs 2 processes × 1 thread on half each, with the
// gradient all-reduce (Gloo over loopback) timed on its own. Computed: the all-reduce volume per optimizer step of
// SD1.5 and SDXL (full and LoRA) from the real parameter counts (SUDO_SHARED/golden/keys), and the time it implies
// on NVLink and on 100 Gb/s Ethernet, so a user sees how much accumulation hides it. Printed only.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using Sudo.Training;
using static Sudo.Torch.torch;

namespace Sudo.Bench;

public sealed record DdpRun(int processes, int threads_per_process, int pairs_per_step, double step_s, double pairs_per_s, double allreduce_s, double allreduce_mb);

public sealed record DdpVolume(string model, string trained, long parameters, double allreduce_mb_per_step, double nvlink_ms, double ethernet_100g_ms,
    double ethernet_100g_ms_per_micro_batch_at_paper_accumulation);

public sealed record DdpBenchResult(string cpu, DdpRun one_process, DdpRun two_processes, double speedup, IReadOnlyList<DdpVolume> volumes, string assumptions);

public static class DdpBench
{
    public const string ChildVariable = "SUDO_BENCH_DDP_CHILD";

    /// <summary>NCCL ring all-reduce bus bandwidth (nccl-tests "busbw") assumed for 8 GPUs on NVLink (A100 SXM
    /// measures ~230 GB/s; H100 ~ 450), and the usable share of a 100 Gb/s Ethernet link between nodes.</summary>
    public const double NvlinkGBs = 200, Ethernet100GBs = 11;

    public static DdpBenchResult Run(string[] self, int pairsPerStep = 4, int reps = 5, Action<string>? log = null)
    {
        log ??= Console.Error.WriteLine;
        var one = Child(self, 1, pairsPerStep, reps);
        log($"1 process × 2 threads, {pairsPerStep} pairs: {one.step_s:F3} s/step");
        var two = Child(self, 2, pairsPerStep / 2, reps);
        log($"2 processes × 1 thread, {pairsPerStep / 2} pairs each: {two.step_s:F3} s/step (all-reduce {two.allreduce_s * 1e3:F1} ms of {two.allreduce_mb:F1} MB)");
        return new DdpBenchResult(Library.Info().Cpu.Summary, one, two, one.step_s / two.step_s, Volumes(),
            $"fp32 gradients; ring all-reduce moves 2(N−1)/N × the gradient per rank; N = 16 (Diffusion-DPO: 2 nodes × 8); " +
            $"NVLink bus bandwidth {NvlinkGBs} GB/s, 100 Gb/s Ethernet {Ethernet100GBs} GB/s usable (the slowest link of a multi-node ring sets the time); " +
            "the all-reduce runs once per optimizer step, so per micro-batch it is divided by the accumulation (Diffusion-DPO SD1.5: 128, SDXL: 128)");
    }

    /// <summary>All-reduce volume and time per optimizer step of the real SD1.5 / SDXL UNets.</summary>
    public static List<DdpVolume> Volumes()
    {
        var keys = Path.Combine(Environment.GetEnvironmentVariable("SUDO_SHARED") ?? Path.Combine("..", "shared"), "golden", "keys");
        var rows = new List<DdpVolume>();
        if (!Directory.Exists(keys))
        {
            Console.Error.WriteLine($"bench ddp: {keys} not found (set SUDO_SHARED): the SD1.5/SDXL volumes are left out");
            return rows;
        }
        foreach (var (name, file, rank) in new[] { ("SD1.5", "sd15_unet_keys.tsv", 4), ("SDXL", "sdxl_unet_keys.tsv", 64) })
        {
            var (full, lora) = Count(Path.Combine(keys, file), rank);
            rows.Add(Row(name, "full UNet", full));
            rows.Add(Row(name, $"LoRA r{rank} (to_q/k/v/out.0)", lora));
        }
        return rows;
    }

    private static DdpVolume Row(string model, string trained, long parameters)
    {
        const int n = 16, accumulation = 128;
        var mb = parameters * 4 / 1e6;
        var moved = 2.0 * (n - 1) / n * mb / 1e3;   // GB through each rank's link
        var eth = moved / Ethernet100GBs * 1e3;
        return new DdpVolume(model, trained, parameters, Math.Round(mb, 1), Math.Round(moved / NvlinkGBs * 1e3, 2), Math.Round(eth, 1), Math.Round(eth / accumulation, 2));
    }

    /// <summary>(all parameters, LoRA parameters at rank r on the attention projections) from a keys.tsv
    /// (key, shape, dtype per line; LoRA adds r·(in + out) per adapted Linear weight [out, in]).</summary>
    public static (long full, long lora) Count(string keysTsv, int r)
    {
        long full = 0, lora = 0;
        foreach (var line in File.ReadLines(keysTsv))
        {
            if (line.StartsWith('#') || line.Length == 0) continue;
            var parts = line.Split('\t');
            var shape = parts[1].Trim('[', ']').Split(',', StringSplitOptions.RemoveEmptyEntries).Select(s => long.Parse(s.Trim(), CultureInfo.InvariantCulture)).ToArray();
            full += shape.Aggregate(1L, (a, b) => a * b);
            var key = parts[0];
            if (shape.Length == 2 && new[] { ".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight" }.Any(key.EndsWith))
                lora += r * (shape[0] + shape[1]);
        }
        return (full, lora);
    }

    private static DdpRun Child(string[] self, int processes, int pairs, int reps)
    {
        Environment.SetEnvironmentVariable(ChildVariable, $"{pairs}|{reps}");
        Environment.SetEnvironmentVariable("SUDO_TORCH_THREADS", $"{2 / processes}");
        Environment.SetEnvironmentVariable("SUDO_BLAS_THREADS", $"{2 / processes}");
        try
        {
            var lines = new List<string>();
            var code = Launcher.Run(new LaunchOptions { nproc_per_node = processes, master_port = FreePort() }, self, lines.Add);
            if (code != 0) throw new InvalidOperationException($"bench ddp child failed ({code}):\n{string.Join("\n", lines.TakeLast(20))}");
            var json = lines.Last(l => l.StartsWith("[rank 0] {"))["[rank 0] ".Length..];
            return JsonSerializer.Deserialize<DdpRun>(json)!;
        }
        finally
        {
            Environment.SetEnvironmentVariable(ChildVariable, null);
            Environment.SetEnvironmentVariable("SUDO_TORCH_THREADS", null);
            Environment.SetEnvironmentVariable("SUDO_BLAS_THREADS", null);
        }
    }

    private static int FreePort()
    {
        var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        var port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    /// <summary>The child side (one rank): DPO steps of the small UNet with averaged gradients; rank 0 prints a JSON row.</summary>
    public static bool RunChildIfAsked()
    {
        if (Environment.GetEnvironmentVariable(ChildVariable) is not { } spec) return false;
        var parts = spec.Split('|');
        var (pairs, reps) = (int.Parse(parts[0], CultureInfo.InvariantCulture), int.Parse(parts[1], CultureInfo.InvariantCulture));
        using var dp = DataParallel.FromEnvironment("cpu");
        manual_seed(0);
        using var unet = new UNet2DConditionModel(UNetBench.SmallConfig);
        using var reference = Trainer.CloneFrozen(unet);
        var parameters = unet.parameters().ToArray();
        dp.BroadcastFromMain(parameters);
        using var opt = new optim.AdamW(parameters, 1e-5);
        using var sched = new NoiseSchedule(SchedulerConfig.SD15);
        using var g = new Generator(1 + dp.rank);
        unet.train();
        var reduce = new List<double>();
        var step = EngineBench.MedianSeconds(() =>
        {
            using var scope = NewDisposeScope();
            var x0 = randn([2 * pairs, 4, 16, 16], g);
            var nB = randn([pairs, 4, 16, 16], g);
            var tB = randint(0, 1000, [pairs], g);
            var t = cat([tB, tB]);
            var ctx = randn([2 * pairs, 77, 256], g);
            var noise = cat([nB, nB]);
            var xt = sched.add_noise(x0, noise, t);
            var m = Losses.per_sample_mse(unet.forward(xt, t, ctx), noise);
            Tensor r;
            using (no_grad()) r = Losses.per_sample_mse(reference.forward(xt, t, ctx), noise);
            opt.zero_grad();
            Losses.diffusion_dpo(m, r).loss.backward();
            dp.Barrier();   // the all-reduce alone, not the wait for the slower rank's backward
            var sw = Stopwatch.StartNew();
            dp.AverageGradients(parameters);
            reduce.Add(sw.Elapsed.TotalSeconds);
            nn.utils.clip_grad_norm_(parameters, 1.0);
            opt.step();
        }, reps);
        reduce.Sort();
        var mb = parameters.Sum(p => p.numel()) * 4 / 1e6;
        if (dp.IsMain)
            Console.WriteLine(JsonSerializer.Serialize(new DdpRun(dp.world_size, get_num_threads(), pairs * dp.world_size, step, pairs * dp.world_size / step,
                dp.world_size > 1 ? reduce[reduce.Count / 2] : 0, Math.Round(mb, 2))));
        return true;
    }
}
