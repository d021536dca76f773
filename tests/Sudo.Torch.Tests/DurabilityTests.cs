using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using NUnit.Framework;

namespace Sudo.Torch.Tests;

/// <summary>Atomic writes are durable: strace, attached to this test process, sees every file of a published folder
/// and the folder itself flushed (fsync) before the rename that publishes it, and the parent folder flushed after it;
/// the same for a single file written through AtomicFile and for safetensors.save_file. A kill cannot test this (the
/// page cache survives a killed process); only the order of the system calls shows it.</summary>
public class DurabilityTests
{
    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    private sealed record Call(string name, string a, string b);

    /// <summary>Runs <paramref name="work"/> with strace attached to every thread of this process and returns the fsync
    /// and rename calls it made, in order. The attachment is confirmed by a marker fsync seen in the log.</summary>
    private static List<Call> Trace(string dir, Action work)
    {
        static void Unavailable(string msg)
        {
            if (Environment.GetEnvironmentVariable("CI") == "true") Assert.Fail(msg);
            Assert.Ignore(msg);
        }
        var strace = new[] { "/usr/bin/strace", "/bin/strace" }.FirstOrDefault(File.Exists);
        if (strace is null) Unavailable("strace not found (scripts/setup.sh installs it): the durability test watches the fsync calls");
        var log = Path.Combine(dir, "strace.log");
        var psi = new ProcessStartInfo(strace!) { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "-f", "-y", "-qq", "-e", "trace=fsync,rename,renameat,renameat2", "-o", log, "-p", $"{Environment.ProcessId}" })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var start = Path.Combine(dir, "marker-start");
        var end = Path.Combine(dir, "marker-end");
        File.WriteAllText(start, "");
        File.WriteAllText(end, "");
        string Log() => File.Exists(log) ? File.ReadAllText(log) : "";
        var clock = Stopwatch.StartNew();
        while (!Log().Contains("marker-start"))
        {
            if (p.HasExited)
            {
                // Yama's ptrace_scope 1 (Ubuntu's default) lets a non-root user trace only descendants.
                if (stderr.Result.Contains("Operation not permitted")) Unavailable($"strace may not attach to this process here: {stderr.Result.Trim()}");
                Assert.Fail($"strace could not attach (exit {p.ExitCode}): {stderr.Result}");
            }
            if (clock.Elapsed > TimeSpan.FromSeconds(30)) Assert.Fail("strace did not report the marker fsync within 30 s");
            AtomicFile.SyncFile(start);
            Thread.Sleep(50);
        }
        try
        {
            work();
            AtomicFile.SyncFile(end);
            while (!Log().Contains("marker-end") && clock.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(20);
        }
        finally
        {
            _ = kill(p.Id, 15);   // SIGTERM: strace detaches from every thread and exits
            p.WaitForExit(10_000);
        }
        var text = Log();
        var body = text[text.LastIndexOf("marker-start", StringComparison.Ordinal)..];
        body = body[..body.IndexOf("marker-end", StringComparison.Ordinal)];
        var calls = new List<Call>();
        foreach (var line in body.Split('\n'))
        {
            var f = Regex.Match(line, @"fsync\(\d+<(.*)>\)\s+= 0");
            if (f.Success) calls.Add(new("fsync", f.Groups[1].Value, ""));
            var r = Regex.Match(line, @"rename(?:at2?)?\((?:[^,""]+, )?""([^""]+)"", (?:[^,""]+, )?""([^""]+)""");
            if (r.Success) calls.Add(new("rename", r.Groups[1].Value, r.Groups[2].Value));
        }
        return calls;
    }

    private static int Index(List<Call> calls, Func<Call, bool> pred, string what)
    {
        var i = calls.FindIndex(c => pred(c));
        Assert.That(i, Is.GreaterThanOrEqualTo(0), $"{what} not seen; calls: {string.Join("; ", calls)}");
        return i;
    }

    private string _dir = "";

    [SetUp]
    public void MakeDir() => Directory.CreateDirectory(_dir = Path.Combine(Path.GetTempPath(), $"sudo-durable-{Guid.NewGuid():N}"));

    [TearDown]
    public void RemoveDir() => Directory.Delete(_dir, true);

    [Test]
    public void APublishedFolderIsFlushedBeforeItsRenameAndItsParentAfter()
    {
        var parent = Path.Combine(_dir, "out");
        var final = Path.Combine(parent, "checkpoint-2");
        Directory.CreateDirectory(final);   // an older copy: replaced, never lost
        File.WriteAllText(Path.Combine(final, "old.json"), "{}");
        var tmp = Path.Combine(parent, ".tmp-checkpoint-2-x");
        Directory.CreateDirectory(Path.Combine(tmp, "unet"));
        File.WriteAllText(Path.Combine(tmp, "trainer_state.json"), "{\"global_step\": 2}");
        File.WriteAllBytes(Path.Combine(tmp, "unet", "weights.bin"), new byte[4096]);

        var calls = Trace(_dir, () => AtomicFile.PublishDirectory(tmp, final));

        var publish = Index(calls, c => c.name == "rename" && c.a == tmp && c.b == final, "the rename of the temporary folder");
        foreach (var f in new[] { Path.Combine(tmp, "trainer_state.json"), Path.Combine(tmp, "unet", "weights.bin"), Path.Combine(tmp, "unet"), tmp })
            Assert.That(Index(calls, c => c.name == "fsync" && c.a == f, $"fsync of {f}"), Is.LessThan(publish), $"{f} is flushed before the rename");
        var aside = Index(calls, c => c.name == "rename" && c.a == final && c.b.StartsWith(final + ".old-", StringComparison.Ordinal), "the old copy renamed aside");
        Assert.That(aside, Is.LessThan(publish));
        Assert.That(calls.FindIndex(publish, c => c.name == "fsync" && c.a == parent), Is.GreaterThan(publish), "the parent folder is flushed after the rename");
        Assert.That(File.ReadAllText(Path.Combine(final, "trainer_state.json")), Is.EqualTo("{\"global_step\": 2}"));
        Assert.That(Directory.GetDirectories(parent), Is.EqualTo(new[] { final }), "the old copy is gone, nothing else is left");
    }

    [Test]
    public void FilesWrittenAtomicallyAreFlushedBeforeTheirRenameAndTheirFolderAfter()
    {
        var json = Path.Combine(_dir, "model_index.json");
        var st = Path.Combine(_dir, "model.safetensors");
        using var t = torch.arange(6, dtype: ScalarType.Float32);
        var calls = Trace(_dir, () =>
        {
            AtomicFile.WriteAllText(json, "{\"a\": 1}");
            safetensors.save_file(new Dictionary<string, Tensor> { ["w"] = t }, st);
        });
        foreach (var target in new[] { json, st })
        {
            var rename = Index(calls, c => c.name == "rename" && c.b == target, $"the rename onto {target}");
            var tmp = calls[rename].a;
            Assert.That(Path.GetDirectoryName(tmp), Is.EqualTo(_dir), "the temporary file sits beside the target");
            Assert.That(Index(calls, c => c.name == "fsync" && c.a == tmp, $"fsync of {tmp}"), Is.LessThan(rename));
            Assert.That(calls.FindIndex(rename, c => c.name == "fsync" && c.a == _dir), Is.GreaterThan(rename), $"the folder is flushed after {target}'s rename");
        }
        Assert.That(File.ReadAllText(json), Is.EqualTo("{\"a\": 1}"));
        Assert.That(Directory.GetFiles(_dir).Select(Path.GetFileName).Where(n => n!.StartsWith('.')), Is.Empty, "no temporary file is left");
    }
}
