using System.Text.Json.Nodes;
using NUnit.Framework;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;

namespace Sudo.Training.Tests;

/// <summary>Sampling what training produced (a UNet folder, a LoRA) and `sudoml eval` on the tiny golden pipeline with
/// every golden reward model.</summary>
public class EvaluationTests : TempFolderTest
{
    private static string G(string item) => Shared.Require("golden", item);

    /// <summary>A LoRA saved as training saves it (lora/ with adapter_config.json), non-zero so that it changes images.</summary>
    private static string SaveRandomLora(string dir, double bScale = 0.5)
    {
        using var pipe = StableDiffusionPipeline.from_pretrained(G("pipe_sd15"));
        using var g = new Generator(11);
        using var lora = Lora.Attach(pipe.unet, new LoraConfig(r: 2, lora_alpha: 4), g);
        using (no_grad())
            foreach (var a in lora.adapters.Values)
                using (var r = randn(a.lora_B.shape, g) * bScale) a.lora_B.copy_(r);
        var folder = Path.Combine(dir, "lora");
        lora.save(folder);
        return folder;
    }

    [Test]
    public void MergedLoraEqualsTheAdaptersAndScales()
    {
        var loraDir = SaveRandomLora(Tmp);
        using var scope = NewDisposeScope();
        using var g = new Generator(3);
        var x = randn([1, 4, 8, 8], g);
        var crossDim = UNet2DConditionConfig.FromFile(Path.Combine(G("pipe_sd15"), "unet", "config.json")).cross_attention_dim;
        var ehs = randn([1, 77, crossDim[0]], g);
        var t = tensor(new long[] { 500 });
        using var adapted = StableDiffusionPipeline.from_pretrained(G("pipe_sd15"));
        using var lora = Lora.Attach(adapted.unet, Lora.ReadConfig(loraDir));
        lora.load_state_dict(safetensors.load_file(Path.Combine(loraDir, "pytorch_lora_weights.safetensors")));
        using var _ = no_grad();
        var expected = adapted.unet.forward(x, t, ehs);
        Tensor Merged(double scale)
        {
            using var p = PipelineLoading.Load(new PipelineSpec { model = G("pipe_sd15"), lora = Tmp, lora_scale = scale }, ScalarType.Float32, Device.CPU);
            return p.unet.forward(x, t, ehs);
        }
        var merged = Merged(1.0);
        Assert.That((merged - expected).abs().max().item(), Is.LessThan(1e-4), "merged LoRA = active adapters");
        using var plain = StableDiffusionPipeline.from_pretrained(G("pipe_sd15"));
        var baseOut = plain.unet.forward(x, t, ehs);
        Assert.That((Merged(0.0) - baseOut).abs().max().item(), Is.LessThan(1e-6), "scale 0 = the base");
        Assert.That((merged - baseOut).abs().max().item(), Is.GreaterThan(1e-3), "the LoRA changes the output");
    }

