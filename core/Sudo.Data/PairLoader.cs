// The training data loader: an epoch order over the pairs, JPEG decode and the train transforms on background
// workers with a bounded prefetch, and batches of B pairs (the last partial batch of an epoch dropped, as
// upstream's DataLoader(drop_last=True)).
//
// Transforms, per image (Diffusion-DPO train.py train_transforms, applied to jpg_0 and jpg_1 independently):
// Resize(resolution, bilinear) of the shorter side → RandomCrop or CenterCrop(resolution) → RandomHorizontalFlip
// unless --no_hflip → [−1, 1]. Each image draws its crop and flip from its own stream keyed by (seed, epoch, pair,
// image), so results do not depend on the number of workers or on where a run was resumed.
//
// Epoch order (split "train"; other splits are read in order): for random-access data (pair folders) one
// torch.randperm over all pairs, as a DataLoader's RandomSampler; for tables the blocks (row groups / record
// batches) are shuffled, taken `shuffle_window_blocks` at a time, and the pairs of each window shuffled together. Reading then
// touches a bounded number of blocks at a time: memory is about (window + workers + 1) × the largest block plus
// the prefetched pairs, plus 4 bytes per pair for the order — independent of the number of shards.
//
// Data parallelism (rank, world_size): every rank walks the same order; each global batch is world_size × batch_size
// consecutive usable pairs (records known bad before decoding are skipped alike on every rank), of which rank r
// decodes rows [r·b, (r+1)·b). The position is global, so a checkpoint resumes at any world size.
using System.Collections.Concurrent;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Data;

public sealed record LoaderOptions
{
    public int resolution { get; init; } = 512;
    public int batch_size { get; init; } = 1;
    public long seed { get; init; }
    /// <summary>Shuffle each epoch (train.py shuffles only the train split).</summary>
    public bool shuffle { get; init; } = true;
    public bool random_crop { get; init; }
    public bool hflip { get; init; } = true;
    /// <summary>Background decode threads (0: decode on the calling thread).</summary>
    public int workers { get; init; }
    /// <summary>Batches prepared ahead of the one being consumed.</summary>
    public int prefetch_batches { get; init; } = 2;
    /// <summary>Decode losers too (false for sources that train on winners only).</summary>
    public bool losers { get; init; } = true;
    /// <summary>Skip pairs whose images are null or do not decode (counted, warned once each) instead of stopping.</summary>
    public bool skip_bad_rows { get; init; }
    public int shuffle_window_blocks { get; init; } = 4;
    /// <summary>Data parallelism: this process's rank among <see cref="world_size"/>. Every rank walks the same epoch
    /// order; each global batch is world_size × batch_size consecutive pairs of it, and rank r decodes only rows
    /// [r·batch_size, (r+1)·batch_size) (accelerate's split of a shared sampler, without the padding).</summary>
    public int rank { get; init; }
    public int world_size { get; init; } = 1;
}

/// <summary>One global batch (all ranks' pairs): the epoch, the range of the epoch order it consumed, the pair
/// indices in order, and where this rank's rows start.</summary>
public sealed record GlobalBatch(int epoch, int start, int end, int[] indices, int offset, int count)
{
    /// <summary>The global rows this rank trains on.</summary>
    public IEnumerable<int> Rows => Enumerable.Range(offset, count);
}

/// <summary>A decoded, transformed pair: images are [3, res, res] float32 in [−1, 1]; the loader's caller owns them.</summary>
public sealed class LoadedPair(PairRecord record, Tensor winner, Tensor? loser) : IDisposable
{
    public PairRecord record { get; } = record;
    public Tensor winner { get; } = winner;
    public Tensor? loser { get; } = loser;
    public void Dispose()
    {
        winner.Dispose();
        loser?.Dispose();
    }
}

public sealed class PairLoader : IDisposable
{
    public PreferenceData data { get; }
    public LoaderOptions options { get; }
    public int epoch { get; private set; }
    /// <summary>Entries of this epoch's order consumed so far (skipped bad pairs included).</summary>
    public int position { get; private set; }
    /// <summary>Pairs skipped as bad (with skip_bad_rows), over the loader's life.</summary>
    public int skipped => _skipped;
    private int _skipped;
    private int[] _order = [];
    private readonly BlockCache _blocks;
    private readonly TaskFactory? _factory;
    private readonly ConcurrentExclusiveSchedulerPair? _schedulers;
    private readonly Queue<Planned> _planned = new();
    private int _planEpoch, _planPosition;
    private int[] _planOrder = [];
    private readonly Action<string> _warn;

    /// <summary>The global batch that <see cref="Next"/> served last (null before the first).</summary>
    public GlobalBatch? last { get; private set; }

    private sealed record Planned(GlobalBatch batch, Task<LoadedPair?>[] mine);

