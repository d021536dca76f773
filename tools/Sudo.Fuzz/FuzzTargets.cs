// The fuzz targets: one per parser of untrusted input, each a function of raw bytes that drives the parser the way
// Sudo uses it (open, read every entry, decode) and either returns or throws. A parser may reject its input only with
// the exceptions Sudo documents for bad files — InvalidDataException (corrupt or hostile content, naming the file),
// NotSupportedException (a valid file asking for something Sudo does not implement), FileNotFoundException (a file the
// input names is absent). Anything else escaping — IndexOutOfRange, NullReference, Overflow, a raw JsonException, an
// OutOfMemory from a size the file declares, a native crash — is a finding.
using System.Text;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Torch;

namespace Sudo.Fuzz;

/// <param name="Name">the target's name on the command line (scripts/fuzz.sh NAME).</param>
/// <param name="Parser">what it drives, for reports.</param>
/// <param name="Seeds">the seed inputs found under the shared folder (golden files and fixtures).</param>
/// <param name="Run">parses one input; the scratch folder is empty except for what Run itself writes.</param>
public sealed record FuzzTarget(string Name, string Parser, Func<string, IEnumerable<byte[]>> Seeds, Action<byte[], string> Run);

public static class FuzzTargets
{
    /// <summary>The rejections a parser is allowed to make (see the file's header).</summary>
    public static bool IsCleanRejection(Exception e) => e is InvalidDataException or NotSupportedException or FileNotFoundException;

    /// <summary>Separates the two files of the tokenizer target's input (vocab.json, then merges.txt).</summary>
    public static readonly byte[] TokenizerSeparator = "\n\0merges.txt\0\n"u8.ToArray();

    public static readonly IReadOnlyList<FuzzTarget> All =
    [
        new("safetensors", "safetensors.load_file (header, offsets, dtypes, shapes, data)", SeedsSafetensors, RunSafetensors),
        new("safetensors-index", "safetensors.load_sharded (*.safetensors.index.json beside one shard)", SeedsIndex, RunIndex),
        new("pickle", "TorchPickle.LoadStateDict (zip and legacy PyTorch checkpoints, weights_only allow-list)", SeedsPickle, RunPickle),
        new("parquet", "ParquetShard: open, every row group, every column by kind", SeedsParquet, (d, s) => RunTable(d, s, "x.parquet")),
        new("arrow", "ArrowStreamShard: open, every record batch, every column by kind", SeedsArrow, (d, s) => RunTable(d, s, "x.arrow")),
        new("png", "ImageCodecs.Decode through libspng (pixel limit ImageCodecs.MaxPixels)", SeedsPng, (d, _) => ImageCodecs.Decode(d, "input.png")),
        new("jpeg", "ImageCodecs.Decode through libturbojpeg (pixel limit ImageCodecs.MaxPixels)", SeedsJpeg, (d, _) => ImageCodecs.Decode(d, "input.jpg")),
        new("config", "config.json readers (UNet, VAE, CLIP text, CLIP), scheduler_config.json, model_index.json", SeedsConfig, RunConfig),
        new("lora-config", "Lora.ReadConfig of a PEFT adapter_config.json, then every module's rank and α (rank_pattern / alpha_pattern regexes)", SeedsLoraConfig, RunLoraConfig),
        new("tokenizer", "CLIPTokenizer.FromFiles (vocab.json + merges.txt) and an encode", SeedsTokenizer, RunTokenizer),
        new("pairs-jsonl", "PairDataset.Load of a folder with pairs.jsonl and two images", s => SeedsPairs(s, "jsonl"), (d, s) => RunPairs(d, s, "pairs.jsonl")),
        new("pairs-csv", "PairDataset.Load of a folder with pairs.csv and two images", s => SeedsPairs(s, "csv"), (d, s) => RunPairs(d, s, "pairs.csv")),
        new("prompts", "PromptSets.Read of the same bytes as .txt, .json, .jsonl and .csv", SeedsPrompts, RunPrompts),
    ];

