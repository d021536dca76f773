using NUnit.Framework;
using Sudo.Data;
using Sudo.Parity;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Diffusion.Tests;

public class PipelineTests
{
    [TestCase("pipe_sd15")]
    [TestCase("pipe_sdxl")]
    public void ReproducesTheGoldenPipelineRuns(string item)
    {
        var folder = Shared.Require("golden", item);
        var report = PipelineParity.Run(folder, Path.Combine(folder, "io.safetensors"));
        foreach (var r in report.Rows) TestContext.Out.WriteLine($"{r.Name,-45} max|Δ| {r.MaxAbsError:G3} tol {r.Tolerance:G3} {r.Note}");
        Assert.That(report.Rows.Where(r => !r.Passed).Select(r => $"{r.Name}: {r.MaxAbsError} {r.Note}"), Is.Empty);
        using var io = safetensors.safe_open(Path.Combine(folder, "io.safetensors"));
        var recordedImages = io.Keys.Count(k => k.StartsWith("out_", StringComparison.Ordinal) && k.EndsWith("_images", StringComparison.Ordinal));
        Assert.That(recordedImages, Is.GreaterThan(0));
        Assert.That(report.Rows.Count(r => r.Name.EndsWith("_images") && r.Passed), Is.EqualTo(recordedImages));
    }

    [Test]
    public void ImageIDoesNotDependOnTheBatch()
    {
        using var pipe = StableDiffusionPipeline.from_pretrained(Shared.Require("golden", "pipe_sd15"));
        long[] seeds = [11, 12, 13];
        GenerationOptions Opts(string[] prompts, Generator[] gens) => new()
        {
            prompt = prompts,
            num_inference_steps = 4,
            guidance_scale = 5,
            height = 32,
            width = 32,
            eta = 1.0,
            generators = gens,
        };
        string[] prompts = ["a red fox", "a blue bird", "a green frog"];
        using var batch = pipe.call(Opts(prompts, seeds.Select(s => new Generator(s)).ToArray()));
        for (var i = 0; i < 3; i++)
        {
            using var single = pipe.call(Opts([prompts[i]], [new Generator(seeds[i])]));
            Assert.That(single.init_latents.equal(batch.init_latents[i..(i + 1)]), Is.True, $"seeded noise of image {i} is bit-identical");
            Check.Close(single.images!, batch.images![i..(i + 1)], 1.0 / 255, $"image {i}");
        }
        Assert.Throws<ArgumentException>(() => pipe.call(Opts(prompts, [new Generator(1)])));
    }

    [Test]
    public void StepApiBranchesCandidatesFromOneState()
    {
        using var pipe = StableDiffusionPipeline.from_pretrained(Shared.Require("golden", "pipe_sd15"), scheduler: "ddim");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var embeds = pipe.encode_prompt(["a lighthouse"], 1, true);
        pipe.scheduler.set_timesteps(10);
        using var g = new Generator(5);
        var x = pipe.prepare_latents(1, 32, 32, new NoiseSource(generator: g));
        var t = pipe.scheduler.TimestepValues[0];
        var eps = pipe.predict_noise(x, t, embeds, 5.0);
        var ddim = (DDIMScheduler)pipe.scheduler;
        var candidates = Enumerable.Range(0, 4).Select(k =>
        {
            using var gk = new Generator(100 + k);
            return ddim.step_with_logprob(eps, scalar_tensor((long)t), x, 1.0, new NoiseSource(generators: [gk]));
        }).ToArray();
        Assert.That(candidates[0].prev_sample.equal(candidates[1].prev_sample), Is.False, "different draws");
        Check.Close(candidates[2].pred_original_sample, candidates[0].pred_original_sample, 0, "same x̂₀ for every branch");
        // Scoring a stored candidate gives the log-prob it was drawn with (what SPO's loss recomputes).
        var scored = pipe.denoise_step(x, t, embeds, 5.0, eta: 1.0, prev_sample: candidates[3].prev_sample);
        Check.Close(scored.log_prob!, candidates[3].log_prob, 1e-6, "rescored log-prob");
        // Any candidate can continue the chain.
        var next = pipe.denoise_step(candidates[1].prev_sample, pipe.scheduler.TimestepValues[1], embeds, 5.0, eta: 1.0, noise: new NoiseSource(generator: g));
        Assert.That(next.prev_sample.shape, Is.EqualTo(x.shape));
        Assert.That(next.log_prob!.shape, Is.EqualTo(new long[] { 1 }));
    }

    [Test]
    public void SampleCommandWritesReproducibleFiles()
    {
        var model = Shared.Require("golden", "pipe_sd15");
        var a = Path.Combine(Path.GetTempPath(), $"sudo-sample-{Guid.NewGuid():N}");
        var again = a + "-again";
        var b = a + "-b";
        try
        {
            var s = new SampleSettings { model = model, prompts = ["a fox", "a cat"], images_per_prompt = 2, steps = 3, height = 32, width = 32, seed = 9, batch_size = 4, out_dir = a };
            var files = Sampling.Run(s);
            Sampling.Run(s with { out_dir = again });
            Sampling.Run(s with { batch_size = 1, out_dir = b });
            Assert.That(files.Count, Is.EqualTo(4));
            // The same settings twice: byte-identical files. Another batch size: seeded noise is bit-identical
            // (ImageIDoesNotDependOnTheBatch), but fp32 GEMM blocking depends on the batch (~5e-5 here),
            // so a pixel may round to the neighbouring grey level: within 1/255, as the pipeline promises.
            foreach (var f in files)
            {
                var name = Path.GetFileName(f);
                Assert.That(File.ReadAllBytes(Path.Combine(again, name)), Is.EqualTo(File.ReadAllBytes(f)), $"{name}: same settings, same bytes");
                var x = ImageCodecs.Load(f);
                var y = ImageCodecs.Load(Path.Combine(b, name));
                Assert.That((y.Width, y.Height), Is.EqualTo((x.Width, x.Height)));
                var worst = x.Pixels.Zip(y.Pixels, (p, q) => Math.Abs(p - q)).Max();
                Assert.That(worst, Is.LessThanOrEqualTo(1), $"{name}: batch 4 vs batch 1 differ by {worst} grey levels");
            }
            Assert.That(File.ReadAllText(Path.Combine(again, "images.jsonl")), Is.EqualTo(File.ReadAllText(Path.Combine(a, "images.jsonl"))));
            var lines = File.ReadAllLines(Path.Combine(a, "images.jsonl"));
            Assert.That(lines.Length, Is.EqualTo(4));
            Assert.That(lines[3], Does.Contain("\"seed\":12").And.Contain("\"prompt\":\"a cat\"").And.Contain("\"steps\":3"));
            var grid = ImageCodecs.Load(Path.Combine(a, "grid.png"));
            Assert.That((grid.Width, grid.Height), Is.EqualTo((2 * 32 + 3 * 2, 2 * 32 + 3 * 2)));
            Assert.Throws<ArgumentException>(() => Sampling.ParseDtype("fp16", Device.CPU));
        }
        finally
        {
            foreach (var d in new[] { a, again, b }) if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }
}
