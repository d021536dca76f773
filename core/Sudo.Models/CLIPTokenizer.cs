// transformers.CLIPTokenizer (the slow tokenizer SD1.5/SDXL pipelines load; transformers 4.38) and
// openai/CLIP's simple_tokenizer: text fixing, CLIP's pre-tokenisation regex, byte-level BPE with </w> (the merging
// is Microsoft.ML.Tokenizers' BpeTokenizer; the normaliser and pre-tokeniser are ours).
using System.IO.Compression;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>Token ids and attention mask of a batch, [B, max_length] int64.</summary>
public sealed record TokenizerOutput(Tensor input_ids, Tensor attention_mask);

public sealed partial class CLIPTokenizer
{
    public const string BosToken = "<|startoftext|>";
    public const string EosToken = "<|endoftext|>";

    private readonly Dictionary<string, int> _encoder;
    private readonly string[] _decoder;
    private readonly Dictionary<(string, string), int> _ranks;
    private readonly string[] _specialTokens;
    private static readonly string[] ByteEncoder = BuildByteEncoder(out ByteSymbolOrder);
    // bytes_to_unicode().values() in dict order: the printable bytes first, then the remapped ones.
    private static readonly string[] ByteSymbolOrder;

    public int bos_token_id { get; }
    public int eos_token_id { get; }
    public int pad_token_id { get; }
    public string pad_token { get; }
    public int model_max_length { get; init; } = 77;
    public int vocab_size => _decoder.Length;

    /// <summary>When false, the path transformers takes without ftfy (BasicTokenizer clean-up).</summary>
    public bool fix_text { get; init; } = true;

    /// <summary>open_clip's SimpleTokenizer (open_clip/tokenizer.py, vendored by HPSv2): text = whitespace_clean(
    /// html.unescape(html.unescape(ftfy.fix_text(text))).strip()).lower(); the literal strings &lt;start_of_text&gt; /
    /// &lt;end_of_text&gt; are the bos / eos ids (found after clean-up, so in any case) while &lt;|endoftext|&gt; is ordinary
    /// text; padded with 0. Same vocabulary and merges as the HF CLIP tokenizer.</summary>
    public bool open_clip { get; private init; }

    public CLIPTokenizer(Dictionary<string, int> vocab, IReadOnlyList<(string, string)> merges, string? pad_token = null)
    {
        _encoder = vocab;
        _decoder = new string[vocab.Values.Max() + 1];
        foreach (var (k, v) in vocab) _decoder[v] = k;
        _ranks = new Dictionary<(string, string), int>(merges.Count);
        for (var i = 0; i < merges.Count; i++) _ranks.TryAdd(merges[i], i);
        bos_token_id = Id(BosToken);
        eos_token_id = Id(EosToken);
        this.pad_token = pad_token ?? EosToken;
        pad_token_id = Id(this.pad_token);
        // Special (added) tokens are split off the raw text before any clean-up, longest first.
        _specialTokens = new[] { BosToken, EosToken, this.pad_token }.Distinct().OrderByDescending(s => s.Length).ToArray();
    }

    private int Id(string token) =>
        _encoder.TryGetValue(token, out var id) ? id : throw new InvalidDataException($"CLIP vocabulary has no '{token}' token");

    /// <summary>Reads a tokenizer folder as CLIPTokenizer.save_pretrained writes it (vocab.json, merges.txt,
    /// special_tokens_map.json / tokenizer_config.json for the pad token).</summary>
    public static CLIPTokenizer from_pretrained(string path, string? cache_dir = null)
    {
        var folder = Hub.Resolve(path, cache_dir);
        var vocabPath = Path.Combine(folder, "vocab.json");
        var mergesPath = Path.Combine(folder, "merges.txt");
        if (!File.Exists(vocabPath) || !File.Exists(mergesPath))
            throw new FileNotFoundException($"{folder}: a CLIP tokenizer folder needs vocab.json and merges.txt");
        string? pad = null;
        var maxLen = 77;
        foreach (var f in new[] { "special_tokens_map.json", "tokenizer_config.json" })
        {
            var p = Path.Combine(folder, f);
            if (!File.Exists(p)) continue;
            var o = JsonInput.ReadObject(p);
            static string? Str(JsonNode? n) => n is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
            var padNode = o["pad_token"];
            pad ??= padNode is JsonObject po ? Str(po["content"]) : Str(padNode);
            if (o["model_max_length"] is JsonValue ml && ml.TryGetValue<long>(out var m) && m < 100_000) maxLen = (int)m;
        }
        return FromFiles(vocabPath, mergesPath, pad, maxLen);
    }

