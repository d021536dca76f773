using System.Text.Json.Nodes;
using NUnit.Framework;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Models.Tests;

/// <summary>LoRA adapters beyond one rank on Linear layers: convolution adapters (PEFT's lora.Conv2d, kohya's LoCon),
/// per-module ranks and α (PEFT's rank_pattern / alpha_pattern), and kohya files attached as live adapters.</summary>
public class LoraTests
{
    /// <summary>A convolution adapter adds conv(conv(x, A; the layer's stride, padding, dilation), B)·α/r; merged, it is
    /// the weight (α/r)·B·A over the flattened kernels. Both sides on a 3×3, stride 2, padding 1 layer (LoCon's shape) and
    /// a 1×1 one (SD1.5's proj_in).</summary>
    [TestCase(3, 2, 1)]
    [TestCase(1, 1, 0)]
    public void ConvolutionAdapterEqualsItsMergedWeight(int kernel, int stride, int padding)
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(11);
        var conv = new nn.Conv2d(6, 5, kernel, stride: stride, padding: padding);
        var model = new nn.Sequential(conv);
        var before = conv.weight.detach().clone();
        var x = randn([2, 6, 9, 9], g);
        using var lora = Lora.Attach(model, new LoraConfig(r: 3, lora_alpha: 1.5, target_modules: ["0"]), g);
        var a = lora.adapters["0"];
        Assert.That(a.lora_A.shape, Is.EqualTo(new long[] { 3, 6, kernel, kernel }));
        Assert.That(a.lora_B.shape, Is.EqualTo(new long[] { 5, 3, 1, 1 }));
        using (no_grad()) a.lora_B.copy_(randn(a.lora_B.shape, g) * 0.3);
        var withAdapter = conv.forward(x);
        // By hand: the two convolutions of the adapter, scaled by α/r = 0.5.
        var byHand = nn.functional.conv2d(x, before, conv.bias, (stride, stride), (padding, padding), (1, 1))
            + nn.functional.conv2d(nn.functional.conv2d(x, a.lora_A, null, (stride, stride), (padding, padding), (1, 1)), a.lora_B) * 0.5;
        Assert.That((withAdapter - byHand).abs().max().item(), Is.LessThan(1e-5));
        lora.merge();
        var merged = conv.forward(x);
        Assert.That((merged - withAdapter).abs().max().item(), Is.LessThan(1e-5));
        var delta = (a.lora_B.flatten(1).matmul(a.lora_A.flatten(1)) * 0.5).reshape(before.shape);
        Assert.That(conv.weight.equal(before + delta), Is.True, "merge adds (α/r)·B·A in the kernel's shape");
        lora.unmerge();
        Assert.That((conv.weight - before).abs().max().item(), Is.LessThan(1e-6));
    }

    /// <summary>PEFT's get_pattern_key (peft/utils/other.py): the first rank_pattern / alpha_pattern key k, in order, for which
    /// the module name matches (.*\.)?(k)$ gives that module's value; others get r and lora_alpha.</summary>
    [Test]
    public void RankAndAlphaPatternsResolveAsPeftDoes()
    {
        var c = new LoraConfig(4, 8, ["to_q", "to_k"], rank_pattern: new Dictionary<string, int>
        {
            ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"] = 16,
            [@"up_blocks\.\d+\..*to_k"] = 2,
            ["attn2.to_q"] = 6,
        }, alpha_pattern: new Dictionary<string, double> { ["attn1.to_q"] = 1.0 });
        Assert.That(c.RankFor("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"), Is.EqualTo(16));
        Assert.That(c.RankFor("up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"), Is.EqualTo(2));
        Assert.That(c.RankFor("mid_block.attentions.0.transformer_blocks.0.attn2.to_q"), Is.EqualTo(6));
        Assert.That(c.RankFor("mid_block.attentions.0.transformer_blocks.0.attn2.to_k"), Is.EqualTo(4));
        Assert.That(c.RankFor("mid_block.attentions.0.transformer_blocks.0.xattn2.to_q"), Is.EqualTo(4), "a key matches whole name parts");
        Assert.That(c.AlphaFor("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"), Is.EqualTo(1.0));
        Assert.That(c.AlphaFor("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q"), Is.EqualTo(8.0));

        // adapter_config.json round trip, and what PEFT settings Sudo refuses rather than computes differently.
        var back = LoraConfig.FromJson(c.ToJson(), "test");
        Assert.That((back.r, back.lora_alpha, back.Targets), Is.EqualTo((4, 8.0, new[] { "to_q", "to_k" })));
        Assert.That(back.rank_pattern, Is.EquivalentTo(c.rank_pattern!));
        Assert.That(back.alpha_pattern, Is.EquivalentTo(c.alpha_pattern!));
        foreach (var (key, value) in new (string, JsonNode)[] { ("use_dora", true), ("use_rslora", true), ("target_modules", ".*to_q"), ("bias", "all") })
        {
            var o = c.ToJson();
            o[key] = value;
            Assert.Throws<NotSupportedException>(() => LoraConfig.FromJson(o, "test"), key);
        }
        var bad = c.ToJson();
        bad["rank_pattern"] = new JsonObject { ["to_q"] = "eight" };
        Assert.That(Assert.Throws<InvalidDataException>(() => LoraConfig.FromJson(bad, "cfg.json"))!.Message, Does.Contain("cfg.json").And.Contain("rank_pattern"));
        var regex = new LoraConfig(4, 4, rank_pattern: new Dictionary<string, int> { ["to_q("] = 2 });
        Assert.Throws<InvalidDataException>(() => regex.RankFor("a.to_q"));
    }

    /// <summary>A key that is a module name ('.' its only special character) is matched without compiling it, and must decide
    /// exactly as its regular expression ^(?:.*\.)?(?:key)$ does ('.' matches any character but a newline).</summary>
    [Test]
    public void ModuleNameKeysDecideAsTheirRegularExpression()
    {
        string[] keys = ["to_q", "attn2.to_q", "to_out.0", "0", "a.b.c", ".", "to q", "a#b"];
        string[] modules = ["to_q", "x.to_q", "xto_q", "x.attn2.to_q", "xattn2.to_q", "attn2Xto_q", "y.attn2Xto_q", "to_out.0", "a.to_outX0",
            "to_out\n0", "b.to_q\n", "b.to_q\n\n", "b\n.to_q", "b.\nto_q", "", "to_q.", ".to_q", "a.b.c", "a.a.b.c", "aXbXc", "0", "x.10", "x.0", ".", "\n", "x.to q", "to  q", "a#b", "c.a#b"];
        foreach (var key in keys)
        {
            var c = new LoraConfig(4, 4, rank_pattern: new Dictionary<string, int> { [key] = 7 });
            var re = new System.Text.RegularExpressions.Regex($"^(?:.*\\.)?(?:{key})$");
            foreach (var m in modules)
                Assert.That(c.RankFor(m), Is.EqualTo(re.IsMatch(m) ? 7 : 4), $"key '{key}', module '{m.Replace("\n", "\\n")}'");
        }
    }

    /// <summary>Finding 26 of RELIABILITY.md: compiled pattern keys were cached for the whole process (up to 4096 of them, a
    /// few MB each), so a process reading many configs ran out of memory. They now live with their config, and a config
    /// may hold at most <see cref="LoraConfig.MaxRegexKeys"/> of them.</summary>
    [Test]
    public void CompiledPatternKeysAreFreedWithTheirConfigAndBounded()
    {
        static long Heap()
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            return GC.GetTotalMemory(true);
        }
        static int Use(int i) => new LoraConfig(4, 4, rank_pattern: new Dictionary<string, int> { [$"blocks\\.{i}\\..*(to_q|to_k)"] = 2 })
            .RankFor($"x.blocks.{i}.attn.to_q");
        Assert.That(Use(0), Is.EqualTo(2));
        var before = Heap();
        for (int i = 1; i <= 200; i++) Use(i);
        var grown = Heap() - before;
        Assert.That(grown, Is.LessThan(16L << 20), $"200 configs read and dropped left {grown / 1e6:F1} MB behind");

        var many = Enumerable.Range(0, LoraConfig.MaxRegexKeys + 1).ToDictionary(i => $"b{i}.*x", _ => 2);
        var e = Assert.Throws<InvalidDataException>(() => new LoraConfig(4, 4, rank_pattern: many).RankFor("a.to_q"))!;
        Assert.That(e.Message, Does.Contain($"more than {LoraConfig.MaxRegexKeys}"));
        var names = Enumerable.Range(0, 5000).ToDictionary(i => $"down_blocks.{i}.to_q", i => 1 + i % 3);
        Assert.That(new LoraConfig(4, 4, rank_pattern: names).RankFor("unet.down_blocks.4999.to_q"), Is.EqualTo(1 + 4999 % 3), "module-name keys need no compiling");
        Assert.Throws<InvalidDataException>(() => new LoraConfig(4, 4, rank_pattern: new Dictionary<string, int> { [new string('a', 2000) + "*"] = 2 }).RankFor("a"));
    }

    /// <summary>diffusers' get_peft_kwargs: r and lora_alpha are the most frequent values, the rest go to the patterns.</summary>
    [Test]
    public void ForModulesKeepsTheMostFrequentRankAndAlphaAsDefaults()
    {
        var c = LoraConfig.ForModules([("a.to_q", 4, 4.0), ("a.to_k", 4, 1.0), ("b.to_q", 8, 4.0), ("b.to_k", 4, 4.0)]);
        Assert.That((c.r, c.lora_alpha), Is.EqualTo((4, 4.0)));
        Assert.That(c.rank_pattern, Is.EquivalentTo(new Dictionary<string, int> { ["b.to_q"] = 8 }));
        Assert.That(c.alpha_pattern, Is.EquivalentTo(new Dictionary<string, double> { ["a.to_k"] = 1.0 }));
        Assert.That(c.Targets, Is.EqualTo(new[] { "a.to_q", "a.to_k", "b.to_q", "b.to_k" }));
        foreach (var (m, r, alpha) in new[] { ("a.to_q", 4, 4.0), ("a.to_k", 4, 1.0), ("b.to_q", 8, 4.0), ("b.to_k", 4, 4.0) })
            Assert.That((c.RankFor(m), c.AlphaFor(m)), Is.EqualTo((r, alpha)), m);
    }

    /// <summary>A kohya file of mixed ranks and α, with a 1×1 convolution (proj_in), a 3×3 LoCon convolution and a
    /// text-encoder module, attached as live adapters: each module gets the file's rank, α and tensors; the adapted
    /// pipeline computes what the merged one does; merging the adapters equals sd-scripts' merge bit for bit.</summary>
    [Test]
    public void KohyaFileAttachesAsLiveAdaptersThatMergeLikeSdScripts()
    {
        var folder = Shared.Require("golden", "pipe_sd15");
        using var a = PipelineComponents.from_pretrained(folder);
        using var b = PipelineComponents.from_pretrained(folder);
        using var scope = NewDisposeScope();
        using var g = new Generator(21);
        var shapes = a.unet.named_modules().Concat(a.text_encoder.named_modules().Select(x => ("te:" + x.name, x.module)))
            .Where(x => x.module is nn.Linear or nn.Conv2d).ToDictionary(x => x.Item1, x => x.module is nn.Linear l ? l.weight.shape : ((nn.Conv2d)x.module).weight.shape);
        var file = new Dictionary<string, Tensor>();
        void Add(string kohya, string key, int rank, double? alpha)
        {
            var w = shapes[key];
            file[$"{kohya}.lora_down.weight"] = randn(w.Length == 4 ? [rank, w[1], w[2], w[3]] : [rank, w[1]], g) * 0.2;
            file[$"{kohya}.lora_up.weight"] = randn(w.Length == 4 ? [w[0], rank, 1, 1] : [w[0], rank], g) * 0.2;
            if (alpha is { } al) file[$"{kohya}.alpha"] = scalar_tensor(al, ScalarType.Float32);
        }
        Add("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 2, 1.0);
        Add("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 4, null);
        Add("lora_unet_down_blocks_0_attentions_0_proj_in", "down_blocks.0.attentions.0.proj_in", 2, 1.0);
        Add("lora_unet_down_blocks_0_resnets_0_conv1", "down_blocks.0.resnets.0.conv1", 3, 1.5);
        Add("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "te:text_model.encoder.layers.0.self_attn.q_proj", 2, 1.0);

        var modules = KohyaLora.Resolve(file, a.unet, a.text_encoder, null, "mixed.safetensors");
        using var live = KohyaLora.Attach(modules, a.unet, a.text_encoder, null);
        Assert.That(live.unet!.adapters, Has.Count.EqualTo(4));
        Assert.That(live.text_encoder!.adapters, Has.Count.EqualTo(1));
        Assert.That(live.text_encoder_2, Is.Null);
        var q = live.unet.adapters["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"];
        Assert.That((q.rank, q.alpha), Is.EqualTo((2, 1.0)));
        var k = live.unet.adapters["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"];
        Assert.That((k.rank, k.alpha), Is.EqualTo((4, 4.0)), "no .alpha: α = r, as sd-scripts");
        var conv = live.unet.adapters["down_blocks.0.resnets.0.conv1"];
        Assert.That((conv.rank, conv.alpha, conv.lora_A.dim()), Is.EqualTo((3, 1.5, 4L)));
        Assert.That(conv.lora_A.equal(file["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"]), Is.True);
        Assert.That(live.unet.config.rank_pattern, Is.Not.Null, "mixed ranks land in rank_pattern");

        // Live adapters compute what sd-scripts' merge of the same file computes.
        KohyaLora.Merge(modules, b.unet, b.text_encoder, null);
        var x = randn([1, 4, 8, 8], g);
        var t = tensor(new long[] { 500 });
        var ids = tensor(new long[] { 49406, 320, 1125, 49407 }).unsqueeze(0);
        var ehsA = a.text_encoder.forward(ids).last_hidden_state;
        var ehsB = b.text_encoder.forward(ids).last_hidden_state;
        Assert.That((ehsA - ehsB).abs().max().item(), Is.LessThan(1e-5));
        var outA = a.unet.forward(x, t, ehsA);
        var outB = b.unet.forward(x, t, ehsB);
        Assert.That((outA - outB).abs().max().item(), Is.LessThan(1e-4));
        using (live.unet.disabled())
            Assert.That((a.unet.forward(x, t, ehsA) - outA).abs().max().item(), Is.GreaterThan(1e-3), "adapters off: another output");

        // Merging the live adapters = sd-scripts' merge, bit for bit.
        live.merge();
        foreach (var (ma, mb, what) in new (nn.Module, nn.Module, string)[] { (a.unet, b.unet, "unet"), (a.text_encoder, b.text_encoder, "text_encoder") })
        {
            var sb = mb.state_dict();
            foreach (var (key, w) in ma.state_dict()) Assert.That(w.equal(sb[key]), Is.True, $"{what}.{key}");
        }
    }
}
