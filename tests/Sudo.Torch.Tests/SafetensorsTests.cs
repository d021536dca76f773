using System.Buffers.Binary;
using System.Text;
using NUnit.Framework;
using static Sudo.Torch.torch;

namespace Sudo.Torch.Tests;

public class SafetensorsTests
{
    private string _dir = "";

    [SetUp]
    public void SetUp() => Directory.CreateDirectory(_dir = Path.Combine(Path.GetTempPath(), $"sudo-st-{Guid.NewGuid():N}"));

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, true);

    [Test]
    public void RoundTripsEveryDtypeAndZeroDim()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(0);
        var tensors = new Dictionary<string, Tensor>
        {
            ["f32"] = randn([3, 4], g),
            ["f16"] = randn([5], g).half(),
            ["bf16"] = randn([2, 2, 2], g).bfloat16(),
            ["f64"] = randn([3], g, float64),
            ["i64"] = arange(-3, 4, 1),
            ["i32"] = arange(5).@int(),
            ["u8"] = arange(250, 256, 1).to(uint8),
            ["bool"] = tensor(new[] { true, false, true }),
            ["scalar"] = scalar_tensor(3.25),
            ["empty"] = zeros([0, 4]),
            ["strided"] = arange(12.0).view(3, 4).t(),
        };
        var path = Path.Combine(_dir, "all.safetensors");
        safetensors.save_file(tensors, path, new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode" });
        Assert.That(new FileInfo(path).Length % 8, Is.EqualTo(0).Or.Not.EqualTo(0));   // any length is valid
        var (entries, meta, start) = safetensors.ReadHeader(path);
        Assert.That(start % 8, Is.EqualTo(0), "header padded to 8 bytes");
        Assert.That(meta["note"], Is.EqualTo("ünïcode"));
        Assert.That(entries["scalar"].Shape, Is.Empty);
        var back = safetensors.load_file(path);
        Assert.That(back.Keys.Order(), Is.EqualTo(tensors.Keys.Order()));
        foreach (var (k, t) in tensors)
        {
            Assert.That(back[k].dtype, Is.EqualTo(t.dtype), k);
            Assert.That(back[k].shape, Is.EqualTo(t.shape), k);
            Assert.That(back[k].equal(t.contiguous()), Is.True, k);
        }
        Assert.That(back["f32"].IsMapped, Is.True);
        var copied = safetensors.load_file(path, mmap: false);
        Assert.That(copied["f32"].IsMapped, Is.False);
    }

    [Test]
    public void WritesAreAtomic()
    {
        using var scope = NewDisposeScope();
        var path = Path.Combine(_dir, "w.safetensors");
        safetensors.save_file(new Dictionary<string, Tensor> { ["a"] = ones([2]) }, path);
        var before = File.ReadAllBytes(path);
        // A failing write (meta tensor: no data) leaves the previous file intact and no temporary behind.
        Assert.Throws<ArgumentException>(() => safetensors.save_file(new Dictionary<string, Tensor> { ["a"] = ones([2]), ["m"] = empty([2], device: Device.Meta) }, path));
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before));
        Assert.That(Directory.GetFiles(_dir), Has.Length.EqualTo(1));
    }

    [Test]
    public void ShardedCheckpoints()
    {
        using var scope = NewDisposeScope();
        var tensors = Enumerable.Range(0, 7).ToDictionary(i => $"layer.{i}.weight", i => full([100], i));
        var index = safetensors.save_sharded(tensors, _dir, "diffusion_pytorch_model", maxShardBytes: 1000);
        Assert.That(Path.GetFileName(index), Is.EqualTo("diffusion_pytorch_model.safetensors.index.json"));
        Assert.That(File.Exists(Path.Combine(_dir, "diffusion_pytorch_model-00001-of-00004.safetensors")), Is.True);
        var back = safetensors.load_sharded(index);
        Assert.That(back.Count, Is.EqualTo(7));
        foreach (var (k, t) in tensors) Assert.That(back[k].equal(t), Is.True, k);
        // an index that points a key at the wrong shard
        File.WriteAllText(index, File.ReadAllText(index).Replace("\"layer.0.weight\": \"diffusion_pytorch_model-00001", "\"layer.0.weight\": \"diffusion_pytorch_model-00002"));
        var e = Assert.Throws<InvalidDataException>(() => safetensors.load_sharded(index));
        Assert.That(e!.Message, Does.Contain("layer.0.weight"));
        var single = safetensors.save_sharded(tensors, Path.Combine(_dir, "one"), "model", maxShardBytes: 1 << 20);
        Assert.That(Path.GetFileName(single), Is.EqualTo("model.safetensors"));
    }

    private string Write(string name, byte[] header, int dataBytes, ulong? claimed = null)
    {
        var path = Path.Combine(_dir, name);
        var bytes = new byte[8 + header.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, claimed ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private string WriteJson(string name, string json, int dataBytes) => Write(name, Encoding.UTF8.GetBytes(json), dataBytes);

    private static string Fail(string path)
    {
        var e = Assert.Throws<InvalidDataException>(() => safetensors.load_file(path).Values.ToList().ForEach(t => t.Dispose()));
        return e!.Message;
    }

    [Test]
    public void CorruptTruncatedAndHostileFilesGetClearErrors()
    {
        var ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
        Assert.DoesNotThrow(() => safetensors.load_file(WriteJson("ok.safetensors", ok, 8)).Values.ToList().ForEach(t => t.Dispose()));
        File.WriteAllBytes(Path.Combine(_dir, "tiny.safetensors"), [1, 2, 3]);
        Assert.That(Fail(Path.Combine(_dir, "tiny.safetensors")), Does.Contain("8-byte header length is missing"));
        Assert.That(Fail(Write("huge.safetensors", Encoding.UTF8.GetBytes(ok), 8, claimed: ulong.MaxValue)), Does.Contain("exceeds"));
        Assert.That(Fail(Write("long.safetensors", Encoding.UTF8.GetBytes(ok), 8, claimed: 10_000)), Does.Contain("truncated"));
        Assert.That(Fail(WriteJson("trunc.safetensors", ok, 4)), Does.Contain("outside the 4-byte data section"));
        Assert.That(Fail(WriteJson("trail.safetensors", ok, 12)), Does.Contain("trailing"));
        Assert.That(Fail(WriteJson("json.safetensors", "{\"a\":", 0)), Does.Contain("not valid JSON"));
        Assert.That(Fail(WriteJson("arr.safetensors", "[1,2]", 0)), Does.Contain("must be a JSON object"));
        Assert.That(Fail(Write("utf8.safetensors", [0x7b, 0xff, 0xfe, 0x7d], 0)), Does.Contain("JSON"));
        Assert.That(Fail(WriteJson("dtype.safetensors", ok.Replace("F32", "F8_E4M3"), 8)), Does.Contain("unsupported dtype 'F8_E4M3'"));
        Assert.That(Fail(WriteJson("size.safetensors", ok.Replace("[2]", "[3]"), 8)), Does.Contain("needs 12 bytes but data_offsets give 8"));
        Assert.That(Fail(WriteJson("neg.safetensors", ok.Replace("[2]", "[-2]"), 8)), Does.Contain("non-negative"));
        Assert.That(Fail(WriteJson("ovf.safetensors", ok.Replace("[2]", "[4611686018427387904,4]"), 8)), Does.Contain("overflows"));
        Assert.That(Fail(WriteJson("rev.safetensors", ok.Replace("[0,8]", "[8,0]"), 8)), Does.Contain("outside"));
        var overlap = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
        Assert.That(Fail(WriteJson("overlap.safetensors", overlap, 8)), Does.Contain("overlapping"));
        var hole = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
        Assert.That(Fail(WriteJson("hole.safetensors", hole, 12)), Does.Contain("starts at byte 8, expected 4"));
        Assert.That(Fail(WriteJson("deep.safetensors", new string('[', 500) + new string(']', 500), 0)), Does.Contain("JSON"));
        Assert.That(Fail(WriteJson("meta.safetensors", "{\"__metadata__\":{\"k\":1}}", 0)), Does.Contain("must be a string"));
        Assert.That(Fail(WriteJson("offs.safetensors", ok.Replace("[0,8]", "[0]"), 8)), Does.Contain("data_offsets must be [begin, end]"));
        Assert.Throws<FileNotFoundException>(() => safetensors.load_file(Path.Combine(_dir, "nope.safetensors")));
    }

    [Test]
    public void ReadsEveryGoldenFile()
    {
        var root = Shared.Require("golden");
        var files = Directory.GetFiles(root, "*.safetensors", SearchOption.AllDirectories);
        Assert.That(files, Is.Not.Empty);
        long tensors = 0, zeroDim = 0;
        foreach (var path in files)
        {
            using var f = safetensors.safe_open(path);
            foreach (var key in f.Keys)
            {
                using var scope = NewDisposeScope();
                var t = f.get(key);
                Assert.That(t.shape, Is.EqualTo(f.Entries[key].Shape), $"{path}:{key}");
                if (t.is_floating_point() && t.numel() > 0)
                    Assert.That(t.isfinite().all().item<bool>(), Is.True, $"{path}:{key} has non-finite values");
                tensors++;
                if (t.dim() == 0) zeroDim++;
            }
        }
        TestContext.Out.WriteLine($"read {tensors} tensors from {files.Length} golden files ({zeroDim} 0-dim)");
        Assert.That(zeroDim, Is.GreaterThan(0), "the golden set has 0-dim tensors (e.g. in_timestep_scalar)");
        // A known 0-dim value: the SD1.5 UNet item's scalar timestep is an int64 0-dim tensor.
        using var io = safetensors.safe_open(Path.Combine(root, "unet_sd15", "io.safetensors"));
        Assert.That(io.Entries["in_timestep_scalar"].Shape, Is.Empty);
        Assert.That(io.Entries["in_timestep_scalar"].DType, Is.EqualTo(ScalarType.Int64));
        Assert.That(io.Metadata.ContainsKey("item"), Is.True);
    }
}