    public PairLoader(PreferenceData data, LoaderOptions options, Action<string>? warn = null)
    {
        if (options.batch_size < 1) throw new ArgumentException("batch size must be ≥ 1");
        if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size)
            throw new ArgumentException($"rank {options.rank} is outside a world of {options.world_size} processes");
        if ((long)options.batch_size * options.world_size > data.Count)
            throw new ArgumentException($"--train_batch_size {options.batch_size}" + (options.world_size > 1 ? $" × {options.world_size} processes" : "") +
                $" exceeds the {data.Count} pairs of the dataset ({data.Counts})");
        if (options.workers < 0) throw new ArgumentException("--dataloader_num_workers must be ≥ 0");
        this.data = data;
        this.options = options;
        _warn = warn ?? (m => Console.Error.WriteLine("warning: " + m));
        _blocks = new BlockCache(data, Math.Max(2, options.shuffle_window_blocks + options.workers + 2));
        if (options.workers > 0)
        {
            _schedulers = new ConcurrentExclusiveSchedulerPair(TaskScheduler.Default, options.workers);
            _factory = new TaskFactory(CancellationToken.None, TaskCreationOptions.DenyChildAttach, TaskContinuationOptions.None, _schedulers.ConcurrentScheduler);
        }
        Seek(0, 0);
    }

    /// <summary>Pairs per global batch: batch_size × world_size.</summary>
    public int GlobalBatchSize => options.batch_size * options.world_size;

    public int BatchesPerEpoch => data.Count / GlobalBatchSize;

    /// <summary>The pair indices of an epoch in the order they are served.</summary>
    public int[] EpochOrder(int epoch)
    {
        var n = data.Count;
        if (!options.shuffle) return Enumerable.Range(0, n).ToArray();
        if (data.RandomAccess)
        {
            // One permutation of all pairs, torch.randperm as upstream's RandomSampler draws it (the same order Sudo's
            // trainer used before the loader existed, so earlier runs on pair folders reproduce).
            using var g = new Generator(options.seed + 1_000_003L * (epoch + 1));
            using var perm = randperm(n, g);
            return perm.ToArray<long>().Select(v => (int)v).ToArray();
        }
        var rng = new SplitMix(Mix(options.seed, 0x5eed_0a0e, epoch));
        var blocks = Enumerable.Range(0, data.BlockCount).Where(b => data.BlockLength(b) > 0).ToArray();
        rng.Shuffle(blocks);
        var order = new int[n];
        var k = 0;
        var w = Math.Max(1, options.shuffle_window_blocks);
        for (var i = 0; i < blocks.Length; i += w)
        {
            var from = k;
            foreach (var b in blocks.Skip(i).Take(w))
                for (var j = 0; j < data.BlockLength(b); j++) order[k++] = data.BlockStart(b) + j;
            rng.Shuffle(order.AsSpan(from, k - from));
        }
        return order;
    }

    /// <summary>Moves to entry <paramref name="pos"/> of epoch <paramref name="e"/> (resume): pending work is dropped.</summary>
    public void Seek(int e, int pos)
    {
        DrainPending();
        epoch = e;
        _order = EpochOrder(e);
        if (pos < 0 || pos > _order.Length) throw new ArgumentOutOfRangeException(nameof(pos), $"position {pos} outside epoch of {_order.Length} pairs");
        position = pos;
        (_planEpoch, _planPosition, _planOrder, _orderEpoch) = (e, pos, _order, e);
    }

    /// <summary>This rank's share of the next global batch (batch_size pairs), moving to the next epoch when this one
    /// has fewer than a global batch left (drop_last). <see cref="last"/> describes the whole global batch.</summary>
    public LoadedPair[] Next()
    {
        if (_planned.Count == 0) Plan();
        while (_factory != null && _planned.Count < Math.Max(1, options.prefetch_batches + 1)) Plan();
        var p = _planned.Dequeue();
        var items = new LoadedPair?[p.mine.Length];
        try
        {
            for (var i = 0; i < items.Length; i++) items[i] = p.mine[i].GetAwaiter().GetResult();
        }
        catch
        {
            foreach (var t in p.mine) Discard(t);
            throw;
        }
        var b = p.batch;
        (epoch, position) = (b.epoch, b.end);
        if (epoch != _orderEpoch) (_order, _orderEpoch) = (_planEpoch == epoch ? _planOrder : EpochOrder(epoch), epoch);
        if (items.All(x => x != null))
        {
            last = b;
            return items!;
        }
        // A pair that passed the record checks failed to decode (skip_bad_rows): one process takes the next good
        // pairs of the order in its place; with several, the ranks would disagree on the batch.
        var bad = b.indices[b.offset + Array.FindIndex(items, x => x is null)];
        if (options.world_size > 1)
        {
            foreach (var x in items) x?.Dispose();
            throw new InvalidDataException($"pair {bad} does not decode: with {options.world_size} processes every rank must see the same batches, so images " +
                "that do not decode cannot be skipped on the fly — remove them first (one process with --skip_bad_rows names each), or train with one process");
        }
        DrainPending();
        (_planEpoch, _planPosition, _planOrder) = (epoch, position, _order);
        var kept = items.Where(x => x != null).Select(x => x!).ToList();
        var indices = b.indices.Where((_, i) => items[i] != null).ToList();
        try
        {
            while (kept.Count < options.batch_size)
            {
                if (_planPosition >= _planOrder.Length)
                {
                    // drop_last: the rest of the epoch cannot fill the batch.
                    foreach (var x in kept) x.Dispose();
                    kept.Clear();
                    Seek(epoch + 1, 0);
                    return Next();
                }
                var index = _planOrder[_planPosition++];
                if (!RecordOk(index, warn: true)) continue;
                if (LoadOne(index, epoch) is { } item)
                {
                    kept.Add(item);
                    indices.Add(index);
                }
            }
        }
        catch
        {
            foreach (var x in kept) x.Dispose();
            throw;
        }
        position = _planPosition;
        last = b with { end = position, indices = indices.ToArray() };
        return kept.ToArray();
    }

    private int _orderEpoch;

    /// <summary>The record of pair <paramref name="index"/> (caption, encoded images), without decoding.</summary>
    public PairRecord Record(int index) => _blocks.Record(index);

    /// <summary>Plans the next global batch at the planning cursor and starts decoding this rank's rows.</summary>
    private void Plan()
    {
        var g = GlobalBatchSize;
        var picked = new List<int>(g);
        var start = _planPosition;
        while (picked.Count < g)
        {
            if (_planPosition + (g - picked.Count) > _planOrder.Length)
            {
                // drop_last: the rest of the epoch cannot fill the global batch.
                picked.Clear();
                _planEpoch++;
                _planOrder = EpochOrder(_planEpoch);
                _planPosition = start = 0;
                continue;
            }
            var index = _planOrder[_planPosition++];
            // Bad records (null images, unreadable rows) are known without decoding: every rank skips the same ones.
            if (options.skip_bad_rows && !RecordOk(index, warn: options.rank == 0)) continue;
            picked.Add(index);
        }
        var offset = options.rank * options.batch_size;
        var e = _planEpoch;
        var mine = picked.Skip(offset).Take(options.batch_size).Select(index =>
        {
            var task = _factory != null ? _factory.StartNew(() => LoadOne(index, e)) : new Task<LoadedPair?>(() => LoadOne(index, e));
            if (_factory == null) task.RunSynchronously();
            return task;
        }).ToArray();
        _planned.Enqueue(new Planned(new GlobalBatch(e, start, _planPosition, picked.ToArray(), offset, options.batch_size), mine));
    }

    private bool RecordOk(int index, bool warn)
    {
        var record = _blocks.Record(index);
        var problem = record.problem
            ?? (record.winner is null ? $"{record.where}: the {record.winner_column ?? "winner"} image is null" : null)
            ?? (options.losers && record.loser is null ? $"{record.where}: the {(record.winner_column == "jpg_0" ? "jpg_1" : "jpg_0")} image is null" : null);
        if (problem is null) return true;
        Interlocked.Increment(ref _skipped);
        if (warn) _warn($"skipping a bad pair (--skip_bad_rows): {problem}");
        return false;
    }

    /// <summary>Loads given pairs as in epoch <paramref name="e"/> (no order involved), on the calling thread.</summary>
    public LoadedPair[] Load(IEnumerable<int> indices, int e = 0) =>
        indices.Select(i => LoadOne(i, e) ?? throw new InvalidDataException($"pair {i} is bad and was skipped")).ToArray();

    private void DrainPending()
    {
        while (_planned.Count > 0)
            foreach (var t in _planned.Dequeue().mine) Discard(t);
    }

    private static void Discard(Task<LoadedPair?> t)
    {
        try { t.GetAwaiter().GetResult()?.Dispose(); } catch (Exception) { /* dropped work */ }
    }

    private LoadedPair? LoadOne(int index, int e)
    {
        var record = _blocks.Record(index);
        try
        {
            if (record.problem != null) throw new InvalidDataException(record.problem);
            if (record.winner is null) throw new InvalidDataException($"{record.where}: the {record.winner_column ?? "winner"} image is null");
            if (options.losers && record.loser is null) throw new InvalidDataException($"{record.where}: the {(record.winner_column == "jpg_0" ? "jpg_1" : "jpg_0")} image is null");
            var w = Transform(record.winner.DecodeTensor01(), e, index, 0, owned: true);
            Tensor? l = null;
            try
            {
                l = options.losers ? Transform(record.loser!.DecodeTensor01(), e, index, 1, owned: true) : null;
            }
            catch
            {
                w.Dispose();
                throw;
            }
            return new LoadedPair(record, w, l);
        }
        catch (InvalidDataException ex) when (options.skip_bad_rows)
        {
            Interlocked.Increment(ref _skipped);
            _warn($"skipping a bad pair (--skip_bad_rows): {ex.Message}");
            return null;
        }
    }

    /// <summary>Resize the shorter side (bilinear, antialiased), crop, flip; [3, res, res] in [−1, 1].</summary>
    public Tensor Transform(RgbImage img, int e, int index, int slot) => Transform(Images.ToTensor01(img), e, index, slot, owned: true);

    /// <summary>The same from a [3, H, W] image in [0, 1] (disposed when <paramref name="owned"/>).</summary>
    public Tensor Transform(Tensor image01, int e, int index, int slot, bool owned)
    {
        try
        {
            var res = options.resolution;
            var rng = new SplitMix(Mix(options.seed, e, index * 2L + slot));
            using var scope = NewDisposeScope();
            var x = Images.ResizeShorterSide(image01, res, nn.InterpolationMode.Bilinear);
            var (h, w) = ((int)x.size(1), (int)x.size(2));
            var (top, left) = options.random_crop ? (rng.Below(h - res + 1), rng.Below(w - res + 1)) : ((h - res) / 2, (w - res) / 2);
            var y = x.narrow(1, top, res).narrow(2, left, res);
            if (options.hflip && rng.NextDouble() < 0.5) y = y.flip(2);
            return scope.MoveToOuter((y * 2.0 - 1.0).contiguous());
        }
        finally
        {
            if (owned) image01.Dispose();
        }
    }

    /// <summary>A seed for a random stream keyed by (seed, a, b) — e.g. a trainer's per-pair draws keyed by epoch and
    /// pair — well mixed (SplitMix64) and non-negative, for a torch Generator.</summary>
    public static long StreamSeed(long seed, long a, long b) => (long)(Mix(seed, a, b) >> 1);

    private static ulong Mix(long a, long b, long c)
    {
        var s = new SplitMix((ulong)a);
        var x = s.Next() ^ (ulong)b * 0x9E3779B97F4A7C15UL;
        x = new SplitMix(x).Next() ^ (ulong)c * 0xC2B2AE3D27D4EB4FUL;
        return new SplitMix(x).Next();
    }

    public void Dispose()
    {
        DrainPending();
        _schedulers?.Complete();
    }

    /// <summary>SplitMix64: a small, portable, seedable generator (the same numbers on every machine).</summary>
    private struct SplitMix(ulong seed)
    {
        private ulong _s = seed;
        public ulong Next()
        {
            var z = _s += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
        public int Below(int n) => (int)(Next() % (ulong)n);   // n ≤ a few thousand: bias < 1e-15
        public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));
        public void Shuffle(Span<int> a)
        {
            for (var i = a.Length - 1; i > 0; i--)
            {
                var j = (int)(Next() % (ulong)(i + 1));
                (a[i], a[j]) = (a[j], a[i]);
            }
        }
    }

    /// <summary>The blocks being read, least recently used evicted first; each block is read once while cached.
    /// An evicted block's image bytes are large-object-heap garbage that the GC's own budget would let accumulate to
    /// several times the cache; after every <see cref="CollectEveryBytes"/> of evicted bytes a background gen-2
    /// collection is requested, so the managed heap stays near the cache's size whatever the dataset size.</summary>
    private sealed class BlockCache(PreferenceData data, int capacity)
    {
        public const long CollectEveryBytes = 256L << 20;
        private readonly Dictionary<int, Lazy<PairRecord[]>> _map = new();
        private readonly LinkedList<int> _lru = new();
        private long _evicted;

        public PairRecord Record(int index)
        {
            var b = data.BlockOf(index);
            Lazy<PairRecord[]> lazy;
            lock (_map)
            {
                if (_map.TryGetValue(b, out lazy!)) _lru.Remove(b);
                else
                {
                    lazy = new Lazy<PairRecord[]>(() => data.ReadBlock(b), LazyThreadSafetyMode.ExecutionAndPublication);
                    _map[b] = lazy;
                    while (_map.Count > capacity)
                    {
                        var old = _lru.Last!.Value;
                        _map.Remove(old);
                        _lru.RemoveLast();
                        _evicted += Math.Max(data.BlockBytes(old), 1);
                    }
                    if (_evicted >= CollectEveryBytes)
                    {
                        _evicted = 0;
                        GC.Collect(2, GCCollectionMode.Forced, blocking: false);
                    }
                }
                _lru.AddFirst(b);
            }
            return lazy.Value[index - data.BlockStart(b)];
        }
    }
}
