// Golden parity of the safe PyTorch checkpoint loader (Sudo.Torch.TorchPickle) on a folder written by the real
// torch.save: expected.json lists every file, whether it must be rejected, and the typed tree each good file
// loads to; expected.safetensors holds every tensor under its key path. Every case is read from those files.
using System.Text.Json.Nodes;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Parity;

public static class PickleParity
{
    /// <summary>True when <paramref name="folder"/> is a checkpoint-format golden folder (expected.json + expected.safetensors).</summary>
    public static bool IsPickleFolder(string folder) =>
        File.Exists(Path.Combine(folder, "expected.json")) && File.Exists(Path.Combine(folder, "expected.safetensors"));

    /// <summary>One row per file (loaded and equal to its expected tree, or rejected as it must be) and one for the
    /// payload witness (the file the malicious payloads would create must not exist afterwards).</summary>
    public static ParityReport Run(string folder)
    {
        var expectedPath = Path.Combine(folder, "expected.json");
        var root = JsonNode.Parse(File.ReadAllText(expectedPath)) as JsonObject ?? throw new InvalidDataException($"{expectedPath}: not a JSON object");
        var files = root["files"] as JsonObject ?? throw new InvalidDataException($"{expectedPath}: no 'files' object");
        var cases = root["cases"] as JsonObject ?? throw new InvalidDataException($"{expectedPath}: no 'cases' object");
        var witness = (string?)root["payload_witness"];
        var witnessBefore = witness is not null && File.Exists(witness);
        using var tensors = safetensors.safe_open(Path.Combine(folder, "expected.safetensors"));
        var rows = new List<ParityRow>();
        foreach (var (name, node) in files)
        {
            var spec = node as JsonObject ?? throw new InvalidDataException($"{expectedPath}: files.{name} is not an object");
            var path = Path.Combine(folder, name);
            var mustReject = (bool?)spec["must_reject"] ?? false;
            object? loaded = null;
            string? error = null;
            try
            {
                loaded = TorchPickle.Load(path);
            }
            catch (InvalidDataException e)
            {
                error = e.Message;
            }
            try
            {
                if (mustReject)
                {
                    rows.Add(error is not null
                        ? new ParityRow(name, 0, 0, 0, error.Contains(path, StringComparison.Ordinal), "rejected: " + Short(error, path))
                        : new ParityRow(name, double.NaN, double.NaN, 0, false, "loaded, but must be rejected: " + (string?)spec["reason"]));
                    continue;
                }
                if (error is not null)
                {
                    rows.Add(new ParityRow(name, double.NaN, double.NaN, 0, false, "rejected a good file: " + Short(error, path)));
                    continue;
                }
                var caseName = (string?)spec["case"] ?? throw new InvalidDataException($"{expectedPath}: files.{name} has no case");
                var expected = cases[caseName] ?? throw new InvalidDataException($"{expectedPath}: no case '{caseName}'");
                var state = new CompareState(tensors);
                var problem = state.Compare(expected, loaded, caseName);
                problem ??= state.CheckStorageGroups();
                rows.Add(new ParityRow(name, state.MaxError, state.MaxError, 0, problem is null && state.MaxError == 0,
                    problem ?? $"{state.Tensors} tensors equal, structure equal"));
            }
            finally
            {
                TorchPickle.DisposeAll(loaded);
            }
        }
        if (witness is not null)
        {
            var after = File.Exists(witness);
            rows.Add(new ParityRow("payload witness " + witness, 0, 0, 0, !after || witnessBefore,
                after ? (witnessBefore ? "existed before the run" : "CREATED: a payload ran") : "absent: no payload ran"));
        }
        return new ParityReport("pickle", "good files: every value and tensor exactly equal; malicious files: rejected with an error naming the file", rows);
    }

    private static string Short(string message, string path)
    {
        var m = message.Replace(path + ": ", "", StringComparison.Ordinal);
        return m.Length > 140 ? m[..140] + "…" : m;
    }

    private sealed class CompareState(safetensors.File tensors)
    {
        public double MaxError;
        public int Tensors;
        // storage_group (expected) ↔ StorageKey (loaded) must be a bijection.
        private readonly Dictionary<long, string> _groupToKey = [];
        private readonly Dictionary<string, long> _keyToGroup = [];
        private string? _groupProblem;

        public string? CheckStorageGroups() => _groupProblem;

