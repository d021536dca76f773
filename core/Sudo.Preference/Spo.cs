// SPO (step-aware preference optimization): the step-wise resampler that builds (x_t, x^w, x^l) pairs online
// with a step-aware preference model, and the per-step DPO training on DDIM transition log-probabilities
// (SPO multi_sample_pipeline.py and train_spo.py, SD-1.5 procedure).
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Preference;

/// <summary>One training transition: x_t at timestep t, the preferred and rejected x_{t'} (both drawn from
/// x_t — or, for SDXL's inner steps, from their own x_t), and the prompt's text conditioning.</summary>
public sealed record StepPair(long t, Tensor x_t_w, Tensor x_t_l, Tensor x_w, Tensor x_l, Tensor cond, Tensor uncond, string prompt,
    Tensor? pooled = null, Tensor? negative_pooled = null) : IDisposable
{
    /// <summary>The prompt's place in the batch it was sampled with (the trainer orders a round's pairs by it).</summary>
    public int prompt_index { get; init; }

    public IEnumerable<Tensor> Tensors => new[] { x_t_w, x_t_l, x_w, x_l, cond, uncond, pooled, negative_pooled }.OfType<Tensor>();

    public void Dispose()
    {
        foreach (var x in Tensors) x.Dispose();
    }
}

public sealed record SpoConfig
{
    public int num_inference_steps { get; init; } = 20;
    public double eta { get; init; } = 1.0;
    public double guidance_scale { get; init; } = 5.0;
    /// <summary>Steps before this index are plain sampling and never trained (κ = 750 for 20 steps).</summary>
    public int divert_start_step { get; init; } = 4;
    /// <summary>Candidates per branching (k).</summary>
    public int num_sample_each_step { get; init; } = 4;
    /// <summary>Keep a pair when softmax([s_w, s_l]) differs by more than this (0.3 SD-1.5, 0.4 SDXL).</summary>
    public double threshold { get; init; } = 0.3;
    public double beta { get; init; } = 10;
    public double clip_eps { get; init; } = 0.1;
    public int resolution { get; init; } = 512;
    /// <summary>SDXL's MSPO: after each branching every candidate runs this many more single DDIM steps
    /// before scoring (3 in SPO's SDXL config, i.e. segments of 4 transitions); 0 = the SD-1.5 procedure.</summary>
    public int num_inner_step { get; init; }

    /// <summary>SPO's SD-1.5 defaults (20 steps, κ = 750, k = 4, threshold 0.3).</summary>
    public static SpoConfig SD15 => new();

    /// <summary>SPO's SDXL defaults: k = 2, threshold 0.4, 3 inner steps, 1024 px.</summary>
    public static SpoConfig SDXL => new() { num_sample_each_step = 2, threshold = 0.4, num_inner_step = 3, resolution = 1024 };

    /// <summary>SPO's preset for a pipeline: SDXL's for an SDXL pipeline, SD-1.5's otherwise.</summary>
    public static SpoConfig For(StableDiffusionPipeline pipe) => pipe.IsSDXL ? SDXL : SD15;
}

/// <summary>A step-aware reward: decoded x̂₀ images [N, 3, H, W] in [−1, 1], their prompts and the timestep they
/// were predicted at (0 for final samples) → one logit per image. Pairs are kept when 2σ(s_best − s_worst) − 1 exceeds
/// the threshold, as with the step-aware preference model's logits. Lets a recipe plug in any reward (an oracle,
/// an aesthetic head on x̂₀) without a CLIP preference model.</summary>
public delegate Tensor StepReward(Tensor images, IReadOnlyList<string> prompts, double t);

public sealed class SpoSampler
{
    public StableDiffusionPipeline pipe { get; }
    /// <summary>The step-aware preference model, or null when the sampler scores with a <see cref="StepReward"/>.</summary>
    public StepAwarePreferenceModel? spm { get; }
    public SpoConfig config { get; }
    public int candidates_scored { get; private set; }
    private readonly StepReward _reward;

