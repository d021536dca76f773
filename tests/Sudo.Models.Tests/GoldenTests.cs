using NUnit.Framework;
using Sudo.Parity;
using Sudo.Torch;
using Sudo.Torch.Tests;
namespace Sudo.Models.Tests;

/// <summary>Every golden model folder through Parity.Run — the code path of `sudoml parity`.</summary>
public class GoldenTests
{
    [TestCase("unet_sd15")]
    [TestCase("unet_sdxl")]
    [TestCase("vae")]
    [TestCase("clip_text")]
    [TestCase("clip_text_proj")]
    [TestCase("clip_full")]
    public void MatchesTheReferenceLibraries(string item)
    {
        var folder = Shared.Require("golden", item);
        var report = ModelParity.Run(folder, Path.Combine(folder, "io.safetensors"));
        foreach (var r in report.Rows)
            TestContext.Out.WriteLine($"{r.Name,-40} max|Δ| {r.MaxAbsError:G3}  rel {r.MaxRelError:G3}  tol {r.Tolerance:G3}  {(r.Passed ? "ok" : "FAIL")} {r.Note}");
        Assert.That(report.Rows.Where(r => !r.Passed).Select(r => $"{r.Name}: {r.MaxAbsError} > {r.Tolerance} {r.Note}"), Is.Empty);
        Assert.That(report.Rows.Count(r => r.Name.StartsWith("out_") && r.Note == ""), Is.GreaterThan(0), "outputs were compared");
    }
}

/// <summary>The reward-model golden items (README_rewards.md, README_imagereward.md) through the same parity path.</summary>
public class RewardGoldenTests
{
    [TestCase("spm")]
    [TestCase("hpsv2")]
    [TestCase("aesthetic")]
    [TestCase("imagereward")]
    public void MatchesTheUpstreamCode(string item)
    {
        var folder = Shared.Require("golden", item);
        var report = ModelParity.Run(folder, Path.Combine(folder, "io.safetensors"));
        foreach (var r in report.Rows)
            TestContext.Out.WriteLine($"{r.Name,-40} max|Δ| {r.MaxAbsError:G3}  tol {r.Tolerance:G3}  {(r.Passed ? "ok" : "FAIL")} {r.Note}");
        Assert.That(report.Component, Is.EqualTo(item));
        Assert.That(report.Rows.Where(r => !r.Passed).Select(r => $"{r.Name}: {r.MaxAbsError} > {r.Tolerance} {r.Note}"), Is.Empty);
        Assert.That(report.Rows.Count(r => r.Name.StartsWith("out_") && !double.IsNaN(r.MaxAbsError)), Is.EqualTo(report.Rows.Count(r => r.Name.StartsWith("out_"))),
            "every recorded output was computed");
    }
}
