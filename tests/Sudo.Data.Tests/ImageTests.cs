using NUnit.Framework;
using Sudo.Data;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion.Tests;

public class ImageTests
{
    private static RgbImage Pattern(int w, int h, int seed)
    {
        var rng = new Random(seed);
        var px = new byte[w * h * 3];
        for (var y = 0; y < h; y++)
            for (var x = 0; x < w; x++)
            {
                var i = (y * w + x) * 3;
                px[i] = (byte)(x * 255 / Math.Max(1, w - 1));
                px[i + 1] = (byte)(y * 255 / Math.Max(1, h - 1));
                px[i + 2] = (byte)rng.Next(256);
            }
        return new RgbImage(w, h, px);
    }

    [Test]
    public void ClipPreprocessingMatchesTransformersAndPillow()
    {
        var dir = Shared.Require("golden", "clip_preprocess");
        var images = new[] { "image_0_320x240.png", "image_1_97x150.png", "image_2_455x263.png" }.Select(f => ImageCodecs.Load(Path.Combine(dir, f))).ToArray();
        using var scope = NewDisposeScope();
        var pv = Images.ClipPreprocess(images);
        using var io = safetensors.safe_open(Path.Combine(dir, "io.safetensors"));
        var err = Check.Close(pv, io.get("out_pixel_values"), 0.016, "pixel_values (two-pass bicubic)");
        TestContext.Out.WriteLine($"mean |Δ| {(pv - io.get("out_pixel_values")).abs().mean().item():G3}");
        Assert.That(err, Is.LessThan(0.016));
        var hw = io.get("dbg_resized_hw").ToArray<long>();
        for (var i = 0; i < images.Length; i++)
            Assert.That(Images.ShorterSideSize(images[i].Height, images[i].Width, 224), Is.EqualTo(((int)hw[2 * i], (int)hw[2 * i + 1])));
    }

    [Test]
    public void CodecsRoundTrip()
    {
        var img = Pattern(37, 23, 1);
        Assert.That(ImageCodecs.DecodePng(ImageCodecs.EncodePng(img)).Pixels, Is.EqualTo(img.Pixels));
        var jpg = ImageCodecs.DecodeJpeg(ImageCodecs.EncodeJpeg(img, 100));
        Assert.That((jpg.Width, jpg.Height), Is.EqualTo((37, 23)));
        var meanErr = jpg.Pixels.Zip(img.Pixels, (a, b) => Math.Abs(a - b)).Average();
        Assert.That(meanErr, Is.LessThan(6), "JPEG q100 stays close");
        var path = Path.Combine(Path.GetTempPath(), $"sudo-img-{Guid.NewGuid():N}.png");
        try
        {
            ImageCodecs.Save(img, path);
            Assert.That(ImageCodecs.Load(path).Pixels, Is.EqualTo(img.Pixels));
        }
        finally
        {
            File.Delete(path);
        }
        using var scope = NewDisposeScope();
        var t = Images.ToTensor(img);
        Assert.That(t.shape, Is.EqualTo(new long[] { 3, 23, 37 }));
        Assert.That(t.min().item(), Is.GreaterThanOrEqualTo(-1));
        Assert.That(Images.FromTensor(t).Pixels, Is.EqualTo(img.Pixels));
        Assert.That(Images.CenterCrop(t, 10, 20).shape, Is.EqualTo(new long[] { 3, 10, 20 }));
        using var g = new Generator(0);
        Assert.That(Images.RandomCrop(t, 10, 20, g).shape, Is.EqualTo(new long[] { 3, 10, 20 }));
        Assert.That(Images.HorizontalFlip(t)[.., .., 0].equal(t[.., .., 36]), Is.True);
        Assert.That(Images.ResizeShorterSide(t, 46).shape, Is.EqualTo(new long[] { 3, 46, 74 }));
        Assert.That(Images.Resize(t, 12, 12, nn.InterpolationMode.Bilinear).shape, Is.EqualTo(new long[] { 3, 12, 12 }));
        var grid = Images.Grid(stack([Images.ToTensor01(img), Images.ToTensor01(img), Images.ToTensor01(img)]), cols: 2, padding: 1);
        Assert.That((grid.Width, grid.Height), Is.EqualTo((2 * 37 + 3, 2 * 23 + 3)));
    }

    [Test]
    public void FuzzedAndHostileInputsNeverCrash()
    {
        var png = ImageCodecs.EncodePng(Pattern(16, 16, 2));
        var jpg = ImageCodecs.EncodeJpeg(Pattern(16, 16, 3));
        var rng = new Random(7);
        var failures = 0;
        for (var n = 0; n < 400; n++)
        {
            var src = n % 2 == 0 ? png : jpg;
            byte[] data = (n % 4) switch
            {
                0 => src[..rng.Next(1, src.Length)],                                   // truncated
                1 => src.Select((b, i) => i > 8 && rng.NextDouble() < 0.02 ? (byte)rng.Next(256) : b).ToArray(), // bit rot
                2 => src[..8].Concat(Enumerable.Range(0, rng.Next(0, 200)).Select(_ => (byte)rng.Next(256))).ToArray(),
                _ => Enumerable.Range(0, rng.Next(0, 64)).Select(_ => (byte)rng.Next(256)).ToArray(),
            };
            try
            {
                var img = ImageCodecs.IsPng(data) ? ImageCodecs.DecodePng(data) : ImageCodecs.DecodeJpeg(data);
                Assert.That(img.Pixels.Length, Is.EqualTo(img.Width * img.Height * 3));
            }
            catch (InvalidDataException)
            {
                failures++;
            }
        }
        TestContext.Out.WriteLine($"{failures}/400 fuzzed inputs rejected with InvalidDataException, the rest decoded");
        Assert.That(failures, Is.GreaterThan(100));
        // A header claiming 2^30 × 2^30 pixels is refused before allocating.
        var hostile = (byte[])png.Clone();
        hostile[16] = 0x40; hostile[17] = 0; hostile[18] = 0; hostile[19] = 0;
        hostile[20] = 0x40; hostile[21] = 0; hostile[22] = 0; hostile[23] = 0;
        Assert.Throws<InvalidDataException>(() => ImageCodecs.DecodePng(hostile));
        Assert.Throws<InvalidDataException>(() => ImageCodecs.DecodePng([1, 2, 3]));
        Assert.Throws<InvalidDataException>(() => ImageCodecs.DecodeJpeg([0xFF, 0xD8, 0xFF]));
    }
}