    [Test]
    public void LoraKeysOfEveryDiffusersNamingMapToOurs()
    {
        using var scope = NewDisposeScope();
        var w = ones([2, 3]);
        var sd = new Dictionary<string, Tensor>
        {
            ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"] = w,
            ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight"] = w,
            ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight"] = w,
            ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight"] = w,
        };
        var (weights, _) = PipelineLoading.NormalizeLoraKeys(sd, "test");
        Assert.That(weights.Keys, Is.EquivalentTo(new[]
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_A.weight",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight",
        }));
        // Text-encoder parts keep their component; network alphas are keyed by component and module.
        var (te, alphas) = PipelineLoading.NormalizeLoraKeys(new()
        {
            ["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight"] = w,
            ["text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_B.weight"] = w,
            ["unet.mid_block.attentions.0.proj_in.alpha"] = scalar_tensor(8.0),
        }, "test");
        Assert.That(te.Keys, Is.EquivalentTo(new[]
        {
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
            "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_B.weight",
        }));
        Assert.That(alphas, Is.EqualTo(new Dictionary<string, double> { ["unet.mid_block.attentions.0.proj_in"] = 8.0 }));
        Assert.Throws<InvalidDataException>(() => PipelineLoading.NormalizeLoraKeys(new() { ["unet.x.lora_magnitude_vector"] = w }, "test"));
    }

    /// <summary>--lora &lt;kohya file&gt;: the pipeline loader merges a webui/kohya LoRA (UNet and text encoder parts) exactly
    /// as Sudo's own adapters merge.</summary>
    [Test]
    public void KohyaLoraFileMergesLikeSudosAdapters()
    {
        var file = Path.Combine(Tmp, "kohya.safetensors");
        using var a = PipelineComponents.from_pretrained(G("pipe_sd15"));
        using var g = new Generator(5);
        using var unetLora = Lora.Attach(a.unet, new LoraConfig(r: 2, lora_alpha: 2), g);
        using var teLora = Lora.Attach(a.text_encoder, new LoraConfig(r: 2, lora_alpha: 2, target_modules: ["q_proj", "k_proj", "v_proj", "out_proj"]), g);
        using (no_grad())
            foreach (var p in unetLora.parameters().Concat(teLora.parameters())) p.copy_(randn(p.shape, g) * 0.1);
        KohyaLora.Save(file, a.unet.config, false, unetLora, teLora);
        unetLora.merge();
        teLora.merge();
        using var pipe = PipelineLoading.Load(new PipelineSpec { model = G("pipe_sd15"), lora = file, lora_scale = 1.0 }, ScalarType.Float32, Device.CPU);
        using var scope = NewDisposeScope();
        foreach (var (ma, mb) in new (nn.Module, nn.Module)[] { (a.unet, pipe.unet), (a.text_encoder, pipe.components.text_encoder) })
        {
            var sb = mb.state_dict();
            foreach (var (k, t) in ma.state_dict()) Assert.That(t.equal(sb[k]), Is.True, k);
        }
    }

    /// <summary>sudoml convert --to kohya: a PEFT LoRA folder exported with kohya names merges to the same UNet as the folder.</summary>
    [Test]
    public void PeftLoraExportedToKohyaMergesToTheSameWeights()
    {
        var peft = Path.Combine(Tmp, "peft-lora");
        using (var a = PipelineComponents.from_pretrained(G("pipe_sd15")))
        using (var g = new Generator(7))
        using (var lora = Lora.Attach(a.unet, new LoraConfig(r: 2, lora_alpha: 4, target_modules: ["to_q", "to_v"]), g))
        {
            using (no_grad())
                foreach (var p in lora.parameters()) p.copy_(randn(p.shape, g) * 0.1);
            lora.save(peft);
        }
        var kohya = Path.Combine(Tmp, "exported.safetensors");
        var n = PipelineLoading.ExportKohya(peft, G("pipe_sd15"), kohya);
        using var scope = NewDisposeScope();
        Assert.That(safetensors.load_file(kohya).Keys.Where(k => k.EndsWith(".alpha")).Count(), Is.EqualTo(n / 3));
        using var fromPeft = PipelineLoading.Load(new PipelineSpec { model = G("pipe_sd15"), lora = peft }, ScalarType.Float32, Device.CPU);
        using var fromKohya = PipelineLoading.Load(new PipelineSpec { model = G("pipe_sd15"), lora = kohya }, ScalarType.Float32, Device.CPU);
        var sk = fromKohya.unet.state_dict();
        foreach (var (k, t) in fromPeft.unet.state_dict()) Assert.That(t.equal(sk[k]), Is.True, k);
    }

    /// <summary>sudoml sample --unet &lt;training output&gt; / --lora &lt;training output&gt;: the CLI's code path (Sampling.Run).</summary>
    /// <summary>A kohya file of mixed ranks and α (an SD1.5 to_q, a to_k without .alpha, the 1×1 proj_in, a 3×3 resnet
    /// conv and a text-encoder q_proj) → sudoml convert --to peft → a diffusers folder whose adapters (read back through
    /// lora_adapter_metadata, rank_pattern / alpha_pattern) hold the same tensors and α per module → --to kohya → the
    /// file's tensors and α again.</summary>
    [Test]
    public void KohyaToPeftAndBackKeepsEveryTensorRankAndAlpha()
    {
        var pipeFolder = G("pipe_sd15");
        using var scope = NewDisposeScope();
        using var g = new Generator(31);
        var kohya = new Dictionary<string, Tensor>();
        void Add(string name, long[] down, long[] up, double? alpha)
        {
            kohya[$"{name}.lora_down.weight"] = randn(down, g) * 0.2;
            kohya[$"{name}.lora_up.weight"] = randn(up, g) * 0.2;
            if (alpha is { } a) kohya[$"{name}.alpha"] = scalar_tensor(a, ScalarType.Float32);
        }
        using (var p = PipelineComponents.from_pretrained(pipeFolder))
        {
            var m = p.unet.named_modules().ToDictionary(x => x.name, x => x.module);
            long[] W(string path) => m[path] is nn.Linear l ? l.weight.shape : ((nn.Conv2d)m[path]).weight.shape;
            var q = W("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
            Add("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", [2, q[1]], [q[0], 2], 1.0);
            var k = W("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k");
            Add("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", [4, k[1]], [k[0], 4], null);
            var pin = W("down_blocks.0.attentions.0.proj_in");
            Add("lora_unet_down_blocks_0_attentions_0_proj_in", [2, pin[1], 1, 1], [pin[0], 2, 1, 1], 1.0);
            var c1 = W("down_blocks.0.resnets.0.conv1");
            Add("lora_unet_down_blocks_0_resnets_0_conv1", [3, c1[1], 3, 3], [c1[0], 3, 1, 1], 1.5);
            var tq = p.text_encoder.text_model.encoder.layers[0].self_attn.q_proj.weight.shape;
            Add("lora_te_text_model_encoder_layers_0_self_attn_q_proj", [2, tq[1]], [tq[0], 2], 1.0);
        }
        var kohyaFile = Path.Combine(Tmp, "mixed.safetensors");
        safetensors.save_file(kohya, kohyaFile);

        var peft = Path.Combine(Tmp, "peft");
        var n = PipelineLoading.ExportPeft(kohyaFile, pipeFolder, peft);
        Assert.That(n, Is.EqualTo(10));
        var weightsFile = Path.Combine(peft, "pytorch_lora_weights.safetensors");
        var meta = JsonNode.Parse(safetensors.load_metadata(weightsFile)[Lora.MetadataKey])!.AsObject();
        Assert.That((int)meta["unet.r"]!, Is.EqualTo(2));
        Assert.That((int)meta["unet.rank_pattern"]!["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"]!, Is.EqualTo(4));
        Assert.That((int)meta["unet.rank_pattern"]!["down_blocks.0.resnets.0.conv1"]!, Is.EqualTo(3));
        Assert.That(meta.ContainsKey("text_encoder.r"), Is.True);
        var stored = safetensors.load_file(weightsFile);
        Assert.That(stored.Keys, Does.Contain("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"));

        // Read back as adapters: same tensors, rank and α per module as the kohya file.
        using (var p = PipelineComponents.from_pretrained(pipeFolder))
        using (var back = PipelineLoading.AttachLora(p, weightsFile))
        {
            var expected = new Dictionary<string, (string kohya, int rank, double alpha)>
            {
                ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"] = ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 2, 1.0),
                ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"] = ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 4, 4.0),
                ["down_blocks.0.attentions.0.proj_in"] = ("lora_unet_down_blocks_0_attentions_0_proj_in", 2, 1.0),
                ["down_blocks.0.resnets.0.conv1"] = ("lora_unet_down_blocks_0_resnets_0_conv1", 3, 1.5),
            };
            Assert.That(back.unet!.adapters.Keys, Is.EquivalentTo(expected.Keys));
            foreach (var (path, (name, rank, alpha)) in expected)
            {
                var a = back.unet.adapters[path];
                Assert.That((a.rank, a.alpha), Is.EqualTo((rank, alpha)), path);
                Assert.That(a.lora_A.equal(kohya[$"{name}.lora_down.weight"].reshape(a.lora_A.shape)), Is.True, path);
                Assert.That(a.lora_B.equal(kohya[$"{name}.lora_up.weight"].reshape(a.lora_B.shape)), Is.True, path);
            }
            var te = back.text_encoder!.adapters["text_model.encoder.layers.0.self_attn.q_proj"];
            Assert.That(te.lora_A.equal(kohya["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"]), Is.True);
        }

        // And back to kohya: every tensor and α as in the original file.
        var again = Path.Combine(Tmp, "again.safetensors");
        var count = PipelineLoading.ExportKohya(peft, pipeFolder, again);
        var round = safetensors.load_file(again);
        Assert.That(count, Is.EqualTo(15));
        Assert.That(round.Keys.Where(key => !key.EndsWith(".alpha")), Is.EquivalentTo(kohya.Keys.Where(key => !key.EndsWith(".alpha"))));
        foreach (var (key, t) in kohya)
            Assert.That(round[key].reshape(t.shape).equal(t), Is.True, key);
        Assert.That(round["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha"].item(), Is.EqualTo(4.0), "α = r made explicit");
    }

    [Test]
    public void TrainedUnetAndLoraSample()
    {
        var trainOut = Path.Combine(Tmp, "train-out");
        using (var pipe = StableDiffusionPipeline.from_pretrained(G("pipe_sd15")))
            pipe.unet.save_pretrained(Path.Combine(trainOut, "unet"));
        SaveRandomLora(Path.Combine(Tmp, "lora-out"));
        List<RgbImage> Run(string name, string? unet, string? lora)
        {
            var files = Sampling.Run(new SampleSettings { model = G("pipe_sd15"), unet = unet, lora = lora, prompts = ["a red fox"], steps = 3, out_dir = Path.Combine(Tmp, name) });
            return files.Select(ImageCodecs.Load).ToList();
        }
        var baseImg = Run("base", null, null)[0];
        var unetImg = Run("unet", trainOut, null)[0];
        var loraImg = Run("lora", null, Path.Combine(Tmp, "lora-out"))[0];
        Assert.That(unetImg.Pixels, Is.EqualTo(baseImg.Pixels), "the saved UNet is the base's");
        Assert.That(loraImg.Pixels, Is.Not.EqualTo(baseImg.Pixels), "the LoRA changes the image");
        var meta = JsonNode.Parse(File.ReadAllLines(Path.Combine(Tmp, "lora", "images.jsonl"))[0])!;
        Assert.That((string)meta["model"]!, Does.Contain("lora="));
        var e = Assert.Throws<FileNotFoundException>(() => Run("bad", Path.Combine(Tmp, "lora-out"), null))!;
        Assert.That(e.Message, Does.Contain("--lora"), "a LoRA output given as --unet says so");
    }

    [Test]
    public void EvalReportsIntervalsAndPairedWinRatesAndResumes()
    {
        SaveRandomLora(Path.Combine(Tmp, "lora-out"), 2.0);
        var outDir = Path.Combine(Tmp, "eval");
        var tokenizer = Path.Combine(G("pipe_sd15"), "tokenizer");
        var settings = new EvalSettings
        {
            models =
            [
                EvalModel.Parse($"base={G("pipe_sd15")}"),
                EvalModel.Parse($"same=,unet={Path.Combine(G("pipe_sd15"), "unet")}", G("pipe_sd15")),
                EvalModel.Parse($"lora=,lora={Path.Combine(Tmp, "lora-out")}", G("pipe_sd15")),
            ],
            prompts = ["a red fox", "a blue bird on a branch", "a lighthouse at night"],
            seeds = [0, 1],
            steps = 3,
            scorers = [new EvalScorer("hps", Path.Combine(G("hpsv2"), "HPS_v2.1_compressed.pt")), new EvalScorer("aes", G("aesthetic"))],
            out_dir = outDir,
            bootstrap = 500,
        };
        var log = new List<string>();
        var r = Evaluation.Run(settings, log.Add);
        foreach (var m in r.models)
            foreach (var sc in r.scorers)
            {
                var i = r.means[m][sc];
                Assert.That(i.lo, Is.LessThanOrEqualTo(i.mean).And.LessThanOrEqualTo(i.hi), $"{m} {sc}");
            }
        // Identical images tie on every (prompt, seed): exactly ½ with a degenerate interval.
        foreach (var sc in r.scorers) Assert.That(r.win_rates["same"][sc], Is.EqualTo(new Interval(0.5, 0.5, 0.5)), sc);
        // The win rate is the mean over prompts of per-(prompt, seed) wins read back from per_prompt.jsonl.
        var lines = File.ReadAllLines(r.per_prompt_jsonl).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.That(lines, Has.Count.EqualTo(6));
        foreach (var sc in r.scorers)
        {
            var byPrompt = lines.GroupBy(l => (int)l["prompt_index"]!).Select(gp => gp.Average(l =>
            {
                var (a, b) = ((double)l["lora"]![sc]!, (double)l["base"]![sc]!);
                return a > b ? 1.0 : a < b ? 0.0 : 0.5;
            }));
            Assert.That(r.win_rates["lora"][sc].mean, Is.EqualTo(byPrompt.Average()).Within(1e-12), sc);
        }
        Assert.That(File.ReadAllText(r.report_html), Does.Contain("data:image/png;base64,").And.Contain("<svg").And.Contain("a lighthouse at night"));
        Assert.That(File.ReadAllText(r.report_md), Does.Contain("Win rate against base").And.Contain("| lora |"));

        // Resume: a lost image is re-sampled alone; adding a scorer re-scores without re-sampling.
        File.Delete(Evaluation.ImagePath(outDir, "lora", 1, 1));
        var stamp = File.GetLastWriteTimeUtc(Evaluation.ImagePath(outDir, "base", 0, 0));
        log.Clear();
        var r2 = Evaluation.Run(settings with { scorers = [.. settings.scorers, new EvalScorer("imagereward", G("imagereward"))] }, log.Add);
        Assert.That(log, Has.Some.Contains("lora: sampling 1 images"));
        Assert.That(log, Has.Some.Contains("base: all 6 images cached"));
        Assert.That(log, Has.Some.Contains("imagereward: scoring 18 images"));
        Assert.That(File.GetLastWriteTimeUtc(Evaluation.ImagePath(outDir, "base", 0, 0)), Is.EqualTo(stamp));
        Assert.That(r2.means["base"]["hps"], Is.EqualTo(r.means["base"]["hps"]));
        // A replaced image is re-scored (its cached score belonged to the old one), the others are not.
        var img = ImageCodecs.Load(Evaluation.ImagePath(outDir, "base", 0, 0));
        ImageCodecs.Save(new RgbImage(img.Width, img.Height, new byte[img.Pixels.Length]), Evaluation.ImagePath(outDir, "base", 0, 0));
        log.Clear();
        Evaluation.Run(settings, log.Add);
        Assert.That(log, Has.Some.Contains("hps: scoring 1 images"));
        Assert.That(log, Has.Some.Contains("aes: scoring 1 images"));
        // Other sampling settings in the same folder are refused.
        Assert.Throws<InvalidOperationException>(() => Evaluation.Run(settings with { steps = 4 }, _ => { }));
    }

    [Test]
    public void BootstrapOfAConstantIsDegenerateAndCoversTheMean()
    {
        Assert.That(Evaluation.Bootstrap([2.0, 2.0, 2.0], 200, 0), Is.EqualTo(new Interval(2, 2, 2)));
        var i = Evaluation.Bootstrap([0, 1, 0, 1, 1, 0, 1, 1], 1000, 0);
        Assert.That(i.mean, Is.EqualTo(0.625));
        Assert.That(i.lo, Is.LessThan(0.625));
        Assert.That(i.hi, Is.GreaterThan(0.625));
        Assert.That(i.lo, Is.GreaterThanOrEqualTo(0));
        Assert.That(i.hi, Is.LessThanOrEqualTo(1));
    }
}
