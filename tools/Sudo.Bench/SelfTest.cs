// `sudoml selftest --device D`: the acceptance checks of a device, runnable where only the .NET runtime is (no SDK,
// no test runner) — the GPU acceptance run (scripts/gpu-check.sh) is built on it. Four sections:
//   engine    the device contracts: random draws, autocast (bf16, fp16 on CUDA), checkpoint recompute under autocast,
//             fused attention against the composed formula, GradScaler skipping a non-finite step, CUDA memory stats;
//   parity    golden parity of UNet, VAE, CLIP text and the SD1.5/SDXL pipelines on the device, fp32 and bf16;
//   train     DPO and SUDO optimizer steps on the tiny golden SD1.5 pipeline (no/bf16/fp16 precision, gradient
//             checkpointing off/on, full and LoRA) and SPO rounds, through the same Trainer/SpoTrainer users run;
//   fullsize  (CUDA, not --quick) real-size SD1.5 UNet DPO steps at 512 px (batch 1 and 4 pairs, bf16, checkpointing
//             off/on) and an SDXL 1024 px LoRA DPO step with the VAE and text encoders CPU-offloaded, random weights
//             from the full-size configs: seconds per step and peak memory.
// Every row says what was measured and whether it met its bound; nothing here is a timed assertion.
using System.Diagnostics;
using System.Text.Json;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Parity;
using Sudo.Preference;
using Sudo.Torch;
using Sudo.Training;
using static Sudo.Torch.torch;

namespace Sudo.Bench;

/// <summary>One self-test result: section, name, pass, the measured value (an error, a loss) and, for steps, seconds
/// per step and peak memory (CUDA: max allocated / max reserved MB; CPU: null).</summary>
public sealed record SelfTestRow(string section, string name, bool passed, double? value = null, string detail = "",
    double? seconds_per_step = null, double? peak_allocated_mb = null, double? peak_reserved_mb = null, bool skipped = false);

public sealed record SelfTestOptions
{
    public required Device device { get; init; }
    /// <summary>Tiny pipelines only, fp32 only; no full-size steps (the CPU dry run of the GPU check).</summary>
    public bool quick { get; init; }
    /// <summary>The golden folder (pipe_sd15, pipe_sdxl, unet_sd15, vae, clip_text, spm, keys/).</summary>
    public required string golden { get; init; }
    /// <summary>Scratch folder for the synthetic pair folder and run outputs.</summary>
    public required string work { get; init; }
    public string[] sections { get; init; } = ["engine", "parity", "train", "fullsize"];
    /// <summary>Run the full-size section on any device at 1/8 of the resolution (64 px SD1.5, 128 px SDXL), one timed
    /// step: the full-size models and code paths, checked where no GPU is (slow and memory-hungry on a CPU: ~16 GB).</summary>
    public bool smoke { get; init; }
}

public static class SelfTest
{
    public static List<SelfTestRow> Run(SelfTestOptions o, Action<SelfTestRow>? report = null)
    {
        var rows = new List<SelfTestRow>();
        void Add(SelfTestRow r)
        {
            rows.Add(r);
            report?.Invoke(r);
        }
        void Guard(string section, string name, Func<SelfTestRow> f)
        {
            try { Add(f()); }
            catch (Exception e) { Add(new SelfTestRow(section, name, false, detail: $"{e.GetType().Name}: {e.Message.Split('\n')[0]}")); }
        }
        Directory.CreateDirectory(o.work);
        var cuda = o.device.Type == DeviceType.CUDA;
        // Strict fp32 on CUDA for the parity rows: PyTorch lets cuDNN use TF32 by default, which changes fp32 results at 1e-3.
        var tf32 = cuda ? torch.backends.cudnn.allow_tf32 : false;
        if (cuda) torch.backends.cudnn.allow_tf32 = false;
        try
        {
            if (o.sections.Contains("engine")) Engine(o, Guard);
            if (o.sections.Contains("parity")) Parity(o, Guard);
            if (o.sections.Contains("train")) Train(o, Guard, Add);
            if (o.sections.Contains("fullsize"))
            {
                if (o.quick || !(cuda || o.smoke)) Add(new SelfTestRow("fullsize", "full-size SD1.5 and SDXL steps", true, detail: "skipped: CUDA only (or --smoke), not with --quick", skipped: true));
                else FullSize(o, Guard);
            }
        }
        finally
        {
            if (cuda) torch.backends.cudnn.allow_tf32 = tf32;
        }
        return rows;
    }

