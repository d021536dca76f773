using System.Diagnostics;
using System.Text;
using Apache.Arrow;
using Apache.Arrow.Ipc;
using NUnit.Framework;
using Sudo.Fuzz;
using Sudo.Torch;
using Sudo.Torch.Tests;

namespace Sudo.Reliability.Tests;

/// <summary>Every parser of untrusted input under a short seeded mutation round (the long coverage-guided runs are
/// scripts/fuzz.sh; their figures are in RELIABILITY.md), and the regression corpus of fixed findings.</summary>
public class FuzzTests
{
    /// <summary>Mutants per target: the twelve rounds together take about half a minute on a 2-core machine.</summary>
    private const int Executions = 1000;

    public static IEnumerable<string> Targets => FuzzTargets.All.Select(t => t.Name);

    [TestCaseSource(nameof(Targets))]
    public void ShortRoundFindsNothing(string name)
    {
        Shared.Require("golden");
        Shared.Require("fixtures");
        var target = FuzzTargets.Get(name);
        var seeds = target.Seeds(Shared.Root).ToList();
        Assert.That(seeds, Is.Not.Empty, $"{name}: no seed inputs under {Shared.Root}");
        var sw = Stopwatch.StartNew();
        var r = Rounds.Mutate(target, seeds, Executions, seed: 20261130);
        TestContext.Out.WriteLine($"{name}: {r.Executions} executions from {r.Seeds} seeds in {sw.Elapsed.TotalSeconds:F1} s, {r.CleanRejections} clean rejections");
        Assert.That(r.Findings.Select(f => f.Error), Is.Empty, $"{name}: inputs escaped the parser with an undocumented exception");
        // The round must reach the parser's error paths, not only the happy path (a harness that never fails proves nothing).
        Assert.That(r.CleanRejections, Is.GreaterThan(0), $"{name}: no mutant was rejected");
    }

    /// <summary>Each file under tests/fuzz-regressions/TARGET/ once made TARGET's parser fail (or was wrongly accepted);
    /// every one is invalid input, so it must now be rejected with a documented error.</summary>
    public static IEnumerable<TestCaseData> Regressions()
    {
        var dir = Path.Combine(Shared.RepoRoot(), "tests", "fuzz-regressions");
        foreach (var t in Directory.EnumerateDirectories(dir).Order(StringComparer.Ordinal))
            foreach (var f in Directory.EnumerateFiles(t).Where(f => !f.EndsWith(".md")).Order(StringComparer.Ordinal))
                yield return new TestCaseData(Path.GetFileName(t), Path.GetRelativePath(dir, f)).SetName($"Regression({Path.GetRelativePath(dir, f)})");
    }

    [TestCaseSource(nameof(Regressions))]
    public void RegressionInputIsHandled(string target, string file)
    {
        var path = Path.Combine(Shared.RepoRoot(), "tests", "fuzz-regressions", file);
        var f = Rounds.RunOne(FuzzTargets.Get(target), File.ReadAllBytes(path), out var rejected);
        Assert.That(f?.Error, Is.Null, $"{file}");
        Assert.That(rejected, Is.True, $"{file}: accepted, but it is invalid input");
    }

    [Test]
    public void TheRegressionCorpusCoversEveryTextTarget()
    {
        var dir = Path.Combine(Shared.RepoRoot(), "tests", "fuzz-regressions");
        var names = Directory.EnumerateDirectories(dir).Select(Path.GetFileName).ToHashSet();
        foreach (var n in names) Assert.That(Targets, Does.Contain(n), $"tests/fuzz-regressions/{n}: no such target");
    }

