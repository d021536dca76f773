using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Torch;
using Sudo.Training;
using static Sudo.Torch.torch;
namespace Sudo.Worlds.Shapes;

// The study's statistics and the table helpers paper-repro reads (win rates, intervals over training seeds).
public static partial class WorldStudy
{
    // ---------- statistics ----------

    public static readonly string[] Attributes = ["color", "shape", "size", "count", "relation", "background"];

    public static double AttributeMean(IEnumerable<Judge.Result> rs, string attr)
    {
        var v = rs.Where(r => r.attributes.ContainsKey(attr)).Select(r => r.attributes[attr]).ToList();
        return v.Count == 0 ? double.NaN : v.Average();
    }

    /// <summary>Win rate against the base on the same prompt and seed (ties count one half).</summary>
    public static double WinRate(IReadOnlyList<Judge.Result> method, IReadOnlyList<Judge.Result> baseline) =>
        method.Count == baseline.Count ? Wins(method, baseline).Average()
        : throw new ArgumentException($"win rate needs matched samples, got {method.Count} vs {baseline.Count}");

    // ---------- table helpers (paper-repro) ----------

    static List<Judge.Result> Split(RunResult r, string split) => split switch
    {
        "validation" => r.validation,
        "test" => r.test,
        "all" => [.. r.validation, .. r.test],
        _ => ExtraSplit(r.extra, split),
    };

    static List<Judge.Result> BaseSplit(Report rep, string split) => split switch
    {
        "validation" => rep.base_validation,
        "test" => rep.base_test,
        "all" => [.. rep.base_validation, .. rep.base_test],
        _ => ExtraSplit(rep.base_extra, split),
    };

    static List<Judge.Result> ExtraSplit(IReadOnlyDictionary<string, List<Judge.Result>>? extra, string split) =>
        extra != null && extra.TryGetValue(split, out var rs) ? rs
        : throw new ArgumentException($"unknown split '{split}': expected \"validation\", \"test\""
            + (extra is not { Count: > 0 } ? " (the study was run without extra samplers)" : $" or one of {string.Join(", ", extra.Keys.Select(k => $"\"{k}\""))}"));
    static List<RunResult> RunsOf(Report rep, string method)
    {
        var rs = rep.runs.Where(r => r.method == method).OrderBy(r => r.seed).ToList();
        return rs.Count > 0 ? rs : throw new ArgumentException($"the study has no runs of '{method}' (methods: {string.Join(", ", rep.runs.Select(r => r.method).Distinct())})");
    }

    /// <summary>Mean judge score on a split ("validation" or "test"): mean ± 95% interval over training seeds; "base" has no interval.</summary>
    public static (double mean, double half) MeanScore(Report rep, string method, string split) =>
        method == "base" ? (BaseSplit(rep, split).Average(r => r.score), double.NaN)
        : Metric(RunsOf(rep, method), r => Split(r, split).Select(x => x.score).ToList());

    /// <summary>Mean accuracy of one judge attribute over both held-out splits (per training seed, then mean ± interval).</summary>
    public static (double mean, double half) MeanAttribute(Report rep, string method, string attribute) =>
        method == "base" ? (AttributeMean(rep.base_validation.Concat(rep.base_test), attribute), double.NaN)
        : Metric(RunsOf(rep, method), r => r.validation.Concat(r.test).Where(x => x.attributes.ContainsKey(attribute)).Select(x => x.attributes[attribute]).ToList());

    /// <summary>Win rate of a method against the base on a split (same prompt and sampling seed), per training seed.</summary>
    public static (double mean, double half) WinVsBase(Report rep, string method, string split) =>
        Metric(RunsOf(rep, method), r => Wins(Split(r, split), BaseSplit(rep, split)));

    /// <summary>Judge-score gain over the base on a split: the method's score minus the base's on the same prompt and sampling
    /// seed, mean ± 95% interval over training seeds (≥ 2), or over the paired samples for one seed.</summary>
    public static (double mean, double half) GainVsBase(Report rep, string method, string split)
    {
        var b = BaseSplit(rep, split);
        return Metric(RunsOf(rep, method), r =>
        {
            var m = Split(r, split);
            if (m.Count != b.Count) throw new ArgumentException($"gain vs base needs matched samples, got {m.Count} vs {b.Count}");
            return m.Zip(b, (x, y) => x.score - y.score).ToList();
        });
    }

    /// <summary>"gain" / "loss" when the 95% interval excludes 0, else "no significant change".</summary>
    public static string Significance((double mean, double half) x) =>
        double.IsNaN(x.half) ? "no interval" : x.mean - x.half > 0 ? "significant gain" : x.mean + x.half < 0 ? "significant loss" : "no significant change";

    /// <summary>Head-to-head win rate of a over b (same prompt, sampling seed and training seed).</summary>
    public static (double mean, double half) HeadToHead(Report rep, string a, string b, string split)
    {
        var ra = RunsOf(rep, a);
        var rb = RunsOf(rep, b).ToDictionary(r => r.seed);
        var pairs = ra.Where(r => rb.ContainsKey(r.seed)).ToList();
        if (pairs.Count >= 2) return Statistics.MeanCi(pairs.Select(r => Wins(Split(r, split), Split(rb[r.seed], split)).Average()).ToList());
        return Metric(pairs, r => Wins(Split(r, split), Split(rb[r.seed], split)));
    }

    /// <summary>Training wall seconds and peak memory of a method, averaged over its runs.</summary>
    public static (double seconds, double peak_mb) Cost(Report rep, string method) =>
        (RunsOf(rep, method).Average(r => r.train_seconds), RunsOf(rep, method).Average(r => r.peak_rss_mb));

    static List<double> Wins(IReadOnlyList<Judge.Result> a, IReadOnlyList<Judge.Result> b) =>
        a.Zip(b, (p, q) => Math.Abs(p.score - q.score) < 1e-9 ? 0.5 : p.score > q.score ? 1.0 : 0.0).ToList();

    /// <summary>"m ± h" (or "m" without an interval); percent multiplies by 100 with one decimal.</summary>
    public static string Cell((double mean, double half) x, bool percent = false) =>
        percent ? (double.IsNaN(x.half) ? $"{(100 * x.mean).ToString("F1", CultureInfo.InvariantCulture)}%" : $"{(100 * x.mean).ToString("F1", CultureInfo.InvariantCulture)} ± {(100 * x.half).ToString("F1", CultureInfo.InvariantCulture)}%")
        : Fmt(x);

    static string Fmt((double mean, double half) x, int digits = 3) =>
        double.IsNaN(x.half) ? x.mean.ToString($"F{digits}", CultureInfo.InvariantCulture)
        : $"{x.mean.ToString($"F{digits}", CultureInfo.InvariantCulture)} ± {x.half.ToString($"F{digits}", CultureInfo.InvariantCulture)}";

    /// <summary>Per-metric values of one method, one entry per training seed (or per sample when there is one seed).</summary>
    static (double mean, double half) Metric(List<RunResult> runs, Func<RunResult, IReadOnlyList<double>> perSample)
    {
        if (runs.Count >= 2) return Statistics.MeanCi(runs.Select(r => perSample(r).Average()).ToList());
        var v = perSample(runs[0]);
        var mean = v.Average();
        var sd = Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / Math.Max(1, v.Count - 1));
        return (mean, 1.96 * sd / Math.Sqrt(v.Count));
    }
}