    // ---- engine ----------------------------------------------------------------------------------------------

    private static void Engine(SelfTestOptions o, Action<string, string, Func<SelfTestRow>> guard)
    {
        var d = o.device;
        var cuda = d.Type == DeviceType.CUDA;
        guard("engine", "random draws: a CPU generator fills a device tensor with the CPU stream", () =>
        {
            using var scope = NewDisposeScope();
            using var g1 = new Generator(11);
            using var g2 = new Generator(11);
            var onDevice = randn([4096], g1, device: d);
            var onCpu = randn([4096], g2);
            var filled = empty([4096], device: d).normal_(0, 1, g1);
            var again = randn([4096], g2);
            var err = Math.Max(MaxAbs(onDevice, onCpu), MaxAbs(filled, again));
            return new SelfTestRow("engine", "random draws", err == 0 && onDevice.device == d, err, $"randn and normal_ on {d} with a CPU generator equal the CPU draws");
        });
        foreach (var dt in cuda ? new[] { ScalarType.BFloat16, ScalarType.Float16 } : [ScalarType.BFloat16])
            guard("engine", $"autocast {dt.TorchName()} matmul", () =>
            {
                using var scope = NewDisposeScope();
                using var g = new Generator(0);
                var a = randn([64, 256], g, device: d);
                var b = randn([256, 64], g, device: d);
                Tensor y;
                using (autocast(d, dt)) y = a.matmul(b);
                var rel = MaxAbs(y, a.matmul(b)) / a.matmul(b).abs().max().item();
                return new SelfTestRow("engine", $"autocast {dt.TorchName()} matmul", y.dtype == dt && rel < 2e-2, rel, $"result dtype {y.dtype.TorchName()}, max rel. error vs fp32");
            });
        guard("engine", "checkpoint recompute under autocast", () =>
        {
            using var scope = NewDisposeScope();
            using var g = new Generator(1);
            var lin = new nn.Linear(64, 64);
            lin.to(d);
            var x = randn([8, 64], g, device: d);
            var dt = cuda ? ScalarType.Float16 : ScalarType.BFloat16;
            Tensor[] Grads(bool ckpt)
            {
                lin.zero_grad();
                using (autocast(d, dt))
                {
                    var y = ckpt ? utils.checkpoint.run(t => lin.forward(t).relu(), x, lin.parameters()) : lin.forward(x).relu();
                    y.@float().square().sum().backward();
                }
                return lin.parameters().Select(p => p.grad!.clone()).ToArray();
            }
            var plain = Grads(false);
            var ck = Grads(true);
            var err = plain.Zip(ck, MaxAbs).Max();
            return new SelfTestRow("engine", "checkpoint recompute under autocast", err == 0, err, $"{dt.TorchName()} autocast, gradients with and without checkpointing (bit-equal expected)");
        });
        guard("engine", "attention: fused kernel vs composed formula", () =>
        {
            using var scope = NewDisposeScope();
            using var g = new Generator(2);
            var q = randn([2, 4, 77, 40], g, device: d);
            var k = randn([2, 4, 77, 40], g, device: d);
            var v = randn([2, 4, 77, 40], g, device: d);
            var fused = nn.functional.scaled_dot_product_attention(q, k, v);
            var composed = nn.functional.softmax(q.matmul(k.transpose(-2, -1)) / Math.Sqrt(40), -1).matmul(v);
            var err = MaxAbs(fused, composed);
            return new SelfTestRow("engine", "attention: fused vs composed", err < 1e-4, err, "fp32, max |Δ|");
        });
        guard("engine", "GradScaler skips a non-finite step", () =>
        {
            using var scope = NewDisposeScope();
            var lin = new nn.Linear(4, 1, bias: false);
            lin.to(d);
            using (no_grad()) lin.weight.zero_();
            var w = lin.weight;
            var opt = new optim.AdamW([w], 0.1);
            var scaler = new amp.GradScaler(init_scale: 1024);
            (w * double.PositiveInfinity).sum().backward();
            var stepped = scaler.step(opt);
            scaler.update();
            var unchanged = w.detach().abs().max().item() == 0;
            return new SelfTestRow("engine", "GradScaler skips a non-finite step", !stepped && unchanged && scaler.get_scale() == 512, scaler.get_scale(),
                "inf gradient: no optimizer step, scale 1024 → 512");
        });
        if (cuda)
            guard("engine", "CUDA memory stats", () =>
            {
                cuda_sync(d);
                torch.cuda.reset_peak_memory_stats(Index(d));
                using (var big = empty([64L << 20], device: d)) big.fill_(1.0);   // 256 MB
                var s = torch.cuda.memory_stats(Index(d));
                return new SelfTestRow("engine", "CUDA memory stats", s.max_allocated >= 256L << 20, s.max_allocated / 1048576.0, "peak allocated MB after a 256 MB tensor");
            });
    }

