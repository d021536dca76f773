using System.Text.RegularExpressions;
using Sudo.Data;
using Sudo.Torch;
using Sudo.Training;
namespace Sudo.Worlds.Shapes;

/// <summary>The shapes world: a procedural text-to-image domain with exact ground truth. Prompts come from a
/// small grammar (counted objects, or two objects in a spatial relation — the attribute-binding case); images
/// are rendered anti-aliased; <see cref="Judge"/> scores an image against its prompt per attribute.</summary>
public static partial class World
{
    public static readonly string[] Colors = ["red", "green", "blue", "yellow", "purple", "orange"];
    public static readonly string[] Shapes = ["circle", "square", "triangle"];
    public static readonly string[] Sizes = ["small", "large"];
    public static readonly string[] Backgrounds = ["black", "white", "gray"];
    public static readonly string[] Relations = ["left of", "right of", "above", "below"];
    public static readonly string[] CountWords = ["a", "two", "three"];

    /// <summary>sRGB of each colour word (foregrounds then backgrounds), 0–255.</summary>
    public static readonly IReadOnlyDictionary<string, (byte r, byte g, byte b)> Rgb = new Dictionary<string, (byte, byte, byte)>
    {
        ["red"] = (220, 40, 40),
        ["green"] = (40, 175, 60),
        ["blue"] = (45, 85, 225),
        ["yellow"] = (235, 215, 40),
        ["purple"] = (145, 60, 195),
        ["orange"] = (245, 140, 30),
        ["black"] = (20, 20, 20),
        ["white"] = (240, 240, 240),
        ["gray"] = (128, 128, 128),
    };

    /// <summary>Half-extent of an object as a fraction of the image side.</summary>
    public static double Radius(string size) => size == "small" ? 0.12 : 0.2;

    /// <summary>One object of a prompt: colour, shape, size.</summary>
    public sealed record ObjectSpec(string color, string shape, string size);

    /// <summary>A parsed prompt. Counted: count × object. Relation: object A &lt;relation&gt; object B.</summary>
    public sealed record PromptSpec(string background, ObjectSpec a, int count = 1, string? relation = null, ObjectSpec? b = null)
    {
        public bool IsRelation => relation != null;

        public string Text => IsRelation
            ? $"a {a.size} {a.color} {a.shape} {relation} a {b!.size} {b.color} {b.shape} on a {background} background"
            : $"{CountWords[count - 1]} {a.size} {a.color} {a.shape}{(count > 1 ? "s" : "")} on a {background} background";

        public IEnumerable<ObjectSpec> Objects => IsRelation ? [a, b!] : [a];
    }

    [GeneratedRegex(@"^(a|two|three) (small|large) (\w+) (circle|square|triangle)s? on a (\w+) background$")]
    private static partial Regex CountedRx();

    [GeneratedRegex(@"^a (small|large) (\w+) (circle|square|triangle) (left of|right of|above|below) a (small|large) (\w+) (circle|square|triangle) on a (\w+) background$")]
    private static partial Regex RelationRx();

    /// <summary>Parses a prompt of the grammar; a clear error for anything else.</summary>
    public static PromptSpec Parse(string prompt)
    {
        var p = prompt.Trim().ToLowerInvariant();
        var m = CountedRx().Match(p);
        PromptSpec spec;
        if (m.Success)
            spec = new PromptSpec(m.Groups[5].Value, new ObjectSpec(m.Groups[3].Value, m.Groups[4].Value, m.Groups[2].Value), Array.IndexOf(CountWords, m.Groups[1].Value) + 1);
        else if ((m = RelationRx().Match(p)).Success)
            spec = new PromptSpec(m.Groups[8].Value, new ObjectSpec(m.Groups[2].Value, m.Groups[3].Value, m.Groups[1].Value), 1,
                m.Groups[4].Value, new ObjectSpec(m.Groups[6].Value, m.Groups[7].Value, m.Groups[5].Value));
        else
            throw new FormatException($"\"{prompt}\" is not a shapes-world prompt: expected \"<a|two|three> <small|large> <colour> <shape>[s] on a <background> background\" "
                + "or \"a <size> <colour> <shape> <left of|right of|above|below> a <size> <colour> <shape> on a <background> background\"");
        foreach (var o in spec.Objects)
            if (!Colors.Contains(o.color)) throw new FormatException($"\"{prompt}\": unknown colour \"{o.color}\" (expected one of {string.Join(", ", Colors)})");
        if (!Backgrounds.Contains(spec.background)) throw new FormatException($"\"{prompt}\": unknown background \"{spec.background}\" (expected one of {string.Join(", ", Backgrounds)})");
        if (spec.IsRelation && spec.a.color == spec.b!.color) throw new FormatException($"\"{prompt}\": the two objects of a relation prompt need different colours");
        return spec;
    }

