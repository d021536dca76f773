using NUnit.Framework;
using Sudo.Torch;

namespace Sudo.Torch.Tests;

public class PrecisionTests
{
    // First processor blocks of /proc/cpuinfo as Linux prints them (flags lines trimmed to the x86 features around
    // the ones that matter): an AVX2-only AMD EPYC (Rome) and an Intel Xeon with AVX-512, AVX512-BF16 and AMX (Sapphire Rapids).
    private const string Rome = """
processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 49
model name	: AMD EPYC 7B12
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr arat npt nrip_save umip rdpid
bogomips	: 4499.99

processor	: 1
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B12
flags		: fpu avx2 avx512f avx512bw avx512vl avx512dq avx512_bf16
""";

    private const string SapphireRapids = """
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 arat avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq la57 rdpid cldemote movdiri movdir64b fsrm md_clear serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities
""";

    [Test]
    public void CpuinfoIsReadFromTheFirstProcessorBlock()
    {
        var amd = CpuFeatures.Parse(Rome, "rome");
        Assert.That(amd.Model, Is.EqualTo("AMD EPYC 7B12"));
        Assert.That(amd.Vendor, Is.EqualTo("AuthenticAMD"));
        Assert.That((amd.Has("avx2"), amd.Has("fma"), amd.Has("avx512f"), amd.OneDnnBf16, amd.NativeBf16), Is.EqualTo((true, true, false, false, false)),
            "the second block's flags must not leak into the first processor's");
        Assert.That(amd.Summary, Does.StartWith("avx2 fma -avx512f"));
        var intel = CpuFeatures.Parse(SapphireRapids);
        Assert.That((intel.Has("avx512f"), intel.OneDnnBf16, intel.NativeBf16, intel.Has("amx_tile")), Is.EqualTo((true, true, true, true)));
        Assert.That(intel.Features.Keys, Is.EqualTo(CpuInfo.Reported));
        var e = Assert.Throws<InvalidDataException>(() => CpuFeatures.Parse("processor : 0\nHardware : BCM2835\n", "arm"))!;
        Assert.That(e.Message, Does.Contain("arm").And.Contain("flags"));
    }

    [Test]
    public void ThisMachinesFeaturesAreConsistent()
    {
        var cpu = CpuFeatures.Detect();
        TestContext.Out.WriteLine($"{cpu.Model} ({cpu.Source}): {cpu.Summary}");
        Assert.That(cpu.Model, Is.Not.Empty);
        // What .NET's JIT sees must agree with what the kernel reports (both need OS support for the registers).
        if (System.Runtime.Intrinsics.X86.X86Base.IsSupported)
        {
            Assert.That(cpu.Has("avx2"), Is.EqualTo(System.Runtime.Intrinsics.X86.Avx2.IsSupported), "avx2");
            Assert.That(cpu.Has("avx512f"), Is.EqualTo(System.Runtime.Intrinsics.X86.Avx512F.IsSupported), "avx512f");
        }
        if (cpu.NativeBf16 && cpu.Has("avx512_bf16")) Assert.That(cpu.Has("avx512f"), "avx512_bf16 implies avx512f");
    }

    [Test]
    public void SlowBf16IsRefusedOrWarnedAboutWithTheMeasuredSlowdown()
    {
        var amd = CpuFeatures.Parse(Rome);
        var slow = new Bf16Probe(fp32_ms: 0.9, bf16_ms: 10.8);
        Assert.That(slow.slowdown, Is.EqualTo(12.0).Within(1e-12));
        var refused = Precision.Judge(amd, slow, allowSlow: false, "--mixed_precision bf16");
        Assert.That(refused.Allowed, Is.False);
        Assert.That(refused.Message, Does.Contain("--mixed_precision bf16").And.Contain("AMD EPYC 7B12").And.Contain("12.0× slower")
            .And.Contain("no avx512bw/vl/dq").And.Contain("--allow_slow_bf16").And.Contain("0.90 ms fp32 vs 10.80 ms bf16"));
        var warned = Precision.Judge(amd, slow, allowSlow: true, "--dtype bf16");
        Assert.That(warned.Allowed, Is.True);
        Assert.That(warned.Message, Does.StartWith("warning: --dtype bf16").And.Contain("12.0×"));
        // At or under the threshold bf16 runs without a word, whatever the flags say.
        var fast = new Bf16Probe(1.0, Precision.SlowBf16Factor);
        Assert.That(Precision.Judge(amd, fast, false, "x"), Is.EqualTo(new Bf16Verdict(true, null)));
        var intel = CpuFeatures.Parse(SapphireRapids);
        Assert.That(Precision.Judge(intel, new Bf16Probe(1.0, 0.4), false, "x").Message, Is.Null);
        // A probe that failed to compute bf16 is refused whatever the flag says.
        var failed = Precision.Judge(intel, new Bf16Probe(1.0, double.PositiveInfinity, "linear: no kernel"), allowSlow: true, "--dtype bf16");
        Assert.That(failed.Allowed, Is.False);
        Assert.That(failed.Message, Does.Contain("cannot run").And.Contain("linear: no kernel"));
    }

    [Test]
    public void TheProbeDecidesOnThisMachine()
    {
        var probe = Precision.ProbeBf16();
        var cpu = CpuFeatures.Detect();
        TestContext.Out.WriteLine($"{cpu.Model}: fp32 {probe.fp32_ms:0.00} ms, bf16 {probe.bf16_ms:0.00} ms, slowdown {probe.slowdown:0.00}");
        Assert.That(probe.fp32_ms, Is.GreaterThan(0));
        Assert.That(probe.bf16_ms, Is.GreaterThan(0));
        Assert.That(Precision.ProbeBf16(), Is.SameAs(probe), "measured once per process");
        if (probe.bf16_error != null)
        {
            // libtorch cannot compute bf16 here at all (oneDNN capped below AVX-512): refused even when slowness is allowed.
            foreach (var allow in new[] { false, true })
                Assert.That(Assert.Throws<NotSupportedException>(() => Precision.RequireUsableBf16(Device.CPU, allow, "--mixed_precision bf16"))!.Message,
                    Does.Contain("cannot run").And.Contain(probe.bf16_error));
            return;
        }
        var slow = probe.slowdown > Precision.SlowBf16Factor;
        if (slow)
        {
            var e = Assert.Throws<NotSupportedException>(() => Precision.RequireUsableBf16(Device.CPU, false, "--mixed_precision bf16"))!;
            Assert.That(e.Message, Does.Contain("slower than fp32"));
        }
        else Assert.DoesNotThrow(() => Precision.RequireUsableBf16(Device.CPU, false, "--mixed_precision bf16"));
        Assert.DoesNotThrow(() => Precision.RequireUsableBf16(Device.CPU, true, "--mixed_precision bf16"));
    }
}
