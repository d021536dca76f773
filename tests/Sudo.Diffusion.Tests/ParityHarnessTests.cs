using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Sudo.Parity;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Diffusion.Tests;

/// <summary>The scheduler harness reads its cases from the golden file: a changed params.json changes what it computes.</summary>
public class ParityHarnessTests : TempFolderTest
{
    /// <summary>A copy of the shared schedulers item whose params.json is edited, the recorded outputs left as they are.</summary>
    private string EditedCopy(Action<JsonObject> edit)
    {
        var src = Shared.Require("golden", "schedulers");
        File.Copy(Path.Combine(src, "io.safetensors"), Path.Combine(Tmp, "io.safetensors"));
        var p = SchedulerConfig.ParsePythonJson(File.ReadAllText(Path.Combine(src, "params.json")))!.AsObject();
        edit(p);
        File.WriteAllText(Path.Combine(Tmp, "params.json"), p.ToJsonString());
        return Path.Combine(Tmp, "io.safetensors");
    }

    [Test]
    public void AChangedFakeModelCoefficientFailsExactlyTheTrajectoryOutputs()
    {
        string? original = null, changed = null;
        var io = EditedCopy(p =>
        {
            original = p["fake_model"]!.GetValue<string>();
            // Double the first numeric constant of the expression, whatever the set's coefficients are.
            var m = Regex.Match(original, @"(?<![A-Za-z_])\d+(\.\d*)?([eE][-+]?\d+)?");
            Assert.That(m.Success, $"no constant in the fake model '{original}'");
            var v = double.Parse(m.Value, CultureInfo.InvariantCulture);
            var nv = v == 0 ? 0.5 : 2 * v;
            changed = original[..m.Index] + nv.ToString("R", CultureInfo.InvariantCulture) + original[(m.Index + m.Length)..];
            p["fake_model"] = changed;
        });
        TestContext.Out.WriteLine($"fake model: '{original}' → '{changed}'");
        var untouched = SchedulerParity.Run(Path.Combine(Shared.Require("golden", "schedulers"), "io.safetensors"));
        Assert.That(untouched.Rows.Where(r => !r.Passed).Select(r => r.Name), Is.Empty, "the unchanged file passes");
        var report = SchedulerParity.Run(io);
        using var f = safetensors.safe_open(io);
        var trajectories = f.Keys.Where(k => k.EndsWith("_samples", StringComparison.Ordinal)).Select(k => k[..^"_samples".Length]).ToList();
        Assert.That(trajectories, Is.Not.Empty);
        // The model inputs of steps after the first, the model outputs and the samples depend on the fake model;
        // timesteps, sigmas, x_init, tables and the single DDIM/DDPM steps do not.
        var expected = trajectories.SelectMany(t => new[] { t + "_model_inputs", t + "_model_outputs", t + "_samples" }).Order(StringComparer.Ordinal);
        var failed = report.Rows.Where(r => !r.Passed).Select(r => r.Name).Order(StringComparer.Ordinal);
        Assert.That(failed, Is.EqualTo(expected));
        Assert.That(report.Rows.Count, Is.EqualTo(untouched.Rows.Count));
    }

    [Test]
    public void AChangedStepCountFailsItsScheduleAndTheSingleSteps()
    {
        var io = EditedCopy(p => p["num_inference_steps"]!["n1"] = p["num_inference_steps"]!["n1"]!.GetValue<int>() + 1);
        var report = SchedulerParity.Run(io);
        var failed = report.Rows.Where(r => !r.Passed).Select(r => r.Name).ToList();
        Assert.That(failed, Does.Contain("ddim_timesteps_n1").And.Contain("ddpm_timesteps_n1"));
        Assert.That(failed.Where(n => n.StartsWith("ddim_case", StringComparison.Ordinal) && n.EndsWith("_prev_timestep", StringComparison.Ordinal)), Is.Not.Empty);
        Assert.That(failed.Where(n => n.Contains("timesteps_n2") || n.EndsWith("_samples", StringComparison.Ordinal) || n is "betas" or "alphas_cumprod"), Is.Empty);
    }

