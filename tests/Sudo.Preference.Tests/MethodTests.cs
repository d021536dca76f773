using NUnit.Framework;
using Sudo.Data;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;
namespace Sudo.Preference.Tests;

/// <summary>Methods as values: the pair sources' plans, the presets' losses, and what a Method refuses.</summary>
public class MethodTests : TempFolderTest
{
    static List<PreferencePair> Batch(int b) => Enumerable.Range(0, b).Select(i => new PreferencePair($"caption {i}", $"w{i}.png", $"l{i}.png")).ToList();

    [Test]
    public void DatasetPairsKeepTheLabels()
    {
        using var g = new Generator(0);
        var plan = new DatasetPairs().Plan(Batch(3), g);
        Assert.That(plan.winners, Is.EqualTo(new[] { new ImageRef(0, true), new ImageRef(1, true), new ImageRef(2, true) }));
        Assert.That(plan.losers, Is.EqualTo(new[] { new ImageRef(0, false), new ImageRef(1, false), new ImageRef(2, false) }));
    }

    [Test]
    public void SelfPairsAreWinnersPermutedByRandperm()
    {
        // SUDO's train.py: losers = winners[torch.randperm(B)] — the same draw from the same generator.
        const int b = 8;
        using var g1 = new Generator(11);
        using var g2 = new Generator(11);
        var plan = new SelfPairs().Plan(Batch(b), g1);
        using var perm = randperm(b, g2);
        Assert.That(plan.losers.Select(r => (long)r.row), Is.EqualTo(perm.ToArray<long>()));
        Assert.That(plan.losers.All(r => r.winner) && plan.winners.Select(r => r.row).SequenceEqual(Enumerable.Range(0, b)), Is.True);
        // The derangement: still a permutation, never a winner against itself, over many draws.
        using var g3 = new Generator(3);
        for (var k = 0; k < 200; k++)
        {
            var d = new SelfPairs(derangement: true).Plan(Batch(5), g3);
            var rows = d.losers.Select(r => r.row).ToArray();
            Assert.That(rows.OrderBy(x => x), Is.EqualTo(Enumerable.Range(0, 5)));
            Assert.That(rows.Where((r, i) => r == i), Is.Empty);
        }
        Assert.That(Assert.Throws<ArgumentException>(() => new SelfPairs(derangement: true).Validate(1))!.Message, Does.Contain("--train_batch_size ≥ 2"));
    }

    [Test]
    public void AiFeedbackRelabelsThenDropsTies()
    {
        void Png(string name) => ImageCodecs.Save(new RgbImage(2, 2, new byte[12]), Path.Combine(Tmp, name));
        foreach (var n in new[] { "a.png", "b.png", "c.png", "d.png", "e.png", "f.png" }) Png(n);
        File.WriteAllLines(Path.Combine(Tmp, "pairs.jsonl"),
        [
            """{"caption": "x", "winner": "a.png", "loser": "b.png"}""",
            """{"caption": "y", "winner": "c.png", "loser": "d.png"}""",
            """{"caption": "z", "winner": "e.png", "loser": "f.png"}""",
        ]);
        var score = new Dictionary<string, double> { ["a.png"] = 1, ["b.png"] = 2, ["c.png"] = 3, ["d.png"] = 1, ["e.png"] = 5, ["f.png"] = 5 };
        var source = new AiFeedbackPairs((path, caption) => score[Path.GetFileName(path)]);
        var data = source.Prepare(PairDataset.Load(Tmp));
        Assert.That(data.Pairs.Select(p => (p.winner, p.loser)), Is.EqualTo(new[] { ("b.png", "a.png"), ("c.png", "d.png") }), "swapped, kept, tie dropped");
        Assert.That(data.DroppedTies, Is.EqualTo(1));
        Assert.That(source.name, Is.EqualTo("ai_feedback+dataset"));
    }

    [Test]
    public void PresetLossesAreTheLossFunctions()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(5);
        var m = rand([6], g) * 0.1;
        var r = rand([6], g) * 0.1;
        var s = new StepInputs(m, r, 3, zeros([6], ScalarType.Int64));
        Assert.That(Methods.dpo(2000).offline_loss(s).loss.item(), Is.EqualTo(Losses.diffusion_dpo(m, r, 2000).loss.item()));
        Assert.That(Methods.sudo(2000, 0.3, 0.7).offline_loss(s).loss.item(), Is.EqualTo(Losses.sudo(m, r, 2000, 0.3, 0.7).loss.item()));
        Assert.That(Methods.sft().offline_loss(s).loss.item(), Is.EqualTo(m.narrow(0, 0, 3).mean().item()).Within(1e-7), "winners only");
        // θ = reference: every DPO-style loss is log 2.
        var same = new StepInputs(m, m, 3, zeros([6], ScalarType.Int64));
        Assert.That(Methods.dpo().offline_loss(same).loss.item(), Is.EqualTo(Math.Log(2)).Within(1e-6));
        Assert.That(Assert.Throws<InvalidOperationException>(() => Methods.dpo().offline_loss(s with { ref_mse = null }))!.Message, Does.Contain("reference"));
    }

    [Test]
    public void AMethodRefusesALossOfTheWrongKind()
    {
        Assert.That(Assert.Throws<ArgumentException>(() => new Method("x", new DatasetPairs(), new TransitionLossFn(_ => null!), ReferencePolicy.FrozenCopy))!.Message, Does.Contain("needs a LossFn"));
        Assert.That(Assert.Throws<ArgumentException>(() => new Method("x", new StepwiseResampler(SpoConfig.SD15), new LossFn(_ => null!), ReferencePolicy.AdaptersOff))!.Message, Does.Contain("TransitionLossFn"));
        Assert.That(Assert.Throws<ArgumentException>(() => new Method("a b", new DatasetPairs(), new LossFn(_ => null!), ReferencePolicy.None))!.Message, Does.Contain("method name"));
        var spo = Methods.spo();
        Assert.That(() => spo.offline_loss, Throws.InvalidOperationException);
        Assert.That(spo.Describe(), Does.Contain("step-wise resampler").And.Contain("LoRA adapters off"));
    }
}
