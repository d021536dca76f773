// The ftfy.fix_text steps (ftfy 6.1.1 defaults) that CLIPTokenizer applies before BPE: HTML entities,
// mojibake (UTF-8 read as Windows-1252 / Latin-1), C1 controls, Latin ligatures, full-width characters,
// curly quotes, line breaks, control characters, NFC. Written from ftfy's documented behaviour.
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.RegularExpressions;

namespace Sudo.Models;

public static partial class TextFix
{
    /// <summary>ftfy.fix_text with its default configuration, applied until the text stops changing.</summary>
    public static string FixText(string text)
    {
        for (var i = 0; i < 4; i++)
        {
            var fixedText = FixOnce(text);
            if (fixedText == text) return fixedText;
            text = fixedText;
        }
        return text;
    }

    private static string FixOnce(string text)
    {
        // unescape_html="auto": only when the text has no '<' (it may be real HTML otherwise).
        if (!text.Contains('<')) text = UnescapeHtml(text);
        text = RemoveTerminalEscapes(text);
        text = FixEncoding(text);
        text = FixLatinLigatures(text);
        text = FixCharacterWidth(text);
        text = UncurlQuotes(text);
        text = FixLineBreaks(text);
        text = RemoveControlChars(text);
        return text.Normalize(NormalizationForm.FormC);
    }

    [GeneratedRegex(@"&#?[0-9A-Za-z]{1,24};")]
    private static partial Regex HtmlEntity();

    public static string UnescapeHtml(string text) =>
        text.Contains('&') ? HtmlEntity().Replace(text, m => WebUtility.HtmlDecode(m.Value)) : text;

    [GeneratedRegex("\x1b\\[((?:\\d|;)*)([a-zA-Z])")]
    private static partial Regex TerminalEscape();

    public static string RemoveTerminalEscapes(string text) => text.Contains('\x1b') ? TerminalEscape().Replace(text, "") : text;

    // Windows-1252's 0x80–0x9F, with the five undefined bytes kept as their Latin-1 code points ("sloppy").
    private static readonly char[] Cp1252High =
    [
        '\u20AC', '\u0081', '\u201A', '\u0192', '\u201E', '\u2026', '\u2020', '\u2021', '\u02C6', '\u2030', '\u0160', '\u2039', '\u0152', '\u008D', '\u017D', '\u008F',
        '\u0090', '\u2018', '\u2019', '\u201C', '\u201D', '\u2022', '\u2013', '\u2014', '\u02DC', '\u2122', '\u0161', '\u203A', '\u0153', '\u009D', '\u017E', '\u0178',
    ];

    private static readonly Dictionary<char, byte> SloppyCp1252 = BuildCp1252();

    private static Dictionary<char, byte> BuildCp1252()
    {
        var d = new Dictionary<char, byte>();
        for (var b = 0; b < 256; b++) d[(char)b] = (byte)b;
        for (var i = 0; i < 32; i++) d[Cp1252High[i]] = (byte)(0x80 + i);
        return d;
    }

    /// <summary>Undoes UTF-8 that was decoded as (sloppy) Windows-1252 or Latin-1: each maximal run of
    /// characters that Windows-1252 can encode is re-encoded and, when those bytes are valid UTF-8 with at
    /// least one multi-byte character, replaced by the decoded text. Legitimate accented text does not
    /// survive this test (é followed by a letter is not valid UTF-8), so it is left alone.</summary>
    public static string FixEncoding(string text)
    {
        if (text.All(c => c < 0x80)) return text;
        var sb = new StringBuilder(text.Length);
        var i = 0;
        var strict = new UTF8Encoding(false, true);
        while (i < text.Length)
        {
            if (!SloppyCp1252.ContainsKey(text[i]))
            {
                sb.Append(text[i++]);
                continue;
            }
            var start = i;
            while (i < text.Length && SloppyCp1252.ContainsKey(text[i])) i++;
            var run = text.AsSpan(start, i - start);
            var bytes = new byte[run.Length];
            var high = false;
            for (var k = 0; k < run.Length; k++)
            {
                bytes[k] = SloppyCp1252[run[k]];
                high |= bytes[k] >= 0x80;
            }
            string? decoded = null;
            if (high)
            {
                try { decoded = strict.GetString(bytes); }
                catch (DecoderFallbackException) { decoded = null; }
                if (decoded != null && !Plausible(decoded)) decoded = null;
            }
            sb.Append(decoded ?? FixC1Controls(run.ToString()));
        }
        return sb.ToString();
    }

