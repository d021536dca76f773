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
    private readonly Queue<(int pos, Task<LoadedPair?> item)> _pending = new();
    private readonly Action<string> _warn;

    public PairLoader(PreferenceData data, LoaderOptions options, Action<string>? warn = null)
    {
        if (options.batch_size < 1) throw new ArgumentException("batch size must be ≥ 1");
        if (options.batch_size > data.Count)
            throw new ArgumentException($"--train_batch_size {options.batch_size} exceeds the {data.Count} pairs of the dataset ({data.Counts})");
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

    public int BatchesPerEpoch => data.Count / options.batch_size;

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
    }

    /// <summary>The next batch of batch_size pairs, moving to the next epoch when this one has fewer left.</summary>
    public LoadedPair[] Next()
    {
        var b = options.batch_size;
        var batch = new List<LoadedPair>(b);
        while (batch.Count < b)
        {
            if (position + (b - batch.Count) > _order.Length)
            {
                // drop_last: the rest of the epoch cannot fill the batch.
                foreach (var p in batch) p.Dispose();
                batch.Clear();
                Seek(epoch + 1, 0);
                continue;
            }
            Fill();
            var (pos, task) = _pending.Dequeue();
            if (pos != position) throw new InvalidOperationException($"loader out of step ({pos} ≠ {position})");
            position++;
            LoadedPair? item;
            try
            {
                item = task.GetAwaiter().GetResult();
            }
            catch
            {
                foreach (var p in batch) p.Dispose();
                throw;
            }
            if (item != null) batch.Add(item);
        }
        return batch.ToArray();
    }

    /// <summary>Loads given pairs as in epoch <paramref name="e"/> (no order involved), on the calling thread.</summary>
    public LoadedPair[] Load(IEnumerable<int> indices, int e = 0) =>
        indices.Select(i => LoadOne(i, e) ?? throw new InvalidDataException($"pair {i} is bad and was skipped")).ToArray();

    private void Fill()
    {
        var lookahead = Math.Max(1, options.prefetch_batches + 1) * options.batch_size;
        var next = _pending.Count == 0 ? position : _pending.Last().pos + 1;
        while (_pending.Count < lookahead && next < _order.Length)
        {
            var index = _order[next];
            var e = epoch;
            var task = _factory != null ? _factory.StartNew(() => LoadOne(index, e)) : new Task<LoadedPair?>(() => LoadOne(index, e));
            if (_factory == null) task.RunSynchronously();
            _pending.Enqueue((next, task));
            next++;
            if (_factory == null) break;   // synchronous: load one at a time, on demand
        }
    }

    private void DrainPending()
    {
        while (_pending.Count > 0)
        {
            var (_, t) = _pending.Dequeue();
            try { t.GetAwaiter().GetResult()?.Dispose(); } catch (Exception) { /* dropped work */ }
        }
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
