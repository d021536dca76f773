using Sudo.Data;
using Sudo.Torch;
using Sudo.Training;
namespace Sudo.Worlds.Shapes;

/// <summary>The shapes world's deterministic judge: how well an image matches its prompt, per attribute, plus
/// an image-quality term. Each pixel is explained as a mix of the background and one palette colour (the
/// renderer's anti-aliasing model); pixels at least half covered form per-colour connected components; each
/// component's shape is the template (circle, square, triangle at the component's area and centroid) that best
/// matches its soft mask.</summary>
public static class Judge
{
    /// <summary>One detected object: colour, soft area (pixels), centroid, best-matching shape and its size class.</summary>
    public sealed record Blob(string color, double area, double cx, double cy, string shape, string size, double radius);

    /// <summary>Attribute scores in [0, 1] (1 = correct), the quality term and the total:
    /// score = 0.8 · mean(attributes) + 0.2 · quality.</summary>
    public sealed record Result(IReadOnlyDictionary<string, double> attributes, double quality, double score, IReadOnlyList<Blob> blobs, string background);

    /// <summary>Fraction of the quality term's pixel residual scale (sRGB units): residual r counts as exp(−(r/σ)²).</summary>
    public const double QualitySigma = 24.0;

    public static Result Score(RgbImage image, string prompt) => Score(image, World.Parse(prompt));

    public static Result Score(RgbImage image, World.PromptSpec spec)
    {
        image.Validate();
        if (image.Width != image.Height) throw new ArgumentException($"the judge expects square images, got {image.Width}×{image.Height}");
        var n = image.Width;
        var bgName = DetectBackground(image);
        var bg = World.Rgb[bgName];
        // Per pixel: best palette colour, its coverage α ∈ [0, 1] along bg→colour, and the residual distance.
        var label = new int[n * n];
        var alpha = new double[n * n];
        var qualitySum = 0.0;
        for (var i = 0; i < n * n; i++)
        {
            double pr = image.Pixels[3 * i], pg = image.Pixels[3 * i + 1], pb = image.Pixels[3 * i + 2];
            var bestRes = Math.Sqrt(Sq(pr - bg.r) + Sq(pg - bg.g) + Sq(pb - bg.b));
            var best = -1;
            var bestA = 0.0;
            for (var c = 0; c < World.Colors.Length; c++)
            {
                var col = World.Rgb[World.Colors[c]];
                double vr = col.r - bg.r, vg = col.g - bg.g, vb = col.b - bg.b;
                var a = ((pr - bg.r) * vr + (pg - bg.g) * vg + (pb - bg.b) * vb) / (vr * vr + vg * vg + vb * vb);
                a = Math.Clamp(a, 0, 1);
                var res = Math.Sqrt(Sq(pr - bg.r - a * vr) + Sq(pg - bg.g - a * vg) + Sq(pb - bg.b - a * vb));
                if (res < bestRes - 1e-9) (bestRes, best, bestA) = (res, c, a);
            }
            label[i] = best;
            alpha[i] = best < 0 ? 0 : bestA;
            qualitySum += Math.Exp(-Sq(bestRes / QualitySigma));
        }
        var quality = qualitySum / (n * n);
        var blobs = FindBlobs(label, alpha, n);
        var attrs = new Dictionary<string, double> { ["background"] = bgName == spec.background ? 1 : 0 };
        if (!spec.IsRelation)
        {
            var mine = blobs.Where(b => b.color == spec.a.color).ToList();
            attrs["color"] = mine.Count > 0 ? 1 : 0;
            attrs["count"] = mine.Count == spec.count ? 1 : 0;
            attrs["shape"] = mine.Count == 0 ? 0 : mine.Count(b => b.shape == spec.a.shape) / (double)Math.Max(mine.Count, spec.count);
            attrs["size"] = mine.Count == 0 ? 0 : mine.Count(b => b.size == spec.a.size) / (double)Math.Max(mine.Count, spec.count);
            // Objects of other colours were not asked for.
            attrs["no_extra"] = blobs.Count == mine.Count ? 1 : 0;
        }
        else
        {
            var a = blobs.Where(b => b.color == spec.a.color).MaxBy(b => b.area);
            var b = blobs.Where(x => x.color == spec.b!.color).MaxBy(x => x.area);
            attrs["color"] = ((a != null ? 1 : 0) + (b != null ? 1 : 0)) / 2.0;
            attrs["shape"] = ((a?.shape == spec.a.shape ? 1 : 0) + (b?.shape == spec.b!.shape ? 1 : 0)) / 2.0;
            attrs["size"] = ((a?.size == spec.a.size ? 1 : 0) + (b?.size == spec.b!.size ? 1 : 0)) / 2.0;
            attrs["relation"] = a != null && b != null && World.RelationHolds(spec.relation!, a.cx, a.cy, b.cx, b.cy, n) ? 1 : 0;
            attrs["count"] = blobs.Count == 2 ? 1 : 0;
        }
        var score = 0.8 * attrs.Values.Average() + 0.2 * quality;
        return new Result(attrs, quality, score, blobs, bgName);
    }

