// Training on Pick-a-Pic-layout data with the data flags of the upstream launch lines: one epoch covers exactly the
// pairs of the fixtures' expected.jsonl (by image hash), each once, and a run killed mid-epoch resumes to the same
// batches and weights. Fixtures: ../shared/fixtures/pickapic (see its README); model: the tiny golden SD1.5 pipeline.
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sudo.Data;
using Sudo.Torch;
using Sudo.Torch.Tests;

namespace Sudo.Training.Tests;

public class PickapicTrainingTests
{
    private string _out = "";

    [SetUp]
    public void SetUp() => _out = Path.Combine(Path.GetTempPath(), $"sudo-pickapic-{Guid.NewGuid():N}");

    [TearDown]
    public void TearDown()
    {
        if (Directory.Exists(_out)) Directory.Delete(_out, true);
    }

    static string Fixtures => Shared.Require("fixtures", "pickapic");
    static string Sha(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b));

    /// <summary>The data flags of an upstream launch line (dataset, cache_dir, workers), pointed at a fixture tree,
    /// plus the tiny golden model and a batch that divides the pair count.</summary>
    private TrainConfig Config(string script, string layout, int batch, int steps, params string[] more)
    {
        var upstream = FlagTests.LaunchArgs(FlagTests.Upstream(script));
        string? Flag(string name) => upstream.FirstOrDefault(a => a.StartsWith($"--{name}="))?.Split('=', 2)[1];
        var dataset = Flag("dataset_name")!;
        Assert.That(dataset, Is.EqualTo("yuvalkirstain/pickapic_v2"), "the launch line's dataset");
        var (name, cache) = layout switch
        {
            "datasets_cache" => (dataset, Path.Combine(Fixtures, "datasets_cache")),
            "hub_cache" => (dataset, Path.Combine(Fixtures, "hub")),   // --cache_dir naming a Hub cache root
            "hub_id" => (dataset, Path.Combine(Fixtures, "no-datasets-cache-here")),   // found through --hub_cache_dir
            "save_to_disk" => (Path.Combine(Fixtures, "save_to_disk"), null),
            "plain_parquet" => (Path.Combine(Fixtures, "plain_parquet"), null),
            _ => throw new ArgumentException(layout),
        };
        var args = new List<string>
        {
            "--pretrained_model_name_or_path", Shared.Require("golden", "pipe_sd15"),
            "--dataset_name", name, "--split", "train",
            "--dataloader_num_workers", Flag("dataloader_num_workers") is { } w ? Math.Min(int.Parse(w), 2).ToString() : "0",
            "--train_batch_size", batch.ToString(), "--max_train_steps", steps.ToString(), "--gradient_accumulation_steps", "1",
            "--learning_rate", "1e-4", "--random_crop", "--output_dir", _out, "--seed", "5", "--log_every", "1000",
            "--hub_cache_dir", Path.Combine(Fixtures, layout == "hub_id" ? "hub" : "no-hub-cache-here"),
        };
        if (cache != null) args.AddRange(["--cache_dir", cache]);
        args.AddRange(more);
        return Flags.Bind<TrainConfig>(args).value;
    }

    [TestCase("sudo_readme.sh", "datasets_cache"), TestCase("sudo_readme.sh", "hub_cache"), TestCase("sudo_readme.sh", "save_to_disk"),
     TestCase("sudo_readme.sh", "plain_parquet"), TestCase("diffusion_dpo_sd15.sh", "hub_id"), TestCase("diffusion_dpo_sd15.sh", "datasets_cache")]
    public void OneEpochTrainsExactlyTheExpectedPairs(string script, string layout)
    {
        var expected = File.ReadLines(Path.Combine(Fixtures, "expected.jsonl")).Where(l => l.Trim().Length > 0)
            .Select(l => JsonNode.Parse(l)!).Select(e => (e["winner_sha256"]!.GetValue<string>(), e["loser_sha256"]!.GetValue<string>())).ToList();
        var batch = Enumerable.Range(2, 6).First(b => expected.Count % b == 0);
        using var t = new Trainer(Config(script, layout, batch, expected.Count / batch));
        Assert.That(t.total_steps, Is.EqualTo(expected.Count / batch), "one epoch of optimizer steps");
        var seen = new List<(string, string)>();
        t.BatchLoaded += records => seen.AddRange(records.Select(r => (Sha(r.winner!.bytes), Sha(r.loser!.bytes))));
        t.Train(_ => { });
        Assert.That(seen, Is.EquivalentTo(expected), $"{layout}: the epoch's pairs (winner, loser) by image hash, each once");
        Assert.That(seen, Is.Not.EqualTo(expected), "the train split is shuffled");
    }

    [Test]
    public void KilledMidEpochResumesToTheSameBatchesAndWeights()
    {
        const int batch = 3, steps = 13, killAfter = 6, every = 4;   // the checkpoint at step 4 lies inside a shard/block
        Dictionary<string, float[]> Weights(Trainer t)
        {
            using var scope = torch.NewDisposeScope();
            return t.unet.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.ToArray<float>());
        }
        var more = new[] { "--checkpointing_steps", every.ToString(), "--resume_from_checkpoint", "latest" };
        List<long[]> full = [];
        Dictionary<string, float[]> fullWeights;
        using (var t = new Trainer(Config("sudo_readme.sh", "datasets_cache", batch, steps, more)))
        {
            t.BatchLoaded += r => full.Add(r.Select(x => x.row).ToArray());
            t.Train(_ => { });
            fullWeights = Weights(t);
        }
        Directory.Delete(_out, true);
        var killed = 0;
        using (var t = new Trainer(Config("sudo_readme.sh", "datasets_cache", batch, steps, more)))
        {
            t.BatchLoaded += _ => { if (++killed > killAfter) throw new OperationCanceledException("killed"); };
            Assert.Throws<OperationCanceledException>(() => t.Train(_ => { }));
        }
        List<long[]> resumed = [];
        Dictionary<string, float[]> resumedWeights;
        using (var t = new Trainer(Config("sudo_readme.sh", "datasets_cache", batch, steps, more)))
        {
            t.BatchLoaded += r => resumed.Add(r.Select(x => x.row).ToArray());
            t.Train(_ => { });
            resumedWeights = Weights(t);
        }
        Assert.That(resumed, Is.EqualTo(full.Skip(every)), "after the checkpoint: the same batches in the same order");
        foreach (var (k, v) in fullWeights) Assert.That(resumedWeights[k], Is.EqualTo(v), k);
    }
}
