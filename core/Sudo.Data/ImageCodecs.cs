// PNG through libspng and JPEG through libturbojpeg (Debian's libspng0 / libturbojpeg0; the tj* API of
// libjpeg-turbo 2.1). Decoded images are 8-bit RGB, row-major H×W×3. Every failure is a clear exception;
// hostile headers (huge dimensions) are refused before any allocation.
using System.Runtime.InteropServices;

namespace Sudo.Data;

/// <summary>An 8-bit RGB image: Pixels holds H·W·3 bytes, row-major.</summary>
public sealed record RgbImage(int Width, int Height, byte[] Pixels)
{
    public RgbImage Validate()
    {
        if (Width <= 0 || Height <= 0 || Pixels.Length != (long)Width * Height * 3)
            throw new ArgumentException($"RgbImage {Width}×{Height} needs {(long)Width * Height * 3} bytes, has {Pixels.Length}");
        return this;
    }
}

public static unsafe partial class ImageCodecs
{
    /// <summary>Images above this many pixels are refused (a hostile header can claim 2^31 × 2^31).</summary>
    public const long MaxPixels = 100_000_000;

    private const string Spng = "libspng.so.0";
    private const string TurboJpeg = "libturbojpeg.so.0";

    [StructLayout(LayoutKind.Sequential)]
    private struct SpngIhdr
    {
        public uint width, height;
        public byte bit_depth, color_type, compression_method, filter_method, interlace_method;
    }

    [LibraryImport(Spng)] private static partial IntPtr spng_ctx_new(int flags);
    [LibraryImport(Spng)] private static partial void spng_ctx_free(IntPtr ctx);
    [LibraryImport(Spng)] private static partial int spng_set_png_buffer(IntPtr ctx, byte* buf, nuint size);
    [LibraryImport(Spng)] private static partial int spng_set_image_limits(IntPtr ctx, uint width, uint height);
    [LibraryImport(Spng)] private static partial int spng_set_chunk_limits(IntPtr ctx, nuint chunkSize, nuint cacheSize);
    [LibraryImport(Spng)] private static partial int spng_get_ihdr(IntPtr ctx, SpngIhdr* ihdr);
    [LibraryImport(Spng)] private static partial int spng_decoded_image_size(IntPtr ctx, int fmt, nuint* len);
    [LibraryImport(Spng)] private static partial int spng_decode_image(IntPtr ctx, byte* outp, nuint len, int fmt, int flags);
    [LibraryImport(Spng)] private static partial int spng_set_ihdr(IntPtr ctx, SpngIhdr* ihdr);
    [LibraryImport(Spng)] private static partial int spng_set_option(IntPtr ctx, int option, int value);
    [LibraryImport(Spng)] private static partial int spng_encode_image(IntPtr ctx, byte* img, nuint len, int fmt, int flags);
    [LibraryImport(Spng)] private static partial IntPtr spng_get_png_buffer(IntPtr ctx, nuint* len, int* error);
    [LibraryImport(Spng)] private static partial IntPtr spng_strerror(int err);
    [LibraryImport("libc")] private static partial void free(IntPtr p);

    private const int SPNG_FMT_RGB8 = 4, SPNG_FMT_PNG = 256, SPNG_DECODE_TRNS = 1, SPNG_CTX_ENCODER = 2;
    private const int SPNG_ENCODE_TO_BUFFER = 12, SPNG_ENCODE_FINALIZE = 2, SPNG_COLOR_TYPE_TRUECOLOR = 2;

    private static string SpngError(int e) => Marshal.PtrToStringUTF8(spng_strerror(e)) ?? $"error {e}";

    public static bool IsPng(ReadOnlySpan<byte> d) => d.Length >= 8 && d[0] == 0x89 && d[1] == (byte)'P' && d[2] == (byte)'N' && d[3] == (byte)'G';
    public static bool IsJpeg(ReadOnlySpan<byte> d) => d.Length >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF;

    public static RgbImage DecodePng(byte[] data, string what = "PNG data")
    {
        if (!IsPng(data)) throw new InvalidDataException($"{what}: not a PNG (bad signature)");
        var ctx = spng_ctx_new(0);
        if (ctx == IntPtr.Zero) throw new OutOfMemoryException("spng_ctx_new failed");
        try
        {
            spng_set_image_limits(ctx, 1 << 20, 1 << 20);
            spng_set_chunk_limits(ctx, 64 << 20, 64 << 20);
            fixed (byte* p = data)
            {
                Check(spng_set_png_buffer(ctx, p, (nuint)data.Length), what);
                SpngIhdr ihdr;
                Check(spng_get_ihdr(ctx, &ihdr), what);
                if ((long)ihdr.width * ihdr.height > MaxPixels)
                    throw new InvalidDataException($"{what}: {ihdr.width}×{ihdr.height} exceeds the {MaxPixels}-pixel limit");
                nuint size;
                Check(spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &size), what);
                var outp = new byte[size];
                fixed (byte* o = outp) Check(spng_decode_image(ctx, o, size, SPNG_FMT_RGB8, SPNG_DECODE_TRNS), what);
                return new RgbImage((int)ihdr.width, (int)ihdr.height, outp).Validate();
            }
        }
        finally
        {
            spng_ctx_free(ctx);
        }

