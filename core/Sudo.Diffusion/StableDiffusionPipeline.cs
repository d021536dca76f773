// diffusers.StableDiffusionPipeline / StableDiffusionXLPipeline (0.27.2) text-to-image with classifier-free
// guidance, one generator per image, and a step-level API for methods that branch inside the chain (SPO).
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Diffusion;

/// <summary>Text conditioning for B·N images ([uncond; cond] is assembled per step). Pooled embeddings
/// and time ids are SDXL's.</summary>
public sealed class PromptEmbeds : IDisposable
{
    public required Tensor prompt_embeds { get; init; }
    public Tensor? negative_prompt_embeds { get; init; }
    public Tensor? pooled_prompt_embeds { get; init; }
    public Tensor? negative_pooled_prompt_embeds { get; init; }
    public Tensor? add_time_ids { get; init; }
    public Tensor? negative_add_time_ids { get; init; }
    public Tensor[] input_ids { get; init; } = [];
    public Tensor[] negative_input_ids { get; init; } = [];
    public long Count => prompt_embeds.size(0);

    public void Dispose()
    {
        foreach (var t in new[] { prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, add_time_ids, negative_add_time_ids }
            .Concat(input_ids).Concat(negative_input_ids))
            t?.Dispose();
    }
}

/// <summary>Arguments of one text-to-image call (diffusers' __call__ names).</summary>
public sealed record GenerationOptions
{
    public required IReadOnlyList<string> prompt { get; init; }
    /// <summary>One per prompt, or null (SDXL: zero embeddings, force_zeros_for_empty_prompt; SD: "").</summary>
    public IReadOnlyList<string>? negative_prompt { get; init; }
    public int num_images_per_prompt { get; init; } = 1;
    public int? height { get; init; }
    public int? width { get; init; }
    public int num_inference_steps { get; init; } = 50;
    public double guidance_scale { get; init; } = 7.5;
    public double guidance_rescale { get; init; }
    public double eta { get; init; }
    /// <summary>One generator per image (image i depends only on generators[i]), or one for the batch.</summary>
    public Generator[]? generators { get; init; }
    public Generator? generator { get; init; }
    /// <summary>Initial noise [B·N, C, h, w] (not yet scaled by init_noise_sigma).</summary>
    public Tensor? latents { get; init; }
    public (int h, int w)? original_size { get; init; }
    public (int top, int left) crops_coords_top_left { get; init; } = (0, 0);
    public (int h, int w)? target_size { get; init; }
    public bool output_latents_only { get; init; }
    public bool keep_step_latents { get; init; }
    /// <summary>Called after each step with (index, timestep, latents); the tensor is valid during the call.</summary>
    public Action<int, double, Tensor>? callback_on_step_end { get; init; }
}

public sealed class GenerationResult : IDisposable
{
    /// <summary>[B·N, 3, H, W] in [0, 1] (null when only latents were asked for).</summary>
    public Tensor? images { get; init; }
    public required Tensor latents { get; init; }
    public required Tensor init_latents { get; init; }
    public List<Tensor> step_latents { get; init; } = [];
    public List<Tensor> unet_outputs { get; init; } = [];
    public List<Tensor> step_noise { get; init; } = [];
    public required PromptEmbeds embeds { get; init; }
    public Tensor? add_text_embeds { get; init; }
    public Tensor? add_time_ids { get; init; }

    public void Dispose()
    {
        images?.Dispose();
        latents.Dispose();
        init_latents.Dispose();
        foreach (var t in step_latents.Concat(unet_outputs).Concat(step_noise)) t.Dispose();
        embeds.Dispose();
        add_text_embeds?.Dispose();
        add_time_ids?.Dispose();
    }
}

/// <summary>The result of one guided denoising step from x_t: x_{t−1}, the predicted x₀ and — for DDIM with
/// η > 0 — log p(x_{t−1} | x_t) per sample.</summary>
public sealed record DenoiseStep(Tensor prev_sample, Tensor pred_original_sample, Tensor? log_prob);