    public static FuzzTarget Get(string name) =>
        All.FirstOrDefault(t => t.Name == name)
        ?? throw new ArgumentException($"unknown fuzz target '{name}' (targets: {string.Join(", ", All.Select(t => t.Name))})");

    // ---- runs

    private static string Write(string scratch, string name, byte[] data)
    {
        var p = Path.Combine(scratch, name);
        File.WriteAllBytes(p, data);
        return p;
    }

    private static void RunSafetensors(byte[] data, string scratch)
    {
        var tensors = safetensors.load_file(Write(scratch, "x.safetensors", data), mmap: false);
        foreach (var t in tensors.Values) t.Dispose();
    }

    private static void RunIndex(byte[] data, string scratch)
    {
        // One small shard the index may point at, under the name a real index uses.
        using (torch.NewDisposeScope())
            safetensors.save_file(new Dictionary<string, Tensor> { ["a.weight"] = torch.ones(2, 3), ["b.bias"] = torch.zeros(4) },
                Path.Combine(scratch, "model-00001-of-00001.safetensors"));
        var tensors = safetensors.load_sharded(Write(scratch, "model.safetensors.index.json", data), mmap: false);
        foreach (var t in tensors.Values) t.Dispose();
    }

    private static void RunPickle(byte[] data, string scratch)
    {
        var tensors = TorchPickle.LoadStateDict(Write(scratch, "x.pt", data));
        foreach (var t in tensors.Values) t.Dispose();
    }

    private static void RunTable(byte[] data, string scratch, string name)
    {
        using var shard = TableShard.Open(Write(scratch, name, data));
        for (var b = 0; b < shard.BlockCount; b++)
        {
            using var block = shard.OpenBlock(b);
            foreach (var (col, (kind, _)) in shard.Columns)
                _ = kind switch
                {
                    ColumnKind.Float64 => block.ReadFloat64(col).Length,
                    ColumnKind.Int64 => block.ReadInt64(col).Length,
                    ColumnKind.String => block.ReadString(col).Length,
                    ColumnKind.Binary => block.ReadBinary(col).Length,
                    _ => 0,
                };
        }
    }

    private static void RunConfig(byte[] data, string scratch)
    {
        var p = Write(scratch, "config.json", data);
        // Each reader on the same bytes; the first rejection ends the input (the others would see the same text).
        UNet2DConditionConfig.FromFile(p);
        AutoencoderKLConfig.FromFile(p);
        CLIPTextConfig.FromFile(p);
        CLIPConfig.FromFile(p);
        SchedulerConfig.FromFile(p);
        PipelineComponents.ReadModelIndex(p);
    }

    private static readonly string[] LoraModules =
    [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0",
        "mid_block.attentions.0.proj_in", "text_model.encoder.layers.11.self_attn.k_proj", "down_blocks.0.resnets.0.conv1",
    ];

    private static void RunLoraConfig(byte[] data, string scratch)
    {
        Write(scratch, "adapter_config.json", data);
        var c = Lora.ReadConfig(scratch);
        foreach (var m in LoraModules)
        {
            var (r, alpha) = (c.RankFor(m), c.AlphaFor(m));
            if (r < 1) throw new InvalidOperationException($"rank {r} < 1 accepted for {m}");
            _ = alpha;
        }
    }

    private static void RunTokenizer(byte[] data, string scratch)
    {
        var cut = data.AsSpan().IndexOf(TokenizerSeparator);
        var vocab = cut < 0 ? data : data[..cut];
        var merges = cut < 0 ? [] : data[(cut + TokenizerSeparator.Length)..];
        var tok = CLIPTokenizer.FromFiles(Write(scratch, "vocab.json", vocab), Write(scratch, "merges.txt", merges));
        tok.EncodeFixed("a photo of an astronaut riding a horse, 4k!");
    }

    private static void RunPairs(byte[] data, string scratch, string file)
    {
        File.WriteAllBytes(Path.Combine(scratch, "a.png"), [1]);
        File.WriteAllBytes(Path.Combine(scratch, "b.png"), [2]);
        Write(scratch, file, data);
        var ds = PairDataset.Load(scratch);
        _ = ds.Counts.ToString();
    }

