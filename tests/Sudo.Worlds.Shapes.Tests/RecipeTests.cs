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

    /// <summary>Runs a recipe under dotnet fsi on four world pairs (2 steps, batch 2) and returns its output folder's path
    /// after checking it trained end to end; <paramref name="check"/> looks at the folder before it is deleted.</summary>
    static void RunOnWorldPairs(string recipe, Action<string, string> check, params string[] extra) => RunRecipe(recipe, null, check, extra);

    /// <summary>The same on <paramref name="dataset"/> (any --dataset_name), or on four world pairs when null.</summary>
    static void RunRecipe(string recipe, string? dataset, Action<string, string> check, params string[] extra)
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
            for (var i = 0; i < (dataset is null ? 4 : 0); i++)
            {
                var prompt = World.Prompts("train", 4)[i];
                ImageCodecs.Save(World.Render(prompt, 32, i), Path.Combine(dir, "pairs", $"w{i}.png"));
                ImageCodecs.Save(World.Render(prompt, 32, i + 10), Path.Combine(dir, "pairs", $"l{i}.png"));
                lines.Add($"{{\"caption\": \"{prompt}\", \"winner\": \"w{i}.png\", \"loser\": \"l{i}.png\"}}");
            }
            File.WriteAllLines(Path.Combine(dir, "pairs", "pairs.jsonl"), lines);
            var psi = new ProcessStartInfo("dotnet", ["fsi", recipe, "--", "--pretrained_model_name_or_path", pipe, "--dataset_name", dataset ?? Path.Combine(dir, "pairs"),
                "--output_dir", Path.Combine(dir, "out"), "--max_train_steps", "2", "--train_batch_size", "2", .. extra])
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
            Assert.That(Directory.GetFiles(Path.Combine(dir, "out", "logs", "tuning")), Is.Not.Empty, "TensorBoard events written (logging_dir/tracker_project_name)");
            Assert.That(File.Exists(Path.Combine(dir, "out", "run_config.json")), Is.True, "the run record");
            check(Path.Combine(dir, "out"), stdout.Result);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    /// <summary>A recipe reading parquet under dotnet fsi: ParquetSharp's native library must be found there too.</summary>
    [Test]
    public void RecipeReadsPickapicParquetUnderFsi() =>
        RunRecipe("recipes/diffusion_dpo.fsx", Shared.Require("fixtures", "pickapic", "plain_parquet"),
            (_, stdout) => Assert.That(stdout, Does.Contain("39 pairs from folder")), "--dataloader_num_workers", "2");

    [Test]
    public void OfflineRecipeRunsUnderFsiWithItsPackageDependencies() =>
        RunOnWorldPairs("recipes/sft.fsx", (_, stdout) => Assert.That(stdout, Does.Contain("method sft")));

    [Test]
    public void ARecipeDefinesANewMethodAndTrainsIt()
    {
        // recipes/sudo_far_caption.fsx: its own pair source (the loser is the winner whose caption is farthest) and loss.
        Assert.That(File.ReadAllLines(Path.Combine(RepoRoot(), "recipes", "sudo_far_caption.fsx")), Has.Length.LessThan(40));
        RunOnWorldPairs("recipes/sudo_far_caption.fsx", (outDir, stdout) =>
        {
            Assert.That(stdout, Does.Contain("method sudo_far_caption: pairs from farthest_caption"));
            var record = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "run_config.json")))!;
            Assert.That((string)record["config"]!["method"]!, Is.EqualTo("sudo_far_caption"));
            var metrics = File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl"));
            Assert.That(metrics, Has.Length.EqualTo(2));
            Assert.That(metrics[0], Does.Contain("dpo_loss"));
        }, "--mse_weight", "0.5", "--checkpointing_steps", "1");
    }

    /// <summary>paper-repro/released/tables.fsx end to end on the tiny golden pipelines and reward models (every table,
    /// every scorer), so that the real-scale scripts cannot rot.</summary>
    [Test]
    public void ReleasedCheckpointTablesRunAsADryRun()
    {
        Shared.Require("golden", "pipe_sdxl");
        var root = RepoRoot();
        Assume.That(File.Exists(Path.Combine(root, "artifacts", "bin", "Sudo.Training", "release", "Sudo.Training.dll")), "needs the Release build (scripts/test.sh builds it)");
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-released-{Guid.NewGuid():N}");
        try
        {
            var psi = new ProcessStartInfo("dotnet", ["fsi", "paper-repro/released/tables.fsx", "--", "--dry_run", "true", "--out", dir])
            {
                WorkingDirectory = root,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            psi.Environment["SUDO_SHARED"] = Shared.Root;
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.That(p.ExitCode, Is.EqualTo(0), stdout.Result + stderr);
            foreach (var table in new[] { "spo-sd15", "spo-sdxl", "sudo-sd15-pickapic", "sudo-sd15-parti", "sudo-sd15-hpdv2", "dpo-sdxl-hpdv2" })
            {
                var cmp = File.ReadAllText(Path.Combine(dir, "dry-run", table, "comparison.md"));
                Assert.That(cmp, Does.Contain("(paper)").And.Contain("Win rate"), table);
                Assert.That(File.Exists(Path.Combine(dir, "dry-run", table, "report.html")), table);
            }
            Assert.That(stdout.Result, Does.Contain("| spo | ").And.Contain("21.43"), "SPO's SD-1.5 row with the paper's PickScore");
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