    public SpoSampler(StableDiffusionPipeline pipe, StepAwarePreferenceModel spm, CLIPTokenizer scorerTokenizer, SpoConfig config)
        : this(pipe, config, SpmReward(spm, scorerTokenizer, pipe.device)) => this.spm = spm;

    public SpoSampler(StableDiffusionPipeline pipe, SpoConfig config, StepReward reward)
    {
        this.pipe = pipe;
        this.config = config;
        _reward = reward;
    }

    private static StepReward SpmReward(StepAwarePreferenceModel spm, CLIPTokenizer tok, Device device)
    {
        if (tok.vocab_size > spm.clip.config.text_config.vocab_size)
            throw new ArgumentException($"the scorer's text model has vocab_size {spm.clip.config.text_config.vocab_size} but its tokenizer has "
                + $"{tok.vocab_size} tokens: use the tokenizer the scorer was trained with (PickScore: CLIP's 49408)");
        return (images, prompts, t) =>
        {
            using var scope = NewDisposeScope();
            var ids = tok.call(prompts.ToList(), tok.model_max_length, device).input_ids;
            var ts = full([images.size(0)], t, ScalarType.Float32, images.device);
            return scope.MoveToOuter(spm.score(spm.preprocess(images), ids, ts).to(ScalarType.Float32));
        };
    }

    private DDIMScheduler Ddim => pipe.scheduler as DDIMScheduler
        ?? throw new InvalidOperationException("SPO samples with DDIM (eta = 1): load the pipeline with scheduler \"ddim\"");

    private Tensor Scores(Tensor latents, double t, IReadOnlyList<string> prompts, bool decodedLatentsAreFinal)
    {
        using var scope = NewDisposeScope();
        var images = pipe.vae.decode(pipe.vae.unscale_latents(latents));
        candidates_scored += (int)latents.size(0);
        var s = _reward(images, prompts, decodedLatentsAreFinal ? 0.0 : t);
        if (s.dim() != 1 || s.size(0) != latents.size(0))
            throw new InvalidOperationException($"the step reward returned shape [{string.Join(", ", s.shape)}]; expected [{latents.size(0)}] (one logit per image)");
        return scope.MoveToOuter(s.to(ScalarType.Float32));
    }