public sealed class StableDiffusionPipeline : IDisposable
{
    public PipelineComponents components { get; }
    public Scheduler scheduler { get; private set; }
    public UNet2DConditionModel unet => components.unet;
    public AutoencoderKL vae => components.vae;
    public bool IsSDXL => components.IsSDXL;
    public int vae_scale_factor => 1 << (vae.config.block_out_channels.Length - 1);
    /// <summary>SDXL: zero negative embeddings when no negative prompt is given (model_index.json).</summary>
    public bool force_zeros_for_empty_prompt { get; }
    public Device device => unet.conv_in.weight.device;
    public ScalarType dtype => unet.conv_in.weight.dtype;

    public StableDiffusionPipeline(PipelineComponents components, Scheduler scheduler)
    {
        this.components = components;
        this.scheduler = scheduler;
        force_zeros_for_empty_prompt = components.ModelIndex["force_zeros_for_empty_prompt"]?.GetValue<bool>() ?? true;
    }

    /// <summary>Loads a diffusers pipeline folder; the scheduler is the folder's, or ddim/ddpm/euler/dpmpp2m
    /// built from its config. fp16 is rejected on CPU (libtorch 1.13 cannot compute it there): use bf16.</summary>
    public static StableDiffusionPipeline from_pretrained(string path, string? scheduler = null, ScalarType? dtype = null, Device? device = null,
        string? variant = null, string? cache_dir = null)
    {
        var comps = PipelineComponents.from_pretrained(path, variant, dtype, device, cache_dir);
        try
        {
            return FromComponents(comps, scheduler);
        }
        catch
        {
            comps.Dispose();
            throw;
        }
    }

    /// <summary>A pipeline over loaded components (it takes ownership of them) with the folder's scheduler, or
    /// ddim/ddpm/euler/dpmpp2m built from the folder's scheduler config.</summary>
    public static StableDiffusionPipeline FromComponents(PipelineComponents comps, string? scheduler = null)
    {
        var cfg = comps.scheduler_config is { } p ? SchedulerConfig.FromFile(p) : SchedulerConfig.SD15;
        if (comps.prediction_type is { } pt) cfg = cfg with { prediction_type = pt };
        return new StableDiffusionPipeline(comps, scheduler is null ? Scheduler.FromConfig(cfg) : Scheduler.ByName(scheduler, cfg));
    }

    /// <summary>Replaces the scheduler (the old one is disposed).</summary>
    public void use_scheduler(Scheduler s)
    {
        if (ReferenceEquals(s, scheduler)) return;
        scheduler.Dispose();
        scheduler = s;
    }

    // ---- 1. prompts ----

    private static Tensor RepeatPerImage(Tensor e, int n) =>
        e.dim() == 3 ? e.repeat(1, n, 1).view(e.size(0) * n, e.size(1), e.size(2)) : e.repeat(1, n).view(e.size(0) * n, -1);

