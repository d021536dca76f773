// Pick-a-Pic v2 (and any table with its columns) as preference pairs, with Diffusion-DPO train.py's semantics
// (SalesforceAIResearch/DiffusionDPO@5233e75 train.py lines 687–889; SUDO's train.py is identical here):
//  * keep rows with label_0 in (0, 1): ties (0.5), nulls and NaN are dropped (counted by reason);
//  * --dreamlike_pairs_only: keep rows with 'dream' in model_0 and in model_1 (case-sensitive substring);
//  * --max_train_samples N: dataset.shuffle(seed).select(range(N)) after the filters — numpy's
//    default_rng(seed).permutation(n)[:N] (NumpyRandom reproduces it); N > n is an error;
//  * winner = jpg_0 when label_0 == 1, jpg_1 when label_0 == 0; has_label, are_different, best_image_uid unused.
// Upstream filters only when 'pickapic' is in --dataset_name; Sudo always drops non-0/1 labels (a tie has no winner).
// At open, every shard's schema is checked and the label (and model) columns are scanned — a few bytes per row;
// image columns are read block by block when a loader asks for them.
namespace Sudo.Data;

/// <summary>How a table dataset is read (the data flags of train.py).</summary>
public sealed record TableOptions
{
    public string split { get; init; } = "train";
    public string caption_column { get; init; } = "caption";
    public bool dreamlike_pairs_only { get; init; }
    public int? max_train_samples { get; init; }
    public long seed { get; init; }
    /// <summary>Decode failures and null image cells are skipped and counted instead of stopping (the loader skips).</summary>
    public bool skip_bad_rows { get; init; }
}

public sealed class PreferenceTable : PreferenceData
{
    public ResolvedSplit Split { get; }
    public TableOptions Options { get; }
    private readonly TableShard[] _shards;
    private readonly (int shard, int block, long firstRow, int[] keep, int start)[] _blocks;
    private readonly DataCounts _counts = new();
    private readonly bool _hasRankingId;
    private readonly int _count;

    public static readonly string[] ImageColumns = ["jpg_0", "jpg_1"];

    public PreferenceTable(ResolvedSplit split, TableOptions? options = null)
    {
        Split = split;
        Options = options ??= new TableOptions();
        var shards = new List<TableShard>();
        try
        {
            foreach (var f in split.Files) shards.Add(TableShard.Open(f));
            _shards = shards.ToArray();
            var required = new List<(string, ColumnKind)> { (options.caption_column, ColumnKind.String), ("jpg_0", ColumnKind.Binary), ("jpg_1", ColumnKind.Binary), ("label_0", ColumnKind.Float64) };
            if (options.dreamlike_pairs_only) required.AddRange([("model_0", ColumnKind.String), ("model_1", ColumnKind.String)]);
            foreach (var s in _shards)
            {
                if (s.Rows == 0 && s.Columns.Count == 0) continue;   // an empty shard is valid
                foreach (var (col, kind) in required)
                {
                    if (!s.Columns.TryGetValue(col, out var c))
                        throw new InvalidDataException($"{s.Name}: column '{col}' is missing (expected {TableShard.KindName(kind)}; columns here: {string.Join(", ", s.Columns.Keys)}; file {s.Path})");
                    if (c.kind != kind)
                        throw new InvalidDataException($"{s.Name}: column '{col}' has type {c.type}, expected {TableShard.KindName(kind)} (file {s.Path})");
                }
            }
            _hasRankingId = _shards.All(s => s.Rows == 0 || (s.Columns.TryGetValue("ranking_id", out var r) && r.kind == ColumnKind.Int64));
            // Scan labels (and models): which rows are pairs.
            var blocks = new List<(int, int, long, int[], int)>();
            long row = 0;
            var start = 0;
            for (var si = 0; si < _shards.Length; si++)
            {
                var s = _shards[si];
                for (var b = 0; b < s.BlockCount; b++)
                {
                    var n = (int)s.BlockRows(b);
                    var keep = new List<int>();
                    if (n > 0)
                    {
                        using var open = s.OpenBlock(b);
                        var labels = open.ReadFloat64("label_0");
                        var m0 = options.dreamlike_pairs_only ? open.ReadString("model_0") : null;
                        var m1 = options.dreamlike_pairs_only ? open.ReadString("model_1") : null;
                        for (var i = 0; i < n; i++)
                        {
                            var l = labels[i];
                            if (l is null) { _counts.Drop("label_0 null"); continue; }
                            if (l == 0.5) { _counts.Drop("ties (label_0 0.5)"); continue; }
                            if (l is not (0.0 or 1.0)) { _counts.Drop("label_0 not 0, 0.5 or 1"); continue; }
                            if (m0 != null && !(m0[i]?.Contains("dream", StringComparison.Ordinal) == true && m1![i]?.Contains("dream", StringComparison.Ordinal) == true))
                            { _counts.Drop("not dreamlike (--dreamlike_pairs_only)"); continue; }
                            keep.Add(i);
                        }
                    }
                    blocks.Add((si, b, row, keep.ToArray(), 0));
                    row += n;
                }
            }
            _counts.rows = row;
            var kept = blocks.Sum(b => b.Item4.Length);
            if (options.max_train_samples is { } want)
            {
                if (want > kept) throw new ArgumentException($"--max_train_samples {want} exceeds the {kept} pairs of {split} ({_counts}); upstream's select(range(N)) raises IndexError here");
                // numpy: default_rng(seed).permutation(kept)[:N] picks which filtered pairs stay (kept in dataset order here).
                var chosen = new HashSet<long>(NumpyRandom.Permutation(options.seed, kept).Take(want));
                var idx = 0;
                for (var i = 0; i < blocks.Count; i++)
                {
                    var (si, b, r0, keep, _) = blocks[i];
                    var sub = keep.Where(_ => chosen.Contains(idx++)).ToArray();
                    if (sub.Length < keep.Length) _counts.Drop("not selected (--max_train_samples)", keep.Length - sub.Length);
                    blocks[i] = (si, b, r0, sub, 0);
                }
            }
            for (var i = 0; i < blocks.Count; i++)
            {
                blocks[i] = blocks[i] with { Item5 = start };
                start += blocks[i].Item4.Length;
            }
            _blocks = blocks.ToArray();
            _count = start;
            _counts.kept = start;
        }
        catch
        {
            foreach (var s in shards) s.Dispose();
            throw;
        }
    }

