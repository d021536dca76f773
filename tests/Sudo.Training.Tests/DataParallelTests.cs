using NUnit.Framework;
using Sudo.Data;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;

namespace Sudo.Training.Tests;

/// <summary>Data-parallel training with two processes on loopback (Gloo), launched as `sudoml launch
/// --nproc_per_node 2` launches them: world size 2 × batch b trains to the weights of one process with batch 2b,
/// the ranks split each global batch into disjoint halves whose union is the single run's batch, and a checkpoint
/// written at world size 2 resumes at world size 1 and 2 to the uninterrupted run's weights.</summary>
[NonParallelizable]
public class DataParallelTests
{
    /// <summary>fp32 tolerance between world 2 × b and world 1 × 2b. The two compute the same mean gradient but sum it
    /// in a different order (two half-batch backward passes averaged vs one full-batch pass), so they differ by float
    /// rounding only. Adam divides each gradient entry by its own RMS, which turns a rounding-level difference of a
    /// near-zero entry into an lr-sized step; the AdamW runs therefore use ε = 1e-2, where the update is linear in the
    /// gradient (and a wrong scale, e.g. summing instead of averaging, would show). Observed: 1.2e-7, one fp32 ulp of
    /// the weights (AMD EPYC, AVX2, 3 steps at lr 1e-3).</summary>
    private const double Tolerance = 1e-6;

    /// <summary>Adafactor has no such ε (its update is the gradient over its own factored RMS): its runs are checked
    /// against 1% of the change training made (observed 0.3%).</summary>
    private const double AdafactorRelative = 1e-2;

    private static string _pairs = "";
    private readonly List<string> _dirs = [];

    [OneTimeSetUp]
    public static void MakePairs()
    {
        _pairs = Path.Combine(Path.GetTempPath(), $"sudo-ddp-pairs-{Guid.NewGuid():N}");
        TestPairs.Write(_pairs, 12, 40, 36, seed: 1, noise: 60, winner: 190, loser: 60, i => $"picture number {i}");
    }

    [OneTimeTearDown]
    public static void Cleanup() => Directory.Delete(_pairs, true);

    [TearDown]
    public void TearDown()
    {
        foreach (var d in _dirs.Where(Directory.Exists)) Directory.Delete(d, true);
        _dirs.Clear();
    }

    private string Dir(string name)
    {
        var d = Path.Combine(Path.GetTempPath(), $"sudo-ddp-{name}-{Guid.NewGuid():N}");
        _dirs.Add(d);
        return d;
    }

    private static string[] Flags(string method, string output, int batch, int accumulation, int steps, int lora, bool adafactor, int checkpointing) =>
    [
        "--method", method, "--pretrained_model_name_or_path", Shared.Require("golden", "pipe_sd15"), "--dataset_name", _pairs,
        "--output_dir", output, "--train_batch_size", $"{batch}", "--gradient_accumulation_steps", $"{accumulation}",
        "--max_train_steps", $"{steps}", "--learning_rate", "1e-3", "--adam_epsilon", "1e-2", "--lr_warmup_steps", "0", "--lora_rank", $"{lora}",
        "--use_adafactor", adafactor ? "true" : "false", "--checkpointing_steps", $"{checkpointing}", "--resume_from_checkpoint", "latest",
        "--log_every", "100", "--seed", "5",
    ];

    /// <summary>Two ranks of the worker recipe; returns each rank's micro-batches (pair indices).</summary>
    private List<int[]>[] Launch(string[] flags, string seen)
    {
        RunWorker("ddp_worker.fsx", [.. flags, "--seen_dir", seen]);
        return [Seen(Path.Combine(seen, "rank0.txt")), Seen(Path.Combine(seen, "rank1.txt"))];
    }

    /// <summary>Runs a worker script as two ranks (Launcher.Run, as sudoml launch); returns the rank-prefixed output.</summary>
    private static List<string> RunWorker(string script, string[] flags) => RunScript(Path.Combine("tests", "Sudo.Training.Tests", script), flags);

