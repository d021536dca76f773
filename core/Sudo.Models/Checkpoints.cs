// Reading and writing diffusers / transformers model folders: weight files (single, sharded, variants),
// key conversions real checkpoints need, strict loading with a readable report.
using System.Text.Json.Nodes;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

public static class Checkpoints
{
    /// <summary>The weight file(s) of a component folder: {base}[.{variant}].safetensors or its sharded
    /// index {base}[.{variant}].safetensors.index.json; failing those the pickled PyTorch file
    /// {pt}[.{variant}].bin or its index {pt}[.{variant}].bin.index.json, where pt is "diffusion_pytorch_model"
    /// (diffusers, base "diffusion_pytorch_model") or "pytorch_model" (transformers, base "model"). Pickles are
    /// read with PyTorch's weights_only allow-list (<see cref="TorchPickle"/>): nothing in them executes.</summary>
    public static string FindWeights(string folder, string baseName, string? variant = null)
    {
        var v = variant is null ? "" : "." + variant;
        var ptName = baseName == "model" ? "pytorch_model" : baseName;
        foreach (var name in new[] { $"{baseName}{v}.safetensors", $"{baseName}{v}.safetensors.index.json", $"{ptName}{v}.bin", $"{ptName}{v}.bin.index.json" })
        {
            var path = Path.Combine(folder, name);
            if (File.Exists(path)) return path;
        }
        var present = Directory.Exists(folder) ? string.Join(", ", Directory.GetFiles(folder).Select(Path.GetFileName)) : "(folder missing)";
        throw new FileNotFoundException($"no {baseName}{v}.safetensors, {ptName}{v}.bin (or a sharded index of either) in {folder}; it holds: {present}");
    }

