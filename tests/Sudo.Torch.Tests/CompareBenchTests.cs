using NUnit.Framework;
using Sudo.Bench;

namespace Sudo.Torch.Tests;

/// <summary>`bench compare --ref-malloc`: the PyTorch side's allocator environment is the one PyTorch's own CPU launcher
/// (torch/backends/xeon/run_cpu.py, _Launcher.set_memory_allocator) sets. Library folders are made here, so the test
/// does not depend on what the machine has installed.</summary>
public class CompareBenchTests
{
    private string _dir = "";

    [SetUp]
    public void MakeDir() => Directory.CreateDirectory(_dir = Path.Combine(Path.GetTempPath(), $"sudo-malloc-{Guid.NewGuid():N}"));

    [TearDown]
    public void RemoveDir() => Directory.Delete(_dir, true);

    [Test]
    public void GlibcAddsNothingAndAnUnknownNameListsTheChoices()
    {
        Assert.That(CompareBench.RefAllocatorEnvironment("glibc", [_dir]), Is.Empty);
        var e = Assert.Throws<ArgumentException>(() => CompareBench.RefAllocatorEnvironment("mimalloc", [_dir]))!;
        Assert.That(e.Message, Does.Contain("'mimalloc'").And.Contain("glibc, tcmalloc, jemalloc"));
    }

    [Test]
    public void PreloadedAllocatorsGetTheLaunchersSettings()
    {
        File.WriteAllBytes(Path.Combine(_dir, "libjemalloc.so.2"), []);
        var je = CompareBench.RefAllocatorEnvironment("jemalloc", [_dir]);
        Assert.That(je["LD_PRELOAD"], Is.EqualTo(Path.Combine(_dir, "libjemalloc.so.2")));
        // run_cpu.py: set_env("MALLOC_CONF", "oversize_threshold:1,background_thread:true,metadata_thp:auto")
        Assert.That(je["MALLOC_CONF"], Is.EqualTo("oversize_threshold:1,background_thread:true,metadata_thp:auto"));

        // The unversioned name (what run_cpu.py looks for) wins over the runtime's versioned file; no MALLOC_CONF.
        File.WriteAllBytes(Path.Combine(_dir, "libtcmalloc.so.4"), []);
        Assert.That(CompareBench.RefAllocatorEnvironment("tcmalloc", [_dir])["LD_PRELOAD"], Is.EqualTo(Path.Combine(_dir, "libtcmalloc.so.4")));
        File.WriteAllBytes(Path.Combine(_dir, "libtcmalloc.so"), []);
        var tc = CompareBench.RefAllocatorEnvironment("tcmalloc", [_dir]);
        Assert.That(tc["LD_PRELOAD"], Is.EqualTo(Path.Combine(_dir, "libtcmalloc.so")));
        Assert.That(tc.ContainsKey("MALLOC_CONF"), Is.False);
    }

    [Test]
    public void AMissingLibraryNamesThePackage()
    {
        var e = Assert.Throws<FileNotFoundException>(() => CompareBench.RefAllocatorEnvironment("tcmalloc", [_dir]))!;
        Assert.That(e.Message, Does.Contain("libtcmalloc.so").And.Contain("libgoogle-perftools4").And.Contain(_dir));
        e = Assert.Throws<FileNotFoundException>(() => CompareBench.RefAllocatorEnvironment("jemalloc", [_dir]))!;
        Assert.That(e.Message, Does.Contain("libjemalloc2"));
    }
}
