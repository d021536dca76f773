// `sudoml bench train`: Diffusion-DPO and SPO step times on the "small" UNet (random weights). Printed only.
using System.Diagnostics;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using Sudo.Training;
using static Sudo.Torch.torch;
namespace Sudo.Bench;

public sealed record TrainBenchResult(double dpo_step_4pairs_s, double dpo_step_4pairs_bf16_s, double spo_step_pool4_s, double peak_rss_mb);

public static class TrainBench
{
    public static TrainBenchResult Run(int reps = 5)
    {
        manual_seed(0);
        using var unet = new UNet2DConditionModel(UNetBench.SmallConfig);
        using var reference = Trainer.CloneFrozen(unet);
        using var opt = new optim.AdamW(unet.parameters(), 1e-5);
        using var sched = new NoiseSchedule(SchedulerConfig.SD15);
        using var g = new Generator(0);
        unet.train();

        double Median(Action step) => EngineBench.MedianSeconds(step, reps);

        // Diffusion-DPO step with 4 pairs: policy fwd+bwd on 8, frozen reference fwd on 8, AdamW.
        void Dpo(bool bf16)
        {
            using var scope = NewDisposeScope();
            var x0 = randn([8, 4, 16, 16], g);
            var nB = randn([4, 4, 16, 16], g);
            var noise = cat([nB, nB]);
            var tB = randint(0, 1000, [4], g);
            var t = cat([tB, tB]);
            var ctx = randn([8, 77, 256], g);
            var xt = sched.add_noise(x0, noise, t);
            using var ac = bf16 ? autocast(Device.CPU) : null;
            var m = Losses.per_sample_mse(unet.forward(xt, t, ctx), noise);
            Tensor r;
            using (no_grad()) r = Losses.per_sample_mse(reference.forward(xt, t, ctx), noise);
            var loss = Losses.diffusion_dpo(m, r).loss;
            opt.zero_grad();
            loss.backward();
            nn.utils.clip_grad_norm_(unet.parameters(), 1.0);
            opt.step();
        }
        var dpo = Median(() => Dpo(false));
        var dpoBf16 = Median(() => Dpo(true));

        // SPO: one resampler branching with a pool of 4 (CFG UNet on the 4 candidates, DDIM draws, x̂0) and one
        // step-DPO update on 4 transitions (policy CFG fwd+bwd, reference CFG fwd, log-probs, AdamW).
        using var ddim = new DDIMScheduler(SchedulerConfig.SD15 with { _class_name = "DDIMScheduler" });
        ddim.set_timesteps(20);
        var spo = Median(() =>
        {
            using var scope = NewDisposeScope();
            var ctx = randn([4, 77, 256], g);
            var unc = randn([4, 77, 256], g);
            var xt = randn([4, 4, 16, 16], g);
            var t = full([4], 751L, ScalarType.Int64);
            Tensor Cfg(UNet2DConditionModel u, Tensor x)
            {
                var o = u.forward(cat([x, x]), cat([t, t]), cat([unc, ctx])).chunk(2);
                return o[0] + 5.0 * (o[1] - o[0]);
            }
            Tensor pool;
            using (no_grad())
            {
                var eps = Cfg(unet, xt);
                pool = ddim.step_with_logprob(eps, t, xt, 1.0, new NoiseSource(generator: g)).prev_sample;
                Cfg(unet, pool);   // the candidates' own ε (scoring / next branching)
            }
            var epsP = Cfg(unet, xt);
            Tensor epsR;
            using (no_grad()) epsR = Cfg(reference, xt);
            var lpw = ddim.step_with_logprob(epsP, t, xt, 1.0, prev_sample: pool).log_prob;
            var lrw = ddim.step_with_logprob(epsR, t, xt, 1.0, prev_sample: pool).log_prob;
            var lpl = ddim.step_with_logprob(epsP, t, xt, 1.0, prev_sample: pool.flip(0)).log_prob;
            var lrl = ddim.step_with_logprob(epsR, t, xt, 1.0, prev_sample: pool.flip(0)).log_prob;
            var loss = Losses.spo(lpw, lrw, lpl, lrl).loss;
            opt.zero_grad();
            loss.backward();
            opt.step();
        });
        return new TrainBenchResult(dpo, dpoBf16, spo, ProcessMemory.PeakRssMb());
    }
}