    private static List<string> RunScript(string script, string[] flags)
    {
        if (!ProcessGroup.Available()) Assert.Ignore("the shim was built without c10d/Gloo");
        var root = Shared.RepoRoot();
        Assume.That(File.Exists(Path.Combine(root, "artifacts", "bin", "Sudo.Training", "release", "Sudo.Training.dll")), "needs the Release build");
        var lines = new List<string>();
        var code = Launcher.Run(new LaunchOptions { nproc_per_node = 2, master_port = Shared.FreePort() },
            ["dotnet", "fsi", Path.Combine(root, script), "--", .. flags], lines.Add);
        TestContext.Out.WriteLine(string.Join("\n", lines));
        Assert.That(code, Is.EqualTo(0), string.Join("\n", lines.TakeLast(30)));
        return lines;
    }

    private static List<int[]> Seen(string file) =>
        File.ReadAllLines(file).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray()).ToList();

    /// <summary>One process in this test process; returns its micro-batches.</summary>
    private static List<int[]> TrainHere(string[] flags)
    {
        var config = Sudo.Training.Flags.Bind<TrainConfig>(flags).value;
        var seen = new List<int[]>();
        using var t = new Trainer(config);
        Assert.That(t.data_parallel.world_size, Is.EqualTo(1));
        t.BatchLoaded += records => seen.Add(records.Select(r => r.index).ToArray());
        t.Train(_ => { });
        return seen;
    }

    private static Dictionary<string, Tensor> Weights(string output, bool lora)
    {
        var file = lora ? Path.Combine(output, "lora", "pytorch_lora_weights.safetensors") : Path.Combine(output, "unet", "diffusion_pytorch_model.safetensors");
        return safetensors.load_file(file, mmap: false);
    }

    /// <summary>The largest |a − b| over all tensors (after checking both have the same keys).</summary>
    private static double MaxDiff(string a, string b, bool lora)
    {
        using var scope = NewDisposeScope();
        var wa = Weights(a, lora);
        var wb = Weights(b, lora);
        Assert.That(wa.Keys.Order(), Is.EqualTo(wb.Keys.Order()));
        return wa.Keys.Max(k => (wa[k] - wb[k]).abs().max().item());
    }

    private static double MaxChange(string trained, bool lora)
    {
        using var scope = NewDisposeScope();
        var w = Weights(trained, lora);
        if (lora) return w.Where(kv => kv.Key.Contains("lora_B")).Max(kv => kv.Value.abs().max().item());
        var init = safetensors.load_file(Path.Combine(Shared.Require("golden", "pipe_sd15"), "unet", "diffusion_pytorch_model.safetensors"), mmap: false);
        return w.Keys.Max(k => (w[k] - init[k]).abs().max().item());
    }

    [TestCase("dpo", 0, false)]
    [TestCase("sudo", 0, false)]
    [TestCase("dpo", 2, false)]
    [TestCase("sft", 2, true)]
    public void TwoProcessesOfBatchBTrainAsOneOfBatch2B(string method, int lora, bool adafactor)
    {
        const int steps = 3;
        var two = Dir("w2");
        var ranks = Launch(Flags(method, two, 2, 2, steps, lora, adafactor, 0), Dir("seen"));
        var one = Dir("w1");
        var single = TrainHere(Flags(method, one, 4, 2, steps, lora, adafactor, 0));

        // The data: micro-batch k of the single run = rank 0's k-th half followed by rank 1's, disjoint.
        Assert.That(ranks[0].Count, Is.EqualTo(steps * 2));
        Assert.That(ranks[1].Count, Is.EqualTo(steps * 2));
        for (var k = 0; k < single.Count; k++)
        {
            Assert.That(ranks[0][k].Intersect(ranks[1][k]), Is.Empty, $"micro-batch {k}: the ranks share a pair");
            Assert.That(ranks[0][k].Concat(ranks[1][k]), Is.EqualTo(single[k]), $"micro-batch {k}");
        }
        // The weights: trained (they moved) and equal within fp32 rounding.
        var moved = MaxChange(one, lora > 0);
        var diff = MaxDiff(two, one, lora > 0);
        TestContext.Out.WriteLine($"{method} lora {lora} adafactor {adafactor}: max |w2 − w1| = {diff:E2} (largest change by training {moved:E2})");
        Assert.That(moved, Is.GreaterThan(1e-4), "training changed the weights");
        Assert.That(diff, Is.LessThan(adafactor ? AdafactorRelative * moved : Tolerance));
        Assert.That(File.Exists(Path.Combine(two, "metrics.jsonl")), Is.True, "rank 0 logs");
        Assert.That(File.ReadAllLines(Path.Combine(two, "metrics.jsonl")).Length, Is.EqualTo(steps), "one line per step, written once");
    }

    [Test]
    public void CheckpointOfTwoProcessesResumesWithOneAndWithTwo()
    {
        const int steps = 4;
        var straight = Dir("straight");
        Launch(Flags("dpo", straight, 2, 1, steps, 0, false, 2), Dir("seen"));
        Assert.That(TrainingRun.Checkpoints(straight).Select(Path.GetFileName), Is.EqualTo(new[] { "checkpoint-2", "checkpoint-4" }));

        string FromCheckpoint2(string name)
        {
            var d = Dir(name);
            Directory.CreateDirectory(d);
            CopyDir(Path.Combine(straight, "checkpoint-2"), Path.Combine(d, "checkpoint-2"));
            return d;
        }
        // World size 1 with the same global batch (1 × 4) continues the global data position.
        var one = FromCheckpoint2("resume1");
        TrainHere(Flags("dpo", one, 4, 1, steps, 0, false, 0));
        var two = FromCheckpoint2("resume2");
        Launch(Flags("dpo", two, 2, 1, steps, 0, false, 0), Dir("seen"));
        var d1 = MaxDiff(one, straight, false);
        var d2 = MaxDiff(two, straight, false);
        TestContext.Out.WriteLine($"resumed at world 1: max diff {d1:E2}; at world 2: {d2:E2}");
        Assert.That(d2, Is.EqualTo(0), "the same world size resumes bit-exactly");
        Assert.That(d1, Is.LessThan(Tolerance));
    }

    private static void CopyDir(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
        foreach (var d in Directory.GetDirectories(from)) CopyDir(d, Path.Combine(to, Path.GetFileName(d)));
    }

    [Test]
    public void SpoStepPairsOfDifferentCountsAreGatheredInOneOrderOnEveryRank()
    {
        var lines = RunWorker("ddp_spo_worker.fsx", ["--scenario", "gather", "--prompts", "p0|p1|p2|p3"]);
        // Rank r's prompts are p{2r}, p{2r+1}; pairs ordered by t descending, then by the prompt's place in the round.
        string[] expected =
        [
            "A t=900 prompt=0:p0 v=0 w=0.5 cond=Float16/0", "A t=800 prompt=1:p1 v=1 w=1.5 cond=Float16/1",
            "A t=800 prompt=3:p3 v=100 w=100.5 cond=Float16/100", "A t=700 prompt=0:p0 v=2 w=2.5 cond=Float16/2", "A count=4",
            "B t=500 prompt=2:p2 v=100 w=100.5 cond=Float16/100", "B t=500 prompt=3:p3 v=101 w=101.5 cond=Float16/101", "B count=2",
        ];
        foreach (var rank in new[] { 0, 1 })
        {
            var mine = lines.Where(l => l.StartsWith($"[rank {rank}] A ") || l.StartsWith($"[rank {rank}] B ")).Select(l => l[$"[rank {rank}] ".Length..]).ToList();
            Assert.That(mine.Count, Is.EqualTo(expected.Length), $"rank {rank}: {string.Join(" / ", mine)}");
            for (var i = 0; i < expected.Length; i++) Assert.That(mine[i], Does.StartWith(expected[i]), $"rank {rank}, line {i}");
            Assert.That(mine.Where(l => l.Contains(" t=")), Has.All.Contains("shape=[|1L; 4L; 2L; 2L|]"));
        }
    }

    [Test]
    public void SpoWithTwoProcessesTrainsAsOneWithTheirPromptsAndPairs()
    {
        string[] Spo(string output, int prompts, int pairs) =>
        [
            "--pretrained_model_name_or_path", Shared.Require("golden", "pipe_sd15"),
            "--scorer", Sudo.Preference.StepAwarePreferenceModel.FindSpoCheckpoint(Shared.Require("golden", "spm"))!,
            "--output_dir", output, "--max_train_steps", "3", "--num_inference_steps", "4", "--divert_start_step", "1",
            "--num_sample_each_step", "2", "--spo_threshold", "-1", "--resolution", "32", "--checkpointing_steps", "0",
            "--lora_rank", "2", "--learning_rate", "1e-3", "--adam_epsilon", "1e-2", "--seed", "4",
            "--prompts_per_round", $"{prompts}", "--train_batch_size", $"{pairs}",
        ];
        const string prompts = "a red fox|a blue bird";
        var two = Dir("spo2");
        RunWorker("ddp_spo_worker.fsx", [.. Spo(two, 1, 1), "--prompts", prompts]);
        var one = Dir("spo1");
        using (var t = SpoTrainer.Open(Sudo.Training.Flags.Bind<SpoTrainConfig>(Spo(one, 2, 2)).value))
        {
            Assert.That(t.data_parallel.world_size, Is.EqualTo(1));
            t.Train(prompts.Split('|'), _ => { });
            Assert.That(t.global_step, Is.EqualTo(3), "one round: 2 prompts × 3 steps = 6 pairs, 2 per step");
        }
        var moved = MaxChange(one, true);
        var diff = MaxDiff(two, one, true);
        TestContext.Out.WriteLine($"spo: max |w2 − w1| = {diff:E2} (largest LoRA B {moved:E2})");
        Assert.That(moved, Is.GreaterThan(1e-4));
        Assert.That(diff, Is.LessThan(Tolerance));
    }

    /// <summary>The step-aware preference model's training (recipes/train_spm.fsx under the launcher): world 2 × 2 pairs
    /// equals world 1 × 4 pairs, and the result is SPO's layout, loadable as an SPO scorer.</summary>
    [Test]
    public void StepAwareModelTrainsWithTwoProcessesAsWithOne()
    {
        string[] Spm(string output, int batch) =>
        [
            "--pretrained_model_name_or_path", Shared.Require("golden", "pipe_sd15"), "--scorer_init", Shared.Require("golden", "spm"),
            "--dataset_name", _pairs, "--output_dir", output, "--resolution", "32", "--train_batch_size", $"{batch}", "--max_train_steps", "3",
            "--learning_rate", "1e-3", "--adam_epsilon", "1e-2", "--lr_warmup_steps", "0", "--checkpointing_steps", "0", "--seed", "6",
        ];
        var two = Dir("spm2");
        RunScript(Path.Combine("recipes", "train_spm.fsx"), Spm(two, 2));
        var one = Dir("spm1");
        using (var t = new SpmTrainer(Sudo.Training.Flags.Bind<SpmTrainConfig>(Spm(one, 4)).value))
        {
            Assert.That(t.data_parallel.world_size, Is.EqualTo(1));
            t.Train(_ => { });
        }
        using var scope = NewDisposeScope();
        using var a = Sudo.Preference.StepAwarePreferenceModel.from_pretrained(two);
        using var b = Sudo.Preference.StepAwarePreferenceModel.from_pretrained(one);
        using var init = Sudo.Preference.StepAwarePreferenceModel.from_pretrained(Shared.Require("golden", "spm"));
        var (sa, sb, si) = (a.state_dict(), b.state_dict(), init.state_dict());
        var diff = sa.Keys.Max(k => (sa[k] - sb[k]).abs().max().item());
        var moved = sa.Keys.Max(k => (sa[k] - si[k]).abs().max().item());
        TestContext.Out.WriteLine($"spm: max |w2 − w1| = {diff:E2} (largest change by training {moved:E2})");
        Assert.That(moved, Is.GreaterThan(1e-4));
        Assert.That(diff, Is.LessThan(Tolerance));
    }

    [Test]
    public void StepAwareModelResumesExactly()
    {
        SpmTrainConfig C(string output, int steps) => new()
        {
            pretrained_model_name_or_path = Shared.Require("golden", "pipe_sd15"),
            scorer_init = Shared.Require("golden", "spm"),
            dataset_name = _pairs,
            output_dir = output,
            resolution = 32,
            train_batch_size = 4,
            max_train_steps = steps,
            learning_rate = 1e-3,
            lr_warmup_steps = 1,
            checkpointing_steps = 2,
            seed = 6,
            report_to = "none",
        };
        var straight = Dir("spm-straight");
        using (var t = new SpmTrainer(C(straight, 4))) t.Train(_ => { });
        // A run killed after its step-2 checkpoint: only the checkpoint is left.
        var resumed = Dir("spm-resumed");
        CopyDir(Path.Combine(straight, "checkpoint-2"), Path.Combine(resumed, "checkpoint-2"));
        var log = new List<string>();
        using (var t = new SpmTrainer(C(resumed, 4))) t.Train(log.Add);
        Assert.That(log[0], Does.Contain("resumed from").And.Contain("checkpoint-2"));
        using var scope = NewDisposeScope();
        using var a = Sudo.Preference.StepAwarePreferenceModel.from_pretrained(straight);
        using var b = Sudo.Preference.StepAwarePreferenceModel.from_pretrained(resumed);
        var (sa, sb) = (a.state_dict(), b.state_dict());
        foreach (var k in sa.Keys) Assert.That(sa[k].equal(sb[k]), k);
    }

    [Test]
    public void ResumeComparesPerProcessSizesTimesTheProcessCount()
    {
        System.Text.Json.Nodes.JsonObject C(int batch, int? processes, int prompts = 2)
        {
            var c = new System.Text.Json.Nodes.JsonObject { ["train_batch_size"] = batch, ["prompts_per_round"] = prompts, ["learning_rate"] = 1e-5 };
            if (processes is { } n) c["num_processes"] = n;
            return c;
        }
        Assert.That(RunRecord.Differences(C(2, 2), C(4, 1, 4), []), Is.Empty, "2 × 2 = 4 × 1");
        Assert.That(RunRecord.Differences(C(4, null, 4), C(2, 2), []), Is.Empty, "a record without num_processes was one process");
        var d = RunRecord.Differences(C(2, 2), C(2, 1, 1), []);
        Assert.That(d.Select(x => x.field), Is.EqualTo(new[] { "train_batch_size", "prompts_per_round" }));
        Assert.That(d[0].was, Does.Contain("2 × 2 process(es) = 4"));
        Assert.That(d[0].now, Does.Contain("2 × 1 = 2"));
        Assert.That(RunRecord.Differences(C(2, 2), C(2, 1, 4), ["train_batch_size"]), Is.Empty, "explicitly allowed");
    }

    [Test]
    public void GradientBucketsKeepToTheCapAndToOneDtype()
    {
        using var scope = NewDisposeScope();
        var dp = new DataParallel(null) { bucket_bytes = 400 };
        Tensor[] ps = [zeros([50]), zeros([40]), zeros([20]), zeros([200]), zeros([10], ScalarType.Float64), zeros([10], ScalarType.Float64), zeros([5])];
        var sizes = dp.Buckets(ps).Select(b => b.Select(p => p.numel()).ToArray()).ToArray();
        // 50 + 40 floats = 360 bytes; +20 would pass 400; 200 floats is a bucket of its own; dtypes never mix.
        Assert.That(sizes, Is.EqualTo(new[] { new long[] { 50, 40 }, [20], [200], [10, 10], [5] }));
    }

    [Test]
    public void LoaderShardsEveryGlobalBatchOverTheRanks()
    {
        using var d = PreferenceData.Open(_pairs, new TableOptions());
        LoaderOptions O(int rank, int world, int b) => new() { resolution = 16, batch_size = b, seed = 9, rank = rank, world_size = world };
        using var single = new PairLoader(d, O(0, 1, 4));
        using var r0 = new PairLoader(d, O(0, 2, 2));
        using var r1 = new PairLoader(d, O(1, 2, 2));
        // 12 pairs, global batch 4: 3 batches per epoch, then the next epoch's order.
        for (var k = 0; k < 5; k++)
        {
            var s = single.Next();
            var a = r0.Next();
            var b = r1.Next();
            Assert.That(a.Concat(b).Select(p => p.record.index), Is.EqualTo(s.Select(p => p.record.index)), $"batch {k}");
            Assert.That((r0.epoch, r0.position), Is.EqualTo((single.epoch, single.position)), "the data position is global");
            Assert.That((r0.last!.offset, r1.last!.offset, r1.last.indices), Is.EqualTo((0, 2, single.last!.indices)));
            for (var i = 0; i < 2; i++) Assert.That(b[i].winner.ToArray<float>(), Is.EqualTo(s[2 + i].winner.ToArray<float>()), "same crop and flip on any rank");
            foreach (var p in s.Concat(a).Concat(b)) p.Dispose();
        }
        Assert.That(r1.BatchesPerEpoch, Is.EqualTo(3));
        Assert.That(Assert.Throws<ArgumentException>(() => new PairLoader(d, O(0, 4, 4)))!.Message, Does.Contain("× 4 processes").And.Contain("exceeds the 12 pairs"));
    }

    /// <summary>The bad-input fixtures (../shared/fixtures/pickapic/bad, cases.json): a record whose image is null is
    /// known before decoding, so with --skip_bad_rows every rank skips it alike and the ranks' union is still the single
    /// run's batch; an image that fails to decode cannot be skipped on one rank alone, so a sharded run stops naming it.</summary>
    [Test]
    public void BadRecordsAreSkippedAlikeOnEveryRankAndUndecodableImagesStopAShardedRun()
    {
        var bad = Shared.Require("fixtures", "pickapic", "bad");
        var cases = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(bad, "cases.json")))!.AsArray();
        string Dir(string name) => Path.Combine(Path.GetDirectoryName(bad)!, cases.First(c => (string)c!["case"]! == name)!["dir"]!.GetValue<string>());
        LoaderOptions O(int rank, int world, int b) => new() { resolution = 16, batch_size = b, shuffle = false, skip_bad_rows = true, rank = rank, world_size = world };

        using (var d = PreferenceData.Open(Dir("null_jpg_0"), new TableOptions { skip_bad_rows = true }))
        {
            using var single = new PairLoader(d, O(0, 1, 2), _ => { });
            using var r0 = new PairLoader(d, O(0, 2, 1), _ => { });
            using var r1 = new PairLoader(d, O(1, 2, 1), _ => { });
            var served = new List<int>();
            while (true)
            {
                var s = single.Next();
                var a = r0.Next();
                var b = r1.Next();
                try
                {
                    if (single.epoch > 0) break;
                    Assert.That(a.Concat(b).Select(p => p.record.index), Is.EqualTo(s.Select(p => p.record.index)));
                    served.AddRange(s.Select(p => p.record.index));
                }
                finally
                {
                    foreach (var p in s.Concat(a).Concat(b)) p.Dispose();
                }
            }
            Assert.That(single.skipped, Is.GreaterThan(0), "the fixture's null image was skipped");
            Assert.That((r0.skipped, r1.skipped), Is.EqualTo((single.skipped, single.skipped)), "every rank skipped the same records");
            Assert.That(served, Is.Not.Empty);
        }
        using (var d = PreferenceData.Open(Dir("corrupt_jpeg"), new TableOptions { skip_bad_rows = true }))
        {
            using var r0 = new PairLoader(d, O(0, 2, 1), _ => { });
            using var r1 = new PairLoader(d, O(1, 2, 1), _ => { });
            // Whichever rank holds the corrupt image stops within one epoch.
            var e = Assert.Throws<InvalidDataException>(() =>
            {
                for (var k = 0; k < d.Count; k++)
                    foreach (var p in r0.Next().Concat(r1.Next())) p.Dispose();
            })!;
            Assert.That(e.Message, Does.Contain("does not decode").And.Contain("2 processes").And.Contain("--skip_bad_rows names each"));
        }
    }
}
