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

public class PairLoaderTests
{
    static PreferenceData Open() => PickapicTests.OpenLayout("plain_parquet");

    static List<(int index, float[] w, float[] l)> Drain(PairLoader loader, int batches)
    {
        var got = new List<(int, float[], float[])>();
        for (var i = 0; i < batches; i++)
            foreach (var p in loader.Next())
            {
                got.Add((p.record.index, p.winner.ToArray<float>(), p.loser!.ToArray<float>()));
                p.Dispose();
            }
        return got;
    }

    /// <summary>The same pixels for every worker count, and across epochs a fresh order and fresh crops.</summary>
    [Test]
    public void ResultsDoNotDependOnWorkersAndResumeExactly()
    {
        using var d = Open();
        var o = new LoaderOptions { resolution = 40, batch_size = 4, seed = 11, random_crop = true, shuffle_window_blocks = 2 };
        var perEpoch = d.Count / 4;
        List<(int, float[], float[])> reference;
        using (var l0 = new PairLoader(d, o)) reference = Drain(l0, perEpoch + 3);
        foreach (var w in new[] { 1, 3 })
            using (var lw = new PairLoader(d, o with { workers = w }))
            {
                var got = Drain(lw, perEpoch + 3);
                Assert.That(got.Select(g => g.Item1), Is.EqualTo(reference.Select(r => r.Item1)), $"{w} workers: order");
                for (var i = 0; i < got.Count; i++) Assert.That(got[i].Item2, Is.EqualTo(reference[i].Item2), $"{w} workers: pixels of item {i}");
            }
        // An epoch serves each pair once (drop_last: the remainder is skipped), epochs differ in order and in crops.
        var first = reference.Take(perEpoch * 4).Select(r => r.Item1).ToList();
        Assert.That(first, Is.Unique);
        Assert.That(first.Count, Is.EqualTo(perEpoch * 4));
        var again = reference.Skip(perEpoch * 4).ToList();
        var same = again.Select(a => reference.First(r => r.Item1 == a.Item1)).ToList();
        Assert.That(again.Zip(same).Any(p => !p.First.Item2.SequenceEqual(p.Second.Item2)), "epoch 2 draws new crops/flips");
        // Resume: a new loader seeked to (epoch 0, 8) continues exactly.
        using var resumed = new PairLoader(d, o with { workers = 2 });
        resumed.Seek(0, 8);
        var tail = Drain(resumed, 3);
        for (var i = 0; i < tail.Count; i++)
        {
            Assert.That(tail[i].Item1, Is.EqualTo(reference[8 + i].Item1));
            Assert.That(tail[i].Item2, Is.EqualTo(reference[8 + i].Item2));
        }
    }

    /// <summary>Winner and loser are transformed independently (upstream applies train_transforms to each image).</summary>
    [Test]
    public void WinnerAndLoserGetTheirOwnCropAndFlip()
    {
        using var d = Open();
        using var loader = new PairLoader(d, new LoaderOptions { resolution = 32, batch_size = 1, seed = 1, random_crop = true });
        // The same image as winner and loser (slot 0 and 1 of one pair): its two transforms must differ for some pairs.
        var img = d.Enumerate().First().winner!.Decode();
        var differ = Enumerable.Range(0, 16).Count(i =>
        {
            using var a = loader.Transform(img, 0, i, 0);
            using var b = loader.Transform(img, 0, i, 1);
            return !a.ToArray<float>().SequenceEqual(b.ToArray<float>());
        });
        Assert.That(differ, Is.GreaterThan(8), "independent crops/flips");
        using var c1 = new PairLoader(d, new LoaderOptions { resolution = 32, batch_size = 1, seed = 1 }).Transform(img, 0, 0, 0);
        using var c2 = new PairLoader(d, new LoaderOptions { resolution = 32, batch_size = 1, seed = 1, hflip = false }).Transform(img, 0, 0, 0);
        using var center = Images.CenterCrop(Images.ResizeShorterSide(Images.ToTensor01(img), 32, Sudo.Torch.torch.nn.InterpolationMode.Bilinear), 32, 32);
        Assert.That(c2.ToArray<float>(), Is.EqualTo((center * 2.0 - 1.0).ToArray<float>()).Within(1e-6), "no flip, center crop: resize + crop + [−1, 1]");
    }
}