    // ---- parity ----------------------------------------------------------------------------------------------

    private static void Parity(SelfTestOptions o, Action<string, string, Func<SelfTestRow>> guard)
    {
        var dtypes = o.quick ? new[] { ScalarType.Float32 } : [ScalarType.Float32, ScalarType.BFloat16];
        // fp32: the golden tolerance (CPU) or 1e-3 (CUDA kernels sum in other orders). bf16: a sanity bound — 8 bits of
        // mantissa through a dozen layers — that catches wrong dtype handling, not precision regressions; the measured
        // errors are the figures to read.
        foreach (var dt in dtypes)
        {
            var fp32 = dt == ScalarType.Float32;
            var tol = fp32 ? (o.device.Type == DeviceType.CPU ? ModelParity.Tolerances["model_fp32"] : 1e-3) : 0.1;
            foreach (var item in new[] { "unet_sd15", "vae", "clip_text" })
                guard("parity", $"{item} {dt.TorchName()}", () =>
                {
                    var folder = Path.Combine(o.golden, item);
                    var r = ModelParity.Run(folder, Path.Combine(folder, "io.safetensors"), null, tol, o.device, dt);
                    return Summarize("parity", $"{item} {dt.TorchName()}", r);
                });
            foreach (var item in new[] { "pipe_sd15", "pipe_sdxl" })
                guard("parity", $"{item} {dt.TorchName()}", () =>
                {
                    var folder = Path.Combine(o.golden, item);
                    var r = fp32 && o.device.Type == DeviceType.CPU
                        ? PipelineParity.Run(folder, Path.Combine(folder, "io.safetensors"))
                        : PipelineParity.Run(folder, Path.Combine(folder, "io.safetensors"), fp32 ? 5e-3 : 0.25, fp32 ? 4.0 / 255 : 0.25, o.device, dt, fp32 ? 1e-3 : 0.1);
                    return Summarize("parity", $"{item} {dt.TorchName()}", r);
                });
        }
    }

    private static SelfTestRow Summarize(string section, string name, ParityReport r)
    {
        var compared = r.Rows.Where(x => !double.IsNaN(x.MaxAbsError)).ToList();
        var worst = compared.OrderByDescending(x => x.MaxAbsError / Math.Max(x.Tolerance, 1e-30)).FirstOrDefault();
        var failed = r.Rows.Where(x => !x.Passed).Select(x => $"{x.Name} ({(string.IsNullOrEmpty(x.Note) ? $"|Δ| {x.MaxAbsError:G3} > {x.Tolerance:G3}" : x.Note)})").ToList();
        return new SelfTestRow(section, name, r.Passed, worst?.MaxAbsError,
            $"{compared.Count} tensors ({r.ToleranceRule}); worst {worst?.Name} |Δ| {worst?.MaxAbsError:G3} (tol {worst?.Tolerance:G3})" +
            (failed.Count > 0 ? $"; failed: {string.Join(", ", failed.Take(5))}" : ""));
    }

    // ---- train -----------------------------------------------------------------------------------------------

