// Offline resolution of Hugging Face model ids through an existing hub cache (no downloads, ever).
namespace Sudo.Models;

public static class Hub
{
    /// <summary>The hub cache folder: cacheDir, else $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.</summary>
    public static string CacheDir(string? cacheDir = null)
    {
        if (!string.IsNullOrEmpty(cacheDir)) return cacheDir;
        var hub = Environment.GetEnvironmentVariable("HF_HUB_CACHE");
        if (!string.IsNullOrEmpty(hub)) return hub;
        var home = Environment.GetEnvironmentVariable("HF_HOME");
        if (!string.IsNullOrEmpty(home)) return Path.Combine(home, "hub");
        return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "huggingface", "hub");
    }

    /// <summary>A local folder as given, or the snapshot folder of `org/name` in the hub cache (the revision
    /// refs/&lt;revision&gt; points to, default "main").</summary>
    public static string Resolve(string nameOrPath, string? cacheDir = null, string revision = "main")
    {
        if (Directory.Exists(nameOrPath)) return Path.GetFullPath(nameOrPath);
        // A single weight file (a single-file checkpoint, a LoRA file) is its own location: the caller reads it.
        if (SingleFile.IsSingleFile(nameOrPath)) return Path.GetFullPath(nameOrPath);
        var parts = nameOrPath.Split('/');
        // Legacy ids without an organisation (bert-base-uncased) are cached as models--<name>.
        if (parts.Length is < 1 or > 2 || parts.Any(p => p.Length == 0 || p is "." or ".."))
            throw new DirectoryNotFoundException($"'{nameOrPath}' is neither a folder nor a Hugging Face id of the form org/name");
        var cache = CacheDir(cacheDir);
        var repo = Path.Combine(cache, "models--" + string.Join("--", parts));
        var snapshots = Path.Combine(repo, "snapshots");
        if (!Directory.Exists(snapshots))
            throw new DirectoryNotFoundException(
                $"'{nameOrPath}' is not in the Hugging Face cache {cache} (no {repo}); Sudo never downloads: copy the model there " +
                "(huggingface-cli download on a connected machine), set --cache_dir / HF_HOME, or pass a local folder");
        var refFile = Path.Combine(repo, "refs", revision);
        if (File.Exists(refFile))
        {
            var rev = File.ReadAllText(refFile).Trim();
            var snap = Path.Combine(snapshots, rev);
            if (Directory.Exists(snap)) return snap;
            throw new DirectoryNotFoundException($"{refFile} points to snapshot {rev}, which is missing under {snapshots}");
        }
        var direct = Path.Combine(snapshots, revision);
        if (Directory.Exists(direct)) return direct;
        var all = Directory.GetDirectories(snapshots);
        if (all.Length == 1) return all[0];
        throw new DirectoryNotFoundException($"{repo}: no refs/{revision} and {all.Length} snapshots; pass the revision explicitly");
    }
}
