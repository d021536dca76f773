using NUnit.Framework;
using Sudo.Parity;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Models.Tests;

/// <summary>Full-size SD1.5 / SDXL / CLIP models built on the meta device: names, shapes and parameter
/// counts equal the key lists saved from diffusers/transformers.</summary>
public class FullSizeTests
{
    private static (Dictionary<string, long[]> keys, long parameters) ReadKeys(string file)
    {
        var lines = File.ReadAllLines(file);
        var header = lines[0];
        var parameters = long.Parse(header.Split('\t').First(f => f.StartsWith("params=")).Substring(7));
        var keys = new Dictionary<string, long[]>();
        foreach (var line in lines.Skip(1).Where(l => l.Length > 0))
        {
            var f = line.Split('\t');
            var shape = f[1].Trim('[', ']');
            keys[f[0]] = shape.Length == 0 ? [] : shape.Split(',').Select(x => long.Parse(x.Trim())).ToArray();
        }
        return (keys, parameters);
    }

    private static nn.Module Build(string name, string configPath) => name switch
    {
        "sd15_unet" or "sdxl_unet" => new UNet2DConditionModel(UNet2DConditionConfig.FromFile(configPath)),
        "sd15_vae" => new AutoencoderKL(AutoencoderKLConfig.FromFile(configPath)),
        "sd15_text_encoder" => new CLIPTextModel(CLIPTextConfig.FromFile(configPath)),
        "sdxl_text_encoder_2" => new CLIPTextModelWithProjection(CLIPTextConfig.FromFile(configPath)),
        "pickscore_clip_h14" => new CLIPModel(CLIPConfig.FromFile(configPath)),
        _ => throw new ArgumentException(name),
    };

    [TestCase("sd15_unet")]
    [TestCase("sdxl_unet")]
    [TestCase("sd15_vae")]
    [TestCase("sd15_text_encoder")]
    [TestCase("sdxl_text_encoder_2")]
    [TestCase("pickscore_clip_h14")]
    public void NamesShapesAndCountsMatch(string name)
    {
        var dir = Shared.Require("golden", "keys");
        var (expected, parameters) = ReadKeys(Path.Combine(dir, $"{name}_keys.tsv"));
        using var _ = device_scope(Device.Meta);
        using var model = Build(name, Path.Combine(dir, $"{name}_config.json"));
        using var scope = NewDisposeScope();
        var actual = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);
        Assert.That(actual.Keys.Except(expected.Keys), Is.Empty, "keys Sudo has that the reference does not");
        Assert.That(expected.Keys.Except(actual.Keys), Is.Empty, "keys the reference has that Sudo lacks");
        foreach (var (k, shape) in expected) Assert.That(actual[k], Is.EqualTo(shape), k);
        Assert.That(actual.Keys, Is.EqualTo(expected.Keys), "state_dict order");
        Assert.That(model.num_parameters(), Is.EqualTo(parameters));
        TestContext.Out.WriteLine($"{name}: {actual.Count} tensors, {parameters:N0} parameters");
    }

    [Test]
    public void PresetsEqualTheReleasedConfigs()
    {
        var dir = Shared.Require("golden", "keys");
        using var _ = device_scope(Device.Meta);
        foreach (var (preset, name) in new[] { (UNet2DConditionConfig.SD15, "sd15_unet"), (UNet2DConditionConfig.SDXL, "sdxl_unet") })
        {
            using var a = new UNet2DConditionModel(preset);
            using var b = new UNet2DConditionModel(UNet2DConditionConfig.FromFile(Path.Combine(dir, $"{name}_config.json")));
            using var scope = NewDisposeScope();
            Assert.That(a.state_dict().Keys, Is.EqualTo(b.state_dict().Keys), name);
            Assert.That(a.num_parameters(), Is.EqualTo(b.num_parameters()), name);
        }
        using var vae = new AutoencoderKL(AutoencoderKLConfig.SD15);
        using var vref = new AutoencoderKL(AutoencoderKLConfig.FromFile(Path.Combine(dir, "sd15_vae_config.json")));
        Assert.That(vae.num_parameters(), Is.EqualTo(vref.num_parameters()));
        using var te = new CLIPTextModel(CLIPTextConfig.SD15);
        using var tref = new CLIPTextModel(CLIPTextConfig.FromFile(Path.Combine(dir, "sd15_text_encoder_config.json")));
        Assert.That(te.num_parameters(), Is.EqualTo(tref.num_parameters()));
        using var te2 = new CLIPTextModelWithProjection(CLIPTextConfig.SDXL2);
        using var t2ref = new CLIPTextModelWithProjection(CLIPTextConfig.FromFile(Path.Combine(dir, "sdxl_text_encoder_2_config.json")));
        Assert.That(te2.num_parameters(), Is.EqualTo(t2ref.num_parameters()));
    }
}