    /// <summary>diffusers' encode_prompt: SD uses the text encoder's last_hidden_state; SDXL concatenates the
    /// penultimate hidden states of both encoders and pools with text_encoder_2's projection. Embeddings are
    /// repeated per image (rows p0, p0, p1, p1 for two images per prompt).</summary>
    public PromptEmbeds encode_prompt(IReadOnlyList<string> prompt, int num_images_per_prompt, bool do_classifier_free_guidance,
        IReadOnlyList<string>? negative_prompt = null)
    {
        if (prompt.Count == 0) throw new ArgumentException("give at least one prompt");
        if (negative_prompt != null && negative_prompt.Count != prompt.Count)
            throw new ArgumentException($"{negative_prompt.Count} negative prompts for {prompt.Count} prompts: give one per prompt");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var dev = device;
        (Tensor hidden, Tensor? pooled, Tensor[] ids) Encode(IReadOnlyList<string> texts)
        {
            var ids1 = components.tokenizer.call(texts, components.tokenizer.model_max_length, dev).input_ids;
            if (!IsSDXL)
            {
                var o = components.text_encoder.forward(ids1);
                return (o.last_hidden_state, null, [ids1]);
            }
            var ids2 = components.tokenizer_2!.call(texts, components.tokenizer_2!.model_max_length, dev).input_ids;
            var h1 = components.text_encoder.forward(ids1).penultimate_hidden_state;
            var (o2, pooled) = components.text_encoder_2!.forward(ids2);
            return (cat([h1, o2.penultimate_hidden_state], -1), pooled, [ids1, ids2]);
        }
        var (pe, pp, pids) = Encode(prompt);
        Tensor? ne = null, np = null;
        Tensor[] nids = [];
        if (do_classifier_free_guidance)
        {
            if (IsSDXL && negative_prompt is null && force_zeros_for_empty_prompt)
            {
                ne = zeros_like(pe);
                np = zeros_like(pp!);
            }
            else
            {
                (ne, np, nids) = Encode(negative_prompt ?? Enumerable.Repeat("", prompt.Count).ToList());
            }
        }
        var n = num_images_per_prompt;
        var result = new PromptEmbeds
        {
            prompt_embeds = scope.MoveToOuter(RepeatPerImage(pe.to(dtype), n)),
            negative_prompt_embeds = ne is null ? null : scope.MoveToOuter(RepeatPerImage(ne.to(dtype), n)),
            pooled_prompt_embeds = pp is null ? null : scope.MoveToOuter(RepeatPerImage(pp.to(dtype), n)),
            negative_pooled_prompt_embeds = np is null ? null : scope.MoveToOuter(RepeatPerImage(np.to(dtype), n)),
            input_ids = pids.Select(scope.MoveToOuter).ToArray(),
            negative_input_ids = nids.Select(scope.MoveToOuter).ToArray(),
        };
        return result;
    }

    /// <summary>SDXL micro-conditioning [orig_h, orig_w, crop_top, crop_left, target_h, target_w] (float32).</summary>
    public Tensor get_add_time_ids((int h, int w) original_size, (int top, int left) crops, (int h, int w) target_size)
    {
        var ids = new float[] { original_size.h, original_size.w, crops.top, crops.left, target_size.h, target_size.w };
        var expected = unet.add_embedding!.linear_1.in_features;
        var passed = unet.config.addition_time_embed_dim!.Value * ids.Length + components.text_encoder_2!.config.projection_dim;
        if (passed != expected)
            throw new InvalidDataException($"SDXL UNet expects an added embedding of {expected} values but time ids and text_encoder_2 give {passed}");
        return tensor(ids, [1, 6]).to(device, dtype);
    }

    // ---- 2. latents ----

    /// <summary>Initial noise × init_noise_sigma: given latents, or one randn((1, C, h, w)) per generator in
    /// order (diffusers' generator list), or one draw for the batch.</summary>
    public Tensor prepare_latents(int batch, int height, int width, NoiseSource noise, Tensor? latents = null)
    {
        if (height % 8 != 0 || width % 8 != 0) throw new ArgumentException($"height and width have to be divisible by 8, got {height}×{width}");
        var shape = new long[] { batch, unet.config.in_channels, height / vae_scale_factor, width / vae_scale_factor };
        using var scope = NewDisposeScope();
        Tensor x;
        if (latents != null)
        {
            if (!latents.shape.SequenceEqual(shape))
                throw new ArgumentException($"latents have shape [{string.Join(", ", latents.shape)}], expected [{string.Join(", ", shape)}]");
            x = latents.to(device, dtype);
        }
        else
        {
            x = Noise.randn_tensor(shape, noise, dtype, device);
        }
        return scope.MoveToOuter(x * scheduler.init_noise_sigma);
    }

    // ---- 3. one guided step ----

