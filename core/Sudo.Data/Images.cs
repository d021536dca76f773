// Image ↔ tensor conversion, transforms, grids, and CLIP preprocessing as PickScore / HPSv2 use it.
using Sudo.Torch;
using static Sudo.Torch.torch;
using F = Sudo.Torch.torch.nn.functional;

namespace Sudo.Data;

public static class Images
{
    /// <summary>[3, H, W] float32 in [0, 1].</summary>
    public static Tensor ToTensor01(RgbImage img)
    {
        img.Validate();
        using var scope = NewDisposeScope();
        var t = tensor(img.Pixels, [img.Height, img.Width, 3]).permute(2, 0, 1).to(ScalarType.Float32) / 255.0;
        return scope.MoveToOuter(t.contiguous());
    }

    /// <summary>[3, H, W] float32 in [−1, 1] (what the VAE encodes).</summary>
    public static Tensor ToTensor(RgbImage img)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(ToTensor01(img) * 2.0 - 1.0);
    }

    /// <summary>An RGB image from [3, H, W] in [0, 1] (values clamped, round(x·255) as diffusers' pt → PIL).</summary>
    public static RgbImage FromTensor01(Tensor chw)
    {
        if (chw.dim() != 3 || chw.size(0) != 3) throw new ArgumentException($"expected a [3, H, W] image tensor, got [{string.Join(", ", chw.shape)}]");
        using var scope = NewDisposeScope();
        var u8 = (chw.detach().to(Device.CPU, ScalarType.Float32).clamp(0, 1) * 255.0).round().to(ScalarType.UInt8).permute(1, 2, 0).contiguous();
        return new RgbImage((int)chw.size(2), (int)chw.size(1), u8.ToArray<byte>());
    }

    public static RgbImage FromTensor(Tensor chwMinus1To1)
    {
        using var scope = NewDisposeScope();
        return FromTensor01((chwMinus1To1 + 1.0) / 2.0);
    }

    /// <summary>Resize [C, H, W] or [N, C, H, W] (bilinear, bicubic or nearest; antialias when shrinking).</summary>
    public static Tensor Resize(Tensor x, int height, int width, nn.InterpolationMode mode = nn.InterpolationMode.Bicubic, bool antialias = true)
    {
        using var scope = NewDisposeScope();
        var batched = x.dim() == 4 ? x : x.unsqueeze(0);
        var aa = antialias && mode is nn.InterpolationMode.Bilinear or nn.InterpolationMode.Bicubic;
        var y = F.interpolate(batched, size: (height, width), mode: mode, align_corners: mode == nn.InterpolationMode.Nearest ? null : false, antialias: aa);
        return scope.MoveToOuter(x.dim() == 4 ? y : y.squeeze(0));
    }

    /// <summary>Resize so the shorter side is <paramref name="size"/> (the other side truncated, as transformers does).</summary>
    public static Tensor ResizeShorterSide(Tensor x, int size, nn.InterpolationMode mode = nn.InterpolationMode.Bicubic)
    {
        var (h, w) = ShorterSideSize((int)x.size(-2), (int)x.size(-1), size);
        return Resize(x, h, w, mode);
    }

    public static (int h, int w) ShorterSideSize(int h, int w, int size) =>
        h >= w ? ((int)(size * (double)h / w), size) : (size, (int)(size * (double)w / h));

    public static Tensor CenterCrop(Tensor x, int height, int width)
    {
        var (h, w) = ((int)x.size(-2), (int)x.size(-1));
        if (h < height || w < width) throw new ArgumentException($"cannot crop {height}×{width} from a {h}×{w} image");
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(x.narrow(-2, (h - height) / 2, height).narrow(-1, (w - width) / 2, width).contiguous());
    }

    public static Tensor RandomCrop(Tensor x, int height, int width, Generator generator)
    {
        var (h, w) = ((int)x.size(-2), (int)x.size(-1));
        if (h < height || w < width) throw new ArgumentException($"cannot crop {height}×{width} from a {h}×{w} image");
        using var scope = NewDisposeScope();
        var top = randint(0, h - height + 1, [1], generator).item<long>();
        var left = randint(0, w - width + 1, [1], generator).item<long>();
        return scope.MoveToOuter(x.narrow(-2, top, height).narrow(-1, left, width).contiguous());
    }

    public static Tensor HorizontalFlip(Tensor x) => x.flip(x.dim() - 1);

    /// <summary>A rows × cols grid of [N, 3, H, W] images in [0, 1] with <paramref name="padding"/> pixels between cells.</summary>
    public static RgbImage Grid(Tensor images, int? rows = null, int? cols = null, int padding = 2, byte background = 255)
    {
        if (images.dim() != 4 || images.size(1) != 3) throw new ArgumentException($"expected [N, 3, H, W] images, got [{string.Join(", ", images.shape)}]");
        var n = (int)images.size(0);
        var c = cols ?? (rows is int r0 ? (n + r0 - 1) / r0 : (int)Math.Ceiling(Math.Sqrt(n)));
        var r = rows ?? (n + c - 1) / c;
        if (r * c < n) throw new ArgumentException($"a {r}×{c} grid cannot hold {n} images");
        var (h, w) = ((int)images.size(2), (int)images.size(3));
        var gw = c * w + (c + 1) * padding;
        var gh = r * h + (r + 1) * padding;
        var pixels = new byte[(long)gw * gh * 3];
        Array.Fill(pixels, background);
        for (var i = 0; i < n; i++)
        {
            var img = FromTensor01(images.select(0, i));
            var (y0, x0) = (padding + i / c * (h + padding), padding + i % c * (w + padding));
            for (var y = 0; y < h; y++)
                Array.Copy(img.Pixels, (long)y * w * 3, pixels, ((long)(y0 + y) * gw + x0) * 3, w * 3);
        }
        return new RgbImage(gw, gh, pixels);
    }

    public static readonly double[] ClipMean = [0.48145466, 0.4578275, 0.40821073];
    public static readonly double[] ClipStd = [0.26862954, 0.26130258, 0.27577711];

    /// <summary>transformers' CLIPImageProcessor for CLIP ViT-L/H (PickScore): shortest side to
    /// <paramref name="size"/> with Pillow-like bicubic (two antialiased separable passes, horizontal first,
    /// each rounded and clipped to uint8 — within one uint8 level of Pillow), center crop (floor offsets),
    /// ÷255, CLIP mean/std. Returns [N, 3, crop, crop] float32.</summary>
    /// <summary>Pillow's Image.resize((w, h), BICUBIC) approximated on uint8 values: two antialiased separable
    /// bicubic passes (horizontal first), each rounded and clipped to [0, 255]. [1, 3, h, w] float32 holding
    /// integers.</summary>
    public static Tensor PillowResize(RgbImage img, int h, int w)
    {
        using var scope = NewDisposeScope();
        var u8 = tensor(img.Pixels, [img.Height, img.Width, 3]).permute(2, 0, 1).unsqueeze(0).to(ScalarType.Float32);
        if (h == img.Height && w == img.Width) return scope.MoveToOuter(u8);
        var pass1 = w == img.Width ? u8 : F.interpolate(u8, size: (img.Height, w), mode: nn.InterpolationMode.Bicubic, align_corners: false, antialias: true).round().clamp(0, 255);
        var pass2 = h == img.Height ? pass1 : F.interpolate(pass1, size: (h, w), mode: nn.InterpolationMode.Bicubic, align_corners: false, antialias: true).round().clamp(0, 255);
        return scope.MoveToOuter(pass2);
    }

    /// <summary>torchvision CenterCrop's offset: int(round((size − crop) / 2)) with Python's half-to-even round.</summary>
    public static int TorchvisionCropOffset(int size, int crop) => (int)Math.Round((size - crop) / 2.0, MidpointRounding.ToEven);

    public static Tensor ClipPreprocess(IReadOnlyList<RgbImage> images, int size = 224, int crop = 224)
    {
        using var scope = NewDisposeScope();
        var outs = new List<Tensor>();
        foreach (var img in images)
        {
            var (h2, w2) = ShorterSideSize(img.Height, img.Width, size);
            var pass2 = PillowResize(img, h2, w2);
            var cropped = pass2.narrow(2, (h2 - crop) / 2, crop).narrow(3, (w2 - crop) / 2, crop);
            // rescale in float64 then cast (u8 · (1/255)), normalize in float32
            var x = (cropped.to(ScalarType.Float64) * (1.0 / 255.0)).to(ScalarType.Float32);
            var mean = tensor(ClipMean.Select(v => (float)v).ToArray(), [1, 3, 1, 1]);
            var std = tensor(ClipStd.Select(v => (float)v).ToArray(), [1, 3, 1, 1]);
            outs.Add((x - mean) / std);
        }
        return scope.MoveToOuter(cat(outs.ToArray()));
    }
}
