// Where the files of a dataset split are, with Hugging Face's meaning of --dataset_name / --cache_dir / --split.
// Nothing is downloaded. The layouts and their rules (read from upstream source):
//  * the Hub cache (huggingface_hub file_download.py): <hub>/datasets--{org}--{name}/refs/<revision> holds a commit
//    sha; the files of that commit are snapshots/<sha>/<path>, symlinks into blobs/ (followed). Other snapshots are
//    older revisions and are ignored.
//  * which files form a split (datasets data_files.py, a card without `configs:`): first the pattern
//    data/{split}-NNNNN-of-NNNNN*.*, else split keywords in file or folder names (separators "-._ " and digits),
//    else every file is `train`. Files are read in ordinal path order.
//  * the `datasets` cache (builder.py / naming.py, datasets ≥ 2.16): <cache_dir>/{org}___{name}/{config}/{version}/
//    {hash}/{builder}-{split}[-SSSSS-of-NNNNN].arrow, Arrow IPC streams; cache-*.arrow files are indices mappings,
//    not data. Older layouts (config folder `default-<hash>`, datasets 2.14–2.15) are found too.
//  * save_to_disk (arrow_dataset.py / dataset_dict.py): dataset_dict.json, <split>/state.json → _data_files.
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Sudo.Data;

/// <summary>The files of one split, in reading order, and how they were found.</summary>
public sealed record ResolvedSplit(string Layout, string Root, string Split, IReadOnlyList<string> Files, IReadOnlyList<string> Splits)
{
    public override string ToString() => $"{Layout} {Root} (split {Split}: {Files.Count} file(s))";
}

public static partial class DatasetResolver
{
    /// <summary>The Hub cache root: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
    /// (huggingface_hub constants.py).</summary>
    public static string HubCache(string? explicitDir = null) =>
        explicitDir ?? Environment.GetEnvironmentVariable("HF_HUB_CACHE")
        ?? Path.Combine(Environment.GetEnvironmentVariable("HF_HOME") ?? Path.Combine(Home, ".cache", "huggingface"), "hub");

    /// <summary>The datasets cache root: HF_DATASETS_CACHE, else $HF_HOME/datasets, else ~/.cache/huggingface/datasets
    /// (datasets config.py).</summary>
    public static string DatasetsCache(string? explicitDir = null) =>
        explicitDir ?? Environment.GetEnvironmentVariable("HF_DATASETS_CACHE")
        ?? Path.Combine(Environment.GetEnvironmentVariable("HF_HOME") ?? Path.Combine(Home, ".cache", "huggingface"), "datasets");

    private static string Home => Environment.GetEnvironmentVariable("HOME") ?? "/root";

    [GeneratedRegex(@"^[A-Za-z0-9][\w.-]*/[\w.-]+$")] private static partial Regex HubId();

    /// <summary>Resolves a dataset name (a hub id or a local path) and a split. <paramref name="cacheDir"/> is
    /// load_dataset's cache_dir (the datasets cache; a Hub cache root is accepted there too);
    /// <paramref name="hubCacheDir"/> overrides the Hub cache root.</summary>
    public static ResolvedSplit Resolve(string name, string split = "train", string? cacheDir = null, string? config = null,
        string revision = "main", string? hubCacheDir = null)
    {
        if (Directory.Exists(name) || File.Exists(name)) return ResolveLocal(Path.GetFullPath(name), split, revision);
        if (!HubId().IsMatch(name))
            throw new DirectoryNotFoundException($"dataset '{name}': no such file or folder, and not a hub id of the form org/name");
        var looked = new List<string>();
        var parts = name.Split('/');
        // 1. The datasets cache (what load_dataset(..., cache_dir=...) wrote): Arrow streams.
        var dsCache = DatasetsCache(cacheDir);
        var dsRoot = Path.Combine(dsCache, $"{parts[0]}___{parts[1]}");
        looked.Add($"datasets cache {dsRoot}/{config ?? "default"}*/<version>/<hash>/");
        if (Directory.Exists(dsRoot) && FromDatasetsCache(dsRoot, parts[1], split, config, name) is { } fromCache) return fromCache;
        // 2. The Hub cache (parquet shards of the repo): --cache_dir when it holds the repo, then the Hub cache.
        var repoFolder = $"datasets--{parts[0]}--{parts[1]}";
        var hubRoots = new List<string>();
        if (cacheDir != null) hubRoots.Add(cacheDir);
        hubRoots.Add(HubCache(hubCacheDir));
        foreach (var root in hubRoots.Distinct())
        {
            var repo = Path.Combine(root, repoFolder);
            looked.Add($"hub cache {repo}/refs/{revision}");
            if (Directory.Exists(repo)) return FromHubRepo(repo, split, revision);
        }
        var fetch = cacheDir != null
            ? $"python -c \"import datasets; datasets.load_dataset('{name}', cache_dir='{cacheDir}')\""
            : $"hf download {name} --repo-type dataset";
        throw new DirectoryNotFoundException($"dataset '{name}' is not on this machine (Sudo never downloads). Looked in:\n  " +
            string.Join("\n  ", looked) + $"\nFetch it once with Python, then rerun:\n  {fetch}");
    }