    /// <summary>True for the extensions torch.save files carry.</summary>
    public static bool IsPickle(string path) =>
        path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".pt", StringComparison.OrdinalIgnoreCase)
        || path.EndsWith(".pth", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".ckpt", StringComparison.OrdinalIgnoreCase);

    /// <summary>Reads a weight file or sharded index (safetensors memory-mapped; PyTorch pickles through the
    /// weights_only allow-list, their tensors flattened to dotted key paths, taking "state_dict" when the file
    /// wraps one).</summary>
    public static Dictionary<string, Tensor> ReadWeights(string path, Device? device = null)
    {
        if (path.EndsWith(".bin.index.json", StringComparison.Ordinal)) return ReadPickleShards(path);
        if (IsPickle(path)) return ReadPickle(path);
        return path.EndsWith(".index.json", StringComparison.Ordinal)
            ? safetensors.load_sharded(path, device)
            : safetensors.load_file(path, device);
    }

    /// <summary>A pickled checkpoint as a flat state dict: a top-level dict holding "state_dict" (Lightning,
    /// open_clip, HPSv2) is unwrapped; every other non-tensor entry is ignored.</summary>
    public static Dictionary<string, Tensor> ReadPickle(string path) => ReadPickle(path, null);

    /// <summary><see cref="ReadPickle(string)"/>, also showing <paramref name="inspectRoot"/> the unpickled top-level
    /// object before its tensors are flattened (a Lightning checkpoint's global_step, ...).</summary>
    public static Dictionary<string, Tensor> ReadPickle(string path, Action<object?>? inspectRoot)
    {
        var root = TorchPickle.Load(path);
        inspectRoot?.Invoke(root);
        object? body = root;
        if (root is PyDict d && d.TryGet("state_dict", out var inner) && inner is PyDict) body = inner;
        var result = new Dictionary<string, Tensor>();
        try
        {
            TorchPickle.Flatten(body, "", result);
        }
        catch
        {
            TorchPickle.DisposeAll(root);
            throw;
        }
        // Tensors outside the chosen body (optimizer state ...) are released now.
        var kept = new HashSet<Tensor>(result.Values, ReferenceEqualityComparer.Instance);
        var all = new Dictionary<string, Tensor>();
        TorchPickle.Flatten(root, "", all);
        foreach (var t in all.Values)
            if (!kept.Contains(t)) t.Dispose();
        return result;
    }

    private static Dictionary<string, Tensor> ReadPickleShards(string indexPath)
    {
        var root = JsonNode.Parse(File.ReadAllText(indexPath)) as JsonObject ?? throw new InvalidDataException($"{indexPath}: not a JSON object");
        if (root["weight_map"] is not JsonObject map) throw new InvalidDataException($"{indexPath}: no weight_map object");
        var dir = Path.GetDirectoryName(Path.GetFullPath(indexPath))!;
        var result = new Dictionary<string, Tensor>();
        try
        {
            foreach (var group in map.GroupBy(kv => (string?)kv.Value ?? throw new InvalidDataException($"{indexPath}: weight_map['{kv.Key}'] is not a file name")))
            {
                if (group.Key.Contains('/') || group.Key.Contains('\\') || group.Key.StartsWith("..", StringComparison.Ordinal))
                    throw new InvalidDataException($"{indexPath}: shard name '{group.Key}' must be a file in the index's folder");
                var shard = ReadPickle(Path.Combine(dir, group.Key));
                foreach (var kv in group)
                    if (!shard.Remove(kv.Key, out var t)) throw new InvalidDataException($"{indexPath}: '{kv.Key}' is mapped to {group.Key}, which does not hold it");
                    else result[kv.Key] = t;
                foreach (var t in shard.Values) t.Dispose();
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>Old diffusers VAE attention names (query/key/value/proj_attn, possibly 1×1 conv weights)
    /// → to_q/to_k/to_v/to_out.0; drops CLIP's position_ids buffer that some files carry.</summary>
    public static Dictionary<string, Tensor> Convert(Dictionary<string, Tensor> sd, ICollection<string> expected)
    {
        var renames = new (string from, string to)[] { (".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.") };
        var result = new Dictionary<string, Tensor>();
        foreach (var (k, t) in sd)
        {
            var key = k;
            if (!expected.Contains(key))
            {
                foreach (var (from, to) in renames)
                    if (key.Contains(from))
                    {
                        var cand = key.Replace(from, to);
                        if (expected.Contains(cand)) key = cand;
                    }
                if (key.EndsWith("embeddings.position_ids", StringComparison.Ordinal) && !expected.Contains(key)) continue;
            }
            var value = t;
            if (key != k && t.dim() == 4 && t.size(2) == 1 && t.size(3) == 1) value = t.flatten(1);
            result[key] = value;
        }
        return result;
    }

    /// <summary>Loads a state dict into a module built with uninitialised weights: converts legacy names,
    /// then loads strictly (the error lists every missing, unexpected and mis-shaped key).</summary>
    public static void LoadInto(nn.Module module, Dictionary<string, Tensor> sd, string source)
    {
        using var scope = NewDisposeScope();
        var expected = new HashSet<string>(module.state_dict().Keys);
        var converted = Convert(sd, expected);
        try
        {
            module.load_state_dict(converted);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{source}: {e.Message}", e);
        }
    }

    /// <summary>Builds a module with skipped initialisation and loads its weights from a folder.</summary>
    public static T Load<T>(string folder, Func<T> build, string baseName, string? variant, ScalarType? dtype, Device? device) where T : nn.Module
    {
        var dt = dtype ?? ScalarType.Float32;
        var dev = device ?? Device.CPU;
        if (dt == ScalarType.Float16 && dev.Type == DeviceType.CPU)
            throw new NotSupportedException("fp16 cannot compute on CPU with libtorch 1.13: load in float32 or bfloat16 (fp16 weight files are upcast automatically)");
        var configPath = Path.Combine(folder, "config.json");
        if (!File.Exists(configPath)) throw new FileNotFoundException($"config not found: {configPath} (a diffusers/transformers component folder holds config.json and its weights)", configPath);
        var path = FindWeights(folder, baseName, variant);
        T model;
        // Built directly in the target dtype and device with initialisation skipped: every weight is
        // overwritten by the checkpoint (converted from the file's dtype while copying).
        using (nn.init.skip())
        using (dtype_scope(dt))
        using (device_scope(dev))
            model = build();
        try
        {
            var sd = ReadWeights(path);
            try
            {
                LoadInto(model, sd, path);
            }
            finally
            {
                foreach (var t in sd.Values) t.Dispose();
            }
            model.eval();
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Writes a state dict as {base}.safetensors (or shards above maxShardBytes) plus config.json, atomically.</summary>
    public static void Save(nn.Module module, string folder, string baseName, JsonObject config, long maxShardBytes = 10L << 30)
    {
        Directory.CreateDirectory(folder);
        using var scope = NewDisposeScope();
        var sd = module.state_dict();
        safetensors.save_sharded(sd, folder, baseName, maxShardBytes, new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }
}
