using NUnit.Framework;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Models.Tests;

/// <summary>Single-file (original LDM layout) checkpoints: every key of the full-size SD1.5 / SDXL key lists converts
/// both ways by name and shape; the tiny golden pipelines round-trip bit-exactly through a file.</summary>
public class SingleFileTests
{
    static Dictionary<string, Tensor> MetaStateDict(string name, string dir) => name switch
    {
        "sd15_unet" or "sdxl_unet" => new UNet2DConditionModel(UNet2DConditionConfig.FromFile(Path.Combine(dir, $"{name}_config.json"))).state_dict(),
        "sd15_vae" => new AutoencoderKL(AutoencoderKLConfig.FromFile(Path.Combine(dir, $"{name}_config.json"))).state_dict(),
        "sd15_text_encoder" => new CLIPTextModel(CLIPTextConfig.FromFile(Path.Combine(dir, $"{name}_config.json"))).state_dict(),
        "sdxl_text_encoder_2" => new CLIPTextModelWithProjection(CLIPTextConfig.FromFile(Path.Combine(dir, $"{name}_config.json"))).state_dict(),
        _ => throw new ArgumentException(name),
    };

    /// <summary>Names the original code gives (openaimodel.UNetModel, the LDM AutoencoderKL, FrozenCLIPEmbedder,
    /// OpenCLIP's text tower), written out by hand from those sources for spot checks, with their shapes.</summary>
    static readonly Dictionary<string, (string key, long[] shape)[]> Known = new()
    {
        ["sd15_unet"] =
        [
            ("model.diffusion_model.time_embed.0.weight", [1280, 320]),
            ("model.diffusion_model.input_blocks.0.0.weight", [320, 4, 3, 3]),
            ("model.diffusion_model.input_blocks.1.0.in_layers.0.weight", [320]),
            ("model.diffusion_model.input_blocks.1.0.emb_layers.1.weight", [320, 1280]),
            ("model.diffusion_model.input_blocks.1.1.proj_in.weight", [320, 320, 1, 1]),
            ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", [320, 768]),
            ("model.diffusion_model.input_blocks.3.0.op.weight", [320, 320, 3, 3]),
            ("model.diffusion_model.input_blocks.4.0.skip_connection.weight", [640, 320, 1, 1]),
            ("model.diffusion_model.input_blocks.11.0.out_layers.3.weight", [1280, 1280, 3, 3]),
            ("model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight", [10240, 1280]),
            ("model.diffusion_model.middle_block.2.in_layers.2.bias", [1280]),
            ("model.diffusion_model.output_blocks.2.1.conv.weight", [1280, 1280, 3, 3]),
            ("model.diffusion_model.output_blocks.5.2.conv.weight", [1280, 1280, 3, 3]),
            ("model.diffusion_model.output_blocks.8.2.conv.weight", [640, 640, 3, 3]),
            ("model.diffusion_model.output_blocks.11.1.proj_out.weight", [320, 320, 1, 1]),
            ("model.diffusion_model.out.0.weight", [320]),
            ("model.diffusion_model.out.2.weight", [4, 320, 3, 3]),
        ],
        ["sdxl_unet"] =
        [
            ("model.diffusion_model.label_emb.0.0.weight", [1280, 2816]),
            ("model.diffusion_model.label_emb.0.2.weight", [1280, 1280]),
            ("model.diffusion_model.input_blocks.3.0.op.weight", [320, 320, 3, 3]),
            ("model.diffusion_model.input_blocks.4.1.proj_in.weight", [640, 640]),
            ("model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight", [1280, 2048]),
            ("model.diffusion_model.middle_block.1.transformer_blocks.9.norm3.weight", [1280]),
            ("model.diffusion_model.output_blocks.2.2.conv.weight", [1280, 1280, 3, 3]),
            ("model.diffusion_model.output_blocks.5.2.conv.weight", [640, 640, 3, 3]),
            ("model.diffusion_model.output_blocks.6.0.skip_connection.weight", [320, 960, 1, 1]),
            ("model.diffusion_model.output_blocks.8.0.skip_connection.weight", [320, 640, 1, 1]),
        ],
        ["sd15_vae"] =
        [
            ("first_stage_model.encoder.down.0.block.0.norm1.weight", [128]),
            ("first_stage_model.encoder.down.1.block.0.nin_shortcut.weight", [256, 128, 1, 1]),
            ("first_stage_model.encoder.down.2.downsample.conv.weight", [512, 512, 3, 3]),
            ("first_stage_model.encoder.mid.attn_1.q.weight", [512, 512, 1, 1]),
            ("first_stage_model.encoder.mid.attn_1.proj_out.weight", [512, 512, 1, 1]),
            ("first_stage_model.encoder.mid.attn_1.norm.weight", [512]),
            ("first_stage_model.encoder.mid.block_2.conv2.weight", [512, 512, 3, 3]),
            ("first_stage_model.encoder.norm_out.weight", [512]),
            ("first_stage_model.decoder.up.3.block.0.conv1.weight", [512, 512, 3, 3]),
            ("first_stage_model.decoder.up.3.upsample.conv.weight", [512, 512, 3, 3]),
            ("first_stage_model.decoder.up.0.block.0.nin_shortcut.weight", [128, 256, 1, 1]),
            ("first_stage_model.decoder.up.0.block.2.conv2.weight", [128, 128, 3, 3]),
            ("first_stage_model.quant_conv.weight", [8, 8, 1, 1]),
            ("first_stage_model.post_quant_conv.weight", [4, 4, 1, 1]),
        ],
        ["sd15_text_encoder"] =
        [
            ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", [49408, 768]),
            ("cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight", [768, 768]),
            ("cond_stage_model.transformer.text_model.final_layer_norm.weight", [768]),
        ],
        ["sdxl_text_encoder_2"] =
        [
            ("conditioner.embedders.1.model.token_embedding.weight", [49408, 1280]),
            ("conditioner.embedders.1.model.positional_embedding", [77, 1280]),
            ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", [3840, 1280]),
            ("conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_bias", [3840]),
            ("conditioner.embedders.1.model.transformer.resblocks.31.attn.out_proj.weight", [1280, 1280]),
            ("conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight", [5120, 1280]),
            ("conditioner.embedders.1.model.transformer.resblocks.31.ln_2.bias", [1280]),
            ("conditioner.embedders.1.model.ln_final.weight", [1280]),
            ("conditioner.embedders.1.model.text_projection", [1280, 1280]),
        ],
    };