    /// <summary>True for the (colour, shape) combinations held out of training: they appear only in the test split,
    /// so the test split measures compositional generalisation. One shape per colour, rotating.</summary>
    public static bool IsHeldOut(string color, string shape) =>
        Array.IndexOf(Shapes, shape) == (Array.IndexOf(Colors, color) + 1) % Shapes.Length && Array.IndexOf(Colors, color) % 2 == 0;

    /// <summary>Draws a random prompt spec; relation prompts with probability <paramref name="relationFraction"/>.</summary>
    public static PromptSpec RandomSpec(Random rng, double relationFraction = 0.5)
    {
        ObjectSpec Obj() => new(Colors[rng.Next(Colors.Length)], Shapes[rng.Next(Shapes.Length)], Sizes[rng.Next(Sizes.Length)]);
        var bg = Backgrounds[rng.Next(Backgrounds.Length)];
        if (rng.NextDouble() >= relationFraction)
        {
            var a = Obj();
            // Three large objects do not fit side by side at low resolution: counted large objects go up to two.
            var count = 1 + rng.Next(a.size == "large" ? 2 : 3);
            return new PromptSpec(bg, a, count);
        }
        var x = Obj();
        ObjectSpec y;
        do y = Obj(); while (y.color == x.color);
        return new PromptSpec(bg, x, 1, Relations[rng.Next(Relations.Length)], y);
    }

    /// <summary>Distinct prompts of a split. "train" and "validation" use only seen (colour, shape) combinations
    /// (validation is a disjoint set of prompts); "test" prompts each contain at least one held-out combination.</summary>
    public static List<string> Prompts(string split, int n, int seed = 0)
    {
        if (split is not ("train" or "validation" or "test")) throw new ArgumentException($"split \"{split}\": expected train, validation or test");
        var rng = new Random(seed * 7919 + split.Length);
        var seen = new HashSet<string>();
        var result = new List<string>();
        var attempts = 0;
        while (result.Count < n)
        {
            if (++attempts > 200 * (n + 10)) throw new InvalidOperationException($"only {result.Count} distinct {split} prompts exist; asked for {n}");
            var s = RandomSpec(rng);
            var heldOut = s.Objects.Any(o => IsHeldOut(o.color, o.shape));
            if (heldOut != (split == "test")) continue;
            var text = s.Text;
            // A stable hash of the text assigns seen-combination prompts to train (80%) or validation (20%).
            if (split != "test" && (StableHash(text) % 5 == 0) != (split == "validation")) continue;
            if (seen.Add(text)) result.Add(text);
        }
        return result;
    }

    internal static uint StableHash(string s)
    {
        var h = 2166136261u;
        foreach (var c in s) h = (h ^ c) * 16777619u;
        return h;
    }

    /// <summary>A placed object: centre and half-extent in pixels.</summary>
    public sealed record Placed(ObjectSpec spec, double cx, double cy, double r);

    /// <summary>Places the prompt's objects at random, non-touching positions that satisfy its relation.</summary>
    public static List<Placed> Layout(PromptSpec spec, int size, Random rng)
    {
        for (var attempt = 0; attempt < 200_000; attempt++)
        {
            var placed = new List<Placed>();
            var objs = spec.IsRelation ? new[] { spec.a, spec.b! } : Enumerable.Repeat(spec.a, spec.count).ToArray();
            var ok = true;
            foreach (var o in objs)
            {
                var r = Radius(o.size) * size;
                var cx = r + 1 + rng.NextDouble() * (size - 2 * r - 2);
                var cy = r + 1 + rng.NextDouble() * (size - 2 * r - 2);
                if (placed.Any(p => Math.Max(Math.Abs(p.cx - cx), Math.Abs(p.cy - cy)) < p.r + r + 2)) { ok = false; break; }
                placed.Add(new Placed(o, cx, cy, r));
            }
            if (!ok) continue;
            if (spec.IsRelation && !RelationHolds(spec.relation!, placed[0].cx, placed[0].cy, placed[1].cx, placed[1].cy, size)) continue;
            return placed;
        }
        throw new InvalidOperationException($"could not lay out \"{spec.Text}\" at {size}×{size}");
    }

