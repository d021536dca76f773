using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;
namespace Sudo.Bench;

public sealed record SampleBenchResult(double ddim20_cfg_b4_s, double per_image_s, double peak_rss_mb);

public static class SampleBench
{
    /// <summary>20-step DDIM with guidance 7.5 on the "small" UNet (random weights, 16×16 latents), batch 4
    /// (UNet on 8 per step). PyTorch + diffusers on this libtorch: 3.5 s for the batch.</summary>
    public static SampleBenchResult Run(int reps = 3)
    {
        manual_seed(0);
        using var unet = new Sudo.Models.UNet2DConditionModel(UNetBench.SmallConfig);
        unet.eval();
        using var sched = new DDIMScheduler(SchedulerConfig.SD15 with { _class_name = "DDIMScheduler" });
        using var g = new Generator(0);
        using var cond = randn([4, 77, 256], g);
        using var uncond = randn([4, 77, 256], g);
        double Once()
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var sw = System.Diagnostics.Stopwatch.StartNew();
            sched.set_timesteps(20);
            var x = randn([4, 4, 16, 16], g);
            var ctx = cat([uncond, cond]);
            foreach (var t in sched.TimestepValues)
            {
                using var step = NewDisposeScope();
                var o = unet.forward(cat([x, x]), scalar_tensor((long)t), ctx).chunk(2);
                var eps = o[0] + 7.5 * (o[1] - o[0]);
                x = step.MoveToOuter(sched.step(eps, t, x).prev_sample);
            }
            return sw.Elapsed.TotalSeconds;
        }
        Once();
        var times = Enumerable.Range(0, reps).Select(_ => Once()).OrderBy(t => t).ToArray();
        var med = times[times.Length / 2];
        return new SampleBenchResult(med, med / 4, Sudo.Torch.ProcessMemory.PeakRssMb());
    }
}