        static void Check(int rc, string what)
        {
            if (rc != 0) throw new InvalidDataException($"{what}: corrupt or unsupported PNG ({SpngError(rc)})");
        }
    }

    public static byte[] EncodePng(RgbImage img)
    {
        img.Validate();
        var ctx = spng_ctx_new(SPNG_CTX_ENCODER);
        if (ctx == IntPtr.Zero) throw new OutOfMemoryException("spng_ctx_new failed");
        try
        {
            spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
            var ihdr = new SpngIhdr { width = (uint)img.Width, height = (uint)img.Height, bit_depth = 8, color_type = SPNG_COLOR_TYPE_TRUECOLOR };
            var rc = spng_set_ihdr(ctx, &ihdr);
            if (rc != 0) throw new InvalidOperationException($"PNG encode: {SpngError(rc)}");
            fixed (byte* p = img.Pixels)
                rc = spng_encode_image(ctx, p, (nuint)img.Pixels.Length, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
            if (rc != 0) throw new InvalidOperationException($"PNG encode: {SpngError(rc)}");
            nuint len;
            int err;
            var buf = spng_get_png_buffer(ctx, &len, &err);
            if (buf == IntPtr.Zero) throw new InvalidOperationException($"PNG encode: {SpngError(err)}");
            try
            {
                var result = new byte[len];
                Marshal.Copy(buf, result, 0, (int)len);
                return result;
            }
            finally
            {
                free(buf);
            }
        }
        finally
        {
            spng_ctx_free(ctx);
        }
    }

    [LibraryImport(TurboJpeg)] private static partial IntPtr tjInitDecompress();
    [LibraryImport(TurboJpeg)] private static partial IntPtr tjInitCompress();
    [LibraryImport(TurboJpeg)] private static partial int tjDestroy(IntPtr h);
    [LibraryImport(TurboJpeg)] private static partial int tjDecompressHeader3(IntPtr h, byte* buf, nuint size, int* width, int* height, int* subsamp, int* colorspace);
    [LibraryImport(TurboJpeg)] private static partial int tjDecompress2(IntPtr h, byte* buf, nuint size, byte* dst, int width, int pitch, int height, int pixelFormat, int flags);
    [LibraryImport(TurboJpeg)] private static partial int tjCompress2(IntPtr h, byte* src, int width, int pitch, int height, int pixelFormat, byte** jpegBuf, nuint* jpegSize, int subsamp, int quality, int flags);
    [LibraryImport(TurboJpeg)] private static partial void tjFree(byte* buf);
    [LibraryImport(TurboJpeg)] private static partial IntPtr tjGetErrorStr2(IntPtr h);

    private const int TJPF_RGB = 0, TJSAMP_444 = 0, TJFLAG_ACCURATEDCT = 4096;

    [LibraryImport(TurboJpeg)] private static partial int tjGetErrorCode(IntPtr h);

    private const int TJPF_CMYK = 11, TJCS_CMYK = 3, TJCS_YCCK = 4, TJERR_WARNING = 0;

    /// <summary>Decodes a JPEG to RGB as Pillow's Image.open(...).convert("RGB") does: greyscale expanded, CMYK/YCCK
    /// converted with Pillow's cmyk2rgb (Adobe files hold inverted CMYK), EXIF orientation not applied, libjpeg
    /// warnings tolerated except a premature end of data (Pillow: "image file is truncated").</summary>
    public static RgbImage DecodeJpeg(byte[] data, string what = "JPEG data")
    {
        var (buf, w, h) = DecodeJpegPooled(data, what);
        try
        {
            return new RgbImage(w, h, buf.AsSpan(0, w * h * 3).ToArray());
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buf);
        }
    }

    /// <summary>Decodes into a buffer rented from ArrayPool&lt;byte&gt;.Shared (the first w·h·3 bytes are the RGB pixels);
    /// the caller returns it. Loaders use this so that a decoded image leaves no large garbage behind.</summary>
    public static (byte[] pixels, int width, int height) DecodeJpegPooled(byte[] data, string what = "JPEG data")
    {
        if (!IsJpeg(data)) throw new InvalidDataException($"{what}: not a JPEG (bad signature)");
        var pool = System.Buffers.ArrayPool<byte>.Shared;
        var h = tjInitDecompress();
        if (h == IntPtr.Zero) throw new OutOfMemoryException("tjInitDecompress failed");
        byte[]? outp = null;
        try
        {
            fixed (byte* p = data)
            {
                int w, hh, ss, cs;
                if (tjDecompressHeader3(h, p, (nuint)data.Length, &w, &hh, &ss, &cs) != 0)
                    throw new InvalidDataException($"{what}: corrupt JPEG header ({Marshal.PtrToStringUTF8(tjGetErrorStr2(h))})");
                if (w <= 0 || hh <= 0 || (long)w * hh > MaxPixels)
                    throw new InvalidDataException($"{what}: JPEG size {w}×{hh} is invalid or exceeds {MaxPixels} pixels");
                var cmyk = cs is TJCS_CMYK or TJCS_YCCK;
                var channels = cmyk ? 4 : 3;
                outp = pool.Rent(w * hh * channels);
                fixed (byte* o = outp)
                    if (tjDecompress2(h, p, (nuint)data.Length, o, w, w * channels, hh, cmyk ? TJPF_CMYK : TJPF_RGB, TJFLAG_ACCURATEDCT) != 0)
                    {
                        var msg = Marshal.PtrToStringUTF8(tjGetErrorStr2(h)) ?? "";
                        if (tjGetErrorCode(h) != TJERR_WARNING || msg.Contains("Premature end", StringComparison.OrdinalIgnoreCase))
                            throw new InvalidDataException($"{what}: corrupt or truncated JPEG ({msg})");
                    }
                if (cmyk)
                {
                    var rgb = pool.Rent(w * hh * 3);
                    CmykToRgb(outp, rgb, w * hh, HasAdobeMarker(data));
                    pool.Return(outp);
                    outp = rgb;
                }
                var result = (outp, w, hh);
                outp = null;
                return result;
            }
        }
        finally
        {
            if (outp != null) pool.Return(outp);
            tjDestroy(h);
        }
    }

    /// <summary>Whether the JPEG has an Adobe APP14 segment before its first scan (then CMYK is stored inverted).</summary>
    private static bool HasAdobeMarker(byte[] d)
    {
        var i = 2;
        while (i + 4 <= d.Length && d[i] == 0xFF)
        {
            var marker = d[i + 1];
            if (marker == 0xDA) break;   // start of scan
            var len = (d[i + 2] << 8) | d[i + 3];
            if (marker == 0xEE && len >= 7 && i + 9 <= d.Length && d.AsSpan(i + 4, 5).SequenceEqual("Adobe"u8)) return true;
            i += 2 + len;
        }
        return false;
    }

    /// <summary>Pillow's cmyk2rgb (libImaging/Convert.c): nk = 255 − k; c' = nk − c·nk/255 (MULDIV255, rounded).</summary>
    private static void CmykToRgb(byte[] cmyk, byte[] rgb, int n, bool inverted)
    {
        for (var i = 0; i < n; i++)
        {
            int Ch(int k) => inverted ? 255 - cmyk[4 * i + k] : cmyk[4 * i + k];
            var nk = 255 - Ch(3);
            for (var c = 0; c < 3; c++)
            {
                var tmp = Ch(c) * nk + 128;
                var v = nk - (((tmp >> 8) + tmp) >> 8);
                rgb[3 * i + c] = (byte)Math.Clamp(v, 0, 255);
            }
        }
    }

    public static byte[] EncodeJpeg(RgbImage img, int quality = 95)
    {
        img.Validate();
        if (quality is < 1 or > 100) throw new ArgumentOutOfRangeException(nameof(quality), "JPEG quality is 1..100");
        var h = tjInitCompress();
        if (h == IntPtr.Zero) throw new OutOfMemoryException("tjInitCompress failed");
        try
        {
            byte* buf = null;
            nuint size = 0;
            fixed (byte* p = img.Pixels)
                if (tjCompress2(h, p, img.Width, img.Width * 3, img.Height, TJPF_RGB, &buf, &size, TJSAMP_444, quality, TJFLAG_ACCURATEDCT) != 0)
                    throw new InvalidOperationException($"JPEG encode: {Marshal.PtrToStringUTF8(tjGetErrorStr2(h))}");
            try
            {
                return new ReadOnlySpan<byte>(buf, (int)size).ToArray();
            }
            finally
            {
                tjFree(buf);
            }
        }
        finally
        {
            tjDestroy(h);
        }
    }

    /// <summary>Reads a PNG or JPEG file (by content, not extension).</summary>
    public static RgbImage Load(string path) => Decode(File.ReadAllBytes(path), path);

    /// <summary>Decodes PNG or JPEG bytes (by signature); <paramref name="what"/> names them in errors.</summary>
    public static RgbImage Decode(byte[] data, string what)
    {
        if (IsPng(data)) return DecodePng(data, what);
        if (IsJpeg(data)) return DecodeJpeg(data, what);
        throw new InvalidDataException($"{what}: neither PNG nor JPEG ({data.Length} bytes, unrecognised signature)");
    }

    /// <summary>Writes PNG (or JPEG for .jpg/.jpeg) atomically: temporary file, then rename.</summary>
    public static void Save(RgbImage img, string path, int jpegQuality = 95)
    {
        var ext = Path.GetExtension(path).ToLowerInvariant();
        var bytes = ext is ".jpg" or ".jpeg" ? EncodeJpeg(img, jpegQuality) : EncodePng(img);
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        var tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            File.WriteAllBytes(tmp, bytes);
            Sudo.Torch.AtomicFile.MoveIntoPlace(tmp, full);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }
}
