using System.Diagnostics;
using NUnit.Framework;
using Sudo.Data;
using Sudo.Torch.Tests;
using Sudo.Training;
using Sudo.Worlds.Shapes;
namespace Sudo.Training.Tests;

public class RecipeTests
{
    private static string RepoRoot() => WorldStudy.FindRepoRoot(TestContext.CurrentContext.TestDirectory);

    [Test]
    public void OfflineRecipeRunsUnderFsiWithItsPackageDependencies()
    {
        // dotnet fsi loads artifacts/bin/Sudo.Training/release directly: Google.Protobuf (TensorBoard) and
        // Spectre.Console must sit next to it, and the recipe must train and save end to end.
        var pipe = Shared.Require("golden", "pipe_sd15");
        var root = RepoRoot();
        Assume.That(File.Exists(Path.Combine(root, "artifacts", "bin", "Sudo.Training", "release", "Sudo.Training.dll")), "needs the Release build (scripts/test.sh builds it)");
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-recipe-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(Path.Combine(dir, "pairs"));
            var lines = new List<string>();
            for (var i = 0; i < 4; i++)
            {
                var prompt = World.Prompts("train", 4)[i];
                ImageCodecs.Save(World.Render(prompt, 32, i), Path.Combine(dir, "pairs", $"w{i}.png"));
                ImageCodecs.Save(World.Render(prompt, 32, i + 10), Path.Combine(dir, "pairs", $"l{i}.png"));
                lines.Add($"{{\"caption\": \"{prompt}\", \"winner\": \"w{i}.png\", \"loser\": \"l{i}.png\"}}");
            }
            File.WriteAllLines(Path.Combine(dir, "pairs", "pairs.jsonl"), lines);
            var psi = new ProcessStartInfo("dotnet", ["fsi", "recipes/sft.fsx", "--", "--model", pipe, "--data", Path.Combine(dir, "pairs"),
                "--output_dir", Path.Combine(dir, "out"), "--max_train_steps", "2", "--train_batch_size", "2"])
            {
                WorkingDirectory = root,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.That(p.ExitCode, Is.EqualTo(0), stdout.Result + stderr);
            Assert.That(stdout.Result, Does.Contain("done: 2 steps"));
            Assert.That(Directory.GetFiles(Path.Combine(dir, "out", "unet"), "*.safetensors"), Is.Not.Empty);
            Assert.That(Directory.GetFiles(Path.Combine(dir, "out", "logs")), Is.Not.Empty, "TensorBoard events written");
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