    /// <summary>The Arrow finding, rebuilt from scratch: a string column whose last offset points past its value buffer.
    /// Apache.Arrow read it through a raw pointer (the process died with an access violation).</summary>
    [Test]
    public void ArrowOffsetPastTheValueBufferIsACleanError()
    {
        var bytes = ArrowStream(["abc", "de"]);
        // offsets [0, 3, 5] as int32 little-endian: make the last one 0x0000FFFF
        var pattern = new byte[] { 0, 0, 0, 0, 3, 0, 0, 0, 5, 0, 0, 0 };
        var at = bytes.AsSpan().IndexOf(pattern);
        Assert.That(at, Is.GreaterThanOrEqualTo(0), "offset buffer not found in the stream");
        bytes[at + 8] = 0xFF;
        bytes[at + 9] = 0xFF;
        var arrow = FuzzTargets.Get("arrow");
        var f = Rounds.RunOne(arrow, bytes, out var rejected);
        Assert.That(f?.Error, Is.Null);
        Assert.That(rejected, Is.True, "the corrupt offset was not noticed");
        // and the untouched stream reads
        Assert.That(Rounds.RunOne(arrow, ArrowStream(["abc", "de"]), out var r2)?.Error, Is.Null);
        Assert.That(r2, Is.False);
    }

    [Test]
    public void ArrowBatchWithFewerColumnsThanTheSchemaIsACleanError()
    {
        var schema = new Schema.Builder().Field(f => f.Name("caption").DataType(Apache.Arrow.Types.StringType.Default))
            .Field(f => f.Name("label_0").DataType(Apache.Arrow.Types.DoubleType.Default)).Build();
        var caption = new StringArray.Builder().AppendRange(["a", "b"]).Build();
        var labels = new DoubleArray.Builder().AppendRange([1.0, 0.0]).Build();
        using var ms = new MemoryStream();
        using (var w = new ArrowStreamWriter(ms, schema, leaveOpen: true))
        {
            w.WriteRecordBatch(new RecordBatch(schema, [caption, labels], 2));
            w.WriteEnd();
        }
        var good = ms.ToArray();
        Assert.That(Rounds.RunOne(FuzzTargets.Get("arrow"), good, out var rejected)?.Error, Is.Null);
        Assert.That(rejected, Is.False);
        // A record batch holding one column where the stream's schema declares two (Apache.Arrow's writer takes the
        // batch's own schema; the reader checks neither): RecordBatch.Column(1) threw ArgumentOutOfRangeException.
        var schema3 = new Schema.Builder().Field(f => f.Name("caption").DataType(Apache.Arrow.Types.StringType.Default)).Build();
        using var ms1 = new MemoryStream();
        using (var w = new ArrowStreamWriter(ms1, schema, leaveOpen: true))
        {
            w.WriteRecordBatch(new RecordBatch(schema3, [caption], 2));
            w.WriteEnd();
        }
        var f = Rounds.RunOne(FuzzTargets.Get("arrow"), ms1.ToArray(), out var rejected1);
        Assert.That(f?.Error, Is.Null);
        Assert.That(rejected1, Is.True);
    }