    /// <summary>ε̂ = ε_u + g·(ε_c − ε_u) from one UNet call on [x; x] (or ε_c when g ≤ 1), with optional
    /// guidance_rescale (Lin et al. 2023, diffusers' rescale_noise_cfg). <paramref name="raw"/> receives the
    /// UNet's output [uncond; cond].</summary>
    public Tensor predict_noise(Tensor latents, double t, PromptEmbeds embeds, double guidance_scale, double guidance_rescale = 0,
        Action<Tensor>? raw = null)
    {
        using var scope = NewDisposeScope();
        var cfg = guidance_scale > 1.0;
        if (cfg && embeds.negative_prompt_embeds is null) throw new ArgumentException("guidance_scale > 1 needs negative prompt embeddings (encode_prompt with do_classifier_free_guidance)");
        var input = cfg ? cat([latents, latents]) : latents;
        input = scheduler.scale_model_input(input, t);
        var ctx = cfg ? cat([embeds.negative_prompt_embeds!, embeds.prompt_embeds]) : embeds.prompt_embeds;
        AddedCondKwargs? added = null;
        if (IsSDXL)
        {
            var text = cfg ? cat([embeds.negative_pooled_prompt_embeds!, embeds.pooled_prompt_embeds!]) : embeds.pooled_prompt_embeds!;
            var n = latents.size(0);
            // diffusers 0.27: cat([negative_add_time_ids, add_time_ids]).repeat(B·N, 1) — rows alternate
            // neg/pos, which lines up with [uncond; cond] only when the two are equal (they are by default).
            var ids = cfg ? cat([embeds.negative_add_time_ids!, embeds.add_time_ids!]).repeat(n, 1) : embeds.add_time_ids!.repeat(n, 1);
            added = new AddedCondKwargs(text, ids);
        }
        var ts = scheduler.timesteps.dtype == ScalarType.Int64 ? scalar_tensor((long)t, device: device) : scalar_tensor(t, ScalarType.Float32, device);
        var outp = unet.forward(input, ts, ctx, added);
        if (raw != null)
        {
            var keep = outp.detach();
            DisposeScope.Current?.Detach(keep);
            raw(keep);
        }
        if (!cfg) return scope.MoveToOuter(outp);
        var parts = outp.chunk(2);
        var (u, c) = (parts[0], parts[1]);
        var eps = u + guidance_scale * (c - u);
        if (guidance_rescale > 0)
        {
            var dims = Enumerable.Range(1, (int)c.dim() - 1).Select(i => (long)i).ToArray();
            var rescaled = eps * (c.std(dims, keepdim: true) / eps.std(dims, keepdim: true));
            eps = guidance_rescale * rescaled + (1 - guidance_rescale) * eps;
        }
        return scope.MoveToOuter(eps);
    }

    /// <summary>ε̂ for per-sample timesteps [B] (SPO's mixed-timestep minibatches). No input scaling: for the
    /// DDPM/DDIM schedulers, whose scale_model_input is the identity.</summary>
    public Tensor predict_noise(Tensor latents, Tensor timesteps, PromptEmbeds embeds, double guidance_scale)
    {
        if (scheduler is not (DDIMScheduler or DDPMScheduler))
            throw new InvalidOperationException("per-sample timesteps need a scheduler without input scaling (DDIM or DDPM)");
        using var scope = NewDisposeScope();
        var cfg = guidance_scale > 1.0;
        var n = latents.size(0);
        var input = cfg ? cat([latents, latents]) : latents;
        var ts = cfg ? cat([timesteps, timesteps]) : timesteps;
        var ctx = cfg ? cat([embeds.negative_prompt_embeds!, embeds.prompt_embeds]) : embeds.prompt_embeds;
        AddedCondKwargs? added = null;
        if (IsSDXL)
        {
            var text = cfg ? cat([embeds.negative_pooled_prompt_embeds!, embeds.pooled_prompt_embeds!]) : embeds.pooled_prompt_embeds!;
            var ids = embeds.add_time_ids!.size(0) == n ? embeds.add_time_ids! : embeds.add_time_ids!.repeat(n, 1);
            var negIds = embeds.negative_add_time_ids is null ? ids : (embeds.negative_add_time_ids.size(0) == n ? embeds.negative_add_time_ids : embeds.negative_add_time_ids.repeat(n, 1));
            added = new AddedCondKwargs(text, cfg ? cat([negIds, ids]) : ids);
        }
        var outp = unet.forward(input, ts.to(device), ctx, added);
        if (!cfg) return scope.MoveToOuter(outp);
        var parts = outp.chunk(2);
        return scope.MoveToOuter(parts[0] + guidance_scale * (parts[1] - parts[0]));
    }

