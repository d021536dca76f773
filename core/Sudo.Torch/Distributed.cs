// torch.distributed over libtorch's c10d (core/native/src/distributed.cpp): the process-group environment
// torchrun sets (or SLURM's), a TCPStore rendezvous, Gloo for CPU tensors and NCCL for CUDA tensors, and the
// collectives data-parallel training needs. A collective that cannot complete within the group's timeout (a
// dead or hung peer) throws, naming the rank and the operation.
namespace Sudo.Torch;

/// <summary>torch.distributed.ReduceOp.</summary>
public enum CollectiveOp
{
    SUM = 0,
    /// <summary>Sum divided by the world size (Gloo has no native average: summed, then divided).</summary>
    AVG = 1,
    MAX = 2,
    MIN = 3,
    PRODUCT = 4,
}

/// <summary>Where this process sits in a job: the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
/// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; a Kubernetes PyTorchJob sets all but the LOCAL_ ones), or SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
/// SLURM_NTASKS_PER_NODE; the master from MASTER_ADDR / MASTER_PORT, which the sbatch script exports).</summary>
public sealed record DistEnv(int rank, int world_size, int local_rank, int local_world_size, string master_addr, int master_port)
{
    /// <summary>This process's place from the environment, or null when it was not launched as part of a job.</summary>
    public static DistEnv? FromEnvironment(Func<string, string?>? get = null)
    {
        get ??= Environment.GetEnvironmentVariable;
        int? Int(string name)
        {
            var v = get(name);
            if (string.IsNullOrEmpty(v)) return null;
            return int.TryParse(v, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var i)
                ? i : throw new ArgumentException($"environment variable {name}='{v}' is not an integer");
        }
        var addr = get("MASTER_ADDR") is { Length: > 0 } a ? a : "127.0.0.1";
        var port = Int("MASTER_PORT") ?? 29500;
        DistEnv e;
        if (Int("WORLD_SIZE") is { } world)
        {
            var rank = Int("RANK") ?? throw new ArgumentException("WORLD_SIZE is set but RANK is not (torchrun sets both)");
            // A Kubernetes PyTorchJob sets only RANK, WORLD_SIZE and MASTER_*: one process per pod, local rank 0.
            e = Int("LOCAL_RANK") is { } local
                ? new DistEnv(rank, world, local, Int("LOCAL_WORLD_SIZE") ?? world, addr, port)
                : new DistEnv(rank, world, 0, Int("LOCAL_WORLD_SIZE") ?? 1, addr, port);
        }
        else if (Int("SLURM_NTASKS") is { } tasks && tasks > 1)
        {
            var rank = Int("SLURM_PROCID") ?? throw new ArgumentException("SLURM_NTASKS is set but SLURM_PROCID is not");
            var perNode = (get("SLURM_NTASKS_PER_NODE") ?? "").Split('(')[0];
            e = new DistEnv(rank, tasks, Int("SLURM_LOCALID") ?? 0, int.TryParse(perNode, out var pn) ? pn : tasks, addr, port);
        }
        else return null;
        if (e.world_size < 1 || e.rank < 0 || e.rank >= e.world_size)
            throw new ArgumentException($"rank {e.rank} is outside a world of {e.world_size} processes");
        if (e.master_port is < 1 or > 65535) throw new ArgumentException($"MASTER_PORT {e.master_port} is not a TCP port");
        return e;
    }
}

/// <summary>A c10d process group: collectives on the tensors of every rank (in place unless they return tensors).</summary>
public sealed class ProcessGroup : IDisposable
{
    private IntPtr _handle;
    public int rank { get; }
    public int world_size { get; }
    public string backend { get; }
    private TimeSpan _timeout;

    /// <summary>How long a collective may wait for the other ranks before it fails (a hung peer); the rendezvous used
    /// the value given to <see cref="init"/>.</summary>
    public TimeSpan timeout
    {
        get => _timeout;
        set
        {
            Check(Native.sudo_pg_set_timeout(Handle, (long)value.TotalMilliseconds), "set timeout");
            _timeout = value;
        }
    }

    private ProcessGroup(IntPtr handle, int rank, int world, string backend, TimeSpan timeout) =>
        (_handle, this.rank, world_size, this.backend, _timeout) = (handle, rank, world, backend, timeout);

    /// <summary>True when the shim was built with c10d (Gloo; <paramref name="nccl"/>: also NCCL).</summary>
    public static bool Available(bool nccl = false)
    {
        Library.EnsureLoaded();
        var bits = Native.sudo_dist_available();
        return nccl ? (bits & 2) != 0 : (bits & 1) != 0;
    }

