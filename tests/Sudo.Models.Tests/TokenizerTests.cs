using System.Text;
using NUnit.Framework;
using Sudo.Parity;
using Sudo.Torch.Tests;
namespace Sudo.Models.Tests;

public class TokenizerTests
{
    private static CLIPTokenizer Load(string folder) => CLIPTokenizer.from_pretrained(Shared.Require("clip_tokenizer", folder));

    [TestCase("sd15_tokenizer", "tokens_sd15.jsonl")]
    [TestCase("sdxl_tokenizer_2", "tokens_sdxl_te2.jsonl")]
    public void ReproducesEveryGoldenCase(string folder, string cases)
    {
        var tok = Load(folder);
        var results = TokenizerParity.Run(tok, Shared.Require("golden", "tokenizer", cases));
        TestContext.Out.WriteLine($"{results.Count} checks over {results.Select(r => r.Line).Distinct().Count()} prompts");
        Assert.That(results.Count, Is.GreaterThan(500));
        Assert.That(results.Where(r => !r.Passed).Select(r => $"line {r.Line} {r.Field} '{r.Prompt}'"), Is.Empty);
    }

    [Test]
    public void SdxlSecondTokenizerPadsWithExclamationMark()
    {
        var sd15 = Load("sd15_tokenizer");
        var te2 = Load("sdxl_tokenizer_2");
        Assert.That((sd15.pad_token_id, te2.pad_token_id), Is.EqualTo((49407, 0)));
        // '!' is tokenizer_2's special pad token: split off before BPE and encoded as id 0.
        Assert.That(te2.Encode("wow!!!"), Is.EqualTo(new[] { te2.Encode("wow")[0], 0, 0, 0 }));
        Assert.That(sd15.Encode("wow!!!").Count, Is.EqualTo(2));
        var o = te2.call(["a photo of a cat", ""]);
        Assert.That(o.input_ids.shape, Is.EqualTo(new long[] { 2, 77 }));
        Assert.That(o.input_ids[1].ToArray<long>()[..4], Is.EqualTo(new long[] { 49406, 49407, 0, 0 }));
        Assert.That(o.attention_mask[1].sum().item(), Is.EqualTo(2));
        var longText = string.Join(' ', Enumerable.Repeat("cat", 100));
        var (ids, mask) = sd15.EncodeFixed(longText);
        Assert.That(ids.Length, Is.EqualTo(77));
        Assert.That(ids[^1], Is.EqualTo(49407), "truncation keeps the end token last");
        Assert.That(mask.All(m => m == 1), Is.True);
        Assert.That(sd15.Decode(sd15.EncodeFixed("A Photo of a CAT, 4k!").ids), Is.EqualTo("a photo of a cat , 4 k !"));
    }

    [Test]
    public void OpenAIVocabularyFileGivesTheSameIds()
    {
        var hf = Load("sd15_tokenizer");
        var openai = CLIPTokenizer.FromOpenAIVocab(Shared.Require("clip_tokenizer", "bpe_simple_vocab_16e6.txt.gz"));
        Assert.That(openai.vocab_size, Is.EqualTo(hf.vocab_size));
        Assert.That((openai.bos_token_id, openai.eos_token_id), Is.EqualTo((49406, 49407)));
        foreach (var line in File.ReadLines(Shared.Require("golden", "tokenizer", "tokens_sd15.jsonl")))
        {
            var prompt = System.Text.Json.Nodes.JsonNode.Parse(line)!["prompt"]!.GetValue<string>();
            Assert.That(openai.Encode(prompt), Is.EqualTo(hf.Encode(prompt)), prompt);
        }
    }

    private static readonly char[] SloppyHigh =
    [
        '\u20AC', '\u0081', '\u201A', '\u0192', '\u201E', '\u2026', '\u2020', '\u2021', '\u02C6', '\u2030', '\u0160', '\u2039', '\u0152', '\u008D', '\u017D', '\u008F',
        '\u0090', '\u2018', '\u2019', '\u201C', '\u201D', '\u2022', '\u2013', '\u2014', '\u02DC', '\u2122', '\u0161', '\u203A', '\u0153', '\u009D', '\u017E', '\u0178',
    ];

    /// <summary>UTF-8 bytes read as (sloppy) Windows-1252: the classic mojibake.</summary>
    private static string Mojibake(string s) =>
        new(Encoding.UTF8.GetBytes(s).Select(b => b is >= 0x80 and <= 0x9F ? SloppyHigh[b - 0x80] : (char)b).ToArray());

