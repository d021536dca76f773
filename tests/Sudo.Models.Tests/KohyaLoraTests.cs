using NUnit.Framework;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Models.Tests;

/// <summary>kohya/webui LoRA files: Sudo's adapters written with kohya names load back to the same weights, and merging
/// the file equals Sudo's own merge.</summary>
public class KohyaLoraTests
{
    [Test]
    public void NamesFollowSdScriptsForSd15AndSdxl()
    {
        var sd15 = UNet2DConditionConfig.SD15;
        Assert.That(KohyaLora.UnetName("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", sd15, sgm: false),
            Is.EqualTo("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"));
        Assert.That(KohyaLora.UnetName("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0", sd15, sgm: false),
            Is.EqualTo("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0"));
        // SDXL: sd-scripts' sgm UNet (input_blocks.4.1 = down_blocks.1.attentions.0; output_blocks.0.1 = up_blocks.0.attentions.0).
        var sdxl = UNet2DConditionConfig.SDXL;
        Assert.That(KohyaLora.UnetName("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", sdxl, sgm: true),
            Is.EqualTo("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"));
        Assert.That(KohyaLora.UnetName("up_blocks.0.attentions.2.transformer_blocks.9.attn2.to_k", sdxl, sgm: true),
            Is.EqualTo("lora_unet_output_blocks_2_1_transformer_blocks_9_attn2_to_k"));
        Assert.That(KohyaLora.UnetName("mid_block.attentions.0.transformer_blocks.0.ff.net.2", sdxl, sgm: true),
            Is.EqualTo("lora_unet_middle_block_1_transformer_blocks_0_ff_net_2"));
        Assert.That(KohyaLora.TextPrefix(false, 1) + "text_model.encoder.layers.0.self_attn.q_proj".Replace('.', '_'),
            Is.EqualTo("lora_te_text_model_encoder_layers_0_self_attn_q_proj"));
    }

    [TestCase("pipe_sd15")]
    [TestCase("pipe_sdxl")]
    public void WrittenFileLoadsBackAndMergesLikeSudosOwnMerge(string golden)
    {
        var folder = Shared.Require("golden", golden);
        var file = Path.Combine(Path.GetTempPath(), $"sudo-kohya-{Guid.NewGuid():N}.safetensors");
        try
        {
            using var a = PipelineComponents.from_pretrained(folder);
            var sdxl = a.IsSDXL;
            using var g = new Generator(3);
            using var lora = Lora.Attach(a.unet, new LoraConfig(r: 2, lora_alpha: 3), g);
            using var teLora = Lora.Attach(a.text_encoder, new LoraConfig(r: 2, lora_alpha: 2, target_modules: ["q_proj", "v_proj"]), g);
            using (no_grad())
                foreach (var p in lora.parameters().Concat(teLora.parameters())) p.copy_(randn(p.shape, g) * 0.1);
            var n = KohyaLora.Save(file, a.unet.config, sdxl, lora, teLora);
            using var scope = NewDisposeScope();
            var kohya = safetensors.load_file(file);
            Assert.That(kohya, Has.Count.EqualTo(n).And.Count.EqualTo(3 * (lora.adapters.Count + teLora.adapters.Count)));
            var te = sdxl ? "lora_te1_" : "lora_te_";
            Assert.That(kohya.Keys.Count(k => k.StartsWith(te, StringComparison.Ordinal)), Is.EqualTo(3 * teLora.adapters.Count));
            if (sdxl) Assert.That(kohya.Keys.Where(k => k.StartsWith("lora_unet_", StringComparison.Ordinal)), Has.All.Matches<string>(k => k.StartsWith("lora_unet_input_blocks_") || k.StartsWith("lora_unet_middle_block_") || k.StartsWith("lora_unet_output_blocks_")));

            // Back to Sudo's adapters: every module resolves to the module it came from, with the same tensors and α.
            var modules = KohyaLora.Resolve(kohya, a.unet, a.text_encoder, a.text_encoder_2, file);
            Assert.That(modules, Has.Count.EqualTo(lora.adapters.Count + teLora.adapters.Count));
            foreach (var m in modules)
            {
                var ad = m.component == "unet" ? lora.adapters[m.path] : teLora.adapters[m.path];
                Assert.That(m.down.equal(ad.lora_A) && m.up.equal(ad.lora_B), Is.True, m.path);
                Assert.That(m.alpha, Is.EqualTo(m.component == "unet" ? 3 : 2));
            }

            // Merged from the file into a fresh pipeline = Sudo's own merge, bit for bit.
            using var b = PipelineComponents.from_pretrained(folder);
            KohyaLora.Merge(modules, b.unet, b.text_encoder, b.text_encoder_2);
            lora.merge();
            teLora.merge();
            foreach (var (ma, mb, what) in new (nn.Module, nn.Module, string)[] { (a.unet, b.unet, "unet"), (a.text_encoder, b.text_encoder, "text_encoder") })
            {
                var sa = ma.state_dict();
                var sb = mb.state_dict();
                foreach (var (k, t) in sa) Assert.That(t.equal(sb[k]), Is.True, $"{what}.{k}");
            }
        }
        finally
        {
            if (File.Exists(file)) File.Delete(file);
        }
    }

    [Test]
    public void ForeignOrBrokenFilesNameWhatIsWrong()
    {
        using var p = PipelineComponents.from_pretrained(Shared.Require("golden", "pipe_sd15"));
        using var scope = NewDisposeScope();
        var w = new Dictionary<string, Tensor>
        {
            ["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = zeros(2, 6),
            ["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = zeros(6, 2),
        };
        var e = Assert.Throws<InvalidDataException>(() => KohyaLora.Resolve(w, p.unet, p.text_encoder, null, "x.safetensors"))!;
        Assert.That(e.Message, Does.Contain("x.safetensors").And.Contain("looks like an SDXL LoRA"));
        var half = new Dictionary<string, Tensor> { ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = zeros(2, 8) };
        e = Assert.Throws<InvalidDataException>(() => KohyaLora.Resolve(half, p.unet, p.text_encoder, null, "h.safetensors"))!;
        Assert.That(e.Message, Does.Contain("lacks its lora_down or lora_up"));
        var dora = new Dictionary<string, Tensor> { ["lora_unet_conv_in.dora_scale"] = zeros(1) };
        e = Assert.Throws<InvalidDataException>(() => KohyaLora.Resolve(dora, p.unet, p.text_encoder, null, "d.safetensors"))!;
        Assert.That(e.Message, Does.Contain("DoRA is not supported"));
    }
}