    /// <summary>The same bytes as each prompt-file form; rejected when every structured form (.json, .jsonl, .csv)
    /// rejects them (plain text takes almost anything).</summary>
    private static void RunPrompts(byte[] data, string scratch)
    {
        Exception? last = null;
        var accepted = false;
        foreach (var ext in new[] { "txt", "json", "jsonl", "csv" })
        {
            try
            {
                PromptSets.Read(Write(scratch, $"prompts.{ext}", data));
                accepted |= ext != "txt";
            }
            catch (Exception e) when (IsCleanRejection(e))
            {
                last = e;
            }
        }
        if (!accepted && last is not null) throw last;
    }

    // ---- seeds (read from the shared folder: golden files written by the reference Python code, fixtures written by
    // independent writers)

    private static IEnumerable<byte[]> Files(string root, string pattern, long maxBytes = 1 << 20) =>
        Directory.Exists(root)
            ? Directory.EnumerateFiles(root, pattern, SearchOption.AllDirectories).Order(StringComparer.Ordinal)
                .Where(f => new FileInfo(f).Length <= maxBytes).Select(File.ReadAllBytes)
            : [];

    private static IEnumerable<byte[]> SeedsSafetensors(string shared) => Files(Path.Combine(shared, "golden"), "*.safetensors", 256 << 10);

    private static IEnumerable<byte[]> SeedsIndex(string shared)
    {
        var real = Files(Path.Combine(shared, "golden"), "*.safetensors.index.json").ToList();
        // The shape every index has, over the shard this target writes.
        real.Add(Encoding.UTF8.GetBytes("""{"metadata": {"total_size": 40}, "weight_map": {"a.weight": "model-00001-of-00001.safetensors", "b.bias": "model-00001-of-00001.safetensors"}}"""));
        return real;
    }

    private static IEnumerable<byte[]> SeedsPickle(string shared) =>
        Files(Path.Combine(shared, "golden", "pickle"), "*.pt", 256 << 10).Concat(Files(Path.Combine(shared, "golden", "pickle"), "*.pkl"));

    private static IEnumerable<byte[]> SeedsParquet(string shared) =>
        Files(Path.Combine(shared, "fixtures", "pickapic", "bad"), "*.parquet", 64 << 10).Concat(Files(Path.Combine(shared, "fixtures", "pickapic", "plain_parquet"), "*.parquet", 64 << 10));

    private static IEnumerable<byte[]> SeedsArrow(string shared) => Files(Path.Combine(shared, "fixtures", "pickapic", "save_to_disk"), "*.arrow", 64 << 10);

    private static IEnumerable<byte[]> SeedsPng(string shared) => Files(Path.Combine(shared, "golden"), "*.png", 64 << 10);

    /// <summary>The JPEG images stored in the Pick-a-Pic fixture shards (written by PIL through the fixture writers).</summary>
    private static IEnumerable<byte[]> SeedsJpeg(string shared)
    {
        var dir = Path.Combine(shared, "fixtures", "pickapic", "plain_parquet");
        if (!Directory.Exists(dir)) yield break;
        foreach (var f in Directory.EnumerateFiles(dir, "*.parquet", SearchOption.AllDirectories).Order(StringComparer.Ordinal).Take(1))
        {
            using var shard = TableShard.Open(f);
            if (!shard.Columns.ContainsKey("jpg_0")) continue;
            foreach (var img in shard.ReadBinary(0, "jpg_0").Take(4))
                if (img is not null) yield return img;
        }
    }