    /// <summary>A copy that pads with <paramref name="token"/> (SDXL's tokenizer_2 pads with "!", id 0).</summary>
    public CLIPTokenizer WithPadToken(string token) => new(_encoder, _ranks.OrderBy(kv => kv.Value).Select(kv => kv.Key).ToList(), token)
    {
        model_max_length = model_max_length,
        fix_text = fix_text,
    };

    /// <summary>open_clip's tokenize() over the same vocabulary (see <see cref="open_clip"/>).</summary>
    public CLIPTokenizer OpenClip() => new(_encoder, _ranks.OrderBy(kv => kv.Value).Select(kv => kv.Key).ToList(), "!")
    {
        model_max_length = 77,
        open_clip = true,
    };

    public CLIPTokenizer WithoutTextFix() => new(_encoder, _ranks.OrderBy(kv => kv.Value).Select(kv => kv.Key).ToList(), pad_token)
    {
        model_max_length = model_max_length,
        fix_text = false,
    };

    /// <summary>Token ids are dense from 0 (CLIP has 49408): a larger id in a vocabulary file is corrupt, and would
    /// size the id → token table.</summary>
    public const int MaxVocabId = 1 << 24;

    public static CLIPTokenizer FromFiles(string vocabJson, string mergesTxt, string? pad_token = null, int model_max_length = 77)
    {
        var vocab = new Dictionary<string, int>();
        foreach (var (token, id) in JsonInput.ReadObject(vocabJson))
            vocab[token] = id is JsonValue v && v.TryGetValue<int>(out var i) && i >= 0 && i < MaxVocabId
                ? i : throw new InvalidDataException($"{vocabJson}: the id of token '{token}' must be an integer in [0, {MaxVocabId}), got {id?.ToJsonString() ?? "null"}");
        if (vocab.Count == 0) throw new InvalidDataException($"{vocabJson}: empty vocabulary");
        var lines = File.ReadAllText(mergesTxt).Trim().Split('\n');
        // transformers: merges = lines[1 : 49152 - 256 - 2 + 1] (the first line is "#version: 0.2").
        var merges = new List<(string, string)>();
        foreach (var line in lines.Skip(lines.Length > 0 && lines[0].StartsWith("#version", StringComparison.Ordinal) ? 1 : 0).Take(49152 - 256 - 2))
        {
            var parts = line.TrimEnd('\r').Split(' ');
            if (parts.Length != 2) throw new InvalidDataException($"{mergesTxt}: bad merge line '{line}'");
            merges.Add((parts[0], parts[1]));
        }
        var tok = new CLIPTokenizer(vocab, merges, pad_token) { model_max_length = model_max_length };
        try
        {
            _ = tok.Bpe;   // built lazily otherwise: a merge of tokens the vocabulary lacks would surface at the first encode
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException)
        {
            throw new InvalidDataException($"{vocabJson} / {mergesTxt}: not a consistent BPE vocabulary and merge list: {e.Message}", e);
        }
        return tok;
    }

