namespace Sudo.Torch;

/// <summary>Memory figures of the current process, for run summaries and benchmarks.</summary>
public static class ProcessMemory
{
    /// <summary>The process's peak resident set in MB: VmHWM on Linux, the runtime's peak working set elsewhere.</summary>
    public static double PeakRssMb()
    {
        const string status = "/proc/self/status";
        if (File.Exists(status))
            foreach (var line in File.ReadLines(status))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return StatusKb(line) / 1024.0;
        using var me = System.Diagnostics.Process.GetCurrentProcess();
        return me.PeakWorkingSet64 / 1048576.0;
    }

    /// <summary>The kB figure of a /proc/self/status line such as "VmHWM:\t  123456 kB" (a tab, then padding that
    /// disappears from 10 GB, 8 digits, on).</summary>
    internal static long StatusKb(string line) => long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1]);
}