    private static void Train(SelfTestOptions o, Action<string, string, Func<SelfTestRow>> guard, Action<SelfTestRow> add)
    {
        var cuda = o.device.Type == DeviceType.CUDA;
        var pairs = Path.Combine(o.work, "pairs");
        WritePairs(pairs);
        var precisions = o.quick ? new[] { "no" } : cuda ? ["no", "bf16", "fp16"] : ["no", "bf16"];
        var n = 0;
        foreach (var method in new[] { "dpo", "sudo" })
            foreach (var mp in precisions)
                foreach (var ckpt in new[] { false, true })
                    foreach (var lora in new[] { 0, 4 })
                    {
                        var name = $"{method} {mp} {(ckpt ? "ckpt" : "no-ckpt")} {(lora > 0 ? "lora" : "full")}";
                        var outDir = Path.Combine(o.work, $"run-{n++}");
                        guard("train", name, () =>
                        {
                            var cfg = new TrainConfig
                            {
                                method = method,
                                pretrained_model_name_or_path = Path.Combine(o.golden, "pipe_sd15"),
                                dataset_name = pairs,
                                output_dir = outDir,
                                device = o.device.ToString(),
                                mixed_precision = mp,
                                allow_slow_bf16 = true,
                                gradient_checkpointing = ckpt,
                                lora_rank = lora,
                                train_batch_size = 2,
                                max_train_steps = 3,
                                lr_warmup_steps = 0,
                                learning_rate = 1e-4,
                                resume_from_checkpoint = null,
                                checkpointing_steps = 0,
                                seed = 5,
                            };
                            using var t = new Trainer(cfg);
                            var (metrics, secs, peak) = Timed(o.device, () => t.Step(), () => t.Step());
                            var loss = metrics?.GetValueOrDefault("loss") ?? double.NaN;
                            return new SelfTestRow("train", name, double.IsFinite(loss), loss, "loss of the timed step" + (mp == "fp16" ? $", grad scale {metrics?.GetValueOrDefault("grad_scale")}" : ""),
                                secs, peak.alloc, peak.reserved);
                        });
                    }
        foreach (var mp in precisions)
            foreach (var ckpt in new[] { false, true })
            {
                var name = $"spo {mp} {(ckpt ? "ckpt" : "no-ckpt")} lora";
                var outDir = Path.Combine(o.work, $"run-{n++}");
                guard("train", name, () =>
                {
                    using var trainer = SpoTrainer.Open(new SpoTrainConfig
                    {
                        pretrained_model_name_or_path = Path.Combine(o.golden, "pipe_sd15"),
                        scorer = Path.Combine(o.golden, "spm"),
                        output_dir = outDir,
                        device = o.device.ToString(),
                        mixed_precision = mp,
                        allow_slow_bf16 = true,
                        num_inference_steps = 6,
                        divert_start_step = 2,
                        num_sample_each_step = 3,
                        spo_threshold = -1,
                        resolution = 32,
                        learning_rate = 1e-3,
                        seed = 5,
                    });
                    if (ckpt) trainer.pipe.unet.enable_gradient_checkpointing();
                    string[] prompts = ["a red fox", "a blue bird"];
                    var (m, secs, peak) = Timed(o.device, () => trainer.Round(prompts, train_batch_size: 2), () => trainer.Round(prompts, train_batch_size: 2));
                    var loss = m.Count > 0 ? m[^1]["loss"] : double.NaN;
                    return new SelfTestRow("train", name, double.IsFinite(loss), loss,
                        $"a round of {m.Count} steps (2 prompts, 3 candidates per step); seconds per round", secs, peak.alloc, peak.reserved);
                });
            }
    }

