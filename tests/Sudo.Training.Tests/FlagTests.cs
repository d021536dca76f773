using System.Text;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sudo.Preference;

namespace Sudo.Training.Tests;

/// <summary>The one flag vocabulary (Flags.Bind): upstream launch lines parse unchanged, both flag spellings agree,
/// unknown and unsupported flags are refused with a reason, the diffusers convention is explicit.</summary>
public class FlagTests
{
    internal static string Upstream(string name) => Path.Combine(TestContext.CurrentContext.TestDirectory, "upstream", name);

    /// <summary>The arguments after `train.py` of the one launch command in a shell script: continuation lines
    /// joined, `export NAME="value"` variables expanded, double quotes removed (what bash passes to argv).</summary>
    internal static List<string> LaunchArgs(string script)
    {
        var text = File.ReadAllText(script).Replace("\\\n", " ");
        var vars = new Dictionary<string, string>();
        foreach (var line in text.Split('\n'))
        {
            var l = line.Trim();
            if (l.StartsWith("export "))
            {
                var eq = l.IndexOf('=');
                vars[l[7..eq]] = l[(eq + 1)..].Trim('"');
            }
        }
        var launch = text.Split('\n').Single(l => l.Contains("train.py"));
        var words = new List<string>();
        var cur = new StringBuilder();
        bool quoted = false, any = false;
        for (var i = 0; i < launch.Length; i++)
        {
            var c = launch[i];
            if (c == '"') { quoted = !quoted; any = true; }
            else if (c == '$' && !char.IsWhiteSpace(launch[Math.Min(i + 1, launch.Length - 1)]))
            {
                var j = i + 1;
                while (j < launch.Length && (char.IsLetterOrDigit(launch[j]) || launch[j] == '_')) j++;
                cur.Append(vars[launch[(i + 1)..j]]);
                i = j - 1;
                any = true;
            }
            else if (char.IsWhiteSpace(c) && !quoted)
            {
                if (any) words.Add(cur.ToString());
                cur.Clear();
                any = false;
            }
            else { cur.Append(c); any = true; }
        }
        if (any) words.Add(cur.ToString());
        return words.SkipWhile(w => w != "train.py").Skip(1).ToList();
    }

    static IEnumerable<string> Scripts() => Directory.GetFiles(Path.Combine(TestContext.CurrentContext.TestDirectory, "upstream"), "*.sh").Select(Path.GetFileName)!;

    [TestCaseSource(nameof(Scripts))]
    public void UpstreamLaunchLinesParseAndEveryFlagLandsInItsField(string script)
    {
        var args = LaunchArgs(Upstream(script));
        Assert.That(args, Has.Count.GreaterThan(10), "the launch command was found");
        var bound = Flags.Bind<TrainConfig>(args);
        var node = RunRecord.ConfigNode(bound.value);
        // Every flag of the line: bound to the field of its name with the given value, or a note saying it has no effect here.
        foreach (var (name, value) in Flags.Tokenize(args))
        {
            if (UpstreamFlags.ByName[name].status == FlagStatus.NoEffect)
            {
                Assert.That(bound.notes, Has.Some.Contains("--" + name), name);
                continue;
            }
            var field = node[name];
            Assert.That(field, Is.Not.Null, $"--{name} has a field");
            var expected = value is null ? "true" : value;
            var actual = field!.GetValueKind() == System.Text.Json.JsonValueKind.String ? field.GetValue<string>() : field.ToJsonString();
            if (double.TryParse(expected, System.Globalization.CultureInfo.InvariantCulture, out var e))
                Assert.That(double.Parse(actual, System.Globalization.CultureInfo.InvariantCulture), Is.EqualTo(e), name);
            else Assert.That(actual, Is.EqualTo(expected), name);
        }
        Assert.That(bound.value.method, Is.EqualTo("dpo"));
        Assert.That(bound.value.pretrained_model_name_or_path, Does.Contain("stable-diffusion"));
        Assert.That(bound.value.dataset_name, Is.EqualTo("yuvalkirstain/pickapic_v2"));
    }

