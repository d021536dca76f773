using NUnit.Framework;

namespace Sudo.Training.Tests;

public class ProgressTests
{
    [Test]
    public void PlainLinesEveryLogEveryStepsAndAtTheEnd()
    {
        var lines = new List<string>();
        TrainingProgress.Run("dpo", total: 5, start: 0, logEvery: 2, lines.Add, p =>
        {
            for (var s = 1; s <= 5; s++)
            {
                p.Step(s, new Dictionary<string, double> { ["loss"] = 0.5, ["implicit_acc"] = 0.75, ["lr"] = 1e-5 });
                if (s == 3) p.Log("saved checkpoint-3");
            }
        });
        Assert.That(lines, Has.Count.EqualTo(4));
        Assert.That(lines[0], Does.StartWith("step      2/5  loss 0.50000  acc 0.750  lr 1e-05  "));
        Assert.That(lines[1], Is.EqualTo("saved checkpoint-3"));
        Assert.That(lines[2], Does.StartWith("step      4/5"));
        Assert.That(lines[3], Does.StartWith("step      5/5").And.Contain(" it/s  eta 00:00:00"));
    }
}
