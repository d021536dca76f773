// `sudoml bench soak`: a long run of scoped training steps, sampling the process's resident memory, libtorch's live
// tensor count and the tensors freed by the finalizer (none should be: every tensor is disposed by its scope) every
// `every` steps. Flat means: after the first 10% of the run (warm-up: the allocator's cache and the JIT settle), RSS
// stays within max(64 MB, 5%) of its first sample and the live-tensor count does not change. Printed as JSON.
using System.Diagnostics;
using Sudo.Torch;
using Sudo.Training;
namespace Sudo.Bench;

public sealed record SoakSample(int step, double seconds, double rss_mb, long live_tensors, long finalized_tensors, double managed_mb);

public sealed record SoakResult(string model, string dataset, int steps, int every, string method, double seconds, double steps_per_second,
    double rss_first_mb, double rss_max_mb, double rss_growth_mb, double rss_bound_mb, long live_min, long live_max, long finalized_tensors,
    bool flat, List<SoakSample> samples);

public static class SoakBench
{
    /// <summary>Resident set now (VmRSS), in MB.</summary>
    public static double RssMb()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0;
        return Process.GetCurrentProcess().WorkingSet64 / 1048576.0;
    }

    public static SoakResult Run(string model, string dataset, int steps, int every, string method, Action<string> log)
    {
        if (!Directory.Exists(model)) throw new DirectoryNotFoundException($"bench soak: model folder '{model}' not found (default assets/world/base: run from the repository root)");
        if (!Directory.Exists(dataset)) throw new DirectoryNotFoundException($"bench soak: pair folder '{dataset}' not found (default assets/world/pairs)");
        var output = Path.Combine(Path.GetTempPath(), $"sudo-soak-{Guid.NewGuid():N}");
        try
        {
            using var t = new Trainer(new TrainConfig
            {
                method = method,
                pretrained_model_name_or_path = model,
                dataset_name = dataset,
                output_dir = output,
                train_batch_size = 2,
                max_train_steps = steps,
                learning_rate = 1e-5,
                checkpointing_steps = 0,
                report_to = "none",
                seed = 0,
            });
            var samples = new List<SoakSample>();
            var sw = Stopwatch.StartNew();
            GC.Collect();
            GC.WaitForPendingFinalizers();
            log($"after set-up: RSS {RssMb():F1} MB  live tensors {torch.live_tensors}  finalized {torch.finalized_tensors}");
            for (var s = 1; s <= steps; s++)
            {
                t.Step();
                if (s % every == 0 || s == steps)
                {
                    GC.Collect();   // a tensor left to the finalizer shows up in the count now, not at some later GC
                    GC.WaitForPendingFinalizers();
                    var x = new SoakSample(s, sw.Elapsed.TotalSeconds, RssMb(), torch.live_tensors, torch.finalized_tensors, GC.GetTotalMemory(false) / 1048576.0);
                    samples.Add(x);
                    log($"step {s,6}  {x.seconds,8:F1} s  RSS {x.rss_mb,8:F1} MB  live tensors {x.live_tensors,6}  finalized {x.finalized_tensors}  managed {x.managed_mb:F1} MB");
                }
            }
            var settled = samples.Where(x => x.step > steps / 10).ToList();
            if (settled.Count == 0) settled = samples;
            var first = settled[0].rss_mb;
            var max = settled.Max(x => x.rss_mb);
            var bound = Math.Max(64, first * 0.05);
            var (lmin, lmax) = (settled.Min(x => x.live_tensors), settled.Max(x => x.live_tensors));
            var finalized = samples[^1].finalized_tensors;
            var flat = max - first <= bound && lmin == lmax && finalized == 0;
            return new SoakResult(model, dataset, steps, every, method, sw.Elapsed.TotalSeconds, steps / sw.Elapsed.TotalSeconds, first, max, max - first, bound,
                lmin, lmax, finalized, flat, samples);
        }
        finally
        {
            if (Directory.Exists(output)) Directory.Delete(output, true);
        }
    }
}
