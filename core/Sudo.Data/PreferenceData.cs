// Preference pairs in dataset order, grouped in blocks (a parquet row group, an Arrow record batch, or a few
// records of a pair folder) so that a loader reads one block at a time. Two sources: a local pair folder
// (PairDataset) and Pick-a-Pic-layout tables (PreferenceTable: parquet or Arrow shards).
namespace Sudo.Data;

/// <summary>Encoded image bytes (JPEG/PNG) and where they come from: <c>where</c> names file, column and row for
/// messages; <c>key</c> identifies the image within the dataset (e.g. for latent caches).</summary>
public sealed record EncodedImage(byte[] bytes, string where, string key)
{
    public RgbImage Decode() => ImageCodecs.Decode(bytes, where);

    /// <summary>The image as [3, H, W] float32 in [0, 1]; JPEGs decode through a pooled buffer (no large garbage).</summary>
    public Sudo.Torch.Tensor DecodeTensor01()
    {
        if (!ImageCodecs.IsJpeg(bytes)) return Images.ToTensor01(Decode());
        var (buf, w, h) = ImageCodecs.DecodeJpegPooled(bytes, where);
        try
        {
            using var scope = Sudo.Torch.torch.NewDisposeScope();
            var u8 = Sudo.Torch.torch.tensor<byte>(buf.AsSpan(0, w * h * 3), [h, w, 3]);
            return scope.MoveToOuter((u8.permute(2, 0, 1).to(Sudo.Torch.ScalarType.Float32) / 255.0).contiguous());
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buf);
        }
    }
}

/// <summary>One pair of the dataset: <c>index</c> is its position in dataset order (after filtering), <c>row</c> its
/// row in the unfiltered split. <c>winner</c> is null when a record's image cell is null, and <c>problem</c> names
/// any other bad cell (a null caption): the loader stops on such a pair, or skips it with skip_bad_rows.</summary>
public sealed record PairRecord(int index, long row, string caption, EncodedImage? winner, EncodedImage? loser, string where,
    long? ranking_id = null, double? label_0 = null, string? winner_column = null, string? problem = null)
{
    /// <summary>The record as a pair source sees it (caption and image keys).</summary>
    public PreferencePair AsPair() => new(caption, winner?.key ?? $"{where}/winner", loser?.key ?? $"{where}/loser");
}

/// <summary>Why rows were dropped, by reason, and how many rows were read.</summary>
public sealed class DataCounts
{
    public long rows { get; set; }
    public long kept { get; set; }
    public SortedDictionary<string, long> dropped { get; } = new(StringComparer.Ordinal);
    public long winner_jpg_0 { get; set; }
    public long winner_jpg_1 { get; set; }
    public void Drop(string reason, long n = 1) => dropped[reason] = dropped.GetValueOrDefault(reason) + n;
    public override string ToString() =>
        $"{kept} pairs kept of {rows} rows" + (dropped.Count == 0 ? "" : "; dropped: " + string.Join(", ", dropped.Select(kv => $"{kv.Value} {kv.Key}")));
}

/// <summary>Pairs in dataset order, read block by block. Implementations are safe for concurrent ReadBlock calls.</summary>
public abstract class PreferenceData : IDisposable
{
    /// <summary>Where the data comes from (layout, path, split), for logs.</summary>
    public abstract string Source { get; }
    /// <summary>Number of pairs (after filters and --max_train_samples).</summary>
    public abstract int Count { get; }
    public abstract int BlockCount { get; }
    /// <summary>Pairs of block b are indices [BlockStart(b), BlockStart(b) + BlockLength(b)).</summary>
    public abstract int BlockStart(int block);
    public abstract int BlockLength(int block);
    /// <summary>The pairs of one block with their image bytes, in dataset order.</summary>
    public abstract PairRecord[] ReadBlock(int block);
    public abstract DataCounts Counts { get; }
    /// <summary>Caption and winner column of each pair of a block, without image bytes where the format allows.</summary>
    public virtual (string caption, string? winner_column)[] ReadSummaries(int block) =>
        ReadBlock(block).Select(r => (r.caption, r.winner_column)).ToArray();
    /// <summary>Bytes a block takes once read (an estimate), for the loader's memory bound.</summary>
    public virtual long BlockBytes(int block) => 0;
    /// <summary>Whether any pair can be read on its own at no extra cost (each image its own file): the loader then
    /// shuffles globally, as a DataLoader's RandomSampler does, instead of by windows of blocks.</summary>
    public virtual bool RandomAccess => false;

    /// <summary>The block holding pair <paramref name="index"/> (binary search over block starts).</summary>
    public int BlockOf(int index)
    {
        if (index < 0 || index >= Count) throw new ArgumentOutOfRangeException(nameof(index), $"pair {index} of {Count}");
        int lo = 0, hi = BlockCount - 1;
        while (lo < hi)
        {
            var mid = (lo + hi + 1) / 2;
            if (BlockStart(mid) <= index) lo = mid; else hi = mid - 1;
        }
        while (BlockLength(lo) == 0 || BlockStart(lo) + BlockLength(lo) <= index) lo++;
        return lo;
    }

    /// <summary>Every pair in dataset order (reads every block: for inspection and tests, not for training loops).</summary>
    public IEnumerable<PairRecord> Enumerate()
    {
        for (var b = 0; b < BlockCount; b++)
            if (BlockLength(b) > 0)
                foreach (var r in ReadBlock(b)) yield return r;
    }

    public virtual void Dispose() { }

    /// <summary>Opens what --dataset_name (or --train_data_dir) names: a pair folder (pairs.jsonl / pairs.csv), else a
    /// table dataset through <see cref="DatasetResolver"/>.</summary>
    public static PreferenceData Open(string name, TableOptions? options = null, string? cacheDir = null, string? config = null, string? hubCacheDir = null)
    {
        options ??= new TableOptions();
        if (Directory.Exists(name) && (File.Exists(Path.Combine(name, "pairs.jsonl")) || File.Exists(Path.Combine(name, "pairs.csv"))))
        {
            var d = PairDataset.Load(name, options.caption_column);
            if (options.dreamlike_pairs_only) throw new ArgumentException($"--dreamlike_pairs_only needs Pick-a-Pic's model_0/model_1 columns; the pair folder {name} has none");
            return options.max_train_samples is { } n ? d.Truncated(n, options.seed) : d;
        }
        var split = DatasetResolver.Resolve(name, options.split, cacheDir, config, hubCacheDir: hubCacheDir);
        return new PreferenceTable(split, options);
    }
}
