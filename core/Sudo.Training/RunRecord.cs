// How a run was made: its resolved config (every field, defaults included), the method, the machine (libtorch,
// CPU, GPUs) and the Sudo revision. Written as output_dir/run_config.json at start and into every checkpoint; a
// resume compares the two configs field by field and refuses any difference that was not explicitly allowed.
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Torch;

namespace Sudo.Training;

public static class RunRecord
{
    public const string FileName = "run_config.json";

    /// <summary>Fields that say where and how often a run is written, shown or guarded, never what it computes: they may
    /// differ on resume (validation samples use their own generators, so they leave the training draws alone).</summary>
    public static readonly IReadOnlySet<string> FreeOnResume = new HashSet<string>
    {
        "output_dir", "resume_from_checkpoint", "resume_allow_changes", "log_every", "logging_dir", "report_to",
        "tracker_project_name", "allow_slow_bf16", "checkpoints_total_limit", "hub_cache_dir", "checkpointing_steps",
        "validation_prompts", "validation_prompts_file", "validation_steps", "max_nonfinite_steps", "max_empty_rounds",
    };

    /// <summary>Settings counted per process (train.py's per-device batch, SPO's prompts and pairs per rank): a resume
    /// compares them multiplied by num_processes.</summary>
    public static readonly IReadOnlyList<string> PerProcess = ["train_batch_size", "prompts_per_round"];

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>The config as a JSON object with every public field (the serializer writes defaults too).</summary>
    public static JsonObject ConfigNode<T>(T config) => JsonSerializer.SerializeToNode(config)!.AsObject();

    /// <summary>The Sudo revision the assemblies were built from (the SDK stamps the git commit into the informational version).</summary>
    public static string SudoRevision()
    {
        var v = typeof(RunRecord).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "";
        var plus = v.IndexOf('+');
        return plus >= 0 ? v[(plus + 1)..] : "unknown (built outside a git checkout)";
    }

    public static JsonObject Environment()
    {
        var info = Library.Info();
        return new JsonObject
        {
            ["sudo_revision"] = SudoRevision(),
            ["libtorch"] = info.TorchVersion,
            ["libtorch_flavour"] = info.Flavour,
            ["cpu"] = info.Cpu.Summary,
            ["gpus"] = new JsonArray(info.CudaDeviceList.Select(d => (JsonNode)JsonValue.Create(d.ToString())!).ToArray()),
            ["torch_threads"] = info.TorchThreads,
            ["dotnet"] = System.Environment.Version.ToString(),
            ["started_utc"] = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ"),
        };
    }

    /// <summary>The record of a run: {"config": {...}, "method": "...", "environment": {...}}.</summary>
    public static JsonObject Make<T>(T config, string methodDescription) => new()
    {
        ["config"] = ConfigNode(config),
        ["method"] = methodDescription,
        ["environment"] = Environment(),
    };

    /// <summary>Adds the data-parallel world size to a record's config as "num_processes" (accelerate's name).</summary>
    public static JsonObject WithProcesses(JsonObject record, int worldSize)
    {
        record["config"]!["num_processes"] = worldSize;
        return record;
    }

    public static void Write(string folder, JsonObject record)
    {
        Directory.CreateDirectory(folder);
        AtomicFile.WriteAllText(Path.Combine(folder, FileName), record.ToJsonString(Indented));
    }

    /// <summary>The fields whose values differ between a checkpoint's config and the current one (a field missing on
    /// one side counts as different), minus the free ones and those in resume_allow_changes.</summary>
    public static List<(string field, string was, string now)> Differences(JsonObject saved, JsonObject current, IEnumerable<string> allowed)
    {
        var skip = new HashSet<string>(FreeOnResume.Concat(allowed));
        var diffs = new List<(string, string, string)>();
        // The world size may change on resume when the global sizes (per-process size × processes) stay: the data
        // position and every random draw are global (a record without num_processes was one process).
        if (saved.ContainsKey("num_processes") || current.ContainsKey("num_processes"))
        {
            // Integers as written (a parsed record holds JsonElements, a fresh one ints).
            static long Num(JsonNode? v, long absent) => v is null ? absent : long.Parse(v.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture);
            var (sn, cn) = (Num(saved["num_processes"], 1), Num(current["num_processes"], 1));
            foreach (var field in PerProcess.Where(f => saved.ContainsKey(f) || current.ContainsKey(f)))
            {
                var (sv, cv) = (Num(saved[field], 0), Num(current[field], 0));
                if (sv * sn != cv * cn && !skip.Contains(field))
                    diffs.Add((field, $"{sv} × {sn} process(es) = {sv * sn} in all", $"{cv} × {cn} = {cv * cn}"));
                skip.Add(field);
            }
            skip.Add("num_processes");
        }
        var keys = saved.Select(kv => kv.Key).Union(current.Select(kv => kv.Key)).Where(k => !skip.Contains(k)).OrderBy(k => k, StringComparer.Ordinal);
        foreach (var k in keys)
        {
            var a = saved[k];
            var b = current[k];
            if (!JsonNode.DeepEquals(a, b)) diffs.Add((k, a?.ToJsonString() ?? "(absent)", b?.ToJsonString() ?? "(absent)"));
        }
        return diffs;
    }

    /// <summary>Refuses to resume from <paramref name="checkpoint"/> when its recorded config differs from
    /// <paramref name="current"/> in a field not allowed to change; names every differing field.</summary>
    public static void CheckResume(string checkpoint, JsonObject current, string? allowChanges)
    {
        var path = Path.Combine(checkpoint, FileName);
        if (!File.Exists(path))
            throw new InvalidDataException($"{checkpoint} has no {FileName}: it was written by an older Sudo that did not record its settings, so a resume cannot be checked; start a new output_dir");
        JsonObject saved;
        try { saved = JsonNode.Parse(File.ReadAllText(path))!["config"]!.AsObject(); }
        catch (Exception e) when (e is JsonException or NullReferenceException or InvalidOperationException)
        {
            throw new InvalidDataException($"{path}: not a run record ({e.Message})");
        }
        var allowed = (allowChanges ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToArray();
        foreach (var a in allowed)
            if (!current.ContainsKey(a)) throw new ArgumentException($"--resume_allow_changes names '{a}', which is not a setting (settings: {string.Join(", ", current.Select(kv => kv.Key))})");
        var diffs = Differences(saved, current, allowed);
        if (diffs.Count == 0) return;
        var lines = string.Join("\n", diffs.Select(d => $"  {d.field}: checkpoint {d.was}, now {d.now}"));
        throw new InvalidDataException(
            $"refusing to resume from {checkpoint}: the run's settings changed\n{lines}\n"
            + $"resume with the checkpoint's values, start a new --output_dir (or --resume_from_checkpoint none), or allow the change explicitly: --resume_allow_changes {string.Join(",", diffs.Select(d => d.field))}");
    }
}
