// Pick-a-Pic v2 readers against ../shared/fixtures/pickapic (written by independent writers: parquet-rs and
// apache-arrow JS, with expected pairs from a Python transcription of Diffusion-DPO train.py). Every case is read
// from the fixture files: the layouts, expected*.jsonl, expected_summary.json and bad/cases.json.
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sudo.Data;
using Sudo.Torch.Tests;

namespace Sudo.Data.Tests;

public class PickapicTests
{
    static string Fixtures => Shared.Require("fixtures", "pickapic");

    /// <summary>The fixture layouts as --dataset_name / --cache_dir pairs (hub ids resolve through the caches).</summary>
    public static IEnumerable<TestCaseData> Layouts()
    {
        yield return new TestCaseData("hub_repo").SetName("HubCacheRepoFolder");
        yield return new TestCaseData("hub_id").SetName("HubIdInHubCache");
        yield return new TestCaseData("datasets_cache").SetName("HubIdInDatasetsCache");
        yield return new TestCaseData("save_to_disk").SetName("SaveToDisk");
        yield return new TestCaseData("plain_parquet").SetName("PlainParquetFolder");
    }

    public static PreferenceData OpenLayout(string layout, TableOptions? options = null)
    {
        var f = Fixtures;
        var o = options ?? new TableOptions();
        return layout switch
        {
            "hub_repo" => PreferenceData.Open(Path.Combine(f, "hub", "datasets--yuvalkirstain--pickapic_v2"), o),
            "hub_id" => PreferenceData.Open("yuvalkirstain/pickapic_v2", o, cacheDir: Path.Combine(f, "no-datasets-cache"), hubCacheDir: Path.Combine(f, "hub")),
            "datasets_cache" => PreferenceData.Open("yuvalkirstain/pickapic_v2", o, cacheDir: Path.Combine(f, "datasets_cache"), hubCacheDir: Path.Combine(f, "no-hub")),
            "save_to_disk" => PreferenceData.Open(Path.Combine(f, "save_to_disk"), o),
            "plain_parquet" => PreferenceData.Open(Path.Combine(f, "plain_parquet"), o),
            _ => throw new ArgumentException(layout),
        };
    }

    public static List<JsonObject> ReadJsonl(string path) =>
        File.ReadLines(path).Where(l => l.Trim().Length > 0).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();