    [Test]
    public void TextFixingUndoesGeneratedMojibakeAndHtmlEntities()
    {
        // Letters of several scripts, digits, spaces and emoji. (Windows-1252 punctuation right after an
        // accented letter can itself be valid UTF-8 — "é–€" is the bytes of 門 — which no heuristic,
        // ftfy's included, can tell from mojibake; it is checked separately below.)
        string[] alphabet = ["a", "b", "z", "Q", " ", "7", ",", "é", "è", "ñ", "ü", "ß", "ø", "å", "ç", "ô", "É", "Ø", "α", "ω", "д", "Ж", "猫", "東", "ア", "🐱", "👍"];
        var rng = new Random(1234);
        for (var n = 0; n < 500; n++)
        {
            var s = string.Concat(Enumerable.Range(0, rng.Next(1, 12)).Select(_ => alphabet[rng.Next(alphabet.Length)])).Normalize(NormalizationForm.FormC);
            Assert.That(TextFix.FixText(s), Is.EqualTo(s), $"legitimate text changed: '{s}'");
            var broken = Mojibake(s);
            Assert.That(TextFix.FixText(broken), Is.EqualTo(s), $"mojibake of '{s}' = '{broken}'");
        }
        Assert.That(TextFix.FixText("cafÃ©"), Is.EqualTo("café"));
        Assert.That(TextFix.FixText(Mojibake("it’s 5 € – done — ok")), Is.EqualTo("it's 5 € – done — ok"));
        Assert.That(TextFix.FixText("Straße — 20 €, naïve résumé ß—x"), Is.EqualTo("Straße — 20 €, naïve résumé ß—x"));
        Assert.That(TextFix.FixText("salt &amp; pepper &lt;3 &#39;n&#39; &#x263A;"), Is.EqualTo("salt & pepper <3 'n' \u263A"));
        Assert.That(TextFix.FixText("<b>bold</b> &amp;"), Is.EqualTo("<b>bold</b> &amp;"), "no unescaping in text with tags");
        Assert.That(TextFix.FixText("\u201Ccurly\u201D \u2018q\u2019"), Is.EqualTo("\"curly\" 'q'"));
        Assert.That(TextFix.FixText("\uFB01ne \uFF21\uFF22\uFF23\u3000\uFF11"), Is.EqualTo("fine ABC 1"));
        Assert.That(TextFix.FixText("a\r\nb\rc\u2028d"), Is.EqualTo("a\nb\nc\nd"));
        Assert.That(TextFix.FixText("x\u0000y\u007Fz\uFEFF"), Is.EqualTo("xyz"));
        Assert.That(TextFix.FixText("zero\u200Bwidth"), Is.EqualTo("zero\u200Bwidth"), "ftfy keeps zero-width spaces");
        Assert.That(TextFix.FixText("e\u0301"), Is.EqualTo("é"), "NFC");
    }

    [Test]
    public void BpeTrainingMatchesAHandWorkedCorpus()
    {
        // "aaa aaa ab": pairs (a,a)×2, (a,a</w>)×2, (a,b</w>)×1 → tie broken by ordinal order: merge "a a";
        // then (aa,a</w>)×2 → "aa a</w>"; (a,b</w>) occurs once < min_frequency 2 → stop.
        var tok = CLIPTokenizer.train(["aaa aaa ab"], num_merges: 10);
        Assert.That(tok.merges, Is.EqualTo(new[] { ("a", "a"), ("aa", "a</w>") }));
        Assert.That(tok.vocab_size, Is.EqualTo(512 + 2 + 2));
        Assert.That((tok.bos_token_id, tok.eos_token_id), Is.EqualTo((514, 515)), "start and end tokens are the last two ids");
        Assert.That(tok.Encode("aaa"), Is.EqualTo(new[] { 513 }), "\"aaa</w>\" is the second merge");
        Assert.That(tok.Decode(tok.Encode("ab aaa b")), Is.EqualTo("ab aaa b"));
    }

    [Test]
    public void TrainedTokenizerSavesLoadsAndRoundTrips()
    {
        string[] corpus = ["a small red circle on a white background", "two large blue squares on a black background",
            "a small green triangle left of a large red square on a gray background"];
        var tok = CLIPTokenizer.train(Enumerable.Repeat(corpus, 5).SelectMany(c => c), num_merges: 400);
        Assert.That(tok.Encode("circle"), Has.Count.EqualTo(1), "a frequent word becomes one token");
        Assert.That(tok.eos_token_id, Is.EqualTo(tok.vocab_size - 1));
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-tok-{Guid.NewGuid():N}");
        try
        {
            tok.save_pretrained(dir);
            var back = CLIPTokenizer.from_pretrained(dir);
            Assert.That(back.vocab_size, Is.EqualTo(tok.vocab_size));
            foreach (var text in corpus.Append("an unseen purple hexagon !"))
            {
                Assert.That(back.Encode(text), Is.EqualTo(tok.Encode(text)), text);
                // (CLIP decodes every word with a trailing space: "hexagon!" comes back as "hexagon !".)
                Assert.That(back.Decode(back.Encode(text)), Is.EqualTo(text), "byte fallback covers unseen words");
            }
            Assert.That(File.ReadAllLines(Path.Combine(dir, "merges.txt"))[0], Is.EqualTo("#version: 0.2"));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