    /// <summary>Whether a re-decoded run looks like real text rather than an accident of legitimate text
    /// (e.g. "ß—" is valid UTF-8 for U+07D7): every character from a two-byte sequence must be Latin-1,
    /// Latin Extended, Greek, Cyrillic, Hebrew or Arabic; three- and four-byte sequences (punctuation,
    /// CJK, emoji) need two or three continuation bytes in a row and are accepted.</summary>
    private static bool Plausible(string decoded)
    {
        foreach (var r in decoded.EnumerateRunes())
        {
            var cp = r.Value;
            if (cp < 0x80 || cp >= 0x800) continue;
            var ok = cp is (>= 0xA0 and <= 0x24F) or (>= 0x370 and <= 0x4FF) or (>= 0x5D0 and <= 0x5EA) or (>= 0x620 and <= 0x64A);
            if (!ok) return false;
        }
        return true;
    }

    /// <summary>C1 control characters (U+0080–U+009F) are almost always Windows-1252 bytes decoded as Latin-1.</summary>
    public static string FixC1Controls(string text)
    {
        if (!text.Any(c => c is >= '\u0080' and <= '\u009F')) return text;
        var chars = text.ToCharArray();
        for (var k = 0; k < chars.Length; k++)
            if (chars[k] is >= '\u0080' and <= '\u009F')
            {
                var mapped = Cp1252High[chars[k] - 0x80];
                if (mapped >= '\u00A0') chars[k] = mapped;
            }
        return new string(chars);
    }

    private static readonly Dictionary<char, string> Ligatures = new()
    {
        ['\u0132'] = "IJ",
        ['\u0133'] = "ij",
        ['\u0149'] = "\u02bcn",
        ['\u01f1'] = "DZ",
        ['\u01f2'] = "Dz",
        ['\u01f3'] = "dz",
        ['\u01c4'] = "D\u017d",
        ['\u01c5'] = "D\u017e",
        ['\u01c6'] = "d\u017e",
        ['\u01c7'] = "LJ",
        ['\u01c8'] = "Lj",
        ['\u01c9'] = "lj",
        ['\u01ca'] = "NJ",
        ['\u01cb'] = "Nj",
        ['\u01cc'] = "nj",
        ['\ufb00'] = "ff",
        ['\ufb01'] = "fi",
        ['\ufb02'] = "fl",
        ['\ufb03'] = "ffi",
        ['\ufb04'] = "ffl",
        ['\ufb05'] = "\u017ft",
        ['\ufb06'] = "st",
    };

    public static string FixLatinLigatures(string text)
    {
        if (!text.Any(Ligatures.ContainsKey)) return text;
        var sb = new StringBuilder(text.Length);
        foreach (var c in text) sb.Append(Ligatures.TryGetValue(c, out var r) ? r : c.ToString());
        return sb.ToString();
    }

    /// <summary>Full-width and half-width forms (U+FF01–U+FFEF) to their NFKC equivalents; U+3000 to a space.</summary>
    public static string FixCharacterWidth(string text)
    {
        if (!text.Any(c => c == '\u3000' || c is >= '\uFF01' and <= '\uFFEF')) return text;
        var sb = new StringBuilder(text.Length);
        foreach (var c in text)
        {
            if (c == '\u3000') sb.Append(' ');
            else if (c is >= '\uFF01' and <= '\uFFEF') sb.Append(c.ToString().Normalize(NormalizationForm.FormKC));
            else sb.Append(c);
        }
        return sb.ToString();
    }

    [GeneratedRegex("[\u02bc\u2018-\u201b]")]
    private static partial Regex SingleQuote();