    private static ResolvedSplit ResolveLocal(string path, string split, string revision)
    {
        if (File.Exists(path))
        {
            if (!IsTableFile(path)) throw new InvalidDataException($"{path}: not a .parquet or .arrow file");
            return new ResolvedSplit("file", Path.GetDirectoryName(path)!, split, [path], [split]);
        }
        if (File.Exists(Path.Combine(path, "dataset_dict.json"))) return FromSaveToDisk(path, split);
        if (File.Exists(Path.Combine(path, "state.json"))) return FromSavedDataset(path, split, path);
        if (Directory.Exists(Path.Combine(path, "refs")) && Directory.Exists(Path.Combine(path, "snapshots"))) return FromHubRepo(path, split, revision);
        // A Hub cache root holding exactly one dataset repo.
        var repos = Directory.GetDirectories(path, "datasets--*");
        if (repos.Length == 1 && !Directory.EnumerateFiles(path, "*.parquet").Any()) return FromHubRepo(repos[0], split, revision);
        return FromDataFiles(path, split, "folder");
    }

    private static bool IsTableFile(string f) => f.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase) || f.EndsWith(".arrow", StringComparison.OrdinalIgnoreCase);

    /// <summary>A Hub-cache repo folder: refs/&lt;revision&gt; → snapshots/&lt;sha&gt; → the split's data files.</summary>
    public static ResolvedSplit FromHubRepo(string repo, string split, string revision = "main")
    {
        var refFile = Path.Combine(repo, "refs", revision);
        string sha;
        if (File.Exists(refFile)) sha = File.ReadAllText(refFile).Trim();
        else if (Regex.IsMatch(revision, "^[0-9a-f]{40}$")) sha = revision;
        else throw new DirectoryNotFoundException($"{repo}: no refs/{revision} (revisions here: {string.Join(", ", SafeList(Path.Combine(repo, "refs")))}); the download was interrupted or used another revision");
        var snap = Path.Combine(repo, "snapshots", sha);
        if (!Directory.Exists(snap)) throw new DirectoryNotFoundException($"{repo}: refs/{revision} names {sha} but snapshots/{sha} is missing (an interrupted download: fetch the dataset again)");
        var r = FromDataFiles(snap, split, "hub cache");
        return r with { Root = snap };
    }

    /// <summary>A snapshot file is a symlink into blobs/ (followed by the OS). Where the tree was copied by a tool
    /// without symlink support (git with core.symlinks=false, some archivers), the file instead holds the link's
    /// relative target as text: follow that too, but only to a file in a Hub cache's blobs/ folder.</summary>
    public static string FollowLinkStub(string file)
    {
        var info = new FileInfo(file);
        if (info.LinkTarget != null || info.Length is 0 or > 1024) return file;
        var text = File.ReadAllText(file).Trim();
        if (!text.StartsWith("../") || text.Contains('\n')) return file;
        var target = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(file)!, text));
        return Path.GetFileName(Path.GetDirectoryName(target)) == "blobs" && File.Exists(target) ? target : file;
    }

    private static IEnumerable<string> SafeList(string dir) =>
        Directory.Exists(dir) ? Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(dir, f)) : [];

    private static readonly Dictionary<string, string[]> SplitKeywords = new()
    {
        // datasets data_files.py: SPLIT_KEYWORDS
        ["train"] = ["train", "training"],
        ["validation"] = ["validation", "valid", "dev", "val"],
        ["test"] = ["test", "testing", "eval", "evaluation"],
    };

    [GeneratedRegex(@"^data/(?<split>\w+?)-[0-9]{5}-of-[0-9]{5}[^/]*\.[^/]+$")] private static partial Regex DataSplitFile();

    /// <summary>The split's parquet/arrow files of a folder, by datasets' data-file patterns (see the header).</summary>
    public static ResolvedSplit FromDataFiles(string root, string split, string layout)
    {
        var files = Directory.EnumerateFiles(root, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.None })
            .Where(IsTableFile)
            .Select(f => Path.GetRelativePath(root, f).Replace('\\', '/'))
            .Where(f => !f.Split('/').Any(part => part.StartsWith('.')) && !Path.GetFileName(f).StartsWith("cache-"))
            .OrderBy(f => f, StringComparer.Ordinal).ToList();
        if (files.Count == 0) throw new FileNotFoundException($"{root}: no .parquet or .arrow files (and no pairs.jsonl / pairs.csv, dataset_dict.json or state.json)");
        var bySplit = new SortedDictionary<string, List<string>>(StringComparer.Ordinal);
        // 1. data/{split}-NNNNN-of-NNNNN*: the split name is an exact token.
        foreach (var f in files)
            if (DataSplitFile().Match(f) is { Success: true } m)
                (bySplit.TryGetValue(m.Groups["split"].Value, out var l) ? l : bySplit[m.Groups["split"].Value] = []).Add(f);
        if (bySplit.Count == 0)
        {
            // 2. split keywords as words of file or folder names; 3. otherwise everything is train.
            foreach (var f in files)
                foreach (var (s, words) in SplitKeywords)
                    if (words.Any(w => Regex.IsMatch(f, $@"(^|[/\-._ 0-9]){w}([/\-._ 0-9]|$)")))
                    {
                        (bySplit.TryGetValue(s, out var l) ? l : bySplit[s] = []).Add(f);
                        break;
                    }
            if (bySplit.Count == 0) bySplit["train"] = files;
        }
        var splits = OrderSplits(bySplit.Keys);
        if (!bySplit.TryGetValue(split, out var chosen))
            throw new ArgumentException($"{root}: no split '{split}' (splits found: {string.Join(", ", splits)})");
        return new ResolvedSplit(layout, root, split, chosen.Select(f => Path.Combine(root, f)).ToList(), splits);
    }

    /// <summary>train, validation, test, then the others in sorted order (datasets' DatasetDict order).</summary>
    public static List<string> OrderSplits(IEnumerable<string> splits)
    {
        string[] first = ["train", "validation", "test"];
        var all = splits.ToList();
        return first.Where(all.Contains).Concat(all.Except(first).OrderBy(s => s, StringComparer.Ordinal)).ToList();
    }

    private static ResolvedSplit FromSaveToDisk(string root, string split)
    {
        var dd = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "dataset_dict.json")))?["splits"]?.AsArray().Select(s => s!.GetValue<string>()).ToList()
            ?? throw new InvalidDataException($"{root}/dataset_dict.json: no 'splits' list");
        if (!dd.Contains(split)) throw new ArgumentException($"{root}: no split '{split}' (dataset_dict.json lists: {string.Join(", ", dd)})");
        return FromSavedDataset(Path.Combine(root, split), split, root) with { Splits = dd };
    }

    private static ResolvedSplit FromSavedDataset(string folder, string split, string root)
    {
        var statePath = Path.Combine(folder, "state.json");
        var state = JsonNode.Parse(File.ReadAllText(statePath)) ?? throw new InvalidDataException($"{statePath}: empty");
        var files = state["_data_files"]?.AsArray().Select(f => Path.Combine(folder, f!["filename"]!.GetValue<string>())).ToList()
            ?? throw new InvalidDataException($"{statePath}: no _data_files list");
        foreach (var f in files)
            if (!File.Exists(f)) throw new FileNotFoundException($"{statePath} lists {Path.GetFileName(f)}, which is missing");
        return new ResolvedSplit("save_to_disk", root, split, files, [split]);
    }

    private static ResolvedSplit? FromDatasetsCache(string dsRoot, string dsName, string split, string? config, string hubId)
    {
        // <config>/<version>/<hash>/ folders holding dataset_info.json; newest first.
        var candidates = Directory.GetDirectories(dsRoot)
            .Where(c => Path.GetFileName(c) == (config ?? "default") || Path.GetFileName(c).StartsWith((config ?? "default") + "-"))
            .SelectMany(c => Directory.GetDirectories(c)).SelectMany(v => Directory.GetDirectories(v))
            .Where(h => File.Exists(Path.Combine(h, "dataset_info.json")))
            .OrderByDescending(h => File.GetLastWriteTimeUtc(Path.Combine(h, "dataset_info.json"))).ToList();
        foreach (var h in candidates)
        {
            var info = JsonNode.Parse(File.ReadAllText(Path.Combine(h, "dataset_info.json")));
            var splitsNode = info?["splits"]?.AsObject();
            var splits = OrderSplits(splitsNode?.Select(kv => kv.Key) ?? []);
            var files = Directory.GetFiles(h, "*.arrow").Where(f => !Path.GetFileName(f).StartsWith("cache-"))
                .Where(f => Regex.IsMatch(Path.GetFileName(f), $@"^.+-{Regex.Escape(split)}(-[0-9]{{5}}-of-[0-9]{{5}})?\.arrow$"))
                .OrderBy(f => f, StringComparer.Ordinal).ToList();
            if (files.Count == 0)
            {
                if (splitsNode?.ContainsKey(split) == true) throw new FileNotFoundException($"{h}: dataset_info.json lists split '{split}' but its .arrow files are missing (an interrupted load_dataset: run it again)");
                throw new ArgumentException($"{h}: no split '{split}' (splits: {string.Join(", ", splits)})");
            }
            if (splitsNode?[split]?["shard_lengths"] is JsonArray lengths && lengths.Count != files.Count)
                throw new InvalidDataException($"{h}: dataset_info.json says split '{split}' has {lengths.Count} shards, found {files.Count} .arrow files (an interrupted load_dataset)");
            return new ResolvedSplit("datasets cache", h, split, files, splits);
        }
        return null;
    }
}