    /// <summary>Samples one chain per prompt (one generator per prompt) and returns the kept step pairs.</summary>
    public List<StepPair> Sample(IReadOnlyList<string> prompts, Generator[] generators)
    {
        if (generators.Length != prompts.Count) throw new ArgumentException("one generator per prompt");
        var k = config.num_sample_each_step;
        if (k < 2) throw new ArgumentException("num_sample_each_step must be ≥ 2");
        var ddim = Ddim;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var b = prompts.Count;
        var embeds = Embeds(prompts);
        ddim.set_timesteps(config.num_inference_steps);
        var ts = ddim.TimestepValues;
        var seg = config.num_inner_step + 1;
        if (config.divert_start_step >= ts.Length) throw new ArgumentException("divert_start_step must be below num_inference_steps");
        var noise = new NoiseSource(generators);
        var x = pipe.prepare_latents(b, config.resolution, config.resolution, noise);
        for (var s0 = 0; s0 < config.divert_start_step; s0++)
            x = pipe.denoise_step(x, ts[s0], embeds, config.guidance_scale, config.eta, noise).prev_sample;

        // The pool's rows are [candidate j of prompt p] at j·b + p.
        var embedsK = Repeat(embeds, k);
        var promptsK = Enumerable.Range(0, k).SelectMany(_ => prompts).ToList();
        var noiseK = new NoiseSource(Enumerable.Range(0, k).SelectMany(_ => generators).ToArray());
        Tensor Tk(double t, long n) => full([n], (long)t, ScalarType.Int64, pipe.device);
        Tensor Branch(Tensor eps, double t, Tensor xt) =>
            cat(Enumerable.Range(0, k).Select(_ => ddim.step_with_logprob(eps, Tk(t, xt.size(0)), xt, config.eta, noise).prev_sample).ToArray());
        var shared = x;
        var eps0 = pipe.predict_noise(shared, Tk(ts[config.divert_start_step], b), embeds, config.guidance_scale);
        var i0 = config.divert_start_step;
        var pool = Branch(eps0, ts[i0], shared);
        // Each candidate's transitions in the current segment: (t, x_t, x_{t'}) with x_t [k·b].
        var segment = new List<(double t, Tensor xt, Tensor xprev)> { (ts[i0], shared.repeat(k, 1, 1, 1), pool) };
        var pairs = new List<StepPair>();
        var i = i0 + 1;
        while (true)
        {
            // MSPO: roll every candidate forward num_inner_step single steps before scoring.
            for (var m = 0; m < config.num_inner_step && i < ts.Length; m++, i++)
            {
                var epsIn = pipe.predict_noise(pool, Tk(ts[i], k * b), embedsK, config.guidance_scale);
                var next = ddim.step_with_logprob(epsIn, Tk(ts[i], k * b), pool, config.eta, noiseK).prev_sample;
                segment.Add((ts[i], pool, next));
                pool = next;
            }
            var final = i >= ts.Length;
            Tensor? epsPool = null;
            Tensor scores;
            if (!final)
            {
                epsPool = pipe.predict_noise(pool, Tk(ts[i], k * b), embedsK, config.guidance_scale);
                var x0 = ddim.step(epsPool, Tk(ts[i], k * b), pool, 0, NoiseSource.Default).pred_original_sample!;
                scores = Scores(x0, ts[i], promptsK, false);
            }
            else
            {
                scores = Scores(pool, 0, promptsK, true);
            }
            var s = scores.view(k, b);
            var (best, bestIdx) = s.max(0);
            var (worst, worstIdx) = s.min(0);
            // Two-way softmax gap: p_w − p_l = 2σ(s_w − s_l) − 1.
            var gap = ((best - worst).sigmoid() * 2.0 - 1.0).ToArray<double>();
            var bi = bestIdx.ToArray<long>();
            var wi = worstIdx.ToArray<long>();
            for (var p = 0; p < b; p++)
            {
                if (gap[p] <= config.threshold) continue;
                var (rw, rl) = ((int)(bi[p] * b + p), (int)(wi[p] * b + p));
                foreach (var (t, xt, xprev) in segment)
                    pairs.Add(new StepPair((long)t, xt[rw..(rw + 1)].clone(), xt[rl..(rl + 1)].clone(), xprev[rw..(rw + 1)].clone(), xprev[rl..(rl + 1)].clone(),
                        embeds.prompt_embeds[p..(p + 1)].clone(), embeds.negative_prompt_embeds![p..(p + 1)].clone(), prompts[p],
                        embeds.pooled_prompt_embeds?[p..(p + 1)].clone(), embeds.negative_pooled_prompt_embeds?[p..(p + 1)].clone())
                    { prompt_index = p });
            }
            if (final) break;
            // Continue from a uniformly random candidate per prompt; branch again with its ε at t_i.
            var r = Enumerable.Range(0, b).Select(p => randint(0, k, [1], generators[p]).item<long>() * b + p).ToArray();
            var rows = tensor(r, device: pool.device);
            shared = pool.index_select(0, rows);
            var epsR = epsPool!.index_select(0, rows);
            pool = Branch(epsR, ts[i], shared);
            segment = [(ts[i], shared.repeat(k, 1, 1, 1), pool)];
            i++;
        }
        foreach (var pr in pairs)
            foreach (var t in pr.Tensors) scope.Detach(t);
        return pairs;
    }

