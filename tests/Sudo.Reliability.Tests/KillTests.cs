using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using NUnit.Framework;
using Sudo.Data;
using Sudo.Torch;
using Sudo.Torch.Tests;
using Sudo.Training.Tests;

namespace Sudo.Reliability.Tests;

/// <summary>Training runs killed with SIGKILL at random moments (during start-up, steps and checkpoint writes) and
/// resumed from their latest checkpoint, again and again; after every kill each checkpoint the trainer would take for
/// complete must load, and the chain must end on the same bytes as an uninterrupted run. The suite kills each scenario
/// a few times (SUDO_KILLS, default 3); RELIABILITY.md records SUDO_KILLS=20.</summary>
[Category("Kill")]
public class KillTests
{
    private string _root = "";

    [SetUp]
    public void SetUp()
    {
        _root = Path.Combine(Path.GetTempPath(), $"sudo-kill-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_root);
    }

    [TearDown]
    public void TearDown()
    {
        if (Directory.Exists(_root)) Directory.Delete(_root, true);
    }

    private static int Kills => int.TryParse(Environment.GetEnvironmentVariable("SUDO_KILLS"), out var k) && k > 0 ? k : 3;

    /// <summary>The run's flags after `sudoml train` (the output folder is added per run).</summary>
    private string[] Flags(string scenario)
    {
        var pipe = Shared.Require("golden", "pipe_sd15");
        string[] common = ["--pretrained_model_name_or_path", pipe, "--train_batch_size", "2", "--learning_rate", "1e-4", "--seed", "3",
            "--checkpointing_steps", "1", "--checkpoints_total_limit", "3"];
        switch (scenario)
        {
            case "dpo-lora":
                return [.. common, "--dataset_name", Pairs(), "--max_train_steps", "24", "--lora_rank", "2"];
            case "dpo-full":
                return [.. common, "--dataset_name", Pairs(), "--max_train_steps", "16"];
            case "ddp-lora":   // two ranks under sudoml launch (Gloo); a kill takes the launcher and both ranks, as a lost node
                return [.. common, "--dataset_name", Pairs(), "--max_train_steps", "10", "--lora_rank", "2"];
            case "spo":
                var prompts = Path.Combine(_root, "prompts.txt");
                File.WriteAllLines(prompts, ["a red fox", "a blue bird", "a green frog", "two yellow squares"]);
                return [.. common, "--method", "spo", "--prompts_file", prompts, "--scorer", Shared.Require("golden", "spm"), "--max_train_steps", "18",
                    "--lora_rank", "2", "--num_inference_steps", "4", "--divert_start_step", "1", "--num_sample_each_step", "2", "--resolution", "32",
                    "--spo_threshold", "-1"];
            default:
                throw new ArgumentException(scenario);
        }
    }

    private string Pairs()
    {
        var dir = Path.Combine(_root, "pairs");
        if (Directory.Exists(dir)) return dir;
        TestPairs.Write(dir, 6, 40, 36, seed: 0, noise: 40, winner: 200, loser: 50, i => $"a bright picture {i}");
        return dir;
    }

    private static string Cli()
    {
        var dll = Path.Combine(Shared.RepoRoot(), "artifacts", "bin", "Sudo.Cli", "release", "sudoml.dll");
        Assert.That(File.Exists(dll), Is.True, $"{dll} missing: build the solution first (dotnet build Sudo.sln -c Release)");
        return dll;
    }

    /// <summary>`sudoml train` with the flags; with <paramref name="ranks"/> 2, under `sudoml launch --nproc_per_node 2`.</summary>
    private static Process Start(string[] flags, string output, int ranks = 1)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        string[] train = [Cli(), "--torch-threads", "1", "--blas-threads", "1", "train", .. flags, "--output_dir", output];
        foreach (var a in ranks == 1 ? train : [Cli(), "launch", "--nproc_per_node", $"{ranks}", "--master_port", $"{Shared.FreePort()}", "--", "dotnet", .. train])
            psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    private static void RunToEnd(string[] flags, string output, int ranks = 1)
    {
        using var p = Start(flags, output, ranks);
        Assert.That(p.WaitForExit(TimeSpan.FromMinutes(5)), Is.True, "the run did not finish in 5 minutes");
        Assert.That(p.ExitCode, Is.EqualTo(0), $"sudoml train exited {p.ExitCode}");
    }

    /// <summary>The final weights (output_dir/lora or output_dir/unet): file name → SHA-256 of its bytes.</summary>
    private static Dictionary<string, string> FinalWeights(string output)
    {
        var files = new[] { "lora", "unet" }.Select(d => Path.Combine(output, d)).Where(Directory.Exists)
            .SelectMany(d => Directory.EnumerateFiles(d, "*.safetensors")).Order(StringComparer.Ordinal).ToList();
        Assert.That(files, Is.Not.Empty, $"no final weights under {output}");
        return files.ToDictionary(f => Path.GetRelativePath(output, f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));
    }

    /// <summary>Every checkpoint the trainer would resume from loads: its state, its run record and every tensor file.</summary>
    private static int CheckCheckpoints(string output)
    {
        var complete = Sudo.Training.TrainingRun.Checkpoints(output);
        foreach (var c in complete)
        {
            var state = JsonDocument.Parse(File.ReadAllText(Path.Combine(c, "trainer_state.json")));
            Assert.That(state.RootElement.TryGetProperty("global_step", out _) || state.RootElement.TryGetProperty("step", out _), Is.True, $"{c}: trainer_state.json has no step");
            Assert.That(File.Exists(Path.Combine(c, "run_config.json")), Is.True, $"{c}: no run_config.json");
            var tensors = Directory.EnumerateFiles(c, "*.safetensors", SearchOption.AllDirectories).ToList();
            Assert.That(tensors, Is.Not.Empty, $"{c}: no tensor files");
            foreach (var f in tensors)
                foreach (var t in safetensors.load_file(f, mmap: false).Values) t.Dispose();
        }
        return complete.Count;
    }

    /// <summary>Each scenario's uninterrupted run (final weight hashes, seconds), made once per test process.</summary>
    private static readonly Dictionary<string, (Dictionary<string, string> weights, double seconds)> Straight = new();

    private (Dictionary<string, string> weights, double seconds) StraightRun(string scenario, string[] flags, int ranks)
    {
        if (Straight.TryGetValue(scenario, out var known)) return known;
        var output = Path.Combine(_root, "straight");
        var sw = Stopwatch.StartNew();
        RunToEnd(flags, output, ranks);
        return Straight[scenario] = (FinalWeights(output), sw.Elapsed.TotalSeconds);
    }

    private static int Ranks(string scenario)
    {
        if (!scenario.StartsWith("ddp", StringComparison.Ordinal)) return 1;
        if (!Sudo.Torch.ProcessGroup.Available()) Assert.Ignore("the shim was built without c10d/Gloo");
        return 2;
    }

    [TestCase("dpo-lora")]
    [TestCase("dpo-full")]
    [TestCase("spo")]
    [TestCase("ddp-lora")]
    public void KilledAgainAndAgainResumesToTheSameWeights(string scenario)
    {
        var flags = Flags(scenario);
        var ranks = Ranks(scenario);
        var (expected, runSeconds) = StraightRun(scenario, flags, ranks);

        var chain = Path.Combine(_root, "chain");
        var rng = new Random(20261130 ^ scenario.GetHashCode(StringComparison.Ordinal));
        int kills = 0, midWrite = 0, finishedEarly = 0;
        var stepsAtKill = new List<int>();
        while (kills < Kills)
        {
            using var p = Start(flags, chain, ranks);
            // Uniform over the start-up and the first part of the steps: most kills land after some progress, some during
            // loading, and with a checkpoint after every step many during a write.
            var delay = TimeSpan.FromSeconds(runSeconds * (0.35 + 0.55 * rng.NextDouble()));
            var exited = p.WaitForExit(delay);
            // Every third kill waits for the next checkpoint write to begin and kills inside it.
            if (!exited && kills % 3 == 2)
            {
                var until = DateTime.UtcNow + TimeSpan.FromSeconds(runSeconds);
                while (!p.HasExited && DateTime.UtcNow < until
                       && !(Directory.Exists(chain) && Directory.EnumerateDirectories(chain, ".tmp-checkpoint-*").Any()))
                    Thread.Sleep(1);
                exited = p.HasExited;
            }
            if (exited)
            {
                Assert.That(p.ExitCode, Is.EqualTo(0), $"sudoml train exited {p.ExitCode} before the kill");
                finishedEarly++;
                Directory.Delete(chain, true);   // finished: start the chain again so that every kill interrupts a run
                continue;
            }
            p.Kill(entireProcessTree: true);   // SIGKILL
            p.WaitForExit();
            kills++;
            if (Directory.Exists(chain) && Directory.EnumerateDirectories(chain, ".tmp-checkpoint-*").Any()) midWrite++;
            var n = CheckCheckpoints(chain);
            stepsAtKill.Add(Sudo.Training.TrainingRun.Latest(chain) is { } l ? int.Parse(Path.GetFileName(l)["checkpoint-".Length..]) : 0);
            Assert.That(n, Is.LessThanOrEqualTo(3), "checkpoints_total_limit 3 holds after a kill");
        }
        RunToEnd(flags, chain, ranks);
        var got = FinalWeights(chain);
        TestContext.Out.WriteLine($"{scenario}: uninterrupted run {runSeconds:F1} s; {kills} kills ({midWrite} during a checkpoint write, latest checkpoint at each kill: {string.Join(" ", stepsAtKill)}), {finishedEarly} runs finished before their kill; final weights {(got.SequenceEqual(expected) ? "bit-identical" : "DIFFERENT")}");
        Assert.That(got, Is.EqualTo(expected), "the resumed chain ends on other bytes than the uninterrupted run");
        Assert.That(Directory.EnumerateDirectories(chain, ".tmp-checkpoint-*"), Is.Empty, "a finished run leaves no temporary checkpoint folders");
    }

    /// <summary>One rank of a two-rank run killed (SIGKILL) after its first checkpoint, as a crashed or OOM-killed worker:
    /// the launcher must notice, stop the surviving rank within its grace period (it would otherwise wait in a collective
    /// for a peer that is gone) and exit non-zero; the job then resumes from its latest checkpoint to the same bytes as an
    /// uninterrupted run.</summary>
    [Test]
    public void AKilledRankStopsTheJobAndTheJobResumesToTheSameWeights()
    {
        var flags = Flags("ddp-lora");
        var ranks = Ranks("ddp-lora");
        var (expected, _) = StraightRun("ddp-lora", flags, ranks);

        var chain = Path.Combine(_root, "chain");
        using (var p = Start(flags, chain, ranks))
        {
            var until = DateTime.UtcNow + TimeSpan.FromMinutes(2);
            while (!p.HasExited && DateTime.UtcNow < until && Sudo.Training.TrainingRun.Latest(chain) is null) Thread.Sleep(20);
            Assert.That(p.HasExited, Is.False, "the run ended before its first checkpoint");
            var rank1 = ChildWithEnvironment(p.Id, "RANK=1");
            Assert.That(rank1, Is.Not.Null, "rank 1's process was not found among the launcher's children");
            using (var victim = Process.GetProcessById(rank1!.Value)) victim.Kill();   // SIGKILL, rank 1 only
            var sw = Stopwatch.StartNew();
            Assert.That(p.WaitForExit(TimeSpan.FromSeconds(60)), Is.True, "the launcher still runs 60 s after a rank died");
            TestContext.Out.WriteLine($"ddp: rank 1 killed; the launcher exited {p.ExitCode} after {sw.Elapsed.TotalSeconds:F1} s");
            Assert.That(p.ExitCode, Is.Not.EqualTo(0), "a job that lost a rank must not report success");
        }
        CheckCheckpoints(chain);
        RunToEnd(flags, chain, ranks);
        Assert.That(FinalWeights(chain), Is.EqualTo(expected), "the resumed job ends on other bytes than the uninterrupted run");
    }

    /// <summary>The pid of a child of <paramref name="parent"/> whose environment holds <paramref name="entry"/> (Linux /proc).</summary>
    private static int? ChildWithEnvironment(int parent, string entry)
    {
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');   // after "pid (comm) ": state, ppid, ...
                if (int.Parse(fields[1], System.Globalization.CultureInfo.InvariantCulture) != parent) continue;
                if (File.ReadAllText(Path.Combine(dir, "environ")).Split('\0').Contains(entry)) return pid;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        }
        return null;
    }

}