    [GeneratedRegex("[\u201c-\u201f]")]
    private static partial Regex DoubleQuote();

    public static string UncurlQuotes(string text) => DoubleQuote().Replace(SingleQuote().Replace(text, "'"), "\"");

    public static string FixLineBreaks(string text) =>
        text.Replace("\r\n", "\n").Replace('\r', '\n').Replace('\u2028', '\n').Replace('\u2029', '\n').Replace('\u0085', '\n');

    /// <summary>ftfy's CONTROL_CHARS: C0 controls but \t \n \f \r, DEL, deprecated format characters,
    /// the BOM, interlinear annotations, musical formatting and tag characters.</summary>
    public static string RemoveControlChars(string text)
    {
        var sb = new StringBuilder(text.Length);
        for (var i = 0; i < text.Length; i++)
        {
            int cp = text[i];
            var width = 1;
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                cp = char.ConvertToUtf32(text[i], text[i + 1]);
                width = 2;
            }
            var drop = cp is (>= 0x00 and <= 0x08) or 0x0B or (>= 0x0E and <= 0x1F) or 0x7F or (>= 0x206A and <= 0x206F) or 0xFEFF
                or (>= 0xFFF9 and <= 0xFFFC) or (>= 0x1D173 and <= 0x1D17A) or (>= 0xE0000 and <= 0xE007F);
            if (!drop) sb.Append(text, i, width);
            i += width - 1;
        }
        return sb.ToString();
    }

    /// <summary>transformers' BasicTokenizer(strip_accents=False, do_split_on_punc=False) + ' '.join: the
    /// path CLIPTokenizer takes when ftfy is not installed.</summary>
    public static string BasicClean(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (var rune in text.EnumerateRunes())
        {
            var cp = rune.Value;
            if (cp == 0 || cp == 0xFFFD || IsControl(rune)) continue;
            if (IsWhitespace(rune)) { sb.Append(' '); continue; }
            if (IsCjk(cp)) { sb.Append(' ').Append(rune.ToString()).Append(' '); continue; }
            sb.Append(rune.ToString());
        }
        var normalized = sb.ToString().Normalize(NormalizationForm.FormC);
        var tokens = normalized.Split([' ', '\t', '\n', '\r'], StringSplitOptions.RemoveEmptyEntries).Select(t => t.ToLowerInvariant());
        return string.Join(' ', tokens);
    }

    private static bool IsWhitespace(Rune r) =>
        r.Value is ' ' or '\t' or '\n' or '\r' || Rune.GetUnicodeCategory(r) == UnicodeCategory.SpaceSeparator;

    private static bool IsControl(Rune r)
    {
        if (r.Value is '\t' or '\n' or '\r') return false;
        var cat = Rune.GetUnicodeCategory(r);
        return cat is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned;
    }

    private static bool IsCjk(int cp) =>
        cp is (>= 0x4E00 and <= 0x9FFF) or (>= 0x3400 and <= 0x4DBF) or (>= 0x20000 and <= 0x2A6DF) or (>= 0x2A700 and <= 0x2B73F)
            or (>= 0x2B740 and <= 0x2B81F) or (>= 0x2B820 and <= 0x2CEAF) or (>= 0xF900 and <= 0xFAFF) or (>= 0x2F800 and <= 0x2FA1F);

    /// <summary>CLIP's whitespace_clean: runs of whitespace to one space, trimmed (Python's str.isspace set).</summary>
    public static string WhitespaceClean(string text)
    {
        var sb = new StringBuilder(text.Length);
        var space = false;
        foreach (var c in text)
        {
            if (IsPythonSpace(c))
            {
                space = true;
                continue;
            }
            if (space && sb.Length > 0) sb.Append(' ');
            space = false;
            sb.Append(c);
        }
        return sb.ToString();
    }

    private static bool IsPythonSpace(char c) =>
        c is ' ' or '\t' or '\n' or '\r' or '\v' or '\f' or '\u001c' or '\u001d' or '\u001e' or '\u001f' or '\u0085' || char.IsSeparator(c);
}