    static string Sha(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b));

    /// <summary>Pair-by-pair comparison: order, row, ranking id, exact caption, winner/loser bytes by hash.</summary>
    public static void AssertPairs(IReadOnlyList<PairRecord> got, IReadOnlyList<JsonNode> expected, string what)
    {
        Assert.That(got.Count, Is.EqualTo(expected.Count), $"{what}: pair count");
        for (var i = 0; i < got.Count; i++)
        {
            var e = expected[i];
            var g = got[i];
            var at = $"{what}: pair {i} (row {e["row"]})";
            Assert.That(g.row, Is.EqualTo(e["row"]!.GetValue<long>()), at + " row");
            Assert.That(g.ranking_id, Is.EqualTo(e["ranking_id"]!.GetValue<long>()), at + " ranking_id");
            Assert.That(g.caption, Is.EqualTo(e["caption"]!.GetValue<string>()), at + " caption");
            Assert.That(g.winner_column, Is.EqualTo(e["winner_column"]!.GetValue<string>()), at + " winner column");
            Assert.That(Sha(g.winner!.bytes), Is.EqualTo(e["winner_sha256"]!.GetValue<string>()), at + " winner bytes");
            Assert.That(Sha(g.loser!.bytes), Is.EqualTo(e["loser_sha256"]!.GetValue<string>()), at + " loser bytes");
        }
    }

    [TestCaseSource(nameof(Layouts))]
    public void TrainSplitYieldsExpectedPairs(string layout)
    {
        using var d = OpenLayout(layout);
        var expected = ReadJsonl(Path.Combine(Fixtures, "expected.jsonl"));
        AssertPairs(d.Enumerate().ToList(), expected, layout);
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures, "expected_summary.json")))!;
        Assert.That(d.Counts.rows, Is.EqualTo(summary["train_rows"]!.GetValue<long>()));
        Assert.That(d.Counts.dropped.GetValueOrDefault("ties (label_0 0.5)"), Is.EqualTo(summary["ties_label_0_0_5"]!.GetValue<long>()));
        var stale = summary["stale_snapshot_rows_that_must_NOT_appear"]!.AsArray().Select(x => x!.GetValue<long>()).ToHashSet();
        Assert.That(d.Enumerate().Any(r => stale.Contains(r.ranking_id ?? -1)), Is.False, "a row of the stale snapshot");
    }

    [TestCaseSource(nameof(Layouts))]
    public void DreamlikePairsOnly(string layout)
    {
        using var d = OpenLayout(layout, new TableOptions { dreamlike_pairs_only = true });
        AssertPairs(d.Enumerate().ToList(), ReadJsonl(Path.Combine(Fixtures, "expected_dreamlike.jsonl")), layout + " dreamlike");
    }

    [TestCase("hub_repo"), TestCase("datasets_cache"), TestCase("save_to_disk")]
    public void OtherSplits(string layout)
    {
        var all = ReadJsonl(Path.Combine(Fixtures, "expected_other_splits.jsonl"));
        foreach (var split in all.Select(e => e["split"]!.GetValue<string>()).Distinct())
        {
            using var d = OpenLayout(layout, new TableOptions { split = split });
            AssertPairs(d.Enumerate().ToList(), all.Where(e => e["split"]!.GetValue<string>() == split).ToList(), $"{layout} {split}");
        }
    }

    [Test]
    public void MaxTrainSamplesPicksNumpysSubset()
    {
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures, "expected_summary.json")))!["max_train_samples"]!;
        var n = summary["N"]!.GetValue<int>();
        var reference = summary["python_reference_subset"]!;
        var expected = ReadJsonl(Path.Combine(Fixtures, "expected.jsonl"));
        // the generator itself: np.random.default_rng(42).permutation(39)[:7]
        var seed = long.Parse(reference["call"]!.GetValue<string>().Split("seed=")[1].Split(')')[0]);
        var picks = reference["selected_i"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
        Assert.That(NumpyRandom.Permutation(seed, expected.Count).Take(n), Is.EqualTo(picks));
        // numpy's documentation: default_rng(42).random(3) = [0.77395605, 0.43887844, 0.85859792]
        Assert.That(NumpyRandom.Random(42, 3), Is.EqualTo(new[] { 0.77395605, 0.43887844, 0.85859792 }).Within(5e-9));
        foreach (var layout in new[] { "hub_repo", "plain_parquet" })
        {
            using var d = OpenLayout(layout, new TableOptions { max_train_samples = n, seed = seed });
            Assert.That(d.Count, Is.EqualTo(summary["count"]!.GetValue<int>()));
            var ids = d.Enumerate().Select(r => r.ranking_id!.Value).OrderBy(x => x);
            Assert.That(ids, Is.EqualTo(reference["selected_ranking_ids"]!.AsArray().Select(x => x!.GetValue<long>()).OrderBy(x => x)), layout);
        }
        var dl = summary["with_dreamlike_pairs_only"]!;
        using (var d = OpenLayout("hub_repo", new TableOptions { max_train_samples = n, seed = seed, dreamlike_pairs_only = true }))
            Assert.That(d.Enumerate().Select(r => r.ranking_id!.Value).OrderBy(x => x), Is.EqualTo(dl["selected_ranking_ids"]!.AsArray().Select(x => x!.GetValue<long>()).OrderBy(x => x)));
        var ex = Assert.Throws<ArgumentException>(() => OpenLayout("hub_repo", new TableOptions { max_train_samples = expected.Count + 1 }));
        Assert.That(ex!.Message, Does.Contain("--max_train_samples").And.Contain($"{expected.Count} pairs"));
    }

    public static IEnumerable<TestCaseData> BadCases()
    {
        var path = Path.Combine(Shared.Root, "fixtures", "pickapic", "bad", "cases.json");
        if (!File.Exists(path)) { yield return new TestCaseData("(fixtures missing)").SetName("BadInput_FixturesMissing"); yield break; }
        foreach (var c in JsonNode.Parse(File.ReadAllText(path))!.AsArray())
            yield return new TestCaseData(c!["case"]!.GetValue<string>()).SetName("BadInput_" + c["case"]!.GetValue<string>());
    }

    /// <summary>Each bad input as cases.json says: "error" names what it lists; "ok" yields its pairs; "error_or_skip"
    /// stops with a message naming file, column and row by default and skips (counted) with skip_bad_rows.</summary>
    [TestCaseSource(nameof(BadCases))]
    public void BadInput(string name)
    {
        var cases = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures, "bad", "cases.json")))!.AsArray();
        var c = cases.First(x => x!["case"]!.GetValue<string>() == name)!;
        var dir = Path.Combine(Fixtures, c["dir"]!.GetValue<string>());
        var expected = c["expected"]!;
        var outcome = expected["outcome"]!.GetValue<string>();
        // Reading everything through the loader: decoding is where image errors show.
        List<PairRecord> LoadAll(bool skip)
        {
            using var d = PreferenceData.Open(dir, new TableOptions { skip_bad_rows = skip });
            using var loader = new PairLoader(d, new LoaderOptions { resolution = 32, batch_size = 1, shuffle = false, skip_bad_rows = skip }, _ => { });
            return d.Enumerate().Where(r => loader.Load([r.index]).Length > 0).ToList();
        }
        List<PairRecord> LoadAllSkipping()
        {
            using var d = PreferenceData.Open(dir, new TableOptions { skip_bad_rows = true });
            using var loader = new PairLoader(d, new LoaderOptions { resolution = 32, batch_size = 1, shuffle = false, skip_bad_rows = true }, _ => { });
            var kept = new List<PairRecord>();
            while (loader.epoch == 0)
            {
                var before = loader.epoch;
                var b = loader.Next();
                if (loader.epoch != before) { foreach (var p in b) p.Dispose(); break; }
                kept.AddRange(b.Select(p => p.record));
                foreach (var p in b) p.Dispose();
            }
            return kept;
        }
        switch (outcome)
        {
            case "ok":
                AssertPairs(LoadAll(false), expected["pairs"]!.AsArray().Select(x => x!).ToList(), name);
                break;
            case "error":
                {
                    var ex = Assert.Catch(() => LoadAll(false), name)!;
                    TestContext.Out.WriteLine($"{name}: {ex.Message}");
                    Assert.That(ex, Is.InstanceOf<InvalidDataException>(), name);
                    foreach (var m in expected["error_must_mention"]!.AsArray()) Assert.That(ex.Message, Does.Contain(m!.GetValue<string>()), name);
                    break;
                }
            case "error_or_skip":
                {
                    var ex = Assert.Catch<InvalidDataException>(() => LoadAll(false), name)!;
                    TestContext.Out.WriteLine($"{name}: {ex.Message}");
                    var first = c["corrupt_cells"]!.AsArray()[0]!;
                    Assert.That(ex.Message, Does.Contain(first["column"]!.GetValue<string>()).And.Contain($"row {first["row"]}").And.Contain(first["ranking_id"]!.ToString()));
                    var bad = c["corrupt_cells"]!.AsArray().Select(x => x!["row"]!.GetValue<long>()).ToHashSet();
                    var raw = c["expected"]!["raw_pairs_if_not_decoding"]!.AsArray().Select(x => x!).ToList();
                    AssertPairs(LoadAllSkipping(), raw.Where(p => !bad.Contains(p["row"]!.GetValue<long>())).ToList(), name + " skipping");
                    break;
                }
            default:
                Assert.Fail($"cases.json: unknown outcome {outcome}");
                break;
        }
    }

    [Test]
    public void MissingDatasetListsWhereItLookedAndHowToFetch()
    {
        var ex = Assert.Throws<DirectoryNotFoundException>(() => DatasetResolver.Resolve("someone/missing_set", "train", Path.Combine(Path.GetTempPath(), "nowhere-ds"), hubCacheDir: Path.Combine(Path.GetTempPath(), "nowhere-hub")))!;
        Assert.That(ex.Message, Does.Contain("nowhere-ds").And.Contain("nowhere-hub").And.Contain("load_dataset('someone/missing_set'"));
        var split = Assert.Throws<ArgumentException>(() => DatasetResolver.Resolve(Path.Combine(Fixtures, "hub", "datasets--yuvalkirstain--pickapic_v2"), "valid"))!;
        Assert.That(split.Message, Does.Contain("validation_unique").And.Contain("no split 'valid'"));
    }

    [Test]
    public void SplitOrderAndNamesFollowDatasets()
    {
        var r = DatasetResolver.Resolve(Path.Combine(Fixtures, "hub", "datasets--yuvalkirstain--pickapic_v2"), "validation");
        Assert.That(r.Splits, Is.EqualTo(new[] { "train", "validation", "test", "test_unique", "validation_unique" }));
        Assert.That(r.Files.Select(Path.GetFileName), Is.All.StartWith("validation-"));
    }
}