    private PromptEmbeds Embeds(IReadOnlyList<string> prompts)
    {
        var e = pipe.encode_prompt(prompts, 1, true, Enumerable.Repeat("", prompts.Count).ToList());
        if (!pipe.IsSDXL) return e;
        var ids = pipe.get_add_time_ids((config.resolution, config.resolution), (0, 0), (config.resolution, config.resolution));
        return new PromptEmbeds
        {
            prompt_embeds = e.prompt_embeds,
            negative_prompt_embeds = e.negative_prompt_embeds,
            pooled_prompt_embeds = e.pooled_prompt_embeds,
            negative_pooled_prompt_embeds = e.negative_pooled_prompt_embeds,
            add_time_ids = ids,
            negative_add_time_ids = ids,
        };
    }

    private static PromptEmbeds Repeat(PromptEmbeds e, int times) => new()
    {
        prompt_embeds = e.prompt_embeds.repeat(times, 1, 1),
        negative_prompt_embeds = e.negative_prompt_embeds!.repeat(times, 1, 1),
        pooled_prompt_embeds = e.pooled_prompt_embeds?.repeat(times, 1),
        negative_pooled_prompt_embeds = e.negative_pooled_prompt_embeds?.repeat(times, 1),
        add_time_ids = e.add_time_ids,
        negative_add_time_ids = e.negative_add_time_ids,
    };
}

/// <summary>SPO's loss on a minibatch of step pairs: CFG ε of the policy (LoRA on) and reference (LoRA off)
/// at x_t, DDIM transition log-probabilities of x^w and x^l, clamped-ratio step DPO (β = 10, ε = 0.1).</summary>
public static class SpoLoss
{
    /// <param name="loss">the method's transition loss; default Losses.spo with the config's β and clip ε.</param>
    public static LossOutput Compute(StableDiffusionPipeline pipe, Lora lora, IReadOnlyList<StepPair> batch, SpoConfig c, TransitionLossFn? loss = null)
    {
        var ddim = (DDIMScheduler)pipe.scheduler;
        using var scope = NewDisposeScope();
        var t = tensor(batch.Select(p => p.t).ToArray());
        var embeds = new PromptEmbeds
        {
            prompt_embeds = cat(batch.Select(p => p.cond).ToArray()),
            negative_prompt_embeds = cat(batch.Select(p => p.uncond).ToArray()),
            pooled_prompt_embeds = pipe.IsSDXL ? cat(batch.Select(p => p.pooled!).ToArray()) : null,
            negative_pooled_prompt_embeds = pipe.IsSDXL ? cat(batch.Select(p => p.negative_pooled!).ToArray()) : null,
            add_time_ids = pipe.IsSDXL ? pipe.get_add_time_ids((c.resolution, c.resolution), (0, 0), (c.resolution, c.resolution)) : null,
        };
        Tensor Eps(Tensor x) => pipe.predict_noise(x, t, embeds, c.guidance_scale);
        var xtw = cat(batch.Select(p => p.x_t_w).ToArray());
        var xtl = cat(batch.Select(p => p.x_t_l).ToArray());
        var xw = cat(batch.Select(p => p.x_w).ToArray());
        var xl = cat(batch.Select(p => p.x_l).ToArray());
        var sharedXt = xtw.equal(xtl);
        var epsW = Eps(xtw);
        var epsL = sharedXt ? epsW : Eps(xtl);
        Tensor refW, refL;
        using (no_grad())
        using (lora.disabled())
        {
            refW = Eps(xtw);
            refL = sharedXt ? refW : Eps(xtl);
        }
        Tensor Lp(Tensor eps, Tensor xt, Tensor prev) => ddim.step_with_logprob(eps, t, xt, c.eta, prev_sample: prev).log_prob;
        var inputs = new TransitionInputs(Lp(epsW, xtw, xw), Lp(refW, xtw, xw), Lp(epsL, xtl, xl), Lp(refL, xtl, xl));
        var o = loss is null ? Losses.spo(inputs.logp_policy_w, inputs.logp_ref_w, inputs.logp_policy_l, inputs.logp_ref_l, c.beta, c.clip_eps) : loss(inputs);
        var diag = o.diagnostics.ToDictionary(kv => kv.Key, kv => scope.MoveToOuter(kv.Value));
        return new LossOutput(scope.MoveToOuter(o.loss), diag);
    }
}

