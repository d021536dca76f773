using System.Text.Json.Nodes;
using NUnit.Framework;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Parity;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Preference.Tests;

/// <summary>The losses harness reads β, the SUDO weights, the SPO settings and the list of checked gradients from the
/// golden file: an edited copy (outputs unchanged) must change what it computes.</summary>
public class LossHarnessTests : TempFolderTest
{
    /// <summary>A copy of the losses item in a fresh folder: params.json edited (its UNet paths made absolute), tensors
    /// renamed or dropped by <paramref name="editTensors"/>.</summary>
    private string Copy(Action<JsonObject> editParams, Action<Dictionary<string, Tensor>>? editTensors = null)
    {
        var src = Shared.Require("golden", "losses");
        var dst = Path.Combine(Tmp, Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dst);
        var p = SchedulerConfig.ParsePythonJson(File.ReadAllText(Path.Combine(src, "params.json")))!.AsObject();
        foreach (var k in new[] { "policy_unet", "ref_unet" }) p[k] = Path.GetFullPath(Path.Combine(src, p[k]!.GetValue<string>()));
        editParams(p);
        File.WriteAllText(Path.Combine(dst, "params.json"), p.ToJsonString());
        using var scope = NewDisposeScope();
        var io = safetensors.load_file(Path.Combine(src, "io.safetensors"), mmap: false);
        editTensors?.Invoke(io);
        safetensors.save_file(io, Path.Combine(dst, "io.safetensors"), safetensors.load_metadata(Path.Combine(src, "io.safetensors")));
        return Path.Combine(dst, "io.safetensors");
    }

    private static List<string> Failed(ParityReport r) => r.Rows.Where(x => !x.Passed).Select(x => x.Name).Order(StringComparer.Ordinal).ToList();

    [Test]
    public void GradientsAreTakenForTheParametersTheFileNames()
    {
        // Record the DPO gradient of conv_out.bias under conv_in.bias's name: the harness must now differentiate
        // conv_in.bias (its shape shows it) and fail that row alone.
        var io = Copy(p => p["cfg"]!.AsObject().Remove("grad_params"), t =>
        {
            t["out_dpo_grad_conv_in_bias"] = t["out_dpo_grad_conv_out_bias"];
            t.Remove("out_dpo_grad_conv_out_bias");
        });
        var report = LossParity.Run(io);
        Assert.That(Failed(report), Is.EqualTo(new[] { "out_dpo_grad_conv_in_bias" }));
        var row = report.Rows.Single(r => r.Name == "out_dpo_grad_conv_in_bias");
        using var policy = UNet2DConditionModel.from_pretrained(Path.Combine(Shared.Require("golden", "pipe_sd15"), "unet"));
        var width = policy.conv_in.bias!.size(0);
        Assert.That(row.Note, Does.Contain($"shape [{width}] vs reference [{policy.conv_out.bias!.size(0)}]"));
        Assert.That(report.Rows.Any(r => r.Name == "out_dpo_grad_conv_out_bias"), Is.False, "a gradient the file does not record is not checked");
    }

    [Test]
    public void MisnamedOrMislistedGradientsAreErrors()
    {
        var unknown = Copy(p => p["cfg"]!.AsObject().Remove("grad_params"), t => t["out_sudo_grad_no_such_param"] = t["out_sudo_grad_conv_out_bias"]);
        Assert.That(Assert.Throws<InvalidDataException>(() => LossParity.Run(unknown))!.Message, Does.Contain("out_sudo_grad_no_such_param names no parameter"));
        var listed = Copy(p => p["cfg"]!["grad_params"] = new JsonArray("conv_in.weight"));
        Assert.That(Assert.Throws<InvalidDataException>(() => LossParity.Run(listed))!.Message, Does.Contain("cfg.grad_params"));
        var noBeta = Copy(p => p["cfg"]!["dpo"]!.AsObject().Remove("beta"));
        Assert.That(Assert.Throws<InvalidDataException>(() => LossParity.Run(noBeta))!.Message, Does.Contain("cfg.dpo.beta"));
        var extra = Copy(p => p["cfg"]!["spo"]!["num_steps"] = 3);
        Assert.That(Assert.Throws<InvalidDataException>(() => LossParity.Run(extra))!.Message, Does.Contain("cfg.spo.num_steps"));
    }

    [Test]
    public void AChangedBetaFailsTheQuantitiesThatDependOnIt()
    {
        var io = Copy(p => p["cfg"]!["dpo"]!["beta"] = 2 * p["cfg"]!["dpo"]!["beta"]!.GetValue<double>());
        var failed = Failed(LossParity.Run(io));
        TestContext.Out.WriteLine(string.Join(", ", failed));
        Assert.That(failed, Is.SupersetOf(new[] { "out_dpo_z", "out_dpo_loss", "formula:out_dpo_loss", "formula:out_dpo_z", "out_sudo_z", "out_sudo_loss", "out_dpo_grad_conv_out_weight" }));
        // Unaffected: the MSEs and Δ, the SFT loss, implicit accuracy (sign of z), everything SPO.
        Assert.That(failed.Where(n => n.Contains("_mse") || n.Contains("delta") || n.Contains("spo") || n.Contains("sft") || n.EndsWith("implicit_acc", StringComparison.Ordinal)), Is.Empty);
    }
}
