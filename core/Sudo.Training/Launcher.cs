// `sudoml launch`: torchrun's job for Sudo commands — start nproc_per_node processes on this node with the
// environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT),
// prefix every output line with its rank, and stop the whole node when one rank fails or on Ctrl-C. The launched
// commands read the same variables under torchrun --no-python, SLURM srun (SLURM_* fallbacks) or a PyTorchJob.
using System.Diagnostics;

namespace Sudo.Training;

public sealed record LaunchOptions
{
    public int nproc_per_node { get; init; } = 1;
    public int nnodes { get; init; } = 1;
    public int node_rank { get; init; }
    public string master_addr { get; init; } = "127.0.0.1";
    public int master_port { get; init; } = 29500;
    /// <summary>Seconds the other ranks get to exit after one failed or Ctrl-C, before they are killed.</summary>
    public double grace_seconds { get; init; } = 10;
}

public static class Launcher
{
    /// <summary>The environment of local rank <paramref name="localRank"/> (as torchrun sets it).</summary>
    public static Dictionary<string, string> Environment(LaunchOptions o, int localRank)
    {
        var world = o.nproc_per_node * o.nnodes;
        var rank = o.node_rank * o.nproc_per_node + localRank;
        string S(int v) => v.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return new Dictionary<string, string>
        {
            ["RANK"] = S(rank),
            ["WORLD_SIZE"] = S(world),
            ["LOCAL_RANK"] = S(localRank),
            ["LOCAL_WORLD_SIZE"] = S(o.nproc_per_node),
            ["GROUP_RANK"] = S(o.node_rank),
            ["ROLE_RANK"] = S(rank),
            ["MASTER_ADDR"] = o.master_addr,
            ["MASTER_PORT"] = S(o.master_port),
            // One thread pool per process unless the user chose: N ranks on one node share its cores.
            ["SUDO_TORCH_THREADS"] = System.Environment.GetEnvironmentVariable("SUDO_TORCH_THREADS")
                ?? S(Math.Max(1, System.Environment.ProcessorCount / Math.Max(1, o.nproc_per_node))),
            ["SUDO_BLAS_THREADS"] = System.Environment.GetEnvironmentVariable("SUDO_BLAS_THREADS")
                ?? S(Math.Max(1, System.Environment.ProcessorCount / Math.Max(1, o.nproc_per_node))),
        };
    }

    /// <summary>Runs <paramref name="command"/> (program and arguments) once per local rank and waits. Returns 0 when
    /// every rank succeeded, else the first failing rank's exit code (the others are stopped).</summary>
    public static int Run(LaunchOptions o, IReadOnlyList<string> command, Action<string>? output = null)
    {
        if (command.Count == 0) throw new ArgumentException("launch: give the command to run, e.g. sudoml launch --nproc_per_node 2 ./sudoml train ...");
        if (o.nproc_per_node < 1 || o.nnodes < 1) throw new ArgumentException("launch: --nproc_per_node and --nnodes must be ≥ 1");
        if (o.node_rank < 0 || o.node_rank >= o.nnodes) throw new ArgumentException($"launch: --node_rank {o.node_rank} outside {o.nnodes} nodes");
        output ??= Console.WriteLine;
        var lockObj = new object();
        void Write(string line)
        {
            lock (lockObj) output(line);
        }
        var procs = new List<Process>();
        var returned = 0;
        var failed = -1;
        var failedCode = 0;
        // Not disposed: Exited handlers may still run after Run returns.
        var stopping = new ManualResetEventSlim();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            Write("launch: interrupted; stopping every rank");
            stopping.Set();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            for (var local = 0; local < o.nproc_per_node; local++)
            {
                var psi = new ProcessStartInfo(command[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                foreach (var a in command.Skip(1)) psi.ArgumentList.Add(a);
                var env = Environment(o, local);
                foreach (var (k, v) in env) psi.Environment[k] = v;
                var prefix = $"[rank {env["RANK"]}] ";
                var p = new Process { StartInfo = psi, EnableRaisingEvents = true };
                p.OutputDataReceived += (_, e) => { if (e.Data is not null) Write(prefix + e.Data); };
                p.ErrorDataReceived += (_, e) => { if (e.Data is not null) Write(prefix + e.Data); };
                var rank = int.Parse(env["RANK"], System.Globalization.CultureInfo.InvariantCulture);
                p.Exited += (_, _) =>
                {
                    // Exited handlers run on pool threads and may come after Run has returned and disposed the process
                    // (reading its exit code then throws): an exception here would take down the whole host process.
                    int code;
                    try
                    {
                        if (Volatile.Read(ref returned) != 0) return;
                        code = p.ExitCode;
                    }
                    catch (InvalidOperationException) { return; }
                    if (code == 0) return;
                    lock (lockObj)
                    {
                        if (failed >= 0) return;
                        (failed, failedCode) = (rank, code);
                    }
                    Write($"launch: rank {rank} exited with code {code}; stopping the other ranks");
                    stopping.Set();
                };
                if (!p.Start()) throw new InvalidOperationException($"launch: could not start {command[0]}");
                p.BeginOutputReadLine();
                p.BeginErrorReadLine();
                procs.Add(p);
            }
            // Every rank's exit signals `finished` once all are gone; a failure or Ctrl-C signals `stopping`.
            var finished = new ManualResetEventSlim();
            foreach (var p in procs)
                p.Exited += (_, _) =>
                {
                    try
                    {
                        if (Volatile.Read(ref returned) == 0 && procs.All(q => q.HasExited)) finished.Set();
                    }
                    catch (InvalidOperationException) { /* Run has returned and disposed the processes */ }
                };
            if (procs.All(q => q.HasExited)) finished.Set();   // all gone before the handlers were attached
            WaitHandle.WaitAny([finished.WaitHandle, stopping.WaitHandle]);
            if (!finished.IsSet)
            {
                // Ranks blocked in a collective with the failed one error out by themselves; the rest are killed.
                finished.Wait(TimeSpan.FromSeconds(o.grace_seconds));
                foreach (var p in procs.Where(p => !p.HasExited)) p.Kill(entireProcessTree: true);
            }
            foreach (var p in procs) p.WaitForExit();
            if (failed >= 0) return failedCode;
            return procs.Select(p => p.ExitCode).FirstOrDefault(c => c != 0, 0) is var code && code != 0 ? code : (stopping.IsSet ? 130 : 0);
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
            Volatile.Write(ref returned, 1);
            foreach (var p in procs)
            {
                if (!p.HasExited) p.Kill(entireProcessTree: true);
                p.Dispose();
            }
        }
    }
}