    /// <summary>torch.distributed.init_process_group: rendezvous through a TCPStore at master_addr:master_port (rank 0
    /// hosts it and waits for every rank), then a Gloo ("gloo", CPU tensors) or NCCL ("nccl", CUDA tensors) group.
    /// Every later collective uses <paramref name="timeout"/> (default 30 min, as PyTorch).</summary>
    public static ProcessGroup init(DistEnv env, string backend = "gloo", TimeSpan? timeout = null, string prefix = "sudo")
    {
        Library.EnsureLoaded();
        var t = timeout ?? TimeSpan.FromMinutes(30);
        var b = backend switch
        {
            "gloo" => 0,
            "nccl" => 1,
            _ => throw new ArgumentException($"unknown backend '{backend}' (gloo for CPU tensors, nccl for CUDA tensors)"),
        };
        var h = Native.sudo_pg_create(env.master_addr, env.master_port, env.rank, env.world_size, (long)t.TotalMilliseconds, b, prefix);
        if (h == IntPtr.Zero)
            throw new TorchException($"init_process_group(rank {env.rank}/{env.world_size}, {backend}, {env.master_addr}:{env.master_port})", Native.LastError());
        return new ProcessGroup(h, env.rank, env.world_size, backend, t);
    }

    private IntPtr Handle => _handle != IntPtr.Zero ? _handle : throw new ObjectDisposedException(nameof(ProcessGroup), "the process group was destroyed");

    private void Check(int status, string op)
    {
        if (status != 0) throw new TorchException($"rank {rank}/{world_size} {op}", Native.LastError());
    }

    /// <summary>all_reduce in place on each tensor (contiguous, on this backend's device): one collective per tensor
    /// (c10d reads a list as one buffer per local device, so the list is never handed over as one call).</summary>
    public void all_reduce(IReadOnlyList<Tensor> tensors, CollectiveOp op = CollectiveOp.SUM)
    {
        foreach (var t in tensors) all_reduce(t, op);
    }

    public unsafe void all_reduce(Tensor tensor, CollectiveOp op = CollectiveOp.SUM)
    {
        var h = tensor.Handle;
        Check(Native.sudo_pg_allreduce(Handle, &h, 1, op == CollectiveOp.AVG ? 0 : (int)op), $"all_reduce({op})");
        if (op == CollectiveOp.AVG) tensor.div_(world_size);
    }

    /// <summary>broadcast in place from rank <paramref name="src"/>, one collective per tensor.</summary>
    public void broadcast(IReadOnlyList<Tensor> tensors, int src = 0)
    {
        foreach (var t in tensors) broadcast(t, src);
    }

    public unsafe void broadcast(Tensor tensor, int src = 0)
    {
        if (src < 0 || src >= world_size) throw new ArgumentOutOfRangeException(nameof(src), $"source rank {src} outside the world of {world_size}");
        var h = tensor.Handle;
        Check(Native.sudo_pg_broadcast(Handle, &h, 1, src), $"broadcast(src {src})");
    }

    /// <summary>all_gather: every rank's tensor (same shape and dtype on every rank), in rank order.</summary>
    public unsafe Tensor[] all_gather(Tensor tensor)
    {
        var outs = new IntPtr[world_size];
        fixed (IntPtr* p = outs)
            Check(Native.sudo_pg_allgather(Handle, tensor.Handle, p), "all_gather");
        return outs.Select(h => Tensor.Wrap(h, "all_gather")).ToArray();
    }

    /// <summary>all_gather of tensors whose first dimension differs between ranks (the rest of the shape and the dtype
    /// must agree): sizes are gathered first, every tensor is padded to the largest, gathered, and cut back.</summary>
    public Tensor[] all_gather_variable(Tensor tensor)
    {
        using var scope = torch.NewDisposeScope();
        var sizes = all_gather(torch.tensor(new long[] { tensor.size(0) }, device: tensor.device)).Select(s => s.item<long>()).ToArray();
        var max = sizes.Max();
        var shape = tensor.shape.ToArray();
        shape[0] = max;
        var padded = torch.zeros(shape, tensor.dtype, tensor.device);
        if (tensor.size(0) > 0) padded.narrow(0, 0, tensor.size(0)).copy_(tensor);
        var parts = all_gather(padded);
        return parts.Select((p, r) => scope.MoveToOuter(p.narrow(0, 0, sizes[r]).contiguous())).ToArray();
    }

    public void barrier() => Check(Native.sudo_pg_barrier(Handle), "barrier");

    public void Dispose()
    {
        var h = Interlocked.Exchange(ref _handle, IntPtr.Zero);
        if (h != IntPtr.Zero) Native.sudo_pg_free(h);
    }
}