    static Dictionary<string, Tensor> ToOriginal(string name, string dir, Dictionary<string, Tensor> sd) => name switch
    {
        "sd15_unet" or "sdxl_unet" => SingleFile.UnetToOriginal(UNet2DConditionConfig.FromFile(Path.Combine(dir, $"{name}_config.json")), sd),
        "sd15_vae" => SingleFile.VaeToOriginal(AutoencoderKLConfig.FromFile(Path.Combine(dir, $"{name}_config.json")), sd),
        "sd15_text_encoder" => SingleFile.ClipToOriginal(sd, SingleFile.Tables.prefixes["sd1_text_encoder"]),
        "sdxl_text_encoder_2" => SingleFile.OpenClipToOriginal(sd, SingleFile.Tables.prefixes["sdxl_text_encoder_2"]),
        _ => throw new ArgumentException(name),
    };

    static Dictionary<string, Tensor> FromOriginal(string name, string dir, Dictionary<string, Tensor> file) => name switch
    {
        "sd15_unet" or "sdxl_unet" => SingleFile.UnetFromOriginal(UNet2DConditionConfig.FromFile(Path.Combine(dir, $"{name}_config.json")), file, name),
        "sd15_vae" => SingleFile.VaeFromOriginal(AutoencoderKLConfig.FromFile(Path.Combine(dir, $"{name}_config.json")), file, name),
        "sd15_text_encoder" => SingleFile.ClipFromOriginal(file, SingleFile.Tables.prefixes["sd1_text_encoder"], name),
        "sdxl_text_encoder_2" => SingleFile.OpenClipFromOriginal(file, SingleFile.Tables.prefixes["sdxl_text_encoder_2"], 32, true, name),
        _ => throw new ArgumentException(name),
    };

    [TestCase("sd15_unet", 686)]
    [TestCase("sdxl_unet", 1680)]
    [TestCase("sd15_vae", 248)]
    [TestCase("sd15_text_encoder", 196)]
    [TestCase("sdxl_text_encoder_2", 517 - 32 * 4)]   // q/k/v weights and biases (6 per layer) become in_proj_weight/bias (2)
    public void FullSizeKeysConvertBothWaysByNameAndShape(string name, int originalCount)
    {
        var dir = Shared.Require("golden", "keys");
        using var _ = device_scope(Device.Meta);
        using var scope = NewDisposeScope();
        var sd = MetaStateDict(name, dir);
        var original = ToOriginal(name, dir, sd);
        Assert.That(original, Has.Count.EqualTo(originalCount), "tensors in the original layout");
        foreach (var (key, shape) in Known[name])
        {
            Assert.That(original.ContainsKey(key), Is.True, $"{key} (from the original model code)");
            Assert.That(original[key].shape, Is.EqualTo(shape), key);
        }
        var back = FromOriginal(name, dir, original);
        Assert.That(back.Keys.Order(), Is.EqualTo(sd.Keys.Order()), "every key comes back to its diffusers name");
        foreach (var (k, t) in sd) Assert.That(back[k].shape, Is.EqualTo(t.shape), k);
        TestContext.Out.WriteLine($"{name}: {sd.Count} diffusers tensors ↔ {original.Count} original tensors");
    }

