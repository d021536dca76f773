// `sudoml bench unet`: the "small" UNet (the configuration PyTorch + diffusers is timed on too). Printed, never asserted.
using System.Diagnostics;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;
namespace Sudo.Bench;

public sealed record UNetBenchResult(double fwd_b8_s, double fwd_bwd_b8_s, double fwd_b8_bf16_s, double peak_rss_mb);

public static class UNetBench
{
    /// <summary>block_out_channels 64,128,256; layers_per_block 2; cross_attention_dim 256; 16×16 latents;
    /// 77 text tokens; batch 8; random weights (PyTorch + diffusers on this libtorch: 0.18 s / 0.51 s).</summary>
    public static UNet2DConditionConfig SmallConfig => new()
    {
        sample_size = 16,
        block_out_channels = [64, 128, 256],
        down_block_types = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        layers_per_block = [2],
        cross_attention_dim = [256],
        attention_head_dim = [8],
    };

    public static UNetBenchResult Run(int reps = 9)
    {
        manual_seed(0);
        using var unet = new UNet2DConditionModel(SmallConfig);
        using var g = new Generator(0);
        using var x = randn([8, 4, 16, 16], g);
        using var ctx = randn([8, 77, 256], g);
        using var t = randint(0, 1000, [8], g);

        double Median(Action step) => EngineBench.MedianSeconds(step, reps);

        unet.eval();
        var fwd = Median(() =>
        {
            using var s = NewDisposeScope();
            using var _ = no_grad();
            unet.forward(x, t, ctx);
        });
        unet.train();
        var fwdBwd = Median(() =>
        {
            using var s = NewDisposeScope();
            unet.zero_grad();
            unet.forward(x, t, ctx).square().mean().backward();
        });
        unet.eval();
        var bf16 = Median(() =>
        {
            using var s = NewDisposeScope();
            using var _ = no_grad();
            using var ac = autocast(Device.CPU);
            unet.forward(x, t, ctx);
        });
        return new UNetBenchResult(fwd, fwdBwd, bf16, ProcessMemory.PeakRssMb());
    }
}
