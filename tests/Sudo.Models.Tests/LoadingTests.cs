using NUnit.Framework;
using Sudo.Parity;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Models.Tests;

public class LoadingTests
{
    private string _tmp = "";

    [SetUp]
    public void SetUp() => Directory.CreateDirectory(_tmp = Path.Combine(Path.GetTempPath(), $"sudo-models-{Guid.NewGuid():N}"));

    [TearDown]
    public void TearDown() => Directory.Delete(_tmp, true);

    private static string Golden(string item) => Shared.Require("golden", item);

    /// <summary>A config.json cut short (issue 21's first finding: `sudoml parity --model` died with a JsonReaderException)
    /// is an InvalidDataException naming the file, from the parity's component detection and from the model loader.</summary>
    [Test]
    public void ATruncatedConfigNamesTheFile()
    {
        File.WriteAllText(Path.Combine(_tmp, "config.json"), "{\"block_out_channels\": \"abc\", ");
        var e = Assert.Throws<InvalidDataException>(() => ModelParity.DetectComponent(_tmp))!;
        Assert.That(e.Message, Does.Contain(Path.Combine(_tmp, "config.json")).And.Contain("not valid JSON"));
        e = Assert.Throws<InvalidDataException>(() => UNet2DConditionConfig.FromFile(Path.Combine(_tmp, "config.json")))!;
        Assert.That(e.Message, Does.Contain("config.json").And.Contain("not valid JSON"));
        Assert.Throws<FileNotFoundException>(() => ModelParity.DetectComponent(Path.Combine(_tmp, "missing")));
    }

    private static Tensor RunUNet(UNet2DConditionModel m, string folder)
    {
        using var io = safetensors.safe_open(Path.Combine(folder, "io.safetensors"));
        using var _ = no_grad();
        var s = io.get("in_sample");
        return m.forward(s.to(m.conv_in.weight.dtype), io.get("in_timestep_int"), io.get("in_encoder_hidden_states").to(m.conv_in.weight.dtype));
    }

    private static Tensor Reference(string folder, string key)
    {
        using var io = safetensors.safe_open(Path.Combine(folder, "io.safetensors"));
        return io.get(key, copy: true);
    }

    /// <summary>A copy of a golden component folder whose weights are replaced by <paramref name="edit"/>.</summary>
    private string Variant(string item, string file, Func<Dictionary<string, Tensor>, Dictionary<string, Tensor>> edit, string? configJson = null)
    {
        var src = Golden(item);
        var dst = Path.Combine(_tmp, item + "-" + Guid.NewGuid().ToString("N")[..6]);
        Directory.CreateDirectory(dst);
        File.WriteAllText(Path.Combine(dst, "config.json"), configJson ?? File.ReadAllText(Path.Combine(src, "config.json")));
        var baseName = File.Exists(Path.Combine(src, "model.safetensors")) ? "model" : "diffusion_pytorch_model";
        using var scope = NewDisposeScope();
        var sd = safetensors.load_file(Path.Combine(src, baseName + ".safetensors"));
        safetensors.save_file(edit(sd), Path.Combine(dst, file));
        return dst;
    }

