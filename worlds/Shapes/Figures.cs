// Report figures: learning curves with ScottPlot (mean over training seeds with a 95% Student-t band per method,
// labelled axes) and labelled image grids drawn with SkiaSharp (the version ScottPlot depends on), captions in
// DejaVu Sans (fonts-dejavu-core, installed by scripts/setup.sh).
using System.Globalization;
using ScottPlot;
using SkiaSharp;
using Sudo.Data;

namespace Sudo.Worlds.Shapes;

public static class Figures
{
    static readonly string[] FontFiles =
    [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];

    static SKTypeface? _typeface;

    /// <summary>DejaVu Sans from the system fonts; a clear error when no font with Latin glyphs is installed.</summary>
    public static SKTypeface Typeface
    {
        get
        {
            if (_typeface != null) return _typeface;
            var tf = FontFiles.Where(File.Exists).Select(f => SKTypeface.FromFile(f)).FirstOrDefault(t => t != null)
                ?? SKTypeface.FromFamilyName("DejaVu Sans");
            if (tf == null || tf.GetGlyphs("a").All(g => g == 0))
                throw new InvalidOperationException("no font with Latin glyphs for figure captions: install fonts-dejavu-core (scripts/setup.sh does)");
            return _typeface = tf;
        }
    }

    /// <summary>Words of <paramref name="text"/> wrapped into lines no wider than <paramref name="width"/> pixels at <paramref name="size"/>.</summary>
    public static List<string> Wrap(string text, float width, float size)
    {
        using var font = new SKFont(Typeface, size);
        var lines = new List<string>();
        var cur = "";
        foreach (var w in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            var next = cur.Length == 0 ? w : cur + " " + w;
            if (cur.Length > 0 && font.MeasureText(next) > width) { lines.Add(cur); cur = w; }
            else cur = next;
        }
        if (cur.Length > 0) lines.Add(cur);
        return lines;
    }

    /// <summary>One caption line rendered alone (black on white): what the grid draws under a prompt.</summary>
    public static RgbImage Caption(string text, int width, int height = 20, float size = 13)
    {
        using var bmp = new SKBitmap(width, height, SKColorType.Rgba8888, SKAlphaType.Premul);
        using var canvas = new SKCanvas(bmp);
        canvas.Clear(SKColors.White);
        using var font = new SKFont(Typeface, size);
        using var paint = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        canvas.DrawText(text, 2, height - 5, font, paint);
        return ToRgb(bmp);
    }

    static RgbImage ToRgb(SKBitmap bmp)
    {
        var px = new byte[bmp.Width * bmp.Height * 3];
        var src = bmp.GetPixelSpan();
        for (int i = 0, j = 0; i < bmp.Width * bmp.Height; i++, j += 4)
        {
            px[i * 3] = src[j];
            px[i * 3 + 1] = src[j + 1];
            px[i * 3 + 2] = src[j + 2];
        }
        return new RgbImage(bmp.Width, bmp.Height, px);
    }

