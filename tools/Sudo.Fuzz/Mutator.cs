// A small seeded mutator for the in-process rounds the test suite runs (the long runs use libFuzzer's own mutations
// and coverage feedback). Deterministic: the same seed and corpus give the same inputs on every machine.
using System.Text;

namespace Sudo.Fuzz;

public sealed class Mutator(int seed)
{
    private readonly Random _rng = new(seed);

    // Values that break parsers: boundaries of the integer widths, JSON's edge cases, path tricks, separators.
    private static readonly byte[][] Tokens =
    [
        .. new[] { "0", "-1", "1e309", "-1e309", "NaN", "Infinity", "9223372036854775807", "18446744073709551616", "4294967296",
            "2147483648", "null", "true", "[]", "{}", "\"\"", "\"", "{", "}", "[", "]", ",", ":", "\\", "\\u0000", "\\ud800",
            "../", "/", "\n", "\r\n", "\t", ",,", "\"\"\"", "#", "�", "\u00ff" }.Select(Encoding.UTF8.GetBytes),
        [0xFF, 0xFF, 0xFF, 0xFF], [0x7F, 0xFF, 0xFF, 0xFF], [0x80, 0, 0, 0], [0, 0, 0, 0], [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
    ];

    /// <summary>One to four mutations of <paramref name="input"/>; sometimes spliced with <paramref name="other"/>.</summary>
    public byte[] Mutate(byte[] input, byte[] other)
    {
        var d = new List<byte>(input);
        var n = 1 + _rng.Next(4);
        for (var i = 0; i < n; i++)
        {
            var at = d.Count == 0 ? 0 : _rng.Next(d.Count);
            switch (_rng.Next(9))
            {
                case 0 when d.Count > 0: d[at] ^= (byte)(1 << _rng.Next(8)); break;
                case 1 when d.Count > 0: d[at] = (byte)_rng.Next(256); break;
                case 2: d.InsertRange(at, Tokens[_rng.Next(Tokens.Length)]); break;
                case 3 when d.Count > 0:
                    {
                        var t = Tokens[_rng.Next(Tokens.Length)];
                        for (var k = 0; k < t.Length && at + k < d.Count; k++) d[at + k] = t[k];
                        break;
                    }
                case 4 when d.Count > 0: d.RemoveRange(at, Math.Min(d.Count - at, 1 + _rng.Next(Math.Max(1, d.Count / 8)))); break;
                case 5 when d.Count > 1: d.RemoveRange(at, d.Count - at); break;   // truncation
                case 6 when d.Count > 0:
                    {
                        var len = Math.Min(d.Count - at, 1 + _rng.Next(64));
                        d.InsertRange(_rng.Next(d.Count), d.GetRange(at, len));
                        break;
                    }
                case 7 when other.Length > 0:
                    {
                        var from = _rng.Next(other.Length);
                        d.InsertRange(at, other.AsSpan(from, Math.Min(other.Length - from, 1 + _rng.Next(256))).ToArray());
                        break;
                    }
                case 8 when d.Count > 0:
                    {
                        // A digit run replaced by a large or negative number (sizes, offsets, shapes, labels).
                        var start = d.FindIndex(at, b => b >= '0' && b <= '9');
                        if (start < 0) break;
                        var end = start;
                        while (end < d.Count && d[end] >= '0' && d[end] <= '9') end++;
                        var repl = Encoding.ASCII.GetBytes(new[] { "-1", "0", "99999999999", "4294967295", "1e400", "-0" }[_rng.Next(6)]);
                        d.RemoveRange(start, end - start);
                        d.InsertRange(start, repl);
                        break;
                    }
            }
        }
        return d.ToArray();
    }
}