    [Test]
    public void SaveThenLoadGivesIdenticalOutputs()
    {
        var folder = Golden("unet_sd15");
        using var scope = NewDisposeScope();
        using var a = UNet2DConditionModel.from_pretrained(folder);
        var saved = Path.Combine(_tmp, "unet");
        a.save_pretrained(saved);
        Assert.That(File.Exists(Path.Combine(saved, "diffusion_pytorch_model.safetensors")), Is.True);
        using var b = UNet2DConditionModel.from_pretrained(saved);
        Assert.That(b.config, Is.Not.Null);
        Assert.That(b.config.ToJson().ToJsonString(), Is.EqualTo(a.config.ToJson().ToJsonString()));
        Assert.That(RunUNet(b, folder).equal(RunUNet(a, folder)), Is.True);
        // The saved config.json keeps diffusers' scalar-or-list conventions.
        var cfg = File.ReadAllText(Path.Combine(saved, "config.json"));
        Assert.That(cfg, Does.Contain("\"_class_name\": \"UNet2DConditionModel\""));
        Assert.That(cfg, Does.Contain("\"attention_head_dim\": 4"));
        // Sharded save → index + shards → identical outputs.
        var sharded = Path.Combine(_tmp, "unet-sharded");
        a.save_pretrained(sharded, max_shard_bytes: 100_000);
        Assert.That(File.Exists(Path.Combine(sharded, "diffusion_pytorch_model.safetensors.index.json")), Is.True);
        using var c = UNet2DConditionModel.from_pretrained(sharded);
        Assert.That(RunUNet(c, folder).equal(RunUNet(a, folder)), Is.True);
        foreach (var name in new[] { "vae", "clip_text", "clip_text_proj", "clip_full" })
        {
            var src = Golden(name);
            var dst = Path.Combine(_tmp, name);
            switch (name)
            {
                case "vae": { using var m = AutoencoderKL.from_pretrained(src); m.save_pretrained(dst); } break;
                case "clip_text": { using var m = CLIPTextModel.from_pretrained(src); m.save_pretrained(dst); } break;
                case "clip_text_proj": { using var m = CLIPTextModelWithProjection.from_pretrained(src); m.save_pretrained(dst); } break;
                default: { using var m = CLIPModel.from_pretrained(src); m.save_pretrained(dst); } break;
            }
            var report = ModelParity.Run(dst, Path.Combine(src, "io.safetensors"));
            Assert.That(report.Passed, Is.True, $"{name} after save_pretrained");
        }
    }

    [Test]
    public void Fp16VariantIsUpcastAndFp16ComputeIsRefusedOnCpu()
    {
        var folder = Golden("unet_sd15");
        using var scope = NewDisposeScope();
        var fp16 = Variant("unet_sd15", "diffusion_pytorch_model.fp16.safetensors", sd => sd.ToDictionary(kv => kv.Key, kv => kv.Value.half()));
        using var m16 = UNet2DConditionModel.from_pretrained(fp16, variant: "fp16");
        Assert.That(m16.conv_in.weight.dtype, Is.EqualTo(ScalarType.Float32));
        var expected = Reference(folder, "out_sample");
        // fp32 arithmetic from fp16-rounded weights: the error is the model's response to rounding its weights (u = 2⁻¹¹),
        // the same on every CPU (fp32 noise is ~1e-7). It is 2⁻¹¹/2⁻⁸ = 1/8 of the bf16 weight-rounding error e_w of the
        // test below (8.0e-3 → 1.0e-3 expected, 1.02e-3 measured); the bound allows twice that, relative to max(1, |ref|).
        var tol = 2e-3 * Math.Max(1, expected.abs().max().item());
        Check.Close(RunUNet(m16, folder), expected, tol, "fp16 weights, fp32 compute");
        var e = Assert.Throws<NotSupportedException>(() => UNet2DConditionModel.from_pretrained(folder, dtype: ScalarType.Float16));
        Assert.That(e!.Message, Does.Contain("fp16 cannot compute on CPU"));
    }

