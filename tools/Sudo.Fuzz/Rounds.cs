// Running targets outside libFuzzer: seeded mutation rounds (the test suite's short runs) and replays of saved inputs
// (the regression corpus of fixed crashes). Each input runs in a fresh scratch folder.
namespace Sudo.Fuzz;

/// <param name="Input">the bytes that made the parser fail.</param>
/// <param name="Error">the exception that escaped (type and message).</param>
public sealed record Finding(string Target, byte[] Input, string Error);

public sealed record RoundResult(string Target, int Seeds, int Executions, int CleanRejections, IReadOnlyList<Finding> Findings);

public static class Rounds
{
    /// <summary>Runs one input; returns null when the parser accepted it or rejected it cleanly, else the finding.</summary>
    public static Finding? RunOne(FuzzTarget target, byte[] input, out bool rejected)
    {
        rejected = false;
        var scratch = Path.Combine(ScratchRoot, $"{target.Name}-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(scratch);
        try
        {
            target.Run(input, scratch);
            return null;
        }
        catch (Exception e) when (FuzzTargets.IsCleanRejection(e))
        {
            rejected = true;
            return null;
        }
        catch (Exception e)
        {
            var frames = (e.StackTrace ?? "").Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0).Take(4);
            return new Finding(target.Name, input, $"{e.GetType().FullName}: {e.Message}\n    {string.Join("\n    ", frames)}");
        }
        finally
        {
            try { Directory.Delete(scratch, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>/dev/shm when it exists (no disk writes per execution), else the temp folder.</summary>
    public static string ScratchRoot { get; } = Directory.Exists("/dev/shm") ? "/dev/shm/sudo-fuzz" : Path.Combine(Path.GetTempPath(), "sudo-fuzz");

    /// <summary>The seeds as they are, then <paramref name="executions"/> mutants drawn with <paramref name="seed"/>.</summary>
    public static RoundResult Mutate(FuzzTarget target, IReadOnlyList<byte[]> seeds, int executions, int seed)
    {
        if (seeds.Count == 0) throw new InvalidOperationException($"fuzz target {target.Name}: no seed inputs (is the shared folder there?)");
        var findings = new List<Finding>();
        var rejections = 0;
        var runs = 0;
        void Go(byte[] input)
        {
            runs++;
            var f = RunOne(target, input, out var rejected);
            if (rejected) rejections++;
            if (f is not null && findings.Count < 20) findings.Add(f);
        }
        foreach (var s in seeds) Go(s);
        var m = new Mutator(seed);
        var rng = new Random(seed ^ 0x5eed);
        for (var i = 0; i < executions; i++)
            Go(m.Mutate(seeds[rng.Next(seeds.Count)], seeds[rng.Next(seeds.Count)]));
        return new RoundResult(target.Name, seeds.Count, runs, rejections, findings);
    }
}
