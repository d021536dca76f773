using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Sudo.Torch;

namespace Sudo.Models;

public sealed partial class CLIPTokenizer
{
    /// <summary>Learns a byte-level BPE vocabulary in CLIP's layout from a corpus: the same clean-up and
    /// pre-tokenisation as <see cref="Encode"/>, words ending in &lt;/w&gt;, then greedy merges of the most frequent
    /// adjacent pair (ties broken by ordinal order, so training is deterministic) until <paramref name="num_merges"/>
    /// or no pair occurs <paramref name="min_frequency"/> times. The vocabulary is CLIP's: the 256 byte symbols,
    /// the same with &lt;/w&gt;, one entry per merge, then &lt;|startoftext|&gt; and &lt;|endoftext|&gt; as the last
    /// two ids (so the text encoder's pooling rule — the highest id is the end token — holds).</summary>
    public static CLIPTokenizer train(IEnumerable<string> texts, int num_merges, int min_frequency = 2, int model_max_length = 77)
    {
        if (num_merges < 0) throw new ArgumentOutOfRangeException(nameof(num_merges), "num_merges must be ≥ 0");
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var text in texts)
        {
            var clean = TextFix.WhitespaceClean(TextFix.FixText(text)).ToLowerInvariant();
            foreach (Match m in Pattern().Matches(clean))
            {
                if (m.Value is BosToken or EosToken) continue;
                var sb = new StringBuilder();
                foreach (var b in Encoding.UTF8.GetBytes(m.Value)) sb.Append(ByteEncoder[b]);
                var w = sb.ToString();
                counts[w] = counts.GetValueOrDefault(w) + 1;
            }
        }
        // Each distinct word as its symbol sequence (the last symbol carries </w>), with its frequency.
        var words = counts.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv =>
        {
            var syms = kv.Key.Select(c => c.ToString()).ToList();
            syms[^1] += "</w>";
            return (syms, n: kv.Value);
        }).ToList();
        var known = new HashSet<string>(ByteSymbolOrder, StringComparer.Ordinal);
        foreach (var s in ByteSymbolOrder) known.Add(s + "</w>");
        var merges = new List<(string, string)>();
        while (merges.Count < num_merges)
        {
            var pairs = new Dictionary<(string, string), int>();
            foreach (var (syms, n) in words)
                for (var i = 0; i + 1 < syms.Count; i++)
                {
                    var p = (syms[i], syms[i + 1]);
                    pairs[p] = pairs.GetValueOrDefault(p) + n;
                }
            (string a, string b)? best = null;
            var bestN = min_frequency - 1;
            foreach (var (p, n) in pairs)
            {
                if (known.Contains(p.Item1 + p.Item2)) continue;   // that token exists already (a different split)
                if (n > bestN || (n == bestN && best is { } cur && Compare(p, cur) < 0))
                    (best, bestN) = (p, n);
            }
            if (best is not { } pick) break;
            merges.Add(pick);
            var merged = pick.a + pick.b;
            known.Add(merged);
            foreach (var (syms, _) in words)
                for (var i = 0; i + 1 < syms.Count; i++)
                    if (syms[i] == pick.a && syms[i + 1] == pick.b)
                    {
                        syms[i] = merged;
                        syms.RemoveAt(i + 1);
                    }
        }
        var vocabList = new List<string>(ByteSymbolOrder);
        vocabList.AddRange(ByteSymbolOrder.Select(b => b + "</w>"));
        vocabList.AddRange(merges.Select(m => m.Item1 + m.Item2));
        vocabList.Add(BosToken);
        vocabList.Add(EosToken);
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        for (var i = 0; i < vocabList.Count; i++) vocab.Add(vocabList[i], i);
        return new CLIPTokenizer(vocab, merges) { model_max_length = model_max_length };
    }

    private static int Compare((string, string) x, (string, string) y)
    {
        var c = string.CompareOrdinal(x.Item1, y.Item1);
        return c != 0 ? c : string.CompareOrdinal(x.Item2, y.Item2);
    }

    /// <summary>The merges in rank order.</summary>
    public IReadOnlyList<(string, string)> merges => _ranks.OrderBy(kv => kv.Value).Select(kv => kv.Key).ToList();

    /// <summary>Writes vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json as
    /// transformers' CLIPTokenizer.save_pretrained does (each file written to a temporary name, then renamed).</summary>
    public void save_pretrained(string folder)
    {
        Directory.CreateDirectory(folder);
        var vocab = new JsonObject();
        for (var i = 0; i < _decoder.Length; i++)
            if (_decoder[i] is { } tok) vocab[tok] = i;
        var mergeText = new StringBuilder("#version: 0.2\n");
        foreach (var (a, b) in merges) mergeText.Append(a).Append(' ').Append(b).Append('\n');
        var special = new JsonObject
        {
            ["bos_token"] = BosToken,
            ["eos_token"] = EosToken,
            ["unk_token"] = EosToken,
            ["pad_token"] = pad_token,
        };
        var config = new JsonObject
        {
            ["tokenizer_class"] = "CLIPTokenizer",
            ["model_max_length"] = model_max_length,
            ["do_lower_case"] = true,
            ["bos_token"] = BosToken,
            ["eos_token"] = EosToken,
            ["unk_token"] = EosToken,
            ["pad_token"] = pad_token,
            ["errors"] = "replace",
        };
        var opts = new System.Text.Json.JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        AtomicFile.WriteAllText(Path.Combine(folder, "vocab.json"), vocab.ToJsonString(opts));
        AtomicFile.WriteAllText(Path.Combine(folder, "merges.txt"), mergeText.ToString());
        AtomicFile.WriteAllText(Path.Combine(folder, "special_tokens_map.json"), special.ToJsonString(opts));
        AtomicFile.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString(opts));
    }
}
