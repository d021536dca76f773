// What every trainer shares (offline methods and SPO): the output folder, the run record, the metrics sinks
// (metrics.jsonl, metrics.csv, TensorBoard under logging_dir/tracker_project_name as accelerate writes it) and the
// checkpoint format: output_dir/checkpoint-N/ holding the trained weights (unet/ or lora/), optimizer.safetensors,
// rng.safetensors, trainer_state.json and run_config.json, published atomically (a temporary folder renamed).
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Torch;

namespace Sudo.Training;

public sealed class TrainingRun : IDisposable
{
    public string OutputDir { get; }
    public JsonObject Record { get; }
    private readonly int? _totalLimit;
    private readonly TensorBoardWriter? _tb;
    private readonly string _jsonl, _csv;
    private string[]? _columns;
    /// <summary>False on the ranks of a data-parallel job other than rank 0: they read checkpoints but write nothing.</summary>
    public bool Writes { get; }

    /// <param name="tensorboardDir">null: no TensorBoard events (report_to none).</param>
    /// <param name="writes">false: a non-main rank (no folder, record, metrics or checkpoint is written).</param>
    public TrainingRun(string outputDir, JsonObject record, string? tensorboardDir, int? checkpointsTotalLimit, bool writes = true)
    {
        OutputDir = outputDir;
        Record = record;
        _totalLimit = checkpointsTotalLimit;
        Writes = writes;
        _jsonl = Path.Combine(outputDir, "metrics.jsonl");
        _csv = Path.Combine(outputDir, "metrics.csv");
        if (!writes) return;
        try
        {
            // Checked before any work: a run that trains for hours and then cannot save is the worst way to find out.
            Directory.CreateDirectory(outputDir);
            var probe = Path.Combine(outputDir, $".write-probe-{Guid.NewGuid():N}");
            File.WriteAllText(probe, "");
            File.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"--output_dir {outputDir}: cannot write there ({e.Message})", e);
        }
        RemoveLeftovers(outputDir);
        _columns = File.Exists(_csv) ? File.ReadLines(_csv).FirstOrDefault()?.Split(',') : null;
        if (tensorboardDir != null) _tb = new TensorBoardWriter(tensorboardDir);
    }

    /// <summary>How every trainer starts a run: rank 0 writes (the other ranks of a data-parallel job log nothing and
    /// write nothing), the checkpoint named by <paramref name="resumeFrom"/> is checked against the recorded settings and
    /// loaded on every rank (the data position in it is global, so the world size may differ from the run that wrote
    /// it), and run_config.json is written. Returns the run, the log for this rank, and the progress reporter's log.</summary>
    public static (TrainingRun run, Action<string> log, Action<string>? progressLog) Start(DataParallel dp, Action<string>? log, string outputDir,
        JsonObject record, string? tensorboardDir, int? checkpointsTotalLimit, string? resumeFrom, string? allowChanges, Action<string> loadCheckpoint, Func<int> step)
    {
        var main = dp.IsMain;
        Action<string> say = main ? log ?? Console.WriteLine : _ => { };
        var run = new TrainingRun(outputDir, record, tensorboardDir, checkpointsTotalLimit, writes: main);
        try
        {
            if (run.ResumePoint(resumeFrom) is { } checkpoint)
            {
                RunRecord.CheckResume(checkpoint, run.Record["config"]!.AsObject(), allowChanges);
                loadCheckpoint(checkpoint);
                say($"resumed from {checkpoint} at step {step()}");
            }
            run.WriteRecord();
        }
        catch
        {
            run.Dispose();
            throw;
        }
        return (run, say, main ? log : _ => { });
    }

    /// <summary>Rank 0 writes a checkpoint (<paramref name="save"/>); every rank then waits until it is published.</summary>
    public static string Checkpoint(DataParallel dp, Func<string> save)
    {
        var saved = save();
        dp.Barrier();
        return saved;
    }

    /// <summary>The TensorBoard folder for a run: output_dir/logging_dir/tracker_project_name (accelerate's layout).</summary>
    public static string? TensorBoardDir(string outputDir, string reportTo, string loggingDir, string project) =>
        reportTo == "none" ? null : Path.Combine(outputDir, loggingDir, project);

    /// <summary>The checkpoint to resume from: "latest" (the newest complete checkpoint-N, or none), a path, or null/"none".</summary>
    public string? ResumePoint(string? resumeFrom) => resumeFrom switch
    {
        null or "" or "none" => null,
        "latest" => Latest(OutputDir),
        var p => Directory.Exists(p) ? p : throw new DirectoryNotFoundException($"--resume_from_checkpoint {p}: no such checkpoint"),
    };

    /// <summary>Writes output_dir/run_config.json (at the start of a run, after any resume check).</summary>
    public void WriteRecord()
    {
        if (Writes) RunRecord.Write(OutputDir, Record);
    }

    /// <summary>One step's metrics to metrics.jsonl, metrics.csv (columns fixed by the first row) and TensorBoard (train/...).</summary>
    public void Log(int step, IReadOnlyDictionary<string, double> metrics)
    {
        if (!Writes) return;
        var line = new JsonObject { ["step"] = step };
        foreach (var (k, v) in metrics) if (k != "step") line[k] = double.IsFinite(v) ? v : null;
        File.AppendAllText(_jsonl, line.ToJsonString() + "\n");
        _tb?.AddScalars(step, metrics.Where(kv => kv.Key != "step" && double.IsFinite(kv.Value)).ToDictionary(kv => "train/" + kv.Key, kv => kv.Value));
        if (_columns is null)
        {
            _columns = metrics.Keys.Where(k => k != "step").Prepend("step").Distinct().OrderBy(k => k == "step" ? "" : k, StringComparer.Ordinal).ToArray();
            File.AppendAllText(_csv, string.Join(",", _columns) + "\n");
        }
        File.AppendAllText(_csv, string.Join(",", _columns.Select(c => c == "step" ? step.ToString(CultureInfo.InvariantCulture)
            : metrics.TryGetValue(c, out var v) ? v.ToString("G6", CultureInfo.InvariantCulture) : "")) + "\n");
    }

    /// <summary>Writes checkpoint-<paramref name="step"/>: <paramref name="write"/> fills the folder (weights, optimizer,
    /// RNG), then trainer_state.json and run_config.json are added and the folder is published atomically; older
    /// checkpoints beyond checkpoints_total_limit are deleted afterwards.</summary>
    public string SaveCheckpoint(int step, JsonObject state, Action<string> write)
    {
        var final = Path.Combine(OutputDir, $"checkpoint-{step}");
        if (!Writes) return final;
        var tmp = Path.Combine(OutputDir, $".tmp-checkpoint-{step}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        try
        {
            write(tmp);
            File.WriteAllText(Path.Combine(tmp, "trainer_state.json"), state.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            File.WriteAllText(Path.Combine(tmp, RunRecord.FileName), Record.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            AtomicFile.PublishDirectory(tmp, final);
        }
        catch
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
            throw;
        }
        if (_totalLimit is { } limit)
            foreach (var old in Checkpoints(OutputDir).SkipLast(limit))
            {
                // Renamed out of the checkpoint-N namespace first: a kill during the deletion leaves a leftover, never a
                // checkpoint-N folder with some of its files gone.
                var doomed = Path.Combine(OutputDir, $".deleting-{Path.GetFileName(old)}-{Guid.NewGuid():N}");
                Directory.Move(old, doomed);
                Directory.Delete(doomed, true);
            }
        return final;
    }

    /// <summary>What a run killed mid-write leaves behind: temporary checkpoint folders, checkpoints being deleted,
    /// and a replaced checkpoint's old copy (AtomicFile.PublishDirectory). None is ever read; a new run removes them.</summary>
    private static void RemoveLeftovers(string outputDir)
    {
        foreach (var d in Directory.EnumerateDirectories(outputDir, ".tmp-checkpoint-*")
                     .Concat(Directory.EnumerateDirectories(outputDir, ".deleting-checkpoint-*"))
                     .Concat(Directory.EnumerateDirectories(outputDir, "checkpoint-*.old-*")).ToList())
            Directory.Delete(d, true);
    }

    /// <summary>The complete checkpoint-N folders of a run, oldest first.</summary>
    public static List<string> Checkpoints(string outputDir)
    {
        if (!Directory.Exists(outputDir)) return [];
        return Directory.GetDirectories(outputDir, "checkpoint-*")
            .Select(d => (d, ok: int.TryParse(Path.GetFileName(d)["checkpoint-".Length..], out var n), n))
            .Where(x => x.ok && File.Exists(Path.Combine(x.d, "trainer_state.json")))
            .OrderBy(x => x.n).Select(x => x.d).ToList();
    }

    public static string? Latest(string outputDir) => Checkpoints(outputDir).LastOrDefault();

    /// <summary>trainer_state.json of a checkpoint, checked to be written by a trainer of <paramref name="method"/>.</summary>
    public static JsonObject ReadState(string checkpoint, string method)
    {
        var statePath = Path.Combine(checkpoint, "trainer_state.json");
        if (!File.Exists(statePath)) throw new FileNotFoundException($"{checkpoint} is not a Sudo checkpoint (no trainer_state.json)", statePath);
        var state = JsonNode.Parse(File.ReadAllText(statePath))!.AsObject();
        if ((string?)state["method"] != method) throw new InvalidDataException($"{checkpoint} was written by method {state["method"]}, not {method}");
        return state;
    }

    /// <summary>output_dir/train_summary.json: method, steps, wall seconds, peak resident memory, threads.</summary>
    public static void WriteSummary(string outputDir, string method, int steps, double seconds)
    {
        Directory.CreateDirectory(outputDir);
        AtomicFile.WriteAllText(Path.Combine(outputDir, "train_summary.json"), new JsonObject
        {
            ["method"] = method,
            ["steps"] = steps,
            ["seconds"] = Math.Round(seconds, 1),
            ["peak_rss_mb"] = Math.Round(ProcessMemory.PeakRssMb(), 1),
            ["torch_threads"] = torch.get_num_threads(),
            // GPU peaks of the caching allocator (torch.cuda.max_memory_allocated / max_memory_reserved), per device.
            ["gpu_peak_memory_mb"] = torch.cuda.is_available()
                ? new JsonArray(Enumerable.Range(0, torch.cuda.device_count()).Select(d => torch.cuda.memory_stats(d)).Select(m => (JsonNode)new JsonObject
                {
                    ["allocated"] = Math.Round(m.max_allocated / 1048576.0, 1),
                    ["reserved"] = Math.Round(m.max_reserved / 1048576.0, 1),
                }).ToArray())
                : null,
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    public void Dispose() => _tb?.Dispose();
}