    [Test]
    public void LauncherValuesAreTheOnesTheScriptsState()
    {
        var sd15 = Flags.Bind<TrainConfig>(LaunchArgs(Upstream("diffusion_dpo_sd15.sh"))).value;
        Assert.That((sd15.train_batch_size, sd15.gradient_accumulation_steps, sd15.max_train_steps, sd15.lr_warmup_steps), Is.EqualTo((1, 128, (int?)2000, 500)));
        Assert.That((sd15.learning_rate, sd15.scale_lr, sd15.beta_dpo, sd15.checkpointing_steps), Is.EqualTo((1e-8, true, 5000.0, 500)));
        Assert.That(sd15.cache_dir, Is.EqualTo("/export/share/datasets/vision_language/pick_a_pic_v2/"));
        Assert.That((sd15.output_dir, sd15.sdxl), Is.EqualTo(("tmp-sd15", false)));
        var sdxl = Flags.Bind<TrainConfig>(LaunchArgs(Upstream("diffusion_dpo_sdxl.sh"))).value;
        Assert.That((sdxl.sdxl, sdxl.lr_warmup_steps, sdxl.checkpointing_steps), Is.EqualTo((true, 200, 200)));
        Assert.That(sdxl.pretrained_vae_model_name_or_path, Is.EqualTo("madebyollin/sdxl-vae-fp16-fix"));
        var sudo = Flags.Bind<TrainConfig>(LaunchArgs(Upstream("sudo_readme.sh"))).value;
        Assert.That((sudo.train_batch_size, sudo.gradient_accumulation_steps, sudo.learning_rate, sudo.scale_lr), Is.EqualTo((32, 32, 1e-6, false)));
    }

    [Test]
    public void BothSpellingsAndBooleanFormsAgree()
    {
        var a = Flags.Bind<TrainConfig>(["--method=sudo", "--beta_dpo", "2000", "--scale_lr", "--no_hflip", "true", "--random_crop=false", "--resolution=256"]).value;
        var b = Flags.Bind<TrainConfig>(["--method", "sudo", "--beta_dpo=2000", "--scale_lr=true", "--no-hflip", "--random_crop", "false", "--resolution", "256"]).value;
        Assert.That(RunRecord.ConfigNode(a).ToJsonString(), Is.EqualTo(RunRecord.ConfigNode(b).ToJsonString()));
        Assert.That((a.method, a.beta_dpo, a.scale_lr, a.no_hflip, a.random_crop, a.resolution), Is.EqualTo(("sudo", 2000.0, true, true, false, (int?)256)));
        // Defaults are the record's initialisers: nothing given, nothing changed.
        Assert.That(RunRecord.ConfigNode(Flags.Bind<TrainConfig>([]).value).ToJsonString(), Is.EqualTo(RunRecord.ConfigNode(new TrainConfig()).ToJsonString()));
        var lists = Flags.Bind<TrainConfig>(["--validation_prompts", "a red circle", "a blue square", "--validation_steps", "5"]).value;
        Assert.That(lists.validation_prompts, Is.EqualTo(new[] { "a red circle", "a blue square" }));
        Assert.That(Flags.Bind<TrainConfig>(["--max_train_steps", "none"]).value.max_train_steps, Is.Null);
        Assert.That(Flags.Bind<TrainConfig>(["--sft"]).value.method, Is.EqualTo("sft"));
    }