    [Test]
    public void Bf16LoadingIsWithinABoundDerivedFromBf16Rounding()
    {
        Requires.Bf16Compute();
        var folder = Golden("unet_sd15");
        using var scope = NewDisposeScope();
        var expected = Reference(folder, "out_sample");
        using var mbf = UNet2DConditionModel.from_pretrained(folder, dtype: ScalarType.BFloat16);
        Assert.That(mbf.conv_in.weight.dtype, Is.EqualTo(ScalarType.BFloat16));
        var outBf = RunUNet(mbf, folder);
        Assert.That(outBf.dtype, Is.EqualTo(ScalarType.BFloat16));
        // bf16 against the fp32 reference, within a bound derived from the arithmetic rather than fitted to one CPU.
        // e_w, the error of the fp32 model run from bf16-rounded weights and inputs, is how this model and input respond
        // to bf16 rounding (fp32 arithmetic: the same on every CPU to ~1e-7). Computing in bf16 adds, per weight-bearing
        // layer, the rounding of its input and of its output — each as large as the weight rounding's effect, since δW·x
        // and W·δx have equal variance for independent relative errors of size u — and, where a kernel accumulates in
        // bf16 (libtorch's scalar GEMM on CPUs without AVX-512 BW/VL/DQ), up to K roundings more per output, K the longest
        // reduction (in_features·kh·kw of a weight, the key count of attention). Independent errors add in variance:
        // |Δ| ≤ √(3 + K)·max|e_w|.
        var rounded = Variant("unet_sd15", "diffusion_pytorch_model.safetensors", sd => sd.ToDictionary(kv => kv.Key, kv => kv.Value.bfloat16().@float()));
        using var mw = UNet2DConditionModel.from_pretrained(rounded);
        Tensor ew;
        using (var io = safetensors.safe_open(Path.Combine(folder, "io.safetensors")))
        using (no_grad())
            ew = mw.forward(io.get("in_sample").bfloat16().@float(), io.get("in_timestep_int"), io.get("in_encoder_hidden_states").bfloat16().@float()) - expected;
        long k;
        using (var io = safetensors.safe_open(Path.Combine(folder, "io.safetensors")))
        {
            var sample = io.get("in_sample");
            var keys = Math.Max(io.get("in_encoder_hidden_states").size(1), sample.size(2) * sample.size(3));
            k = Math.Max(keys, mw.named_parameters().Where(x => x.name.EndsWith(".weight") && x.parameter.dim() >= 2).Max(x => x.parameter.shape[1..].Aggregate(1L, (a, b) => a * b)));
        }
        var ewMax = ew.abs().max().item();
        var bound = Math.Sqrt(3 + k) * ewMax;
        TestContext.Out.WriteLine($"bf16 bound: max|e_w| = {ewMax:G3} (fp32 from bf16-rounded weights and inputs), K = {k} → √(3 + K)·max|e_w| = {bound:G3}");
        Assert.That(ewMax, Is.GreaterThan(0), "bf16 rounding changed nothing: the rounded weights were not used");
        Check.Close(outBf.@float(), expected, bound, "bf16");
    }

    [Test]
    public void LoadErrorsAreClear()
    {
        using var scope = NewDisposeScope();
        var missing = Variant("unet_sd15", "diffusion_pytorch_model.safetensors", sd => { sd.Remove("conv_in.bias"); return sd; });
        var e1 = Assert.Throws<InvalidDataException>(() => UNet2DConditionModel.from_pretrained(missing));
        Assert.That(e1!.Message, Does.Contain("missing keys (1): conv_in.bias"));
        Assert.That(e1.Message, Does.Contain("diffusion_pytorch_model.safetensors"));
        var shape = Variant("unet_sd15", "diffusion_pytorch_model.safetensors", sd => { sd["conv_in.bias"] = zeros([3]); return sd; });
        Assert.That(Assert.Throws<InvalidDataException>(() => UNet2DConditionModel.from_pretrained(shape))!.Message, Does.Contain("conv_in.bias: checkpoint [3] vs model [16]"));
        var extra = Variant("unet_sd15", "diffusion_pytorch_model.safetensors", sd => { sd["lora.weight"] = zeros([3]); return sd; });
        Assert.That(Assert.Throws<InvalidDataException>(() => UNet2DConditionModel.from_pretrained(extra))!.Message, Does.Contain("unexpected keys (1): lora.weight"));
        var corrupt = Variant("unet_sd15", "diffusion_pytorch_model.safetensors", sd => sd);
        var file = Path.Combine(corrupt, "diffusion_pytorch_model.safetensors");
        var bytes = File.ReadAllBytes(file);
        File.WriteAllBytes(file, bytes[..(bytes.Length / 2)]);
        Assert.That(Assert.Throws<InvalidDataException>(() => UNet2DConditionModel.from_pretrained(corrupt))!.Message, Does.Contain("truncated"));
        var badCfg = Variant("unet_sd15", "diffusion_pytorch_model.safetensors", sd => sd,
            File.ReadAllText(Path.Combine(Golden("unet_sd15"), "config.json")).Replace("\"layers_per_block\": 2", "\"layers_per_block\": \"two\""));
        Assert.That(Assert.Throws<InvalidDataException>(() => UNet2DConditionModel.from_pretrained(badCfg))!.Message, Does.Contain("layers_per_block"));
        var empty = Path.Combine(_tmp, "empty");
        Directory.CreateDirectory(empty);
        File.Copy(Path.Combine(Golden("unet_sd15"), "config.json"), Path.Combine(empty, "config.json"));
        Assert.That(Assert.Throws<FileNotFoundException>(() => UNet2DConditionModel.from_pretrained(empty))!.Message, Does.Contain("no diffusion_pytorch_model.safetensors"));
        Assert.That(Assert.Throws<FileNotFoundException>(() => UNet2DConditionModel.from_pretrained(_tmp))!.Message, Does.Contain("config not found"));
        var unsupported = Variant("unet_sd15", "diffusion_pytorch_model.safetensors", sd => sd,
            File.ReadAllText(Path.Combine(Golden("unet_sd15"), "config.json")).Replace("\"UpBlock2D\"", "\"SimpleUpBlock2D\""));
        Assert.That(Assert.Throws<NotSupportedException>(() => UNet2DConditionModel.from_pretrained(unsupported))!.Message, Does.Contain("SimpleUpBlock2D"));
    }