    /// <summary>One guided denoising step from x_t at timestep t: x_{t−1}, x̂₀, and with DDIM and η > 0
    /// the transition log-probability (x_{t−1} drawn from <paramref name="noise"/>, or the given
    /// <paramref name="prev_sample"/> scored). Branch k candidates from one x_t with predict_noise once and
    /// the scheduler's step_with_logprob k times.</summary>
    public DenoiseStep denoise_step(Tensor latents, double t, PromptEmbeds embeds, double guidance_scale, double eta = 0, NoiseSource? noise = null,
        Tensor? prev_sample = null, double guidance_rescale = 0)
    {
        using var scope = NewDisposeScope();
        var eps = predict_noise(latents, t, embeds, guidance_scale, guidance_rescale);
        if (scheduler is DDIMScheduler ddim && eta > 0)
        {
            var r = ddim.step_with_logprob(eps, scalar_tensor((long)t), latents, eta, noise, prev_sample);
            return new DenoiseStep(scope.MoveToOuter(r.prev_sample), scope.MoveToOuter(r.pred_original_sample), scope.MoveToOuter(r.log_prob));
        }
        if (prev_sample != null) throw new ArgumentException("scoring a given prev_sample needs the DDIM scheduler with eta > 0");
        var o = scheduler.step(eps, t, latents, eta, noise);
        return new DenoiseStep(scope.MoveToOuter(o.prev_sample), scope.MoveToOuter(o.pred_original_sample ?? o.prev_sample.alias()), null);
    }

    // ---- 4. decode ----

