using NUnit.Framework;
using Sudo.Torch;
using Sudo.Training;
namespace Sudo.Training.Tests;

public class MixedPrecisionTests
{
    static CpuInfo Cpu(params string[] flags) => new("Test CPU", "AuthenticAMD", flags.ToHashSet(), "test");

    /// <summary>"auto" picks bf16 only with native bf16 and a probe that finds it faster; explicit requests are taken as asked.</summary>
    [Test]
    public void AutoPicksBf16OnlyWhereItIsNativeAndFaster()
    {
        var fast = new Bf16Probe(10, 4);
        var even = new Bf16Probe(10, 9);
        Assert.That(MixedPrecision.ForMachine("auto", Cpu("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"), fast).mode, Is.EqualTo("bf16"));
        Assert.That(MixedPrecision.ForMachine("auto", Cpu("avx2", "amx_bf16"), fast).why, Does.Contain("amx_bf16").And.Contain("0.40×"));
        var avx2 = MixedPrecision.ForMachine("auto", Cpu("avx2", "fma"), fast);
        Assert.That(avx2, Is.EqualTo(("no", "fp32: Test CPU has no native bf16 (avx512_bf16 / amx_bf16)")), "no native bf16: fp32 whatever a probe says");
        Assert.That(MixedPrecision.ForMachine("auto", Cpu("avx512_bf16"), even).mode, Is.EqualTo("no"), "0.9× is not worth bf16's rounding");
        Assert.That(MixedPrecision.ForMachine("auto", Cpu("avx512_bf16"), new Bf16Probe(10, double.PositiveInfinity, "no kernel")).why, Does.Contain("probe failed"));
        Assert.That(MixedPrecision.ForMachine("fp32", Cpu("avx512_bf16"), fast).mode, Is.EqualTo("no"));
        Assert.That(MixedPrecision.ForMachine("bf16", Cpu("avx2"), even).mode, Is.EqualTo("bf16"), "asked: taken (the trainer's own check refuses a slow one)");
        Assert.That(() => MixedPrecision.ForMachine("fp8"), Throws.ArgumentException.With.Message.Contains("expected auto, fp32 (no) or bf16"));
    }
}
