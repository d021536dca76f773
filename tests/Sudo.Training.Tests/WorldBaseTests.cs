using NUnit.Framework;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;

namespace Sudo.Training.Tests;

public class WorldBaseTests
{
    [Test]
    public void BuildsALoadablePipelineFolderAndReusesItsCache()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-world-{Guid.NewGuid():N}");
        try
        {
            var cfg = new WorldBaseConfig { vae_steps = 6, unet_steps = 6, batch_size = 4, train_prompts = 200, bpe_merges = 200 };
            var log = new List<string>();
            WorldBase.Build(dir, cfg, log.Add);
            Assert.That(log.Any(l => l.Contains("built")), Is.True);
            var tok = CLIPTokenizer.from_pretrained(Path.Combine(dir, "tokenizer"));
            Assert.That(tok.model_max_length, Is.EqualTo(20));
            Assert.That(tok.eos_token_id, Is.EqualTo(tok.vocab_size - 1));
            using (var pipe = StableDiffusionPipeline.from_pretrained(dir, "ddim"))
            {
                Assert.That(pipe.vae_scale_factor, Is.EqualTo(4));
                Assert.That(pipe.vae.config.scaling_factor, Is.Not.EqualTo(0.18215), "scaling_factor measured from the latents");
                var imgs = new List<RgbImage>();
                var results = WorldBase.Evaluate(pipe, World.Prompts("validation", 3), steps: 3, images: imgs);
                Assert.That(results, Has.Count.EqualTo(3));
                Assert.That(imgs.All(i => i.Width == 32 && i.Height == 32), Is.True);
                Assert.That(results.All(r => r.score is >= 0 and <= 1), Is.True);
            }
            // Same settings: reused; different settings: rebuilt (atomically replacing the folder).
            log.Clear();
            WorldBase.Build(dir, cfg, log.Add);
            Assert.That(log, Has.Count.EqualTo(1).And.Some.Contains("reusing"));
            Assert.That(cfg with { seed = 1 }, Is.Not.EqualTo(cfg));
            Assert.That((cfg with { seed = 1 }).Key, Is.Not.EqualTo(cfg.Key));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
