// Prompt sets through one reader, by content and extension:
//  * .json  — a list of strings (HPDv2 benchmark_<style>.json), or of objects with a "caption" or "prompt" field
//             (SPO's 4k_training_prompts.json: {"caption", "trainset_idx"});
//  * .jsonl — one object per line with "prompt" or "caption" (GenEval's evaluation_metadata.jsonl);
//  * .tsv / .csv — a header row; the column Prompt / Prompts / prompt / caption (PartiPrompts.tsv,
//             DrawBench Prompts.csv), split as Python's csv module does with its default dialect (Modules/_csv.c:
//             a field that starts with a quote is quoted — separators, newlines and doubled quotes inside — and text
//             after its closing quote is appended, strict=False), which is how these files are read upstream;
//  * .parquet / .arrow, or a dataset name (hub id in the caches, a folder) — the caption column of a split
//             (Pick-a-Pic's validation_unique / test_unique);
//  * anything else — plain text, one prompt per line (empty lines skipped).
// Every prompt is normalised as ../shared/prompts does: each run of CR/LF becomes one space, then leading and trailing
// whitespace is stripped (CLIP's tokenizer collapses whitespace anyway). Order is kept; nothing is de-duplicated.
using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Sudo.Torch;

namespace Sudo.Data;

public static partial class PromptSets
{
    static readonly string[] PromptColumns = ["Prompt", "Prompts", "prompt", "prompts", "caption", "text"];

    [GeneratedRegex("[\r\n]+")] private static partial Regex LineBreaks();

    public static string Normalize(string prompt) => LineBreaks().Replace(prompt, " ").Trim();

    /// <summary>The prompts of a file, folder or dataset (see the header). <paramref name="column"/> overrides the
    /// column/field; <paramref name="split"/> and <paramref name="cacheDir"/> apply to datasets.</summary>
    public static List<string> Read(string path, string? column = null, string split = "train", string? cacheDir = null)
    {
        if (Directory.Exists(path) || (!File.Exists(path) && path.Contains('/') && !path.StartsWith('.') && !path.StartsWith('/')))
            return FromDataset(DatasetResolver.Resolve(path, split, cacheDir), column);
        if (!File.Exists(path)) throw new FileNotFoundException($"prompt file '{path}' not found");
        var ext = Path.GetExtension(path).ToLowerInvariant();
        var raw = ext switch
        {
            ".json" => FromJson(path, column),
            ".jsonl" => File.ReadLines(path).Select((l, i) => (l, i)).Where(x => x.l.Trim().Length > 0)
                .Select(x => Field(JsonInput.Parse(x.l, $"{path}:{x.i + 1}") as JsonObject ?? throw new InvalidDataException($"{path}:{x.i + 1}: not a JSON object"), column, $"{path}:{x.i + 1}")).ToList(),
            ".tsv" or ".csv" => FromDelimited(path, ext == ".tsv" ? "\t" : ",", column),
            ".parquet" or ".arrow" => FromDataset(new ResolvedSplit("file", Path.GetDirectoryName(Path.GetFullPath(path))!, split, [Path.GetFullPath(path)], [split]), column),
            _ => File.ReadLines(path).ToList(),
        };
        var prompts = raw.Select(Normalize).Where(p => p.Length > 0).ToList();
        if (prompts.Count == 0) throw new InvalidDataException($"{path}: no prompts");
        return prompts;
    }

    private static string Field(JsonObject o, string? column, string where)
    {
        foreach (var name in column is null ? PromptColumns : [column])
            if (o[name] is JsonValue v && v.TryGetValue<string>(out var s)) return s;
        throw new InvalidDataException($"{where}: no prompt field ({(column is null ? string.Join(", ", PromptColumns) : column)}); fields: {string.Join(", ", o.Select(kv => kv.Key))}");
    }

    private static List<string> FromJson(string path, string? column)
    {
        var root = JsonInput.Parse(File.ReadAllBytes(path), path);
        var items = root as JsonArray
            ?? (root is JsonObject o && o.Select(kv => kv.Value).OfType<JsonArray>().FirstOrDefault() is { } inner && o.Count == 1 ? inner : null)
            ?? throw new InvalidDataException($"{path}: expected a JSON list of prompts (strings or objects with a caption/prompt field)");
        return items.Select((x, i) => x switch
        {
            JsonValue v when v.TryGetValue<string>(out var s) => s,
            JsonObject obj => Field(obj, column, $"{path}[{i}]"),
            _ => throw new InvalidDataException($"{path}[{i}]: not a string or an object"),
        }).ToList();
    }

    private static List<string> FromDelimited(string path, string delimiter, string? column)
    {
        var rows = Delimited.Split(File.ReadAllText(path), delimiter[0]);
        if (rows.Count == 0) throw new InvalidDataException($"{path}: no header row");
        var header = rows[0];
        var name = (column is null ? PromptColumns : [column]).FirstOrDefault(c => header.Contains(c))
            ?? throw new InvalidDataException($"{path}: no prompt column ({(column ?? string.Join(", ", PromptColumns))}); columns: {string.Join(", ", header)}");
        var col = header.IndexOf(name);
        var result = new List<string>();
        for (var i = 1; i < rows.Count; i++)
        {
            if (rows[i].Count == 0) continue;
            if (col >= rows[i].Count) throw new InvalidDataException($"{path}: record {i + 1} has {rows[i].Count} field(s); the prompt column '{name}' is field {col + 1}");
            result.Add(rows[i][col]);
        }
        return result;
    }

    private static List<string> FromDataset(ResolvedSplit split, string? column)
    {
        var col = column ?? "caption";
        var result = new List<string>();
        foreach (var f in split.Files)
        {
            using var s = TableShard.Open(f);
            for (var b = 0; b < s.BlockCount; b++)
                result.AddRange(s.ReadString(b, col).Select((c, i) => c ?? throw new InvalidDataException($"{s.Name}: '{col}' is null in row {i} of block {b}")));
        }
        return result.Select(Normalize).Where(p => p.Length > 0).ToList();
    }
}