/// <summary>Bad cells the fixtures do not cover, in a file written here with ParquetSharp.</summary>
public class BadCellTests : TempFolderTest
{
    [Test]
    public void NullCaptionStopsWithItsRowOrIsSkippedAndCounted()
    {
        var jpeg = ImageCodecs.EncodeJpeg(new RgbImage(8, 8, Enumerable.Repeat((byte)90, 8 * 8 * 3).ToArray()));
        var columns = new ParquetSharp.Column[] { new ParquetSharp.Column<string>("caption"), new ParquetSharp.Column<byte[]>("jpg_0"), new ParquetSharp.Column<byte[]>("jpg_1"), new ParquetSharp.Column<double?>("label_0") };
        using (var w = new ParquetSharp.ParquetFileWriter(Path.Combine(Tmp, "train-00000-of-00001.parquet"), columns))
        {
            using var rg = w.AppendRowGroup();
            using (var c = rg.NextColumn().LogicalWriter<string?>()) c.WriteBatch(["a", null, "c"]);
            using (var c = rg.NextColumn().LogicalWriter<byte[]>()) c.WriteBatch([jpeg, jpeg, jpeg]);
            using (var c = rg.NextColumn().LogicalWriter<byte[]>()) c.WriteBatch([jpeg, jpeg, jpeg]);
            using (var c = rg.NextColumn().LogicalWriter<double?>()) c.WriteBatch([1.0, 0.0, 1.0]);
            w.Close();
        }
        using var d = PreferenceData.Open(Tmp);
        Assert.That(d.Count, Is.EqualTo(3));
        using (var strict = new PairLoader(d, new LoaderOptions { resolution = 8, batch_size = 3, shuffle = false }))
            Assert.That(Assert.Throws<InvalidDataException>(() => strict.Next())!.Message, Does.Contain("column 'caption' is null at row 1").And.Contain("train-00000-of-00001.parquet"));
        var warnings = new List<string>();
        using var lenient = new PairLoader(d, new LoaderOptions { resolution = 8, batch_size = 1, shuffle = false, skip_bad_rows = true }, warnings.Add);
        var rows = Enumerable.Range(0, 2).SelectMany(_ => loaderRows(lenient)).ToList();
        Assert.That(rows, Is.EqualTo(new long[] { 0, 2 }));
        Assert.That((lenient.skipped, warnings.Count), Is.EqualTo((1, 1)));

        static IEnumerable<long> loaderRows(PairLoader l)
        {
            var b = l.Next();
            foreach (var p in b) p.Dispose();
            return b.Select(p => p.record.row);
        }
    }
}

public class PairFolderCsvTests : TempFolderTest
{
    /// <summary>pairs.csv goes through the same splitter as the prompt sets: quoted captions with commas, doubled
    /// quotes and newlines survive; ties are dropped.</summary>
    [Test]
    public void QuotedCaptionsAndTies()
    {
        var img = new RgbImage(4, 4, new byte[48]);
        foreach (var f in new[] { "a.png", "b.png" }) ImageCodecs.Save(img, Path.Combine(Tmp, f));
        File.WriteAllText(Path.Combine(Tmp, "pairs.csv"),
            "caption, image_0, image_1, label_0\n\"a cat, \"\"small\"\"\nand grey\",a.png,b.png,0\nplain,a.png,b.png,0.5\n\n");
        var d = PairDataset.Load(Tmp);
        Assert.That(d.Pairs, Is.EqualTo(new[] { new PreferencePair("a cat, \"small\"\nand grey", "b.png", "a.png") }));
        Assert.That(d.DroppedTies, Is.EqualTo(1));
    }
}