    private static double Sq(double x) => x * x;

    /// <summary>The background is the palette background nearest the median of the border pixels.</summary>
    private static string DetectBackground(RgbImage img)
    {
        var n = img.Width;
        var border = new List<(int r, int g, int b)>();
        for (var i = 0; i < n; i++)
            foreach (var (x, y) in new[] { (i, 0), (i, n - 1), (0, i), (n - 1, i) })
            {
                var k = 3 * (y * n + x);
                border.Add((img.Pixels[k], img.Pixels[k + 1], img.Pixels[k + 2]));
            }
        static int Median(IEnumerable<int> v) { var s = v.OrderBy(x => x).ToArray(); return s[s.Length / 2]; }
        var m = (Median(border.Select(p => p.r)), Median(border.Select(p => p.g)), Median(border.Select(p => p.b)));
        return World.Backgrounds.MinBy(b => Sq(World.Rgb[b].r - m.Item1) + Sq(World.Rgb[b].g - m.Item2) + Sq(World.Rgb[b].b - m.Item3))!;
    }

    private static List<Blob> FindBlobs(int[] label, double[] alpha, int n)
    {
        var comp = new int[n * n];
        Array.Fill(comp, -1);
        var blobs = new List<Blob>();
        var minArea = 0.35 * Math.PI * Math.Pow(World.Radius("small") * n, 2) * 0.5;
        var stack = new Stack<int>();
        for (var s = 0; s < n * n; s++)
        {
            if (label[s] < 0 || alpha[s] < 0.5 || comp[s] >= 0) continue;
            var color = label[s];
            var members = new List<int>();
            comp[s] = blobs.Count;
            stack.Push(s);
            while (stack.Count > 0)
            {
                var p = stack.Pop();
                members.Add(p);
                int x = p % n, y = p / n;
                foreach (var q in new[] { x > 0 ? p - 1 : -1, x < n - 1 ? p + 1 : -1, y > 0 ? p - n : -1, y < n - 1 ? p + n : -1 })
                    if (q >= 0 && comp[q] < 0 && label[q] == color && alpha[q] >= 0.5) { comp[q] = blobs.Count; stack.Push(q); }
            }
            // Soft mask: the component's pixels plus their same-colour partially covered neighbours (anti-aliased rim).
            var soft = new Dictionary<int, double>();
            foreach (var p in members)
            {
                int x = p % n, y = p / n;
                for (var dy = -1; dy <= 1; dy++)
                    for (var dx = -1; dx <= 1; dx++)
                    {
                        int xx = x + dx, yy = y + dy;
                        if (xx < 0 || yy < 0 || xx >= n || yy >= n) continue;
                        var q = yy * n + xx;
                        if (label[q] == color) soft[q] = alpha[q];
                    }
            }
            var area = soft.Values.Sum();
            if (area < minArea) { blobs.Add(null!); continue; }
            double cx = 0, cy = 0;
            foreach (var (q, a) in soft) { cx += a * (q % n + 0.5); cy += a * (q / n + 0.5); }
            cx /= area;
            cy /= area;
            var (shape, r) = BestShape(soft, area, cx, cy, n);
            var sizeClass = r < 0.5 * (World.Radius("small") + World.Radius("large")) * n ? "small" : "large";
            blobs.Add(new Blob(World.Colors[color], area, cx, cy, shape, sizeClass, r));
        }
        return blobs.Where(b => b != null).ToList();
    }

    /// <summary>For each shape: the half-extent giving the measured area and the centre giving the measured
    /// centroid; the shape whose rendered coverage differs least (L1) from the soft mask wins.</summary>
    private static (string shape, double r) BestShape(Dictionary<int, double> soft, double area, double cx, double cy, int n)
    {
        var best = ("circle", 0.0);
        var bestErr = double.MaxValue;
        foreach (var shape in World.Shapes)
        {
            var (r, oy) = shape switch
            {
                "circle" => (Math.Sqrt(area / Math.PI), 0.0),
                "square" => (Math.Sqrt(area) / 1.7, 0.0),
                _ => (Math.Sqrt(area / 2), -Math.Sqrt(area / 2) / 3),   // triangle: centroid lies r/3 below the box centre
            };
            var (ccx, ccy) = (cx, cy + oy);
            var err = 0.0;
            int x0 = Math.Max(0, (int)(ccx - r) - 2), x1 = Math.Min(n - 1, (int)(ccx + r) + 2);
            int y0 = Math.Max(0, (int)(ccy - r) - 2), y1 = Math.Min(n - 1, (int)(ccy + r) + 2);
            var covered = new HashSet<int>();
            for (var y = y0; y <= y1; y++)
                for (var x = x0; x <= x1; x++)
                {
                    var hits = 0;
                    for (var sy = 0; sy < 4; sy++)
                        for (var sx = 0; sx < 4; sx++)
                            if (World.Inside(shape, x + (sx + 0.5) / 4, y + (sy + 0.5) / 4, ccx, ccy, r)) hits++;
                    var q = y * n + x;
                    covered.Add(q);
                    err += Math.Abs(hits / 16.0 - soft.GetValueOrDefault(q));
                }
            foreach (var (q, a) in soft) if (!covered.Contains(q)) err += a;
            if (err < bestErr) (bestErr, best) = (err, (shape, r));
        }
        return best;
    }
}