    [Test]
    public void ToArgsRoundTrips()
    {
        var c = new TrainConfig
        {
            method = "sudo",
            pretrained_model_name_or_path = "m",
            dataset_name = "d with space",
            max_train_steps = null,
            learning_rate = 2.5e-5,
            no_hflip = true,
            scale_lr = false,
            resolution = 32,
            validation_prompts = ["a b", "c"],
            beta_dpo = 1234.5,
            seed = 7,
        };
        var args = Flags.ToArgs(c);
        Assert.That(args, Does.Contain("--max_train_steps").And.Contain("none").And.Not.Contain("--scale_lr"), "only what differs from the defaults");
        Assert.That(RunRecord.ConfigNode(Flags.Bind<TrainConfig>(args).value).ToJsonString(), Is.EqualTo(RunRecord.ConfigNode(c).ToJsonString()));
        var s = new SpoTrainConfig { pretrained_model_name_or_path = "m", spo_threshold = 0.1, save_merged_unet = true, lora_rank = 8 };
        Assert.That(RunRecord.ConfigNode(Flags.Bind<SpoTrainConfig>(Flags.ToArgs(s)).value).ToJsonString(), Is.EqualTo(RunRecord.ConfigNode(s).ToJsonString()));
    }

    [Test]
    public void BadFlagsAreRefusedWithAReason()
    {
        var unknown = Assert.Throws<ArgumentException>(() => Flags.Bind<TrainConfig>(["--learning_rte", "1e-5"]))!;
        Assert.That(unknown.Message, Does.Contain("unknown flag --learning_rte").And.Contain("did you mean --learning_rate?").And.Contain("--beta_dpo"));
        Assert.That(Assert.Throws<ArgumentException>(() => Flags.Bind<TrainConfig>(["--use_8bit_adam"]))!.Message, Does.Contain("no 8-bit optimizer on this backend"));
        Assert.That(Assert.Throws<ArgumentException>(() => Flags.Bind<TrainConfig>(["--noise_offset", "0.1"]))!.Message, Does.Contain("--noise_offset"));
        Assert.That(Flags.Bind<TrainConfig>(["--noise_offset", "0", "--use_8bit_adam", "false"]).value.beta_dpo, Is.EqualTo(5000), "a refused flag at its upstream default is accepted");
        Assert.That(Assert.Throws<ArgumentException>(() => Flags.Bind<TrainConfig>(["--train_batch_size", "two"]))!.Message, Does.Contain("--train_batch_size two: expected an integer"));
        Assert.That(Assert.Throws<ArgumentException>(() => Flags.Bind<TrainConfig>(["--scale_lr", "maybe"]))!.Message, Does.Contain("expected true or false"));
        Assert.That(Assert.Throws<ArgumentException>(() => Flags.Bind<TrainConfig>(["--sft", "--method", "dpo"]))!.Message, Does.Contain("contradicts"));
        Assert.That(Assert.Throws<ArgumentException>(() => Flags.Bind<TrainConfig>(["train.py"]))!.Message, Does.Contain("unexpected argument 'train.py'"));
        Assert.That(Assert.Throws<ArgumentException>(() => Flags.Bind<SpoTrainConfig>(["--beta_dpo", "10"]))!.Message, Does.Contain("unknown flag --beta_dpo"));
        var notes = Flags.Bind<TrainConfig>(["--enable_xformers_memory_efficient_attention", "--hard_skip_resume"]).notes;
        Assert.That(notes, Has.Count.EqualTo(2));
    }

