using System.Diagnostics;
using System.Reflection;
using NUnit.Framework;
using Sudo.Data;
using Sudo.Torch;
using Sudo.Torch.Tests;
using Sudo.Training;
using Sudo.Training.Tests;

namespace Sudo.Reliability.Tests;

/// <summary>Bad flags and bad states: each is a clear error naming what is wrong, and nothing written before is lost.</summary>
public class BadInputTests
{
    private string _root = "";

    [SetUp]
    public void SetUp()
    {
        _root = Path.Combine(Path.GetTempPath(), $"sudo-bad-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_root);
    }

    [TearDown]
    public void TearDown()
    {
        if (Directory.Exists(_root)) Directory.Delete(_root, true);
    }

    /// <summary>Every numeric or boolean training flag given a value of the wrong kind: an ArgumentException naming the
    /// flag (the flags are read from TrainConfig and SpoTrainConfig, so a new flag is covered without a new test).</summary>
    [TestCase(typeof(TrainConfig))]
    [TestCase(typeof(SpoTrainConfig))]
    public void EveryTypedFlagRejectsAValueOfTheWrongKind(Type config)
    {
        var bind = typeof(Flags).GetMethods(BindingFlags.Public | BindingFlags.Static).Single(m => m.Name == "Bind" && m.IsGenericMethod).MakeGenericMethod(config);
        var checkedFlags = 0;
        foreach (var p in config.GetProperties().Where(p => p.CanWrite))
        {
            var t = Nullable.GetUnderlyingType(p.PropertyType) ?? p.PropertyType;
            if (t != typeof(int) && t != typeof(long) && t != typeof(double) && t != typeof(bool)) continue;
            var e = Assert.Throws<TargetInvocationException>(() => bind.Invoke(null, [new[] { $"--{p.Name}", "abc" }, null, null]), p.Name)!.InnerException!;
            Assert.That(e, Is.InstanceOf<ArgumentException>(), $"--{p.Name} abc: {e.GetType().Name}: {e.Message}");
            Assert.That(e.Message, Does.Contain($"--{p.Name}"), $"--{p.Name} abc: the message names the flag");
            checkedFlags++;
        }
        Assert.That(checkedFlags, Is.GreaterThan(10));
        TestContext.Out.WriteLine($"{config.Name}: {checkedFlags} typed flags refuse 'abc'");
    }

    [Test]
    public void NoneIsAValueForReportToAndNullForOptionalSettings()
    {
        // Found by hand: --report_to none bound null (every reference-type setting was treated as nullable) and failed
        // validation with an empty value in its message.
        var b = Flags.Bind<TrainConfig>(["--report_to", "none", "--revision", "none", "--pretrained_model_name_or_path", "m", "--dataset_name", "d"]).value;
        Assert.That(b.report_to, Is.EqualTo("none"));
        Assert.That(b.revision, Is.Null);
        Assert.DoesNotThrow(() => b.Validate());
    }

    [Test]
    public void UnknownAndContradictoryFlagsAreErrors()
    {
        Assert.That(Assert.Throws<ArgumentException>(() => Flags.Bind<TrainConfig>(["--learning_rat", "1e-5"]))!.Message, Does.Contain("learning_rat"));
        var c = Flags.Bind<TrainConfig>(["--lr_scheduler", "no_such_schedule"]).value;
        Assert.Throws<ArgumentException>(() => c.Validate());
    }

    private string Pairs(bool onlyTies = false)
    {
        var dir = Path.Combine(_root, onlyTies ? "ties" : "pairs");
        TestPairs.Write(dir, 4, 40, 36, seed: 0, noise: 40, winner: 200, loser: 50, i => $"a bright picture {i}");
        if (onlyTies)
            File.WriteAllLines(Path.Combine(dir, "pairs.jsonl"), Enumerable.Range(0, 4)
                .Select(i => $$"""{"caption": "tie {{i}}", "image_0": "w{{i}}.png", "image_1": "l{{i}}.png", "label_0": 0.5}"""));
        return dir;
    }

    private TrainConfig Config(string output, int steps = 4) => new()
    {
        pretrained_model_name_or_path = Shared.Require("golden", "pipe_sd15"),
        dataset_name = Pairs(),
        output_dir = output,
        train_batch_size = 2,
        max_train_steps = steps,
        learning_rate = 1e-4,
        checkpointing_steps = 1,
        report_to = "none",
        log_every = 100,
        seed = 3,
    };

    [Test]
    public void ADatasetWithNoUsablePairsSaysSo()
    {
        var e = Assert.Throws<InvalidDataException>(() => PairDataset.Load(Pairs(onlyTies: true)))!;
        Assert.That(e.Message, Does.Contain("no usable pairs").And.Contain("4 ties dropped"));
    }

    [Test]
    public void AnOutputFolderThatCannotBeWrittenIsNamedBeforeTraining()
    {
        var file = Path.Combine(_root, "a-file");
        File.WriteAllText(file, "keep me");
        var e = Assert.Throws<IOException>(() =>
        {
            using var t = new Trainer(Config(file));
            t.Train(_ => { });
        })!;
        Assert.That(e.Message, Does.Contain("--output_dir").And.Contain(file));
        Assert.That(File.ReadAllText(file), Is.EqualTo("keep me"), "nothing written before is lost");
    }

    /// <summary>A disk that fills up during a checkpoint write (a tmpfs sized for one and a half checkpoints): the run
    /// stops with the system's "No space left on device" naming the file, the complete checkpoint before it still loads,
    /// no temporary folder is left, and after space is freed the run resumes from that checkpoint.</summary>
    [Test]
    public void ADiskThatFillsUpDuringACheckpointKeepsThePreviousOne()
    {
        // One checkpoint's size, measured.
        var probe = Path.Combine(_root, "probe");
        using (var t = new Trainer(Config(probe, 1)))
            t.Train(_ => { });
        var one = Directory.EnumerateFiles(Path.Combine(probe, "checkpoint-1"), "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
        var mount = Path.Combine(_root, "disk");
        Directory.CreateDirectory(mount);
        var size = (one * 3 / 2 + 65536 + 4095) / 4096 * 4096;
        if (!Run("mount", "-t", "tmpfs", "-o", $"size={size}", "tmpfs", mount))
        {
            Assert.Ignore("mounting a tmpfs needs root (CAP_SYS_ADMIN); the disk-full check runs where that is allowed");
            return;
        }
        try
        {
            var output = Path.Combine(mount, "run");
            var e = Assert.Throws<IOException>(() =>
            {
                using var t = new Trainer(Config(output, 4));
                t.Train(_ => { });
            })!;
            TestContext.Out.WriteLine($"checkpoint of {one} bytes on a {size}-byte disk: {e.Message}");
            Assert.That(e.Message, Does.Contain("No space left on device"));
            var complete = TrainingRun.Checkpoints(output);
            Assert.That(complete, Is.Not.Empty, "the first checkpoint fit");
            foreach (var f in Directory.EnumerateFiles(complete[^1], "*.safetensors", SearchOption.AllDirectories))
                foreach (var x in safetensors.load_file(f, mmap: false).Values) x.Dispose();
            Assert.That(Directory.EnumerateDirectories(output, ".tmp-checkpoint-*"), Is.Empty, "the half-written checkpoint was removed");
            // Space freed (the older probe run is not here; drop the metrics the failed run wrote), then resume.
            foreach (var c in complete.SkipLast(1)) Directory.Delete(c, true);
            using (var t = new Trainer(Config(output, 2) with { resume_from_checkpoint = "latest", checkpointing_steps = 0, resume_allow_changes = "max_train_steps,checkpointing_steps" }))
            {
                var log = new List<string>();
                t.Train(log.Add);
                Assert.That(log[0], Does.Contain("resumed from"));
            }
        }
        finally
        {
            Run("umount", "-l", mount);
        }
    }

    private static bool Run(string exe, params string[] args)
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        try
        {
            using var p = Process.Start(psi)!;
            p.WaitForExit();
            return p.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }
}
