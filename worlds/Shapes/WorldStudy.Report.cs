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

// The study's report: report.md and results.json.
public static partial class WorldStudy
{
    static string Markdown(WorldStudyConfig c, string root, string baseDir, string pairsDir, string pairsOrigin, string precision, Report rep, double seconds)
    {
        var runs = rep.runs;
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine("# Shapes-world method comparison\n");
        if (c.report_note is { Length: > 0 } note) sb.AppendLine(note + "\n");
        var n = c.seeds.Length;
        sb.AppendLine(n >= 2
            ? $"Each cell: mean ± 95% interval over **{n} training seeds** ({string.Join(", ", c.seeds)}; Student t, {n - 1} df); each seed's value is the mean over {c.eval_prompts} held-out prompts × {c.eval_seeds} sampling seeds per split."
            : $"One training seed ({c.seeds[0]}): ± is a 95% interval over the {c.eval_prompts} held-out prompts × {c.eval_seeds} sampling seeds (sampling noise only; the paper-repro tables use ≥ 3 training seeds).");
        sb.AppendLine($"Same base, pairs and budget for every method: {c.max_train_steps} steps × {c.train_batch_size} pairs, lr {c.learning_rate.ToString(inv).ToLowerInvariant()}, warmup {c.lr_warmup_steps}, β {c.beta_dpo.ToString(inv)}; "
            + $"sampling DDIM {c.sample_steps}, CFG {c.guidance_scale.ToString(inv)}. Judge score = 0.8·mean(attribute checks) + 0.2·quality. "
            + "Validation = held-out prompts with colour–shape pairs seen in training; test = pairs never seen (red square, blue circle, purple triangle). "
            + "Win rate = share of (prompt, seed) where the method's image beats the base's on the judge (ties ½). "
            + "Δ = judge score minus the base's on the same prompt and seed (both splits together).\n");
        sb.Append(Controls(c, rep));
        sb.AppendLine("| method | judge (validation) | judge (test, unseen) | Δ vs base | win vs base (val) | win vs base (test) | colour | shape | size | count | relation | train s | peak MB |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        // The same helpers as the paper-repro tables, so the report and RESULTS.md cannot disagree.
        string[] attrs = ["color", "shape", "size", "count", "relation"];
        foreach (var m in c.methods.Prepend("base"))
        {
            var (secs, mb) = m == "base" ? ("—", "—") : (Cost(rep, m).seconds.ToString("F0", inv), Cost(rep, m).peak_mb.ToString("F0", inv));
            var wins = m == "base" ? "— | —" : $"{Fmt(WinVsBase(rep, m, "validation"))} | {Fmt(WinVsBase(rep, m, "test"))}";
            var gain = m == "base" ? "—" : Fmt(GainVsBase(rep, m, "all"));
            sb.AppendLine($"| {(m == "base" ? "base" : Methods[m].label)} | {Fmt(MeanScore(rep, m, "validation"))} | {Fmt(MeanScore(rep, m, "test"))} | {gain} | {wins} | "
                + $"{string.Join(" | ", attrs.Select(a => Fmt(MeanAttribute(rep, m, a))))} | {secs} | {mb} |");
        }
        foreach (var x in c.extra_samplers)
        {
            var (v2, t2) = ($"validation@{x.name}", $"test@{x.name}");
            var why = x.guidance_scale == 1 && x.eta == 0 ? " (no classifier-free guidance: what the model learned without the sampler's help; SUDO's self-pairs act as a learned guidance and show here)"
                : x.eta == 1 ? " (the stochastic sampler SPO's chains use and its training optimizes)" : "";
            sb.AppendLine($"\nThe same models, prompts and seeds judged with **{x.Describe()}**{why}:\n");
            sb.AppendLine("| method | judge (validation) | judge (test, unseen) | win vs base (val) | win vs base (test) |");
            sb.AppendLine("|---|---|---|---|---|");
            foreach (var m in c.methods.Prepend("base"))
            {
                var wins = m == "base" ? "— | —" : $"{Fmt(WinVsBase(rep, m, v2))} | {Fmt(WinVsBase(rep, m, t2))}";
                sb.AppendLine($"| {(m == "base" ? "base" : Methods[m].label)} | {Fmt(MeanScore(rep, m, v2))} | {Fmt(MeanScore(rep, m, t2))} | {wins} |");
            }
        }
        sb.AppendLine("\n![base vs methods](grid.png)\n");
        sb.AppendLine($"Grid: the first row is the prompt rendered by the world (the target); then the base and each method (training seed {c.seeds[0]}), sampling seed 0, judge score under each image. Columns 1–{c.grid_prompts / 2} are validation prompts, the rest test prompts (unseen combinations).\n");
        sb.AppendLine($"![judge score against training step](curve.png)\n");
        sb.AppendLine("## Methods and commands\n");
        foreach (var m in c.methods)
        {
            var r = runs.First(x => x.method == m);
            sb.AppendLine($"- **{Methods[m].label}** — {Methods[m].note}:\n  `{r.command.Replace(root + "/", "")}`");
        }
        sb.AppendLine($"\nBase: `{Path.GetRelativePath(root, baseDir)}`; pairs: `{Path.GetRelativePath(root, pairsDir)}`, {pairsOrigin}. "
            + $"Train s and peak MB come from each run's train_summary.json (peak resident memory of the recipe process); threads: torch {get_num_threads()}; training precision: {precision}. Whole study {seconds:F0} s.");
        if (c.build_seconds is double build)
            sb.AppendLine($"\n**Time**: system packages {c.setup_seconds ?? 0:F0} s (apt; reported apart), build {build:F0} s, study {seconds:F0} s — **{build + seconds:F0} s ({(build + seconds) / 60:F1} min) from command to report**.");
        return sb.ToString();
    }

    /// <summary>The controls' verdicts: the positive control (SFT on renders) must gain significantly and the negative one
    /// (DPO on shuffled labels) must not, or the testbed cannot tell a working method from a broken one.</summary>
    static string Controls(WorldStudyConfig c, Report rep)
    {
        var sb = new StringBuilder();
        var pos = c.methods.Contains("sft_truth") ? GainVsBase(rep, "sft_truth", "all") : ((double, double)?)null;
        var neg = c.methods.Contains("dpo_shuffled") ? GainVsBase(rep, "dpo_shuffled", "all") : ((double, double)?)null;
        if (pos is null && neg is null) return "";
        sb.Append("**Controls**: ");
        if (pos is { } p)
            sb.Append($"positive (SFT on the ground-truth renders) Δ {Fmt(p)}: {Significance(p)} — "
                + (Significance(p) == "significant gain" ? "the testbed can show a gain. " : "**the testbed is broken: not even the upper bound gains**. "));
        if (neg is { } q)
            sb.Append($"negative (DPO on shuffled labels) Δ {Fmt(q)}: {Significance(q)} — "
                + (Significance(q) == "significant gain" ? "**a method without signal gains: gains here are not evidence**." : "a method without signal does not gain."));
        sb.AppendLine("\n");
        return sb.ToString();
    }

    static JsonObject ResultsJson(WorldStudyConfig c, List<Judge.Result> baseVal, List<Judge.Result> baseTest, List<RunResult> runs,
        IReadOnlyDictionary<string, List<Judge.Result>> baseExtra)
    {
        JsonObject Summ(List<Judge.Result> val, List<Judge.Result> test, IReadOnlyDictionary<string, List<Judge.Result>>? extra)
        {
            var o = new JsonObject { ["judge_validation"] = val.Average(r => r.score), ["judge_test"] = test.Average(r => r.score) };
            foreach (var a in Attributes) o[a] = AttributeMean(val.Concat(test), a);
            if (extra != null)
                foreach (var (split, rs) in extra)
                {
                    o[$"judge_{split}"] = rs.Average(r => r.score);
                    if (!ReferenceEquals(extra, baseExtra)) o[$"win_rate_{split}"] = WinRate(rs, baseExtra[split]);
                }
            return o;
        }
        var arr = new JsonArray();
        foreach (var r in runs)
        {
            var o = Summ(r.validation, r.test, r.extra);
            o["method"] = r.method;
            o["seed"] = r.seed;
            o["win_rate_validation"] = WinRate(r.validation, baseVal);
            o["win_rate_test"] = WinRate(r.test, baseTest);
            o["gain_vs_base"] = r.validation.Concat(r.test).Zip(baseVal.Concat(baseTest), (a, b) => a.score - b.score).Average();
            o["train_seconds"] = r.train_seconds;
            o["peak_rss_mb"] = r.peak_rss_mb;
            o["curve"] = new JsonArray(r.curve.Select(p => (JsonNode)new JsonArray(p.step, p.score)).ToArray());
            o["command"] = r.command;
            arr.Add(o);
        }
        return new JsonObject
        {
            ["config"] = JsonNode.Parse(JsonSerializer.Serialize(c)),
            ["base"] = Summ(baseVal, baseTest, baseExtra),
            ["runs"] = arr,
        };
    }
}