    /// <summary>Rows of images under wrapped prompt captions, a label per row and the judge score under each image
    /// (green ≥ 0.8, amber ≥ 0.6, red below). Images are scaled by an integer factor, nearest neighbour.</summary>
    public static RgbImage Grid(IReadOnlyList<string> prompts, IReadOnlyList<(string label, List<(RgbImage img, double score)> row)> rows, int scale = 4)
    {
        var cell = rows[0].row[0].img.Width * scale;
        const int pad = 8, labelW = 170, scoreH = 16;
        const float capSize = 11, labelSize = 15;
        var captions = prompts.Select(p => Wrap(p, cell, capSize)).ToList();
        var capH = captions.Max(l => l.Count) * 13 + 8;
        var rowH = cell + scoreH + pad;
        var w = labelW + prompts.Count * (cell + pad) + pad;
        var h = capH + rows.Count * rowH + pad;
        using var bmp = new SKBitmap(w, h, SKColorType.Rgba8888, SKAlphaType.Premul);
        using var canvas = new SKCanvas(bmp);
        canvas.Clear(SKColors.White);
        using var capFont = new SKFont(Typeface, capSize);
        using var labelFont = new SKFont(Typeface, labelSize);
        using var ink = new SKPaint { Color = new SKColor(40, 40, 40), IsAntialias = true };
        for (var j = 0; j < prompts.Count; j++)
            for (var l = 0; l < captions[j].Count; l++)
                canvas.DrawText(captions[j][l], labelW + j * (cell + pad), 13 + l * 13, capFont, ink);
        using var nearest = new SKPaint { IsAntialias = false };
        for (var i = 0; i < rows.Count; i++)
        {
            var y = capH + i * rowH;
            var lines = Wrap(rows[i].label, labelW - 2 * pad, labelSize).Take(3).ToList();
            for (var l = 0; l < lines.Count; l++) canvas.DrawText(lines[l], pad, y + cell / 2 - (lines.Count - 1) * 9 + l * 18, labelFont, ink);
            for (var j = 0; j < rows[i].row.Count; j++)
            {
                var (img, score) = rows[i].row[j];
                var x = labelW + j * (cell + pad);
                using (var src = FromRgb(img))
                    canvas.DrawImage(SKImage.FromBitmap(src), new SKRect(x, y, x + cell, y + cell), new SKSamplingOptions(SKFilterMode.Nearest), nearest);
                if (!double.IsNaN(score))
                {
                    using var p = new SKPaint { IsAntialias = true, Color = score >= 0.8 ? new SKColor(20, 140, 40) : score >= 0.6 ? new SKColor(180, 120, 0) : new SKColor(190, 30, 30) };
                    canvas.DrawText($"judge {score.ToString("F2", CultureInfo.InvariantCulture)}", x, y + cell + 13, capFont, p);
                }
            }
        }
        return ToRgb(bmp);
    }

    static SKBitmap FromRgb(RgbImage img)
    {
        var bmp = new SKBitmap(img.Width, img.Height, SKColorType.Rgba8888, SKAlphaType.Opaque);
        var dst = bmp.GetPixelSpan();
        var bytes = new byte[img.Width * img.Height * 4];
        for (var i = 0; i < img.Width * img.Height; i++)
        {
            bytes[i * 4] = img.Pixels[i * 3];
            bytes[i * 4 + 1] = img.Pixels[i * 3 + 1];
            bytes[i * 4 + 2] = img.Pixels[i * 3 + 2];
            bytes[i * 4 + 3] = 255;
        }
        System.Runtime.InteropServices.Marshal.Copy(bytes, 0, bmp.GetPixels(), bytes.Length);
        return bmp;
    }

    /// <summary>Per method: the mean curve over training seeds and, with ≥ 2 seeds, a 95% band (Student t over seeds at
    /// each step, from <see cref="Statistics.MeanCi"/>). Saves a PNG.</summary>
    public static void LearningCurves(IReadOnlyList<(string label, IReadOnlyList<List<(int step, double score)>> seeds)> methods, string yLabel, string path, string title)
    {
        var plot = new Plot();
        plot.Title(title);
        plot.XLabel("training step");
        plot.YLabel(yLabel);
        var palette = new ScottPlot.Palettes.Category10();
        for (var m = 0; m < methods.Count; m++)
        {
            var (label, seeds) = methods[m];
            var steps = seeds.SelectMany(s => s.Select(p => p.step)).Distinct().OrderBy(s => s).ToArray();
            var stats = steps.Select(st => Statistics.MeanCi(seeds.SelectMany(s => s.Where(p => p.step == st).Select(p => p.score)).ToList())).ToArray();
            var xs = steps.Select(s => (double)s).ToArray();
            var mean = stats.Select(s => s.mean).ToArray();
            var color = palette.GetColor(m);
            if (seeds.Count >= 2 && stats.All(s => double.IsFinite(s.half)))
            {
                var band = plot.Add.FillY(xs, mean.Zip(stats, (v, s) => v - s.half).ToArray(), mean.Zip(stats, (v, s) => v + s.half).ToArray());
                band.FillColor = color.WithAlpha(0.2);
                band.LineColor = Colors.Transparent;
            }
            var line = plot.Add.Scatter(xs, mean);
            line.Color = color;
            line.LineWidth = 2;
            line.LegendText = seeds.Count >= 2 ? $"{label} (mean of {seeds.Count} seeds, 95% band)" : label;
        }
        plot.ShowLegend(Alignment.LowerRight);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var tmp = path + ".tmp.png";
        plot.SavePng(tmp, 800, 480);
        File.Move(tmp, path, overwrite: true);
    }
}