/// <summary>Measures the judge: attribute accuracy on ground-truth renders, and how often it notices a single
/// wrong attribute (the image rendered from a corrupted prompt, judged against the original prompt).</summary>
public static class JudgeEvaluation
{
    public sealed record Report(int images, int size, double ground_truth_attribute_accuracy, double ground_truth_mean_score,
        IReadOnlyDictionary<string, double> detection_rate, double corrupted_mean_score, double noisy_mean_quality, double clean_mean_quality);

    /// <summary>Corrupts exactly one attribute of a prompt; the name of the judge attribute that should catch it.</summary>
    public static (World.PromptSpec spec, string attribute) Corrupt(World.PromptSpec s, string kind, Random rng)
    {
        T Other<T>(T[] all, T not, Func<T, bool>? ok = null) where T : notnull
        {
            var choices = all.Where(x => !x.Equals(not) && (ok?.Invoke(x) ?? true)).ToArray();
            return choices[rng.Next(choices.Length)];
        }
        var usedColors = s.Objects.Select(o => o.color).ToHashSet();
        return kind switch
        {
            "color" => (s with { a = s.a with { color = Other(World.Colors, s.a.color, c => !usedColors.Contains(c)) } }, "color"),
            "shape" => (s with { a = s.a with { shape = Other(World.Shapes, s.a.shape) } }, "shape"),
            "size" => (s with { a = s.a with { size = Other(World.Sizes, s.a.size) } }, "size"),
            "background" => (s with { background = Other(World.Backgrounds, s.background) }, "background"),
            "count" when !s.IsRelation => (s with { count = s.count == 1 ? 2 : s.count - 1 }, "count"),
            "relation" when s.IsRelation => (s with
            {
                relation = s.relation switch { "left of" => "right of", "right of" => "left of", "above" => "below", _ => "above" },
            }, "relation"),
            _ => throw new ArgumentException($"corruption \"{kind}\" does not apply to \"{s.Text}\""),
        };
    }

    public static Report Run(int images = 300, int size = 64, int seed = 0)
    {
        var rng = new Random(seed);
        var gtCorrect = 0.0;
        var gtAttrs = 0;
        var gtScore = 0.0;
        var detected = new Dictionary<string, (int hit, int n)>();
        var corruptedScore = 0.0;
        var corruptedN = 0;
        var noisyQ = 0.0;
        var cleanQ = 0.0;
        for (var i = 0; i < images; i++)
        {
            var spec = World.RandomSpec(rng);
            var img = World.Render(spec.background, World.Layout(spec, size, rng), size);
            var r = Judge.Score(img, spec);
            gtCorrect += r.attributes.Values.Count(v => v == 1);
            gtAttrs += r.attributes.Count;
            gtScore += r.score;
            cleanQ += r.quality;
            string[] kinds = spec.IsRelation ? ["color", "shape", "size", "background", "relation"] : ["color", "shape", "size", "background", "count"];
            var kind = kinds[i % kinds.Length];
            if (kind == "size" && spec.count == 3) kind = "shape";   // three large objects do not fit
            var (bad, attr) = Corrupt(spec, kind, rng);
            var badImg = World.Render(bad.background, World.Layout(bad, size, rng), size);
            var rb = Judge.Score(badImg, spec);
            var d = detected.GetValueOrDefault(kind);
            detected[kind] = (d.hit + (rb.attributes[attr] < 1 ? 1 : 0), d.n + 1);
            corruptedScore += rb.score;
            corruptedN++;
            // Pixel noise (σ = 40 sRGB units) lowers the quality term.
            var noisy = (byte[])img.Pixels.Clone();
            for (var k = 0; k < noisy.Length; k++)
            {
                var g = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
                noisy[k] = (byte)Math.Clamp(Math.Round(noisy[k] + 40 * g), 0, 255);
            }
            noisyQ += Judge.Score(new RgbImage(size, size, noisy), spec).quality;
        }
        return new Report(images, size, gtCorrect / gtAttrs, gtScore / images,
            detected.ToDictionary(kv => kv.Key, kv => kv.Value.hit / (double)kv.Value.n), corruptedScore / corruptedN, noisyQ / images, cleanQ / images);
    }
}
