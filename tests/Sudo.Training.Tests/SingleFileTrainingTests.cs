using NUnit.Framework;
using Sudo.Data;
using Sudo.Models;
using Sudo.Torch;
using Sudo.Torch.Tests;
using Sudo.Training;
using static Sudo.Torch.torch;
namespace Sudo.Training.Tests;

/// <summary>A single-file checkpoint as the base of a training run: --pretrained_model_name_or_path model.safetensors
/// trains to the same weights as the diffusers folder it was written from.</summary>
public class SingleFileTrainingTests
{
    [Test]
    public void ASingleFileIsTheBaseOfATrainingRun()
    {
        var golden = Shared.Require("golden", "pipe_sd15");
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-single-train-{Guid.NewGuid():N}");
        var before = Environment.GetEnvironmentVariable("SUDO_SINGLE_FILE_CONFIG");
        try
        {
            var pairs = Path.Combine(dir, "pairs");
            TestPairs.Write(pairs, 8, 32, 32, seed: 2, noise: 60, winner: 190, loser: 60, i => $"picture number {i}");
            var file = Path.Combine(dir, "sd15-tiny.safetensors");
            Assert.That(SingleFile.Export(golden, file), Is.GreaterThan(0));

            string Train(string model, string name)
            {
                var output = Path.Combine(dir, name);
                var config = Flags.Bind<TrainConfig>([
                    "--method", "dpo", "--pretrained_model_name_or_path", model, "--dataset_name", pairs, "--output_dir", output,
                    "--train_batch_size", "2", "--max_train_steps", "2", "--learning_rate", "1e-3", "--lr_warmup_steps", "0",
                    "--resolution", "32", "--seed", "3", "--log_every", "100"]).value;
                using var t = new Trainer(config);
                t.Train(_ => { });
                return Path.Combine(output, "unet", "diffusion_pytorch_model.safetensors");
            }
            var fromFolder = Train(golden, "folder");
            // Without configs for its family (an empty Hugging Face cache, no SUDO_SINGLE_FILE_CONFIG) the error says what is needed.
            Environment.SetEnvironmentVariable("SUDO_SINGLE_FILE_CONFIG", null);
            var e = Assert.Catch(() => PipelineComponents.from_pretrained(file, cache_dir: Path.Combine(dir, "empty-cache")))!;
            Assert.That(e.Message, Does.Contain("sd1 single-file checkpoint").And.Contain("stable-diffusion-v1-5/stable-diffusion-v1-5").And.Contain("SUDO_SINGLE_FILE_CONFIG"));
            Environment.SetEnvironmentVariable("SUDO_SINGLE_FILE_CONFIG", golden);
            var fromFile = Train(file, "file");
            using var scope = NewDisposeScope();
            var a = safetensors.load_file(fromFolder, mmap: false);
            var b = safetensors.load_file(fromFile, mmap: false);
            Assert.That(b.Keys.Order(), Is.EqualTo(a.Keys.Order()));
            foreach (var (k, t) in a) Assert.That(t.equal(b[k]), Is.True, $"{k}: trained from the single file = trained from the folder");
        }
        finally
        {
            Environment.SetEnvironmentVariable("SUDO_SINGLE_FILE_CONFIG", before);
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
