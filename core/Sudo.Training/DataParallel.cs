// Data parallelism for the trainers, as PyTorch's DistributedDataParallel and accelerate do it: the same model on
// every rank, parameters broadcast from rank 0 at the start, gradients averaged over the ranks in flat buckets
// (DDP's bucket_cap_mb = 25) once per optimizer step, so that every rank takes the same optimizer step. The
// process group comes from the environment torchrun / `sudoml launch` / SLURM set (DistEnv).
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Training;

/// <summary>This process's share of a data-parallel job; <see cref="Single"/> when the job has one process.</summary>
public sealed class DataParallel : IDisposable
{
    /// <summary>The process group; null for a single process.</summary>
    public ProcessGroup? group { get; }
    public int rank => group?.rank ?? 0;
    public int world_size => group?.world_size ?? 1;
    /// <summary>Rank 0: the one process that writes checkpoints, metrics and samples.</summary>
    public bool IsMain => rank == 0;
    /// <summary>The rank within this node (LOCAL_RANK): which GPU a CUDA job's process uses.</summary>
    public int local_rank { get; init; }
    /// <summary>Largest flat all-reduce bucket (DDP's default bucket_cap_mb = 25).</summary>
    public long bucket_bytes { get; init; } = 25L << 20;
    private readonly bool _owned;
    private readonly Device _device;

    /// <summary>The device this rank computes on: for a CUDA job launched with "cuda" (no index), cuda:LOCAL_RANK.</summary>
    public Device device => _device;

    /// <param name="device">where the group's small tensors (metrics, flags) live: CPU for Gloo, the GPU for NCCL.</param>
    public DataParallel(ProcessGroup? group, Device? device = null, bool owned = false) =>
        (this.group, _device, _owned) = (group, device ?? Device.CPU, owned);

    public static DataParallel Single => new(null);

    /// <summary>Joins the job this process was launched into (torchrun / sudoml launch / srun variables): Gloo for a
    /// CPU device, NCCL for CUDA. A process not launched as part of a job, or a job of one process, is Single.</summary>
    public static DataParallel FromEnvironment(string device, TimeSpan? timeout = null)
    {
        // A collective that waits longer than SUDO_DIST_TIMEOUT seconds (default 30 min, as PyTorch) fails naming the rank.
        if (timeout is null && System.Environment.GetEnvironmentVariable("SUDO_DIST_TIMEOUT") is { Length: > 0 } v)
            timeout = double.TryParse(v, System.Globalization.CultureInfo.InvariantCulture, out var sec) && sec > 0
                ? TimeSpan.FromSeconds(sec) : throw new ArgumentException($"SUDO_DIST_TIMEOUT='{v}' is not a positive number of seconds");
        var env = DistEnv.FromEnvironment();
        if (env is null || env.world_size == 1) return Single;
        var dev = Device.Parse(device);
        var backend = dev.Type == DeviceType.CUDA ? "nccl" : "gloo";
        if (!ProcessGroup.Available(backend == "nccl"))
            throw new NotSupportedException($"launched as rank {env.rank} of {env.world_size}, but the shim was built without {(backend == "nccl" ? "NCCL (needs a CUDA libtorch and nccl.h)" : "c10d/Gloo (install libgloo-dev and rebuild: scripts/setup.sh)")}");
        if (backend == "nccl" && dev.Index < 0) dev = Device.CUDA(env.local_rank);
        return new DataParallel(ProcessGroup.init(env, backend, timeout), dev, owned: true) { local_rank = env.local_rank };
    }

    /// <summary>Every rank starts from rank 0's values (DDP's constructor does the same).</summary>
    public void BroadcastFromMain(IEnumerable<Tensor> tensors)
    {
        if (group is null) return;
        using var _ = no_grad();
        foreach (var t in tensors) group.broadcast(t, 0);
    }