    /// <summary>openai/CLIP's bpe_simple_vocab_16e6.txt.gz: the vocabulary is the 256 byte symbols, the
    /// same with &lt;/w&gt;, the merged pairs, then the start and end tokens.</summary>
    public static CLIPTokenizer FromOpenAIVocab(string gzPath, string? pad_token = null)
    {
        using var gz = new GZipStream(File.OpenRead(gzPath), CompressionMode.Decompress);
        using var reader = new StreamReader(gz, Encoding.UTF8);
        var lines = reader.ReadToEnd().Split('\n');
        var merges = lines.Skip(1).Take(49152 - 256 - 2).Select(l =>
        {
            var p = l.Split(' ');
            return (p[0], p[1]);
        }).ToList();
        var words = new List<string>(ByteSymbolOrder);
        words.AddRange(ByteSymbolOrder.Select(b => b + "</w>"));
        words.AddRange(merges.Select(m => m.Item1 + m.Item2));
        words.Add(BosToken);
        words.Add(EosToken);
        var vocab = new Dictionary<string, int>();
        for (var i = 0; i < words.Count; i++) vocab[words[i]] = i;
        return new CLIPTokenizer(vocab, merges, pad_token);
    }

    /// <summary>GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards.</summary>
    private static string[] BuildByteEncoder(out string[] order)
    {
        var bs = new List<int>();
        for (var b = '!'; b <= '~'; b++) bs.Add(b);
        for (var b = '¡'; b <= '¬'; b++) bs.Add(b);
        for (var b = '®'; b <= 'ÿ'; b++) bs.Add(b);
        var cs = new List<int>(bs);
        var n = 0;
        for (var b = 0; b < 256; b++)
        {
            if (bs.Contains(b)) continue;
            bs.Add(b);
            cs.Add(256 + n++);
        }
        var table = new string[256];
        for (var i = 0; i < bs.Count; i++) table[bs[i]] = ((char)cs[i]).ToString();
        order = cs.Select(c => ((char)c).ToString()).ToArray();
        return table;
    }

    [GeneratedRegex(@"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", RegexOptions.IgnoreCase)]
    private static partial Regex Pattern();

    /// <summary>Token ids without bos/eos, truncation or padding (tokenizer(text).input_ids[1:-1]). Special tokens
    /// (bos, eos, the pad token) are split off the raw text, the rest is cleaned (ftfy-style fix and whitespace
    /// clean-up, lower case — or transformers' basic clean-up without ftfy), split by CLIP's pattern, byte-encoded and
    /// merged by Microsoft.ML.Tokenizers' BPE with the "&lt;/w&gt;" end-of-word suffix; unknown pieces become eos.
    /// Checked against every golden tokenizer case (transformers' CLIPTokenizer, with and without ftfy).</summary>
    public List<int> Encode(string text) => Bpe.EncodeToIds(text).ToList();

    private BpeTokenizer? _bpe;

    private static readonly string[] OpenClipSpecials = ["<start_of_text>", "<end_of_text>"];

    private Dictionary<string, int> SpecialIds => open_clip
        ? new() { [OpenClipSpecials[0]] = bos_token_id, [OpenClipSpecials[1]] = eos_token_id }
        : _specialTokens.ToDictionary(t => t, t => _encoder[t]);

    [GeneratedRegex(@"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", RegexOptions.IgnoreCase)]
    private static partial Regex OpenClipPattern();

    private BpeTokenizer Bpe => _bpe ??= open_clip ? BpeTokenizer.Create(new BpeOptions(_encoder)
    {
        Merges = _ranks.OrderBy(kv => kv.Value).Select(kv => kv.Key.Item1 + " " + kv.Key.Item2),
        SpecialTokens = SpecialIds,
        Normalizer = new OpenClipNormalizer(),
        PreTokenizer = new RegexPreTokenizer(OpenClipPattern(), SpecialIds),
        ByteLevel = true,
        EndOfWordSuffix = "</w>",
        UnknownToken = EosToken,
    }) : BpeTokenizer.Create(new BpeOptions(_encoder)
    {
        Merges = _ranks.OrderBy(kv => kv.Value).Select(kv => kv.Key.Item1 + " " + kv.Key.Item2),
        SpecialTokens = _specialTokens.ToDictionary(t => t, t => _encoder[t]),
        Normalizer = new ClipNormalizer(fix_text),
        PreTokenizer = new RegexPreTokenizer(Pattern(), _specialTokens.ToDictionary(t => t, t => _encoder[t])),
        ByteLevel = true,
        EndOfWordSuffix = "</w>",
        UnknownToken = EosToken,
    });

