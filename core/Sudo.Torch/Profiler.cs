using System.Globalization;

namespace Sudo.Torch;

/// <summary>One op of a profile: how often it ran, its total time (including the ops it called) and its self time.</summary>
public sealed record OpStat(string name, long calls, double total_us, double self_us);

/// <summary>torch.cpu.memory_stats(): the CPU caching allocator's counters (bytes; blocks of ≥ 256 KiB).</summary>
public sealed record CpuMemoryStats(long live, long cached, long peak_live, long hits, long misses, long releases);

public static partial class torch
{
    /// <summary>torch.autograd.profiler with use_kineto=False: libtorch's RecordFunction-based CPU profiler, the
    /// instrumentation PyTorch's own op tables come from, so the two can be compared op by op.
    /// <c>using (var p = torch.profiler.profile()) { ... }</c>, then <c>p.ops</c> (read after disposal).
    /// <paramref name="save_tsv"/>: keep the native per-op table (name, calls, total_us, self_us) at that path, moved
    /// into place whole once the profile stops.</summary>
    public static class profiler
    {
        public static Profile profile(bool record_shapes = false, string? save_tsv = null) => new(record_shapes, save_tsv);
    }

    public sealed class Profile : IDisposable
    {
        private IReadOnlyList<OpStat>? _ops;
        private readonly string? _saveTsv;

        internal Profile(bool recordShapes, string? saveTsv)
        {
            _saveTsv = saveTsv == null ? null : Path.GetFullPath(saveTsv);
            Library.EnsureLoaded();
            Native.CheckStatus(Native.sudo_profiler_start(recordShapes ? 1 : 0), "profiler.start");
        }

        /// <summary>Per-op figures, largest self time first; available once the profile is disposed.</summary>
        public IReadOnlyList<OpStat> ops => _ops ?? throw new InvalidOperationException("the profile is still running: dispose it first");

        public void Dispose()
        {
            if (_ops != null) return;
            var dir = _saveTsv == null ? Path.GetTempPath() : Path.GetDirectoryName(_saveTsv)!;
            var path = Path.Combine(dir, $".sudo-profile-{Environment.ProcessId}-{Guid.NewGuid():N}.tsv");
            try
            {
                Native.CheckStatus(Native.sudo_profiler_stop(path), "profiler.stop");
                _ops = Parse(File.ReadAllLines(path));
                if (_saveTsv != null) File.Move(path, _saveTsv, overwrite: true);
            }
            finally
            {
                if (File.Exists(path)) File.Delete(path);
            }
        }

        /// <summary>Reads a per-op table (name, calls, total_us, self_us; a header line first).</summary>
        public static IReadOnlyList<OpStat> Parse(string[] lines)
        {
            var ops = new List<OpStat>();
            foreach (var line in lines.Skip(1))
            {
                var f = line.Split('\t');
                if (f.Length != 4) continue;
                ops.Add(new OpStat(f[0], long.Parse(f[1], CultureInfo.InvariantCulture),
                    double.Parse(f[2], CultureInfo.InvariantCulture), double.Parse(f[3], CultureInfo.InvariantCulture)));
            }
            return ops.OrderByDescending(o => o.self_us).ToList();
        }
    }
}
