// Reading and writing diffusers / transformers model folders: weight files (single, sharded, variants),
// key conversions real checkpoints need, strict loading with a readable report.
using System.Text.Json.Nodes;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

public static class Checkpoints
{
    /// <summary>The weight file(s) of a component folder: {base}[.{variant}].safetensors or its sharded
    /// index {base}[.{variant}].safetensors.index.json. base is "diffusion_pytorch_model" (diffusers) or
    /// "model" (transformers).</summary>
    public static string FindWeights(string folder, string baseName, string? variant = null)
    {
        var v = variant is null ? "" : "." + variant;
        var single = Path.Combine(folder, $"{baseName}{v}.safetensors");
        if (File.Exists(single)) return single;
        var index = Path.Combine(folder, $"{baseName}{v}.safetensors.index.json");
        if (File.Exists(index)) return index;
        var bin = Path.Combine(folder, $"{baseName}{v}.bin");
        if (File.Exists(bin))
            throw new NotSupportedException($"{bin}: pickled PyTorch weights can execute code on load and are not read; convert them to safetensors");
        var present = Directory.Exists(folder) ? string.Join(", ", Directory.GetFiles(folder).Select(Path.GetFileName)) : "(folder missing)";
        throw new FileNotFoundException($"no {baseName}{v}.safetensors (or sharded index) in {folder}; it holds: {present}");
    }

    /// <summary>Reads a weight file or sharded index as copies (not memory-mapped) in <paramref name="dtype"/>
    /// when given; fp16 files are upcast on CPU (libtorch 1.13 cannot compute in fp16 there).</summary>
    public static Dictionary<string, Tensor> ReadWeights(string path, Device? device = null)
    {
        return path.EndsWith(".index.json", StringComparison.Ordinal)
            ? safetensors.load_sharded(path, device)
            : safetensors.load_file(path, device);
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