    [Test]
    public void LegacyNamesAreConverted()
    {
        using var scope = NewDisposeScope();
        // Old diffusers VAE attention names, with 1×1 conv-shaped weights.
        var old = Variant("vae", "diffusion_pytorch_model.safetensors", sd => sd.ToDictionary(
            kv => kv.Key.Replace(".to_q.", ".query.").Replace(".to_k.", ".key.").Replace(".to_v.", ".value.").Replace(".to_out.0.", ".proj_attn."),
            kv => kv.Key.Contains(".to_") && kv.Value.dim() == 2 ? kv.Value.view(kv.Value.size(0), kv.Value.size(1), 1, 1) : kv.Value));
        Assert.That(ModelParity.Run(old, Path.Combine(Golden("vae"), "io.safetensors")).Passed, Is.True, "VAE with query/key/value/proj_attn");
        // The original SD1.5 text encoder carries text_model.embeddings.position_ids: ignored.
        var withIds = Variant("clip_text", "model.safetensors", sd => { sd["text_model.embeddings.position_ids"] = arange(77).view(1, 77); return sd; });
        Assert.That(ModelParity.Run(withIds, Path.Combine(Golden("clip_text"), "io.safetensors")).Passed, Is.True, "CLIP with position_ids");
    }

    [Test]
    public void HubIdsResolveFromTheCacheOnly()
    {
        var cache = Path.Combine(_tmp, "hub");
        var snap = Path.Combine(cache, "models--org--tiny-unet", "snapshots", "abc123");
        Directory.CreateDirectory(snap);
        Directory.CreateDirectory(Path.Combine(cache, "models--org--tiny-unet", "refs"));
        File.WriteAllText(Path.Combine(cache, "models--org--tiny-unet", "refs", "main"), "abc123\n");
        foreach (var f in new[] { "config.json", "diffusion_pytorch_model.safetensors" })
            File.Copy(Path.Combine(Golden("unet_sd15"), f), Path.Combine(snap, f));
        Assert.That(Hub.Resolve("org/tiny-unet", cache), Is.EqualTo(snap));
        using (var m = UNet2DConditionModel.from_pretrained("org/tiny-unet", cache_dir: cache))
            Assert.That(m.config.block_out_channels, Is.EqualTo(new[] { 16, 32, 32 }));
        var e = Assert.Throws<DirectoryNotFoundException>(() => Hub.Resolve("org/absent", cache));
        Assert.That(e!.Message, Does.Contain("never downloads"));
        Assert.Throws<DirectoryNotFoundException>(() => Hub.Resolve("not-an-id", cache));
    }