    [Test]
    public void WhatTheHarnessCannotInterpretIsAnErrorNamingIt()
    {
        var unknownName = EditedCopy(p => p["fake_model"] = "model_output = 0.1 * unet(x, t)");
        var e = Assert.Throws<InvalidDataException>(() => SchedulerParity.Run(unknownName))!;
        Assert.That(e.Message, Does.Contain("unknown name 'unet'").And.Contain("fake_model"));
        File.Delete(Path.Combine(Tmp, "io.safetensors"));
        var power = EditedCopy(p => p["fake_model"] = "x ** 2");
        Assert.That(Assert.Throws<InvalidDataException>(() => SchedulerParity.Run(power))!.Message, Does.Contain("'**'"));
        File.Delete(Path.Combine(Tmp, "io.safetensors"));
        var unknownKey = EditedCopy(p => p["guidance"] = 3);
        Assert.That(Assert.Throws<InvalidDataException>(() => SchedulerParity.Run(unknownKey))!.Message, Does.Contain("'guidance'"));
        File.Delete(Path.Combine(Tmp, "io.safetensors"));
        var noSteps = EditedCopy(p => p.Remove("num_inference_steps"));
        Assert.That(Assert.Throws<InvalidDataException>(() => SchedulerParity.Run(noSteps))!.Message, Does.Contain("num_inference_steps"));
        File.Delete(Path.Combine(Tmp, "io.safetensors"));
        var noFake = EditedCopy(p => p.Remove("fake_model"));
        Assert.That(Assert.Throws<InvalidDataException>(() => SchedulerParity.Run(noFake))!.Message, Does.Contain("fake_model"));
    }

    [Test]
    public void FakeModelExpressionsFollowPythonArithmetic()
    {
        using var scope = NewDisposeScope();
        using var ddim = new DDIMScheduler(SchedulerConfig.SD15 with { _class_name = "DDIMScheduler" });
        using var euler = new EulerDiscreteScheduler(SchedulerConfig.SD15 with { _class_name = "EulerDiscreteScheduler" });
        euler.set_timesteps(10);
        var x = tensor(new[] { 1f, -2f });
        double[] Eval(string e, Scheduler s, double t) => FakeModel.Parse(e).Evaluate(s, x, t).to(ScalarType.Float64).ToArray<double>();
        // Left association and precedence: 8 − 2·x − 3/4·t/1000 at t = 500 (DDIM scales nothing).
        Assert.That(Eval("model_output = 8 - 2 * x - 3 / 4 * float(t) / 1000", ddim, 500), Is.EqualTo(new[] { 5.625, 11.625 }).Within(1e-6));
        Assert.That(Eval("-(x + 1) * 2", ddim, 0), Is.EqualTo(new[] { -4.0, 2.0 }).Within(1e-6));
        Assert.That(Eval("1 / x", ddim, 0), Is.EqualTo(new[] { 1.0, -0.5 }).Within(1e-6));
        Assert.That(Eval("x - 1e-1", ddim, 0), Is.EqualTo(new[] { 0.9, -2.1 }).Within(1e-6));
        // scale_model_input is the scheduler's: Euler divides by √(σ² + 1).
        var t0 = euler.TimestepValues[0];
        var sigma = euler.sigmas[0];
        Assert.That(Eval("scale_model_input(x, t)", euler, t0), Is.EqualTo(new[] { 1 / Math.Sqrt(sigma * sigma + 1), -2 / Math.Sqrt(sigma * sigma + 1) }).Within(1e-5));
        Assert.Throws<InvalidDataException>(() => FakeModel.Parse("0.5 * float(t)").Evaluate(ddim, x, 1));
        Assert.Throws<InvalidDataException>(() => FakeModel.Parse("x +"));
        Assert.Throws<InvalidDataException>(() => FakeModel.Parse("x; import os"));
    }
}