    /// <summary>A holds relation to B when the offset along the relation's axis exceeds 10% of the image
    /// and dominates the offset along the other axis.</summary>
    public static bool RelationHolds(string relation, double ax, double ay, double bx, double by, int size)
    {
        var (dx, dy) = (bx - ax, by - ay);
        var margin = 0.1 * size;
        return relation switch
        {
            "left of" => dx > margin && Math.Abs(dx) > Math.Abs(dy),
            "right of" => -dx > margin && Math.Abs(dx) > Math.Abs(dy),
            "above" => dy > margin && Math.Abs(dy) > Math.Abs(dx),
            "below" => -dy > margin && Math.Abs(dy) > Math.Abs(dx),
            _ => throw new ArgumentException($"unknown relation \"{relation}\""),
        };
    }

    /// <summary>True when pixel-space point (x, y) is inside the shape centred at (cx, cy) with half-extent r.
    /// Squares have side 1.7·r; triangles point up with base 2r and height 2r.</summary>
    public static bool Inside(string shape, double x, double y, double cx, double cy, double r)
    {
        var (dx, dy) = (x - cx, y - cy);
        return shape switch
        {
            "circle" => dx * dx + dy * dy <= r * r,
            "square" => Math.Abs(dx) <= 0.85 * r && Math.Abs(dy) <= 0.85 * r,
            "triangle" => dy <= r && dy >= -r && Math.Abs(dx) <= (dy + r) / 2,
            _ => throw new ArgumentException($"unknown shape \"{shape}\""),
        };
    }

    /// <summary>Renders the objects over the background, anti-aliased by 4×4 supersampling per pixel.</summary>
    public static RgbImage Render(string background, IEnumerable<Placed> objects, int size)
    {
        var img = new double[size * size * 3];
        var bg = Rgb[background];
        for (var i = 0; i < size * size; i++) (img[3 * i], img[3 * i + 1], img[3 * i + 2]) = (bg.r, bg.g, bg.b);
        const int ss = 4;
        foreach (var o in objects)
        {
            var c = Rgb[o.spec.color];
            int x0 = Math.Max(0, (int)(o.cx - o.r) - 1), x1 = Math.Min(size - 1, (int)(o.cx + o.r) + 1);
            int y0 = Math.Max(0, (int)(o.cy - o.r) - 1), y1 = Math.Min(size - 1, (int)(o.cy + o.r) + 1);
            for (var y = y0; y <= y1; y++)
                for (var x = x0; x <= x1; x++)
                {
                    var hits = 0;
                    for (var sy = 0; sy < ss; sy++)
                        for (var sx = 0; sx < ss; sx++)
                            if (Inside(o.spec.shape, x + (sx + 0.5) / ss, y + (sy + 0.5) / ss, o.cx, o.cy, o.r)) hits++;
                    if (hits == 0) continue;
                    var a = hits / (double)(ss * ss);
                    var k = 3 * (y * size + x);
                    img[k] = img[k] * (1 - a) + c.r * a;
                    img[k + 1] = img[k + 1] * (1 - a) + c.g * a;
                    img[k + 2] = img[k + 2] * (1 - a) + c.b * a;
                }
        }
        var px = new byte[img.Length];
        for (var i = 0; i < img.Length; i++) px[i] = (byte)Math.Clamp(Math.Round(img[i]), 0, 255);
        return new RgbImage(size, size, px);
    }

    /// <summary>A ground-truth image of a prompt (layout drawn from <paramref name="seed"/>).</summary>
    public static RgbImage Render(string prompt, int size = 64, int seed = 0)
    {
        var spec = Parse(prompt);
        return Render(spec.background, Layout(spec, size, new Random(seed)), size);
    }
}
