using Sudo.Data;
using Sudo.Torch;
using Sudo.Training;
namespace Sudo.Worlds.Shapes;

/// <summary>A small raster canvas for report figures (image grids with labels, line plots): filled rectangles,
/// lines, scaled blits and a built-in 5×7 bitmap font (ASCII letters, digits and common punctuation; letters
/// print in capitals), so reports need no font files or plotting library.</summary>
public sealed class Canvas
{
    public int Width { get; }
    public int Height { get; }
    readonly byte[] _px;

    public Canvas(int width, int height, (byte r, byte g, byte b) background)
    {
        if (width <= 0 || height <= 0) throw new ArgumentException($"canvas size must be positive, got {width}×{height}");
        Width = width;
        Height = height;
        _px = new byte[width * height * 3];
        FillRect(0, 0, width, height, background);
    }

    public RgbImage ToImage() => new(Width, Height, (byte[])_px.Clone());

    public void SetPixel(int x, int y, (byte r, byte g, byte b) c)
    {
        if ((uint)x >= (uint)Width || (uint)y >= (uint)Height) return;
        var i = (y * Width + x) * 3;
        _px[i] = c.r;
        _px[i + 1] = c.g;
        _px[i + 2] = c.b;
    }

    public void FillRect(int x, int y, int w, int h, (byte r, byte g, byte b) c)
    {
        for (var yy = Math.Max(0, y); yy < Math.Min(Height, y + h); yy++)
            for (var xx = Math.Max(0, x); xx < Math.Min(Width, x + w); xx++)
                SetPixel(xx, yy, c);
    }

    /// <summary>A line of the given thickness (square pen), by stepping along the longer axis.</summary>
    public void Line(double x0, double y0, double x1, double y1, (byte r, byte g, byte b) c, int thickness = 1)
    {
        var n = (int)Math.Ceiling(Math.Max(Math.Abs(x1 - x0), Math.Abs(y1 - y0))) + 1;
        var h = thickness / 2;
        for (var i = 0; i <= n; i++)
        {
            var x = (int)Math.Round(x0 + (x1 - x0) * i / n);
            var y = (int)Math.Round(y0 + (y1 - y0) * i / n);
            FillRect(x - h, y - h, thickness, thickness, c);
        }
    }

    /// <summary>Copies an image scaled by an integer factor (nearest neighbour, so pixels stay crisp).</summary>
    public void Blit(RgbImage img, int x, int y, int scale = 1)
    {
        for (var yy = 0; yy < img.Height * scale; yy++)
            for (var xx = 0; xx < img.Width * scale; xx++)
            {
                var i = ((yy / scale) * img.Width + xx / scale) * 3;
                SetPixel(x + xx, y + yy, (img.Pixels[i], img.Pixels[i + 1], img.Pixels[i + 2]));
            }
    }

    /// <summary>Width in pixels of <paramref name="text"/> at the given scale (6 px per character at scale 1).</summary>
    public static int TextWidth(string text, int scale = 1) => text.Length * 6 * scale;

    /// <summary>Draws text with its top-left corner at (x, y); characters without a glyph print as blanks.</summary>
    public void Text(int x, int y, string text, (byte r, byte g, byte b) c, int scale = 1)
    {
        foreach (var ch in text)
        {
            if (Glyphs.TryGetValue(char.ToUpperInvariant(ch), out var rows))
                for (var r = 0; r < 7; r++)
                    for (var col = 0; col < 5; col++)
                        if ((rows[r] >> (4 - col) & 1) == 1) FillRect(x + col * scale, y + r * scale, scale, scale, c);
            x += 6 * scale;
        }
    }

    /// <summary>Text broken into lines of at most <paramref name="maxWidth"/> pixels at word boundaries; returns the lines.</summary>
    public static List<string> Wrap(string text, int maxWidth, int scale = 1)
    {
        var lines = new List<string>();
        var cur = "";
        foreach (var word in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            var next = cur.Length == 0 ? word : cur + " " + word;
            if (TextWidth(next, scale) <= maxWidth || cur.Length == 0) cur = next;
            else
            {
                lines.Add(cur);
                cur = word;
            }
        }
        if (cur.Length > 0) lines.Add(cur);
        return lines;
    }

    // 5×7 glyphs, one byte per row, bit 4 = leftmost column.
    static readonly Dictionary<char, byte[]> Glyphs = new()
    {
        ['A'] = [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        ['B'] = [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        ['C'] = [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        ['D'] = [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        ['E'] = [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        ['F'] = [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        ['G'] = [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        ['H'] = [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        ['I'] = [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        ['J'] = [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        ['K'] = [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        ['L'] = [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        ['M'] = [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        ['N'] = [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        ['O'] = [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        ['P'] = [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        ['Q'] = [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        ['R'] = [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        ['S'] = [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        ['T'] = [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        ['U'] = [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        ['V'] = [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        ['W'] = [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        ['X'] = [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        ['Y'] = [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        ['Z'] = [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ['0'] = [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        ['1'] = [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        ['2'] = [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        ['3'] = [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        ['4'] = [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        ['5'] = [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        ['6'] = [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        ['7'] = [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        ['8'] = [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        ['9'] = [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ['.'] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        [','] = [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ['-'] = [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        ['+'] = [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        [':'] = [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        ['%'] = [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        ['('] = [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        [')'] = [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ['/'] = [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        ['='] = [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        ['_'] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        ['±'] = [0x04, 0x04, 0x1F, 0x04, 0x04, 0x00, 0x1F],
        ['×'] = [0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x00],
    };
}