    [Test]
    public void DiffusersCommandLinesNeedTheExplicitConvention()
    {
        // Non-clashing diffusers flags are accepted as they are.
        var plain = Flags.Bind<TrainConfig>(["--rank", "8", "--variant", "fp16", "--dataset_split_name", "train", "--tracker_name", "x"]).value;
        Assert.That((plain.lora_rank, plain.variant, plain.split, plain.tracker_project_name, plain.beta_dpo), Is.EqualTo((8, "fp16", "train", "x", 5000.0)));
        // With the convention: its defaults, and its β_d (inside σ(β_d·(−Δ))) doubled to train.py's β (inside σ(−½β·Δ)).
        var d = Flags.Bind<TrainConfig>(["--flag_convention", "diffusers", "--beta_dpo", "2500", "--dataset_name", "pairs"]).value;
        Assert.That((d.beta_dpo, d.learning_rate, d.lr_scheduler, d.train_batch_size, d.lora_rank), Is.EqualTo((5000.0, 5e-4, "constant", 4, 4)));
        Assert.That((d.max_train_steps, d.num_train_epochs, d.resume_from_checkpoint, d.split), Is.EqualTo(((int?)null, 1, (string?)null, "validation")));
        Assert.That(Flags.Bind<TrainConfig>(["--flag_convention=diffusers", "--beta_dpo", "1000"]).value.beta_dpo, Is.EqualTo(2000));
        Assert.That(Assert.Throws<ArgumentException>(() => Flags.Bind<TrainConfig>(["--flag_convention", "kohya"]))!.Message, Does.Contain("train_py").And.Contain("diffusers"));
    }

    [Test]
    public void RecipeFlagsAndOptions()
    {
        var b = Flags.Bind<TrainConfig>(["--gamma", "0.25", "--beta_dpo", "1000"], extras: new Dictionary<string, string> { ["gamma"] = "0.5", ["delta"] = "1" });
        Assert.That((b.extras["gamma"], b.extras["delta"], b.value.beta_dpo), Is.EqualTo(("0.25", "1", 1000.0)));
        var o = Flags.Options(["--pairs", "4"], new Dictionary<string, string> { ["pairs"] = "16", ["output_dir"] = "runs/pairs" });
        Assert.That((o["pairs"], o["output_dir"]), Is.EqualTo(("4", "runs/pairs")));
        Assert.That(Assert.Throws<ArgumentException>(() => Flags.Options(["--pair", "4"], new Dictionary<string, string> { ["pairs"] = "16" }))!.Message, Does.Contain("did you mean --pairs?"));
    }

    [Test]
    public void FlagTableInTheDocsIsCurrent()
    {
        var dir = new DirectoryInfo(TestContext.CurrentContext.TestDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "Sudo.sln"))) dir = dir.Parent;
        Assert.That(dir, Is.Not.Null, "the repository root");
        var doc = File.ReadAllText(Path.Combine(dir!.FullName, "docs", "flags.md"));
        Assert.That(doc, Is.EqualTo(UpstreamFlags.Markdown()), "docs/flags.md is stale: regenerate it with ./sudoml flags --markdown > docs/flags.md");
        // Every upstream flag that is Supported binds to a TrainConfig field (directly or through its mapping).
        var fields = RunRecord.ConfigNode(new TrainConfig()).Select(kv => kv.Key).ToHashSet();
        foreach (var f in UpstreamFlags.All.Where(f => f.status == FlagStatus.Supported))
            Assert.That(fields, Does.Contain(f.field ?? f.name), f.name);
    }

    [Test]
    public void PresetsAreTheOnlyNamedMethods()
    {
        foreach (var name in Methods.Names)
            Assert.That(Methods.Preset(name).name, Is.EqualTo(name));
        Assert.That(Methods.Preset("sft").reference, Is.EqualTo(ReferencePolicy.None));
        Assert.That(Methods.Preset("dpo").pairs, Is.InstanceOf<DatasetPairs>());
        Assert.That(Methods.Preset("sudo", new MethodSettings { sudo_derangement = true }).pairs, Is.InstanceOf<SelfPairs>().With.Property("derangement").True);
        Assert.That(Methods.Preset("spo").pairs, Is.InstanceOf<StepwiseResampler>());
        Assert.That(Assert.Throws<ArgumentException>(() => Methods.Preset("ipo"))!.Message, Does.Contain("dpo, sft, sudo, spo"));
        Assert.That(Assert.Throws<ArgumentException>(() => new Method("x", new DatasetPairs(), new TransitionLossFn(i => null!), ReferencePolicy.FrozenCopy))!.Message, Does.Contain("needs a LossFn"));
    }
}