    public override string Source => $"{Split.Layout} {Split.Root}, split {Split.Split} ({Split.Files.Count} file(s))";
    public override int Count => _count;
    public override int BlockCount => _blocks.Length;
    public override int BlockStart(int block) => _blocks[block].start;
    public override int BlockLength(int block) => _blocks[block].keep.Length;
    public override DataCounts Counts => _counts;
    public IReadOnlyList<TableShard> Shards => _shards;

    public override long BlockBytes(int block)
    {
        var (si, b, _, _, _) = _blocks[block];
        return _shards[si].BlockBytes(b, [.. ImageColumns, Options.caption_column]);
    }

    public override (string caption, string? winner_column)[] ReadSummaries(int block)
    {
        var (si, b, _, keep, _) = _blocks[block];
        if (keep.Length == 0) return [];
        using var open = _shards[si].OpenBlock(b);
        var captions = open.ReadString(Options.caption_column);
        var labels = open.ReadFloat64("label_0");
        return keep.Select(i => (captions[i] ?? "", (string?)(labels[i] == 1.0 ? "jpg_0" : "jpg_1"))).ToArray();
    }

    public override PairRecord[] ReadBlock(int block)
    {
        var (si, b, firstRow, keep, start) = _blocks[block];
        if (keep.Length == 0) return [];
        var s = _shards[si];
        string?[] captions;
        double?[] labels;
        long?[]? ids;
        byte[]?[] jpg0, jpg1;
        using (var open = s.OpenBlock(b))
        {
            captions = open.ReadString(Options.caption_column);
            labels = open.ReadFloat64("label_0");
            ids = _hasRankingId ? open.ReadInt64("ranking_id") : null;
            jpg0 = open.ReadBinary("jpg_0");
            jpg1 = open.ReadBinary("jpg_1");
        }
        var result = new PairRecord[keep.Length];
        for (var k = 0; k < keep.Length; k++)
        {
            var i = keep[k];
            var row = firstRow + i;
            var id = ids?[i];
            var where = $"{s.Name}, row {row} of split {Split.Split}" + (id is { } rid ? $" (ranking_id {rid})" : "");
            EncodedImage? Image(byte[]?[] col, string name) =>
                col[i] is { } bytes ? new EncodedImage(bytes, $"{s.Name}, column {name}, row {row}" + (id is { } rid ? $" (ranking_id {rid})" : ""), $"{Split.Split}/{row}/{name}") : null;
            var first = labels[i] == 1.0;
            var (w, wc, l, lc) = first ? (jpg0, "jpg_0", jpg1, "jpg_1") : (jpg1, "jpg_1", jpg0, "jpg_0");
            var problem = captions[i] is null ? $"{s.Name}: column '{Options.caption_column}' is null at row {row}" + (id is { } r2 ? $" (ranking_id {r2})" : "") + $" (file {s.Path})" : null;
            result[k] = new PairRecord(start + k, row, captions[i] ?? "", Image(w, wc), Image(l, lc), where, id, labels[i], wc, problem);
        }
        return result;
    }

    public override void Dispose()
    {
        foreach (var s in _shards) s.Dispose();
    }
}