    /// <summary>CLIP's text clean-up before BPE: ftfy-style fix, whitespace clean-up and lower case (or, without
    /// ftfy, transformers' BasicTokenizer clean-up).</summary>
    private sealed class ClipNormalizer(bool fixText) : Normalizer
    {
        public override string Normalize(string text) => fixText ? TextFix.WhitespaceClean(TextFix.FixText(text)).ToLowerInvariant() : TextFix.BasicClean(text);
        public override string Normalize(ReadOnlySpan<char> text) => Normalize(text.ToString());
    }

    /// <summary>open_clip's basic_clean + whitespace_clean + lower.</summary>
    private sealed class OpenClipNormalizer : Normalizer
    {
        public override string Normalize(string text) =>
            TextFix.WhitespaceClean(System.Net.WebUtility.HtmlDecode(System.Net.WebUtility.HtmlDecode(TextFix.FixText(text))).Trim()).ToLowerInvariant();
        public override string Normalize(ReadOnlySpan<char> text) => Normalize(text.ToString());
    }

    /// <summary>[bos] + ids (truncated so that eos stays last) + [eos], padded to max_length with the pad id.</summary>
    public (int[] ids, int[] mask) EncodeFixed(string text, int? max_length = null, bool padding = true, bool truncation = true)
    {
        var max = max_length ?? model_max_length;
        var body = Encode(text);
        if (truncation && body.Count > max - 2) body = body.GetRange(0, max - 2);
        var ids = new List<int>(max) { bos_token_id };
        ids.AddRange(body);
        ids.Add(eos_token_id);
        var mask = Enumerable.Repeat(1, ids.Count).ToList();
        if (padding)
            while (ids.Count < max)
            {
                ids.Add(pad_token_id);
                mask.Add(0);
            }
        return (ids.ToArray(), mask.ToArray());
    }

    /// <summary>tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").</summary>
    public TokenizerOutput call(IReadOnlyList<string> prompts, int? max_length = null, Device? device = null)
    {
        var max = max_length ?? model_max_length;
        var ids = new long[prompts.Count * max];
        var mask = new long[prompts.Count * max];
        for (var b = 0; b < prompts.Count; b++)
        {
            var (i, m) = EncodeFixed(prompts[b], max);
            for (var k = 0; k < max; k++)
            {
                ids[b * max + k] = i[k];
                mask[b * max + k] = m[k];
            }
        }
        return new TokenizerOutput(tensor(ids, [prompts.Count, max], device: device), tensor(mask, [prompts.Count, max], device: device));
    }

    /// <summary>The text of ids (byte-level decoding; &lt;/w&gt; becomes a space; special tokens skipped).</summary>
    public string Decode(IEnumerable<int> ids, bool skip_special_tokens = true)
    {
        var decoderBytes = new Dictionary<char, byte>();
        for (var b = 0; b < 256; b++) decoderBytes[ByteEncoder[b][0]] = (byte)b;
        var bytes = new List<byte>();
        var sb = new StringBuilder();
        foreach (var id in ids)
        {
            if (skip_special_tokens && (id == bos_token_id || id == eos_token_id || id == pad_token_id)) continue;
            if (id < 0 || id >= _decoder.Length || _decoder[id] is null) continue;
            var tok = _decoder[id];
            var end = tok.EndsWith("</w>", StringComparison.Ordinal);
            foreach (var c in end ? tok[..^4] : tok)
                if (decoderBytes.TryGetValue(c, out var bt)) bytes.Add(bt);
            if (end)
            {
                sb.Append(Encoding.UTF8.GetString(bytes.ToArray())).Append(' ');
                bytes.Clear();
            }
        }
        sb.Append(Encoding.UTF8.GetString(bytes.ToArray()));
        return sb.ToString().Trim();
    }
}