    /// <summary>SD2.1 (no key list in the shared set): its UNet and OpenCLIP text encoder built on the meta device from
    /// the released configs convert both ways; names and shapes spot-checked against the original model code.</summary>
    [Test]
    public void Sd21ConvertsBothWaysOnTheMetaDevice()
    {
        using var _ = device_scope(Device.Meta);
        using var scope = NewDisposeScope();
        using var unet = new UNet2DConditionModel(UNet2DConditionConfig.SD21);
        using var te = new CLIPTextModel(CLIPTextConfig.SD21);
        var u = unet.state_dict();
        var uo = SingleFile.UnetToOriginal(unet.config, u);
        Assert.That(uo["model.diffusion_model.input_blocks.1.1.proj_in.weight"].shape, Is.EqualTo(new long[] { 320, 320 }), "SD2 projections are linear");
        Assert.That(uo["model.diffusion_model.input_blocks.7.1.transformer_blocks.0.attn2.to_k.weight"].shape, Is.EqualTo(new long[] { 1280, 1024 }));
        Assert.That(uo["model.diffusion_model.output_blocks.11.1.proj_out.weight"].shape, Is.EqualTo(new long[] { 320, 320 }));
        var ub = SingleFile.UnetFromOriginal(unet.config, uo, "sd21");
        Assert.That(ub.Keys.Order(), Is.EqualTo(u.Keys.Order()));
        var t = te.state_dict();
        var prefix = SingleFile.Tables.prefixes["sd2_text_encoder"];
        var to = SingleFile.OpenClipToOriginal(t, prefix);
        Assert.That(to[prefix + "transformer.resblocks.22.attn.in_proj_weight"].shape, Is.EqualTo(new long[] { 3072, 1024 }));
        Assert.That(to.ContainsKey(prefix + "transformer.resblocks.23.attn.in_proj_weight"), Is.False, "diffusers keeps 23 of the 24 blocks");
        Assert.That(to.ContainsKey(prefix + "text_projection"), Is.False, "SD2's text encoder has no projection");
        Assert.That(SingleFile.Family(to.Keys), Is.EqualTo("sd2"));
        // The original file's 24th block and text_projection (diffusers' SD_2_TEXT_ENCODER_KEYS_TO_IGNORE) are skipped on reading.
        var full = new Dictionary<string, Tensor>(to)
        {
            [prefix + "transformer.resblocks.23.attn.in_proj_weight"] = to[prefix + "transformer.resblocks.22.attn.in_proj_weight"],
            [prefix + "text_projection"] = empty([1024, 1024]),
        };
        var tb = SingleFile.OpenClipFromOriginal(full, prefix, 23, withProjection: false, "sd21");
        Assert.That(tb.Keys.Order(), Is.EqualTo(t.Keys.Order()));
        foreach (var (k, v) in t) Assert.That(tb[k].shape, Is.EqualTo(v.shape), k);
    }

    static void Perturb(PipelineComponents p)
    {
        using var _ = no_grad();
        foreach (var m in new nn.Module?[] { p.unet, p.vae, p.text_encoder, p.text_encoder_2 })
            if (m != null)
                foreach (var (_, t) in m.state_dict())
                    if (t.is_floating_point()) t.fill_(0.25);
    }

    [TestCase("pipe_sd15", "sd1")]
    [TestCase("pipe_sdxl", "sdxl")]
    public void TinyPipelineRoundTripsBitExactly(string golden, string family)
    {
        var folder = Shared.Require("golden", golden);
        var file = Path.Combine(Path.GetTempPath(), $"sudo-single-{Guid.NewGuid():N}.safetensors");
        try
        {
            using var a = PipelineComponents.from_pretrained(folder);
            Assert.That(SingleFile.Family(a), Is.EqualTo(family));
            var n = SingleFile.Save(a, file);
            using var scope = NewDisposeScope();
            var loaded = safetensors.load_file(file);
            Assert.That(loaded, Has.Count.EqualTo(n));
            Assert.That(SingleFile.Family(loaded.Keys), Is.EqualTo(family));
            Assert.That(safetensors.load_metadata(file)["sudo.family"], Is.EqualTo(family));

            using var b = PipelineComponents.from_pretrained(folder);
            Perturb(b);
            SingleFile.LoadInto(b, loaded, file);
            foreach (var (ma, mb, what) in new (nn.Module?, nn.Module?, string)[] { (a.unet, b.unet, "unet"), (a.vae, b.vae, "vae"), (a.text_encoder, b.text_encoder, "text_encoder"), (a.text_encoder_2, b.text_encoder_2, "text_encoder_2") })
            {
                if (ma == null) continue;
                var sa = ma.state_dict();
                var sb = mb!.state_dict();
                Assert.That(sb.Keys, Is.EqualTo(sa.Keys), what);
                foreach (var (k, t) in sa) Assert.That(t.equal(sb[k]), Is.True, $"{what}.{k} bit-exact after the round trip");
            }
        }
        finally
        {
            if (File.Exists(file)) File.Delete(file);
        }
    }