    [Test]
    public void UNetCheckpointingGivesIdenticalGradients()
    {
        var folder = Golden("unet_sdxl");
        double[][] Grads(bool ckpt, bool frozenInput)
        {
            using var scope = NewDisposeScope();
            using var m = UNet2DConditionModel.from_pretrained(folder);
            m.train();
            m.enable_gradient_checkpointing(ckpt);
            m.freeze();
            // LoRA-like: only the attention projections train, the input does not require grad.
            foreach (var (n, p) in m.named_parameters()) if (n.Contains("attn2.to_k") || n.Contains("conv_out")) p.requires_grad = true;
            using var io = safetensors.safe_open(Path.Combine(folder, "io.safetensors"));
            var x = io.get("in_sample", copy: true);
            if (!frozenInput) x.requires_grad = true;
            var added = new AddedCondKwargs(io.get("in_text_embeds"), io.get("in_time_ids"));
            var y = m.forward(x, io.get("in_timestep_int"), io.get("in_encoder_hidden_states"), added);
            y.square().mean().backward();
            var grads = m.parameters().Where(p => p.requires_grad).Select(p => p.grad!.ToArray<double>()).ToList();
            if (!frozenInput) grads.Add(x.grad!.ToArray<double>());
            return grads.ToArray();
        }
        foreach (var frozen in new[] { true, false })
        {
            var plain = Grads(false, frozen);
            var ckpt = Grads(true, frozen);
            Assert.That(ckpt.Length, Is.EqualTo(plain.Length));
            // Not bit-equal here: skip connections make the autograd engine sum incoming gradients in a
            // different order once blocks are recomputed; the engine test shows bit-equality for a chain.
            for (var i = 0; i < plain.Length; i++)
            {
                var scale = plain[i].Max(Math.Abs);
                var err = plain[i].Zip(ckpt[i], (a, b) => Math.Abs(a - b)).Max();
                TestContext.Out.WriteLine($"gradient {i} (frozen input {frozen}): max |Δ| {err:G3} of max {scale:G3}");
                Assert.That(scale, Is.GreaterThan(0), $"gradient {i} is zero");
                Assert.That(err, Is.LessThanOrEqualTo(1e-5 * scale), $"gradient {i} (frozen input: {frozen})");
            }
        }
    }
}

public class PipelineFolderTests
{
    [TestCase("pipe_sd15", false)]
    [TestCase("pipe_sdxl", true)]
    public void LoadsAndSavesPipelineFolders(string item, bool sdxl)
    {
        var folder = Shared.Require("golden", item);
        using var p = PipelineComponents.from_pretrained(folder);
        Assert.That(p.IsSDXL, Is.EqualTo(sdxl));
        Assert.That(p.scheduler_config, Is.Not.Null);
        if (sdxl) Assert.That(p.tokenizer_2!.pad_token_id, Is.EqualTo(0));
        var tmp = Path.Combine(Path.GetTempPath(), $"sudo-pipe-{Guid.NewGuid():N}");
        try
        {
            p.save_pretrained(tmp);
            using var q = PipelineComponents.from_pretrained(tmp);
            using var scope = NewDisposeScope();
            foreach (var (a, b) in new (nn.Module, nn.Module)[] { (p.unet, q.unet), (p.vae, q.vae), (p.text_encoder, q.text_encoder) })
            {
                var sa = a.state_dict();
                var sb = b.state_dict();
                Assert.That(sb.Keys, Is.EqualTo(sa.Keys));
                foreach (var k in sa.Keys) Assert.That(sb[k].equal(sa[k]), Is.True, k);
            }
            Assert.That(File.Exists(Path.Combine(tmp, "scheduler", "scheduler_config.json")), Is.True);
        }
        finally
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        }
        Assert.Throws<FileNotFoundException>(() => PipelineComponents.from_pretrained(Shared.Require("golden", "vae")));
    }
}
