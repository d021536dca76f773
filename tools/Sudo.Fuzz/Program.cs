// sudo-fuzz: the fuzz harness's command line (scripts/fuzz.sh drives it).
//   Sudo.Fuzz list                                  the targets and the parser each drives
//   Sudo.Fuzz seeds TARGET DIR [--shared S]          writes TARGET's seed corpus into DIR (one file per seed)
//   Sudo.Fuzz libfuzzer TARGET                      runs TARGET under libFuzzer (started by the driver; see driver/)
//   Sudo.Fuzz mutate TARGET [--executions N] [--seed S] [--shared S]   a seeded in-process round; exit 1 on a finding
//   Sudo.Fuzz replay TARGET FILE...                 runs saved inputs; exit 1 if one fails
using Sudo.Fuzz;

static string SharedDir(string[] a)
{
    var i = Array.IndexOf(a, "--shared");
    if (i >= 0 && i + 1 < a.Length) return a[i + 1];
    return Environment.GetEnvironmentVariable("SUDO_SHARED") ?? Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "shared");
}

static int IntArg(string[] a, string name, int dflt)
{
    var i = Array.IndexOf(a, name);
    return i >= 0 && i + 1 < a.Length && int.TryParse(a[i + 1], out var v) ? v : dflt;
}

if (args.Length == 0 || args[0] is "-h" or "--help")
{
    Console.Error.WriteLine("usage: Sudo.Fuzz list | seeds TARGET DIR [--shared S] | libfuzzer TARGET | mutate TARGET [--executions N] [--seed S] [--shared S] | replay TARGET FILE...");
    return 2;
}
try
{
    switch (args[0])
    {
        case "list":
            foreach (var t in FuzzTargets.All) Console.WriteLine($"{t.Name,-18} {t.Parser}");
            return 0;
        case "seeds":
            {
                var t = FuzzTargets.Get(args[1]);
                Directory.CreateDirectory(args[2]);
                var n = 0;
                foreach (var s in t.Seeds(SharedDir(args))) File.WriteAllBytes(Path.Combine(args[2], $"seed-{n++:D3}"), s);
                Console.WriteLine($"{t.Name}: {n} seeds in {args[2]}");
                return n > 0 ? 0 : 1;
            }
        case "libfuzzer":
            {
                var t = FuzzTargets.Get(args[1]);
                // A clean rejection is an ordinary execution; anything else escapes and libFuzzer records a crash.
                SharpFuzz.Fuzzer.LibFuzzer.Run(span =>
                {
                    var f = Rounds.RunOne(t, span.ToArray(), out _);
                    if (f is not null) throw new FuzzFindingException(f.Error);
                });
                return 0;
            }
        case "mutate":
            {
                var t = FuzzTargets.Get(args[1]);
                var r = Rounds.Mutate(t, t.Seeds(SharedDir(args)).ToList(), IntArg(args, "--executions", 2000), IntArg(args, "--seed", 1));
                Console.WriteLine($"{t.Name}: {r.Executions} executions from {r.Seeds} seeds, {r.CleanRejections} clean rejections, {r.Findings.Count} findings");
                foreach (var f in r.Findings) Console.WriteLine($"  {f.Error}");
                return r.Findings.Count == 0 ? 0 : 1;
            }
        case "replay":
            {
                var t = FuzzTargets.Get(args[1]);
                var bad = 0;
                foreach (var file in args.Skip(2))
                {
                    var f = Rounds.RunOne(t, File.ReadAllBytes(file), out var rejected);
                    Console.WriteLine($"{file}: {(f is null ? rejected ? "rejected cleanly" : "accepted" : f.Error)}");
                    if (f is not null) bad++;
                }
                return bad == 0 ? 0 : 1;
            }
        default:
            Console.Error.WriteLine($"Sudo.Fuzz: unknown command '{args[0]}' (expected list, seeds, libfuzzer, mutate or replay)");
            return 2;
    }
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"Sudo.Fuzz: {e.Message}");
    return 2;
}

internal sealed class FuzzFindingException(string message) : Exception(message);