    /// <summary>The libFuzzer finding (scripts/fuzz.sh parquet, 18 s in): a column whose footer LogicalType union holds
    /// no member this reader knows (here field 9, reserved by the format; newer writers add VARIANT, GEOMETRY...) made
    /// ParquetSharp's LogicalType.Create throw ArgumentOutOfRangeException out of TableShard.Open. Rebuilt from scratch:
    /// ParquetSharp writes a shard, the STRING member (thrift compact field header 0x1c) of the caption column's
    /// logicalType (header 0x4c) becomes field 9 (0x9c). The shard now opens, the other columns read, and the caption
    /// column is reported as a type Sudo does not read. Writing the case found a second defect: a required (non-null)
    /// DOUBLE column, as ParquetSharp, Spark and Polars write it, threw InvalidCastException when read.</summary>
    [Test]
    public void ParquetColumnOfAnUnknownLogicalTypeOpensAndIsReportedNotRead()
    {
        var path = Path.Combine(Path.GetTempPath(), $"sudo-unknown-logical-{Guid.NewGuid():N}.parquet");
        try
        {
            using (var w = new ParquetSharp.ParquetFileWriter(path, [new ParquetSharp.Column<string>("caption"), new ParquetSharp.Column<double>("label_0")]))
            {
                using var rg = w.AppendRowGroup();
                using (var c = rg.NextColumn().LogicalWriter<string>()) c.WriteBatch(["a red square", "two blue circles"]);
                using (var c = rg.NextColumn().LogicalWriter<double>()) c.WriteBatch([1.0, 0.5]);
                w.Close();
            }
            var bytes = File.ReadAllBytes(path);
            // The caption's SchemaElement in the footer: its name, converted_type UTF8 (0x25 0x00), logicalType {STRING}.
            var element = Encoding.ASCII.GetBytes("caption").Concat(new byte[] { 0x25, 0x00, 0x4c, 0x1c, 0x00, 0x00 }).ToArray();
            var at = bytes.AsSpan().IndexOf(element);
            Assert.That(at, Is.GreaterThan(0), "the caption's schema element (name, UTF8, logicalType STRING) was not found in the footer");
            bytes[at + element.Length - 3] = 0x9c;
            File.WriteAllBytes(path, bytes);

            using var shard = Sudo.Data.TableShard.Open(path);
            Assert.That(shard.Columns["caption"].kind, Is.EqualTo(Sudo.Data.ColumnKind.Other));
            Assert.That(shard.Columns["caption"].type, Does.Contain("logical type ParquetSharp does not know"));
            Assert.That(shard.ReadFloat64(0, "label_0"), Is.EqualTo(new double?[] { 1.0, 0.5 }));
            Assert.That(() => shard.ReadString(0, "caption"), Throws.InstanceOf<InvalidDataException>());
            var f = Rounds.RunOne(FuzzTargets.Get("parquet"), File.ReadAllBytes(path), out _);
            Assert.That(f?.Error, Is.Null);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>The second parquet finding (libFuzzer, 635 k inputs): a top-level column whose repetition is REPEATED,
    /// not inside a LIST group. ParquetSharp threw a plain System.Exception ("found a repeated node ... not the child of a
    /// valid list or map annotated group") when the column was read. Rebuilt from scratch: the OPTIONAL repetition
    /// (thrift compact 0x25 0x02) of a ParquetSharp-written column becomes REPEATED (0x25 0x04). The shard opens, the column
    /// is listed as repeated and refused by name, and the other columns read.</summary>
    [Test]
    public void ParquetRepeatedTopLevelColumnIsListedAndRefusedByName()
    {
        var path = Path.Combine(Path.GetTempPath(), $"sudo-repeated-{Guid.NewGuid():N}.parquet");
        try
        {
            using (var w = new ParquetSharp.ParquetFileWriter(path, [new ParquetSharp.Column<string>("caption"), new ParquetSharp.Column<double?>("score")]))
            {
                using var rg = w.AppendRowGroup();
                using (var c = rg.NextColumn().LogicalWriter<string>()) c.WriteBatch(["a red square", "two blue circles"]);
                using (var c = rg.NextColumn().LogicalWriter<double?>()) c.WriteBatch([0.25, null]);
                w.Close();
            }
            var bytes = File.ReadAllBytes(path);
            var element = new byte[] { 0x25, 0x02, 0x18, 0x05 }.Concat(Encoding.ASCII.GetBytes("score")).ToArray();
            var at = bytes.AsSpan().IndexOf(element);
            Assert.That(at, Is.GreaterThan(0), "the score column's schema element (OPTIONAL, name) was not found in the footer");
            bytes[at + 1] = 0x04;
            File.WriteAllBytes(path, bytes);

            using var shard = Sudo.Data.TableShard.Open(path);
            Assert.That(shard.Columns["score"].kind, Is.EqualTo(Sudo.Data.ColumnKind.Other));
            Assert.That(shard.Columns["score"].type, Does.StartWith("repeated"));
            Assert.That(() => shard.ReadFloat64(0, "score"), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("score"));
            Assert.That(shard.ReadString(0, "caption"), Is.EqualTo(new[] { "a red square", "two blue circles" }));
            Assert.That(Rounds.RunOne(FuzzTargets.Get("parquet"), File.ReadAllBytes(path), out _)?.Error, Is.Null);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>The libFuzzer finding (scripts/fuzz.sh arrow): a schema whose field is its own descendant made Apache.Arrow
    /// recurse until the stack overflowed, killing the process. The check refuses nesting deeper than
    /// ArrowSchemaCheck.MaxDepth before Apache.Arrow reads the schema (a cycle is infinitely deep): shown here on
    /// a stream written by Apache.Arrow with structs nested 80 deep, while 3 deep still opens.</summary>
    [Test]
    public void ArrowSchemaNestedBeyondTheLimitIsRefusedBeforeApacheArrowRecurses()
    {
        static byte[] Nested(int depth)
        {
            Apache.Arrow.Types.IArrowType type = Apache.Arrow.Types.Int64Type.Default;
            IArrowArray array = new Int64Array.Builder().Append(7).Build();
            for (var i = 0; i < depth; i++)
            {
                var field = new Field($"f{i}", type, true);
                type = new Apache.Arrow.Types.StructType([field]);
                array = new StructArray(type, 1, [array], ArrowBuffer.Empty);
            }
            var schema = new Schema.Builder().Field(f => f.Name("deep").DataType(type)).Build();
            using var ms = new MemoryStream();
            using (var w = new ArrowStreamWriter(ms, schema, leaveOpen: true))
            {
                w.WriteRecordBatch(new RecordBatch(schema, [array], 1));
                w.WriteEnd();
            }
            return ms.ToArray();
        }
        var arrow = FuzzTargets.Get("arrow");
        Assert.That(Rounds.RunOne(arrow, Nested(3), out var r3)?.Error, Is.Null);
        Assert.That(r3, Is.False, "3 levels of structs open");
        var deep = Nested(80);
        var e = Assert.Throws<InvalidDataException>(() => Sudo.Data.ArrowSchemaCheck.Validate(deep, "deep.arrow"))!;
        Assert.That(e.Message, Does.Contain("nested more than 64 deep"));
        Assert.That(Rounds.RunOne(arrow, deep, out var r80)?.Error, Is.Null);
        Assert.That(r80, Is.True);
    }

    /// <summary>The second libFuzzer finding: a rejected Arrow stream kept its memory mapping; after ~106,000 bad inputs
    /// the process hit the kernel's limit on mappings (vm.max_map_count) and the runtime aborted.</summary>
    [Test]
    public void ARejectedArrowStreamIsUnmapped()
    {
        static int Mappings() => File.ReadLines("/proc/self/maps").Count();
        var bad = ArrowStream(["abc", "de"])[..6];   // refused by the schema check, after the file was mapped
        var arrow = FuzzTargets.Get("arrow");
        Assert.That(Rounds.RunOne(arrow, bad, out var rejected)?.Error, Is.Null);
        Assert.That(rejected, Is.True);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var before = Mappings();
        for (var i = 0; i < 300; i++) Rounds.RunOne(arrow, bad, out _);
        var after = Mappings();
        Assert.That(after - before, Is.LessThan(50), $"{after - before} more mappings after 300 rejected streams");
    }

    private static byte[] ArrowStream(string[] captions)
    {
        var schema = new Schema.Builder().Field(f => f.Name("caption").DataType(Apache.Arrow.Types.StringType.Default)).Build();
        var col = new StringArray.Builder().AppendRange(captions).Build();
        using var ms = new MemoryStream();
        using (var w = new ArrowStreamWriter(ms, schema, leaveOpen: true))
        {
            w.WriteRecordBatch(new RecordBatch(schema, [col], captions.Length));
            w.WriteEnd();
        }
        return ms.ToArray();
    }

    [Test]
    public void UntrustedJsonDefectsAreInvalidData()
    {
        // a lone surrogate escape, invalid UTF-8 inside a string, a duplicate key: each passed JsonNode.Parse and failed later
        foreach (var (text, what) in new[] { ("{\"a\": \"\\ud800\"}", "surrogate"), ("{\"a\": 1, \"a\": 2}", "duplicate key") })
        {
            var e = Assert.Throws<InvalidDataException>(() => JsonInput.Parse(text, "test.json"), what)!;
            Assert.That(e.Message, Does.StartWith("test.json: not valid JSON"), what);
        }
        var utf8 = new byte[] { (byte)'{', (byte)'"', (byte)'a', (byte)'"', (byte)':', (byte)'"', 0xC3, 0x28, (byte)'"', (byte)'}' };
        Assert.Throws<InvalidDataException>(() => JsonInput.Parse(utf8, "bad-utf8.json"));
        Assert.That(JsonInput.Parse("{\"a\": [1, \"x\", {\"b\": null}]}", "ok.json")!["a"]![1]!.GetValue<string>(), Is.EqualTo("x"));
    }
}