    /// <summary>Averages the gradients of <paramref name="parameters"/> over the ranks, in flat buckets of at most
    /// bucket_bytes per dtype and device (a parameter without a gradient contributes zeros, so every rank reduces the
    /// same buffers). After it every rank holds the gradient of the mean loss over the global batch.</summary>
    public void AverageGradients(IReadOnlyList<Tensor> parameters)
    {
        if (group is null) return;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var buckets = Buckets(parameters);
        for (var i = 0; i < buckets.Count; i++)
        {
            var bucket = buckets[i];
            var grads = bucket.Select(p => p.grad is { } g ? g : p.grad = zeros_like(p)).ToArray();
            if (grads.Length == 1 && grads[0].is_contiguous())
            {
                group.all_reduce(grads[0], CollectiveOp.AVG);
                continue;
            }
            // The bucket's flat buffer is allocated once and reused every step (as DDP's reducer keeps its buckets):
            // a fresh 25 MB buffer per bucket per step costs its page faults, measured to take longer than the reduce.
            var flat = Scratch(i, grads.Sum(g => g.numel()), grads[0].dtype, grads[0].device);
            long offset = 0;
            foreach (var g in grads)
            {
                flat.narrow(0, offset, g.numel()).copy_(g.reshape(-1));
                offset += g.numel();
            }
            group.all_reduce(flat, CollectiveOp.AVG);
            offset = 0;
            foreach (var g in grads)
            {
                g.copy_(flat.narrow(0, offset, g.numel()).view_as(g));
                offset += g.numel();
            }
        }
    }

    private readonly List<Tensor?> _scratch = [];

    private Tensor Scratch(int index, long numel, ScalarType dtype, Device device)
    {
        while (_scratch.Count <= index) _scratch.Add(null);
        if (_scratch[index] is { } t && t.numel() == numel && t.dtype == dtype && t.device == device) return t;
        _scratch[index]?.Dispose();
        var fresh = empty([numel], dtype, device);
        DisposeScope.Current?.Detach(fresh);
        return (_scratch[index] = fresh)!;
    }

    /// <summary>Consecutive parameters grouped into buckets of one dtype and device, each ≤ bucket_bytes (a larger
    /// parameter gets a bucket of its own).</summary>
    public List<List<Tensor>> Buckets(IReadOnlyList<Tensor> parameters)
    {
        var buckets = new List<List<Tensor>>();
        List<Tensor>? cur = null;
        long bytes = 0;
        foreach (var p in parameters)
        {
            var size = p.numel() * p.dtype.ElementSize();
            if (cur is null || bytes + size > bucket_bytes || cur[0].dtype != p.dtype || cur[0].device != p.device)
            {
                cur = [];
                buckets.Add(cur);
                bytes = 0;
            }
            cur.Add(p);
            bytes += size;
        }
        return buckets;
    }

    /// <summary>The mean of each metric over the ranks (the keys, in order, must be the same on every rank).</summary>
    public Dictionary<string, double> AverageMetrics(Dictionary<string, double> metrics)
    {
        if (group is null) return metrics;
        var keys = metrics.Keys.OrderBy(k => k, StringComparer.Ordinal).ToArray();
        using var t = tensor(keys.Select(k => metrics[k]).ToArray(), device: _device);
        group.all_reduce(t, CollectiveOp.AVG);
        using var host = t.cpu();
        var v = host.ToArray<double>();
        return keys.Select((k, i) => (k, v[i])).ToDictionary(x => x.k, x => x.Item2);
    }

    /// <summary>True on every rank when <paramref name="flag"/> is true on any rank (e.g. a non-finite loss: all
    /// ranks must skip the same step, or the next all-reduce pairs up different steps).</summary>
    public bool Any(bool flag)
    {
        if (group is null) return flag;
        using var t = tensor(new[] { flag ? 1f : 0f }, device: _device);
        group.all_reduce(t, CollectiveOp.MAX);
        return t.item<float>() > 0;
    }

    /// <summary>Waits for every rank (after rank 0 wrote a checkpoint, before anyone reads it).</summary>
    public void Barrier() => group?.barrier();

    public void Dispose()
    {
        foreach (var t in _scratch) t?.Dispose();
        _scratch.Clear();
        if (_owned) group?.Dispose();
    }
}