    /// <summary>adapter_config.json as PEFT writes it (its LoraConfig.to_dict keys), and as Sudo writes it with per-module
    /// ranks and α (the form a converted kohya file takes), one with regex pattern keys.</summary>
    private static IEnumerable<byte[]> SeedsLoraConfig(string shared)
    {
        yield return Encoding.UTF8.GetBytes("""
            {"base_model_name_or_path": null, "bias": "none", "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
             "layers_pattern": null, "layers_to_transform": null, "lora_alpha": 8, "lora_dropout": 0.0, "modules_to_save": null,
             "peft_type": "LORA", "r": 8, "rank_pattern": {}, "alpha_pattern": {}, "revision": null,
             "target_modules": ["to_k", "to_q", "to_v", "to_out.0"], "task_type": null, "use_dora": false, "use_rslora": false}
            """);
        yield return Encoding.UTF8.GetBytes(LoraConfig.ForModules([(LoraModules[0], 4, 4.0), (LoraModules[1], 4, 1.0), (LoraModules[2], 8, 4.0), (LoraModules[3], 2, 2.0)])
            .ToJson().ToJsonString());
        yield return Encoding.UTF8.GetBytes(new LoraConfig(4, 4, ["to_q", "proj_in"], rank_pattern: new Dictionary<string, int> { [@"up_blocks\.\d+\..*to_out\.0"] = 2, ["attn1.to_q"] = 16 },
            alpha_pattern: new Dictionary<string, double> { ["mid_block.*"] = 1.5 }).ToJson().ToJsonString());
    }

    private static IEnumerable<byte[]> SeedsConfig(string shared) =>
        Files(Path.Combine(shared, "golden"), "config.json").Concat(Files(Path.Combine(shared, "golden"), "scheduler_config.json"))
            .Concat(Files(Path.Combine(shared, "golden"), "model_index.json")).Concat(Files(Path.Combine(shared, "golden", "keys"), "*_config.json"));

    /// <summary>The CLIP tokenizer's files cut to their first 400 merges and the vocabulary those need (the byte-level
    /// alphabet, its end-of-word forms, the merged tokens and the two special tokens), joined with the separator.</summary>
    private static IEnumerable<byte[]> SeedsTokenizer(string shared)
    {
        var dir = Path.Combine(shared, "clip_tokenizer");
        if (!File.Exists(Path.Combine(dir, "merges.txt"))) yield break;
        var merges = File.ReadLines(Path.Combine(dir, "merges.txt")).Take(401).ToList();
        var vocab = System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(Path.Combine(dir, "vocab.json")))!;
        var keep = vocab.Where(kv => kv.Value < 512 || kv.Value >= vocab.Count - 2).Select(kv => kv.Key).ToList();
        keep.AddRange(merges.Skip(1).Select(m => m.Replace(" ", "")));
        var small = keep.Distinct().Select((k, i) => (k, i)).ToDictionary(x => x.k, x => x.i);
        var bytes = Encoding.UTF8.GetBytes(System.Text.Json.JsonSerializer.Serialize(small));
        yield return [.. bytes, .. TokenizerSeparator, .. Encoding.UTF8.GetBytes(string.Join("\n", merges) + "\n")];
    }

    private static IEnumerable<byte[]> SeedsPairs(string shared, string format)
    {
        // The record shapes PairDataset reads, naming the two images the target writes.
        if (format == "jsonl")
        {
            yield return """
                {"caption": "a red circle", "winner": "a.png", "loser": "b.png"}
                {"caption": "two squares", "image_0": "b.png", "image_1": "a.png", "label_0": 0.5}
                {"caption": "a \"quoted\" prompt", "image_0": "a.png", "image_1": "b.png", "label_0": 0}
                """u8.ToArray();
            foreach (var f in Files(Path.Combine(shared, "fixtures"), "*.jsonl", 16 << 10).Take(2)) yield return f;
        }
        else
        {
            yield return "caption,winner,loser\na red circle,a.png,b.png\n\"a, quoted \"\"prompt\"\"\",b.png,a.png\n"u8.ToArray();
            yield return "caption,image_0,image_1,label_0\ntwo squares,a.png,b.png,1\nties,a.png,b.png,0.5\n"u8.ToArray();
        }
    }

    private static IEnumerable<byte[]> SeedsPrompts(string shared)
    {
        var dir = Path.Combine(shared, "prompts");
        if (!Directory.Exists(dir)) yield break;
        foreach (var f in Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
                     .Where(f => f.EndsWith(".txt") || f.EndsWith(".json") || f.EndsWith(".jsonl") || f.EndsWith(".csv")))
        {
            var b = File.ReadAllBytes(f);
            yield return b.Length <= 8192 ? b : b[..8192];
        }
    }
}