        public string? Compare(JsonNode? e, object? a, string at)
        {
            var type = (string?)e?["type"] ?? "?";
            switch (type)
            {
                case "None": return a is null ? null : $"{at}: expected None, got {Describe(a)}";
                case "bool": return a is bool b && b == (bool)e!["value"]! ? null : $"{at}: expected {e!["value"]}, got {Describe(a)}";
                case "str": return a is string s && s == (string?)e!["value"] ? null : $"{at}: expected '{e!["value"]}', got {Describe(a)}";
                case "float":
                    return a is double dv && dv.Equals((double)e!["value"]!) ? null : $"{at}: expected {e!["value"]}, got {Describe(a)}";
                case "int":
                    {
                        var big = (bool?)e!["big"] ?? false;
                        var want = big ? System.Numerics.BigInteger.Parse((string)e["value"]!, System.Globalization.CultureInfo.InvariantCulture)
                                       : new System.Numerics.BigInteger((long)e["value"]!);
                        var got = a switch { long l => (System.Numerics.BigInteger?)l, System.Numerics.BigInteger bi => bi, _ => null };
                        return got == want ? null : $"{at}: expected {want}, got {Describe(a)}";
                    }
                case "list" or "tuple":
                    {
                        var items = e!["items"] as JsonArray ?? [];
                        var got = type == "list" ? (a as List<object?>)?.ToArray() : (a as PyTuple)?.Items;
                        if (got is null) return $"{at}: expected a {type}, got {Describe(a)}";
                        if (got.Length != items.Count) return $"{at}: expected {items.Count} items, got {got.Length}";
                        for (var i = 0; i < got.Length; i++)
                            if (Compare(items[i], got[i], $"{at}[{i}]") is { } p) return p;
                        return null;
                    }
                case "dict" or "OrderedDict":
                    {
                        if (a is not PyDict d) return $"{at}: expected a {type}, got {Describe(a)}";
                        if (d.Type != type) return $"{at}: expected a {type}, got a {d.Type}";
                        var items = e!["items"] as JsonArray ?? [];
                        if (items.Count != d.Items.Count) return $"{at}: expected {items.Count} entries, got {d.Items.Count}";
                        for (var i = 0; i < items.Count; i++)
                        {
                            var pair = items[i] as JsonArray ?? throw new InvalidDataException($"{at}: an item is not a [key, value] pair");
                            if (Compare(pair[0], d.Items[i].Key, $"{at} key {i}") is { } pk) return pk;
                            if (Compare(pair[1], d.Items[i].Value, $"{at}[{d.Items[i].Key}]") is { } pv) return pv;
                        }
                        var attrs = e["attrs"] as JsonObject;
                        if ((attrs?.Count ?? 0) != d.Attrs.Count) return $"{at}: expected {attrs?.Count ?? 0} attributes, got {d.Attrs.Count}";
                        if (attrs is not null)
                            foreach (var (k, v) in attrs)
                            {
                                if (!d.Attrs.TryGetValue(k, out var av)) return $"{at}: attribute {k} missing";
                                if (Compare(v, av, $"{at}.@{k}") is { } pa) return pa;
                            }
                        return null;
                    }
                case "tensor":
                    {
                        if (a is not PickledTensor t) return $"{at}: expected a tensor, got {Describe(a)}";
                        var key = (string)e!["key"]!;
                        long[] Longs(string k) => (e[k] as JsonArray)!.Select(x => (long)x!).ToArray();
                        if (!t.Value.shape.SequenceEqual(Longs("shape"))) return $"{at}: shape [{string.Join(", ", t.Value.shape)}], expected [{string.Join(", ", Longs("shape"))}]";
                        if (!t.Stride.SequenceEqual(Longs("stride"))) return $"{at}: stride [{string.Join(", ", t.Stride)}], expected [{string.Join(", ", Longs("stride"))}]";
                        if (t.StorageOffset != (long)e["storage_offset"]!) return $"{at}: storage offset {t.StorageOffset}, expected {e["storage_offset"]}";
                        if (t.StorageNumel != (long)e["storage_numel"]!) return $"{at}: storage of {t.StorageNumel} elements, expected {e["storage_numel"]}";
                        if (t.RequiresGrad != (bool)e["requires_grad"]!) return $"{at}: requires_grad {t.RequiresGrad}, expected {e["requires_grad"]}";
                        if (t.Parameter != (bool)e["parameter"]!) return $"{at}: parameter {t.Parameter}, expected {e["parameter"]}";
                        var dtype = (string)e["dtype"]!;
                        if (DTypeName(t.Value.dtype) != dtype) return $"{at}: dtype {DTypeName(t.Value.dtype)}, expected {dtype}";
                        var group = (long)e["storage_group"]!;
                        if (_groupToKey.TryGetValue(group, out var k0) ? k0 != t.StorageKey : _keyToGroup.ContainsKey(t.StorageKey))
                            _groupProblem ??= $"{at}: storage sharing differs from the file's (group {group}, storage '{t.StorageKey}')";
                        _groupToKey[group] = t.StorageKey;
                        _keyToGroup[t.StorageKey] = group;
                        using var scope = NewDisposeScope();
                        var reference = tensors.get(key);
                        if (reference.dtype != t.Value.dtype) return $"{at}: expected.safetensors holds {reference.dtype} for {key}";
                        var err = t.Value.numel() == 0 ? 0.0
                            : t.Value.dtype == ScalarType.Bool ? t.Value.ne(reference).to(ScalarType.Float64).sum().item()
                            : (t.Value.to(ScalarType.Float64) - reference.to(ScalarType.Float64)).abs().max().item();
                        // Exact equality is required: int64 values beyond 2^53 are compared exactly as well.
                        if (t.Value.dtype == ScalarType.Int64 && !t.Value.equal(reference)) err = Math.Max(err, 1);
                        MaxError = Math.Max(MaxError, err);
                        Tensors++;
                        return err == 0 ? null : $"{at}: values differ from {key} by {err:G3}";
                    }
                default:
                    return $"{at}: unknown expected type '{type}'";
            }
        }

        private static string DTypeName(ScalarType t) => t switch
        {
            ScalarType.Float32 => "float32",
            ScalarType.Float16 => "float16",
            ScalarType.BFloat16 => "bfloat16",
            ScalarType.Float64 => "float64",
            ScalarType.Int64 => "int64",
            ScalarType.Int32 => "int32",
            ScalarType.Int16 => "int16",
            ScalarType.Int8 => "int8",
            ScalarType.UInt8 => "uint8",
            ScalarType.Bool => "bool",
            _ => t.ToString(),
        };

        private static string Describe(object? a) => a switch
        {
            null => "None",
            string s => $"'{s}'",
            PyDict d => d.Type,
            PickledTensor => "a tensor",
            _ => $"{a} ({a.GetType().Name})",
        };
    }
}