/// <summary>Training the step-aware preference model (SPO's step-aware preference-model training): a pair of images of one caption,
/// t ~ U{0..999} per pair, one shared noise, the frozen base model's CFG x̂₀ decoded by the VAE, then
/// PickScore's pairwise loss on the time-conditioned scores. With t = 0 the clean images are scored.</summary>
public static class SpmTraining
{
    /// <param name="noise">the noise shared by both images ([B, C, h, w]); null draws it from the default generator.</param>
    /// <param name="posterior">standard normal draws for the winner's and the loser's VAE posterior samples (SPO's
    /// trainer samples the latent distribution); null takes the posterior mode.</param>
    public static (Tensor loss, Tensor accuracy) Loss(StepAwarePreferenceModel spm, StableDiffusionPipeline? basePipe, Tensor pixelsW, Tensor pixelsL,
        IReadOnlyList<string> captions, CLIPTokenizer scorerTokenizer, Tensor timesteps, double guidance = 5.0,
        Tensor? noise = null, (Tensor winner, Tensor loser)? posterior = null)
    {
        using var scope = NewDisposeScope();
        var ids = scorerTokenizer.call(captions, scorerTokenizer.model_max_length, pixelsW.device).input_ids;
        Tensor Prepare(Tensor pixels, Tensor noise, Tensor? postEps)
        {
            if (basePipe is null) return spm.preprocess(pixels);
            using var _ = no_grad();
            using var post = basePipe.vae.encode(pixels);
            var z0 = basePipe.vae.scale_latents(postEps is null ? post.mode() : post.sample(noise: postEps));
            var sched = basePipe.scheduler.schedule;
            var xt = sched.add_noise(z0, noise, timesteps);
            using var embeds = basePipe.encode_prompt(captions, 1, true);
            var outs = new List<Tensor>();
            for (var i = 0; i < xt.size(0); i++)
            {
                var t = timesteps[i].item<long>();
                if (t == 0) { outs.Add(z0[i..(i + 1)]); continue; }
                var one = new PromptEmbeds { prompt_embeds = embeds.prompt_embeds[i..(i + 1)], negative_prompt_embeds = embeds.negative_prompt_embeds![i..(i + 1)] };
                basePipe.scheduler.set_timesteps(basePipe.scheduler.config.num_train_timesteps);
                var eps = basePipe.predict_noise(xt[i..(i + 1)], t, one, guidance);
                var a = sched.ac[t];
                outs.Add((xt[i..(i + 1)] - Math.Sqrt(1 - a) * eps) / Math.Sqrt(a));
            }
            var x0 = cat(outs.ToArray());
            return spm.preprocess(basePipe.vae.decode(basePipe.vae.unscale_latents(x0)));
        }
        Tensor noiseShared;
        using (no_grad())
        {
            noiseShared = noise ?? (basePipe is null ? zeros([1]) : randn([pixelsW.size(0), basePipe.unet.config.in_channels,
                pixelsW.size(2) / basePipe.vae_scale_factor, pixelsW.size(3) / basePipe.vae_scale_factor]));
        }
        var sw = spm.score(Prepare(pixelsW, noiseShared, posterior?.winner), ids, timesteps.to(ScalarType.Float32));
        var sl = spm.score(Prepare(pixelsL, noiseShared, posterior?.loser), ids, timesteps.to(ScalarType.Float32));
        var (loss, acc) = StepAwarePreferenceModel.pairwise_loss(sw, sl);
        return (scope.MoveToOuter(loss), scope.MoveToOuter(acc));
    }
}