    /// <summary>A pair folder (pairs.jsonl + PNGs) of noise images: brighter winners, darker losers.</summary>
    private static void WritePairs(string folder)
    {
        Directory.CreateDirectory(folder);
        var rng = new Random(0);
        var lines = new List<string>();
        for (var i = 0; i < 8; i++)
        {
            RgbImage Img(int v) => new(40, 36, Enumerable.Range(0, 40 * 36 * 3).Select(_ => (byte)Math.Clamp(v + rng.Next(-40, 40), 0, 255)).ToArray());
            ImageCodecs.Save(Img(200), Path.Combine(folder, $"w{i}.png"));
            ImageCodecs.Save(Img(50), Path.Combine(folder, $"l{i}.png"));
            lines.Add(JsonSerializer.Serialize(new { caption = $"a bright picture {i}", winner = $"w{i}.png", loser = $"l{i}.png" }));
        }
        File.WriteAllLines(Path.Combine(folder, "pairs.jsonl"), lines);
    }

    // ---- full size -------------------------------------------------------------------------------------------

    private static void FullSize(SelfTestOptions o, Action<string, string, Func<SelfTestRow>> guard)
    {
        var d = o.device;
        var keys = Path.Combine(o.golden, "keys");
        var div = o.smoke ? 8 : 1;
        var reps = o.smoke ? 1 : 3;
        var tag = o.smoke ? " (smoke: 1/8 resolution)" : "";
        foreach (var batch in o.smoke ? new[] { 1 } : [1, 4])
            foreach (var ckpt in new[] { false, true })
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
                var name = $"sd15 unet {512 / div}px dpo bf16 pairs={batch} {(ckpt ? "ckpt" : "no-ckpt")}";
                guard("fullsize", name, () =>
                {
                    using var scope = NewDisposeScope();
                    UNet2DConditionModel unet;
                    using (device_scope(d)) unet = new UNet2DConditionModel(UNet2DConditionConfig.FromFile(Path.Combine(keys, "sd15_unet_config.json")));
                    using var _u = unet;
                    unet.train();
                    if (ckpt) unet.enable_gradient_checkpointing();
                    using var reference = Trainer.CloneFrozen(unet, ScalarType.BFloat16);
                    using var opt = new optim.AdamW(unet.parameters(), 1e-8);
                    using var g = new Generator(0);
                    var latents = randn([2 * batch, 4, 64 / div, 64 / div], g, device: d);
                    var noise = randn([2 * batch, 4, 64 / div, 64 / div], g, device: d);
                    var ehs = randn([2 * batch, 77, 768], g, device: d);
                    var t = randint(0, 1000, [2 * batch], g, device: d);
                    double Step()
                    {
                        using var s = NewDisposeScope();
                        opt.zero_grad();
                        Tensor m, r;
                        using (autocast(d, ScalarType.BFloat16))
                        {
                            m = Losses.per_sample_mse(unet.forward(latents, t, ehs), noise);
                            using (no_grad()) r = Losses.per_sample_mse(reference.forward(latents.bfloat16(), t, ehs.bfloat16()), noise);
                        }
                        var loss = Losses.diffusion_dpo(m, r).loss;
                        loss.backward();
                        opt.step();
                        return loss.item();
                    }
                    var (loss, secs, peak) = Timed(d, Step, Step, reps);
                    return new SelfTestRow("fullsize", name, double.IsFinite(loss), loss, "policy fp32 + AdamW, reference bf16, bf16 autocast" + tag, secs, peak.alloc, peak.reserved);
                });
            }
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var sdxlName = $"sdxl unet {1024 / div}px lora dpo bf16 ckpt offload";
        guard("fullsize", sdxlName, () =>
        {
            using var scope = NewDisposeScope();
            UNet2DConditionModel unet;
            using (device_scope(d)) unet = new UNet2DConditionModel(UNet2DConditionConfig.FromFile(Path.Combine(keys, "sdxl_unet_config.json")));
            using var _u = unet;
            unet.requires_grad_(false);
            unet.enable_gradient_checkpointing();
            using var g = new Generator(0);
            using var lora = Lora.Attach(unet, new LoraConfig(4, 4), g);
            unet.train();
            // Frozen VAE and text encoders in bf16 on the CPU, lent to the GPU for each use (train.py's cpu_offload).
            var vae = new AutoencoderKL(AutoencoderKLConfig.FromFile(Path.Combine(keys, "sd15_vae_config.json")));
            var te1 = new CLIPTextModel(CLIPTextConfig.FromFile(Path.Combine(keys, "sd15_text_encoder_config.json")));
            var te2 = new CLIPTextModelWithProjection(CLIPTextConfig.FromFile(Path.Combine(keys, "sdxl_text_encoder_2_config.json")));
            foreach (nn.Module m in new nn.Module[] { vae, te1, te2 }) m.requires_grad_(false).to(ScalarType.BFloat16);
            var offloads = new[] { new CpuOffload(vae, d), new CpuOffload(te1, d), new CpuOffload(te2, d) };
            using var opt = new optim.AdamW(lora.parameters(), 1e-8);
            var px = 1024 / div;
            var pixels = (rand([2, 3, px, px], g) * 2 - 1).to(d, ScalarType.BFloat16);
            var ids = randint(0, 49408, [1, 77], g, device: d);
            var noise = randn([2, 4, px / 8, px / 8], g, device: d);
            var t = randint(0, 1000, [2], g, device: d);
            var timeIds = tensor(new float[] { px, px, 0, 0, px, px }, [1, 6]).to(d).repeat(2, 1);
            double Step()
            {
                using var s = NewDisposeScope();
                opt.zero_grad();
                Tensor latents, ehs, pooled;
                using (no_grad())
                {
                    using (offloads[0].onto()) latents = vae.encode(pixels).mean.@float() * 0.13025;
                    using (offloads[1].onto())
                    using (offloads[2].onto())
                    {
                        var h1 = te1.forward(ids).penultimate_hidden_state;
                        var (o2, p2) = te2.forward(ids);
                        ehs = cat([h1, o2.penultimate_hidden_state], -1).@float().repeat(2, 1, 1);
                        pooled = p2.@float().repeat(2, 1);
                    }
                }
                var cond = new AddedCondKwargs(pooled, timeIds);
                Tensor m, r;
                using (autocast(d, ScalarType.BFloat16))
                {
                    m = Losses.per_sample_mse(unet.forward(latents, t, ehs, cond), noise);
                    using (no_grad())
                    using (lora.disabled()) r = Losses.per_sample_mse(unet.forward(latents, t, ehs, cond), noise);
                }
                var loss = Losses.diffusion_dpo(m, r).loss;
                loss.backward();
                opt.step();
                return loss.item();
            }
            var (loss, secs, peak) = Timed(d, Step, Step, o.smoke ? 1 : 2);
            foreach (nn.Module m in new nn.Module[] { vae, te1, te2 }) m.Dispose();
            return new SelfTestRow("fullsize", sdxlName, double.IsFinite(loss), loss,
                "1 pair; LoRA rank 4, reference = adapters off; VAE + both text encoders bf16, CPU-offloaded and run every step" + tag, secs, peak.alloc, peak.reserved);
        });
    }

    // ---- helpers ---------------------------------------------------------------------------------------------

    /// <summary>Runs <paramref name="warmup"/> once, then <paramref name="timed"/> <paramref name="reps"/> times:
    /// its last result, seconds per call and (CUDA) peak allocated / reserved MB over the timed calls.</summary>
    private static (T result, double seconds, (double? alloc, double? reserved) peak) Timed<T>(Device d, Func<T> warmup, Func<T> timed, int reps = 1)
    {
        warmup();
        cuda_sync(d);
        if (d.Type == DeviceType.CUDA) torch.cuda.reset_peak_memory_stats(Index(d));
        var sw = Stopwatch.StartNew();
        var r = default(T)!;
        for (var i = 0; i < reps; i++) r = timed();
        cuda_sync(d);
        var secs = sw.Elapsed.TotalSeconds / reps;
        if (d.Type != DeviceType.CUDA) return (r, secs, (null, null));
        var s = torch.cuda.memory_stats(Index(d));
        return (r, secs, (s.max_allocated / 1048576.0, s.max_reserved / 1048576.0));
    }

    private static int Index(Device d) => Math.Max(d.Index, 0);

    private static void cuda_sync(Device d)
    {
        if (d.Type == DeviceType.CUDA) torch.cuda.synchronize(Index(d));
    }

    private static double MaxAbs(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        return (a.to(Device.CPU, ScalarType.Float64) - b.to(Device.CPU, ScalarType.Float64)).abs().max().item();
    }
}