    /// <summary>Images in [0, 1] from latents: VAE decode of latents / scaling_factor (+ shift), in chunks of
    /// decode_chunk_size (default 4) to bound memory.</summary>
    public Tensor decode_latents(Tensor latents, int decode_chunk_size = 4)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        // diffusers' SDXL pipeline: an fp16 VAE with force_upcast decodes in float32 (the original SDXL VAE overflows
        // in fp16: NaN / black images), then returns to fp16. The fp16-fix VAE sets force_upcast false.
        var vaeDtype = vae.encoder.conv_in.weight.dtype;
        var upcast = vaeDtype == ScalarType.Float16 && vae.config.force_upcast;
        if (upcast) vae.to(ScalarType.Float32);
        try
        {
            var z = vae.unscale_latents(latents.to(upcast ? ScalarType.Float32 : vaeDtype));
            var parts = z.split(Math.Max(1, decode_chunk_size)).Select(c => vae.decode(c)).ToArray();
            var img = cat(parts);
            return scope.MoveToOuter((img / 2.0 + 0.5).clamp(0, 1).to(ScalarType.Float32));
        }
        finally
        {
            if (upcast) vae.to(ScalarType.Float16);
        }
    }

    // ---- 5. the whole call ----

    public GenerationResult call(GenerationOptions o)
    {
        var dev = device;
        if (dev.Type == DeviceType.CPU && dtype == ScalarType.Float16)
            throw new NotSupportedException("fp16 cannot compute on CPU with libtorch 1.13: load the pipeline in bfloat16 or float32");
        var height = o.height ?? unet.config.sample_size * vae_scale_factor;
        var width = o.width ?? unet.config.sample_size * vae_scale_factor;
        var n = o.num_images_per_prompt;
        var total = o.prompt.Count * n;
        if (o.generators != null && o.generators.Length != total)
            throw new ArgumentException($"{o.generators.Length} generators for {total} images ({o.prompt.Count} prompts × {n}): pass one per image");
        var cfg = o.guidance_scale > 1.0;
        using var _ = no_grad();
        var embeds = encode_prompt(o.prompt, n, cfg, o.negative_prompt);
        PromptEmbeds run = embeds;
        Tensor? addTextEmbeds = null, addTimeIds = null;
        if (IsSDXL)
        {
            var ids = get_add_time_ids(o.original_size ?? (height, width), o.crops_coords_top_left, o.target_size ?? (height, width));
            run = new PromptEmbeds
            {
                prompt_embeds = embeds.prompt_embeds,
                negative_prompt_embeds = embeds.negative_prompt_embeds,
                pooled_prompt_embeds = embeds.pooled_prompt_embeds,
                negative_pooled_prompt_embeds = embeds.negative_pooled_prompt_embeds,
                add_time_ids = ids,
                negative_add_time_ids = ids,
                input_ids = embeds.input_ids,
                negative_input_ids = embeds.negative_input_ids,
            };
            addTextEmbeds = cfg ? cat([embeds.negative_pooled_prompt_embeds!, embeds.pooled_prompt_embeds!]) : embeds.pooled_prompt_embeds!.alias();
            addTimeIds = (cfg ? cat([ids, ids]) : ids).repeat(total, 1);
            DisposeScope.Current?.Detach(ids);
            DisposeScope.Current?.Detach(addTextEmbeds);
            DisposeScope.Current?.Detach(addTimeIds);
        }
        scheduler.set_timesteps(o.num_inference_steps);
        var noise = new NoiseSource(o.generators, o.generator);
        var latents = prepare_latents(total, height, width, noise, o.latents);
        var init = latents.clone();
        var stepLatents = new List<Tensor>();
        var unetOutputs = new List<Tensor>();
        var stepNoise = new List<Tensor>();
        var ts = scheduler.TimestepValues;
        for (var i = 0; i < ts.Length; i++)
        {
            using var scope = NewDisposeScope();
            var eps = predict_noise(latents, ts[i], run, o.guidance_scale, o.guidance_rescale, o.keep_step_latents ? r => unetOutputs.Add(r) : null);
            SchedulerOutput step;
            if (scheduler is DDIMScheduler && o.eta > 0)
            {
                // The per-step variance noise, drawn as diffusers draws it (one randn per image generator).
                var z = Noise.randn_tensor(eps.shape, noise, eps.dtype, eps.device);
                if (o.keep_step_latents) stepNoise.Add(scope.Detach(z.clone()));
                step = scheduler.step(eps, ts[i], latents, o.eta, new NoiseSource(noise: z));
            }
            else
            {
                step = scheduler.step(eps, ts[i], latents, o.eta, noise);
                // EulerDiscrete draws (and ignores, with s_churn = 0) one randn per step: keep generators in step.
                if (scheduler is EulerDiscreteScheduler && (o.generators != null || o.generator != null))
                    Noise.randn_tensor(eps.shape, noise, eps.dtype, eps.device);
            }
            var next = scope.Detach(step.prev_sample);
            latents.Dispose();
            latents = next;
            if (o.keep_step_latents) stepLatents.Add(latents.clone().Let(t => { DisposeScope.Current?.Detach(t); return t; }));
            o.callback_on_step_end?.Invoke(i, ts[i], latents);
        }
        var images = o.output_latents_only ? null : decode_latents(latents);
        return new GenerationResult
        {
            images = images,
            latents = latents,
            init_latents = init,
            step_latents = stepLatents,
            unet_outputs = unetOutputs,
            step_noise = stepNoise,
            embeds = embeds,
            add_text_embeds = addTextEmbeds,
            add_time_ids = addTimeIds,
        };
    }

    public void Dispose()
    {
        scheduler.Dispose();
        components.Dispose();
    }
}

internal static class FunctionalExtensions
{
    public static TOut Let<TIn, TOut>(this TIn x, Func<TIn, TOut> f) => f(x);
}