    [Test]
    public void AFileOfAnotherFamilyIsNamedInTheError()
    {
        var sd15 = Shared.Require("golden", "pipe_sd15");
        var sdxl = Shared.Require("golden", "pipe_sdxl");
        using var a = PipelineComponents.from_pretrained(sd15);
        using var b = PipelineComponents.from_pretrained(sdxl);
        using var scope = NewDisposeScope();
        var sd1File = SingleFile.ToOriginal(a);
        var sdxlFile = SingleFile.ToOriginal(b);
        var e = Assert.Throws<InvalidDataException>(() => SingleFile.LoadInto(b, sd1File, "sd1.safetensors"))!;
        Assert.That(e.Message, Does.Contain("sd1.safetensors").And.Contain("Stable Diffusion 1.x").And.Contain("sdxl pipeline"));
        e = Assert.Throws<InvalidDataException>(() => SingleFile.LoadInto(a, sdxlFile, "xl.safetensors"))!;
        Assert.That(e.Message, Does.Contain("SDXL base checkpoint").And.Contain("sd1 pipeline"));
        // A key the config does not describe (a fourth down block) names the key and the family.
        var extra = new Dictionary<string, Tensor>(sd1File) { ["model.diffusion_model.input_blocks.40.0.in_layers.0.weight"] = zeros(4) };
        e = Assert.Throws<InvalidDataException>(() => SingleFile.LoadInto(a, extra, "odd.safetensors"))!;
        Assert.That(e.Message, Does.Contain("input_blocks.40.0.in_layers.0.weight").And.Contain("Stable Diffusion 1.x"));
        // A missing key: the strict load lists it.
        var missing = new Dictionary<string, Tensor>(sd1File);
        missing.Remove("first_stage_model.encoder.mid.attn_1.q.weight");
        e = Assert.Throws<InvalidDataException>(() => SingleFile.LoadInto(a, missing, "cut.safetensors"))!;
        Assert.That(e.Message, Does.Contain("cut.safetensors (VAE)").And.Contain("encoder.mid_block.attentions.0.to_q.weight"));
        Assert.That(SingleFile.Family(new[] { "state_dict.x", "optimizer.y" }), Is.EqualTo("unknown"));
    }

    /// <summary>diffusers' rule for an SD2 single file read with the family's default (SD2.1, 768-v) configs: v_prediction,
    /// except the released SD2-base checkpoint (global_step 875000), which is epsilon; the global_step comes from the
    /// pickle's top level beside state_dict (the golden nested_zip.pt stores 2³³+5, README_rewards.md).</summary>
    [Test]
    public void Sd2PredictionTypeFollowsDiffusersGlobalStepRule()
    {
        Assert.That(SingleFile.InferPredictionType("sd2", 875000), Is.EqualTo("epsilon"));
        Assert.That(SingleFile.InferPredictionType("sd2", 140000), Is.EqualTo("v_prediction"));
        Assert.That(SingleFile.InferPredictionType("sd2", null), Is.EqualTo("v_prediction"));
        Assert.That(SingleFile.InferPredictionType("sd1", 875000), Is.Null);
        Assert.That(SingleFile.InferPredictionType("sdxl", null), Is.Null);
        long? step = null;
        using var scope = NewDisposeScope();
        var weights = Checkpoints.ReadPickle(Shared.Require("golden", "pickle", "nested_zip.pt"), root => step = SingleFile.GlobalStep(root));
        Assert.That(weights, Is.Not.Empty);
        Assert.That(step, Is.EqualTo((1L << 33) + 5));
        Assert.That(SingleFile.GlobalStep(null), Is.Null);
    }

    /// <summary>--prediction_type: the components carry the override to the scheduler they are built with; bad values
    /// are refused.</summary>
    [Test]
    public void PredictionTypeOverrideTravelsWithTheComponents()
    {
        var folder = Shared.Require("golden", "pipe_sd15");
        var a = PipelineComponents.from_pretrained(folder);
        Assert.That(a.prediction_type, Is.Null);
        Assert.That(a.WithPredictionType(null), Is.SameAs(a));
        using var v = a.WithPredictionType("v_prediction");
        Assert.That((v.prediction_type, ReferenceEquals(v.unet, a.unet)), Is.EqualTo(("v_prediction", true)));
        Assert.That(Assert.Throws<ArgumentException>(() => v.WithPredictionType("x0"))!.Message, Does.Contain("epsilon, v_prediction or sample"));
    }
}
