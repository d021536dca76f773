// diffusers.models.autoencoders.autoencoder_kl.AutoencoderKL with vae.Encoder / vae.Decoder and
// DiagonalGaussianDistribution (diffusers 0.27.2).
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>The VAE mid block: resnet, single-head attention (group_norm + residual), resnet.</summary>
public sealed class UNetMidBlock2D : nn.Module
{
    public readonly nn.ModuleList<ResnetBlock2D> resnets;
    public readonly nn.ModuleList<Attention>? attentions;

    public UNetMidBlock2D(int in_channels, double eps, int groups, int attention_head_dim, bool add_attention = true)
    {
        if (add_attention)
            attentions = register_module("attentions", new nn.ModuleList<Attention>(new Attention(in_channels, null, in_channels / attention_head_dim,
                attention_head_dim, bias: true, norm_num_groups: groups, eps: eps, residual_connection: true)));
        resnets = register_module("resnets", new nn.ModuleList<ResnetBlock2D>(new ResnetBlock2D(in_channels, in_channels, null, groups, eps),
            new ResnetBlock2D(in_channels, in_channels, null, groups, eps)));
    }

    public Tensor forward(Tensor h)
    {
        using var scope = NewDisposeScope();
        h = resnets[0].forward(h, null);
        if (attentions != null) h = attentions[0].forward(h);
        return scope.MoveToOuter(resnets[1].forward(h, null));
    }
}

public sealed class DownEncoderBlock2D : nn.Module<Tensor, Tensor>
{
    public readonly nn.ModuleList<ResnetBlock2D> resnets;
    public readonly nn.ModuleList<Downsample2D>? downsamplers;

    public DownEncoderBlock2D(int num_layers, int in_channels, int out_channels, bool add_downsample, double eps, int groups)
    {
        resnets = register_module("resnets", new nn.ModuleList<ResnetBlock2D>());
        for (var i = 0; i < num_layers; i++) resnets.append(new ResnetBlock2D(i == 0 ? in_channels : out_channels, out_channels, null, groups, eps));
        // padding 0: diffusers pads (0, 1, 0, 1) before the stride-2 conv.
        if (add_downsample) downsamplers = register_module("downsamplers", new nn.ModuleList<Downsample2D>(new Downsample2D(out_channels, out_channels, 0)));
    }

    public override Tensor forward(Tensor h)
    {
        using var scope = NewDisposeScope();
        foreach (var r in resnets) h = r.forward(h, null);
        if (downsamplers != null) h = downsamplers[0].forward(h);
        return scope.MoveToOuter(h);
    }
}

public sealed class UpDecoderBlock2D : nn.Module<Tensor, Tensor>
{
    public readonly nn.ModuleList<ResnetBlock2D> resnets;
    public readonly nn.ModuleList<Upsample2D>? upsamplers;

    public UpDecoderBlock2D(int num_layers, int in_channels, int out_channels, bool add_upsample, double eps, int groups)
    {
        resnets = register_module("resnets", new nn.ModuleList<ResnetBlock2D>());
        for (var i = 0; i < num_layers; i++) resnets.append(new ResnetBlock2D(i == 0 ? in_channels : out_channels, out_channels, null, groups, eps));
        if (add_upsample) upsamplers = register_module("upsamplers", new nn.ModuleList<Upsample2D>(new Upsample2D(out_channels, out_channels)));
    }

    public override Tensor forward(Tensor h)
    {
        using var scope = NewDisposeScope();
        foreach (var r in resnets) h = r.forward(h, null);
        if (upsamplers != null) h = upsamplers[0].forward(h);
        return scope.MoveToOuter(h);
    }
}

public sealed class Encoder : nn.Module
{
    public readonly nn.Conv2d conv_in, conv_out;
    public readonly nn.ModuleList<DownEncoderBlock2D> down_blocks;
    public readonly UNetMidBlock2D mid_block;
    public readonly nn.GroupNorm conv_norm_out;

    public Encoder(AutoencoderKLConfig c)
    {
        var boc = c.block_out_channels;
        conv_in = register_module("conv_in", new nn.Conv2d(c.in_channels, boc[0], 3, padding: 1));
        down_blocks = register_module("down_blocks", new nn.ModuleList<DownEncoderBlock2D>());
        var output = boc[0];
        for (var i = 0; i < boc.Length; i++)
        {
            var input = output;
            output = boc[i];
            down_blocks.append(new DownEncoderBlock2D(c.layers_per_block, input, output, i != boc.Length - 1, 1e-6, c.norm_num_groups));
        }
        mid_block = register_module("mid_block", new UNetMidBlock2D(boc[^1], 1e-6, c.norm_num_groups, boc[^1], c.mid_block_add_attention));
        conv_norm_out = register_module("conv_norm_out", new nn.GroupNorm(c.norm_num_groups, boc[^1], 1e-6));
        conv_out = register_module("conv_out", new nn.Conv2d(boc[^1], 2 * c.latent_channels, 3, padding: 1));
    }

    public Tensor forward(Tensor x, Action<string, Tensor>? trace = null)
    {
        using var scope = NewDisposeScope();
        var h = conv_in.forward(x);
        UNet2DConditionModel.Emit(trace, "encoder_conv_in", h);
        for (var i = 0; i < down_blocks.Count; i++)
        {
            h = down_blocks[i].forward(h);
            UNet2DConditionModel.Emit(trace, $"encoder_down_blocks_{i}", h);
        }
        h = mid_block.forward(h);
        UNet2DConditionModel.Emit(trace, "encoder_mid_block", h);
        h = conv_out.forward(Norms.Upcast(conv_norm_out.forward(h), nn.functional.silu));
        return scope.MoveToOuter(h);
    }
}

public sealed class Decoder : nn.Module
{
    public readonly nn.Conv2d conv_in, conv_out;
    public readonly UNetMidBlock2D mid_block;
    public readonly nn.ModuleList<UpDecoderBlock2D> up_blocks;
    public readonly nn.GroupNorm conv_norm_out;

    public Decoder(AutoencoderKLConfig c)
    {
        var boc = c.block_out_channels;
        conv_in = register_module("conv_in", new nn.Conv2d(c.latent_channels, boc[^1], 3, padding: 1));
        up_blocks = register_module("up_blocks", new nn.ModuleList<UpDecoderBlock2D>());   // registered before mid_block, as diffusers does
        mid_block = register_module("mid_block", new UNetMidBlock2D(boc[^1], 1e-6, c.norm_num_groups, boc[^1], c.mid_block_add_attention));
        var rboc = boc.Reverse().ToArray();
        var output = rboc[0];
        for (var i = 0; i < rboc.Length; i++)
        {
            var prev = output;
            output = rboc[i];
            up_blocks.append(new UpDecoderBlock2D(c.layers_per_block + 1, prev, output, i != rboc.Length - 1, 1e-6, c.norm_num_groups));
        }
        conv_norm_out = register_module("conv_norm_out", new nn.GroupNorm(c.norm_num_groups, boc[0], 1e-6));
        conv_out = register_module("conv_out", new nn.Conv2d(boc[0], c.out_channels, 3, padding: 1));
    }

    public Tensor forward(Tensor z, Action<string, Tensor>? trace = null)
    {
        using var scope = NewDisposeScope();
        var h = conv_in.forward(z);
        UNet2DConditionModel.Emit(trace, "decoder_conv_in", h);
        h = mid_block.forward(h);
        UNet2DConditionModel.Emit(trace, "decoder_mid_block", h);
        for (var i = 0; i < up_blocks.Count; i++)
        {
            h = up_blocks[i].forward(h);
            UNet2DConditionModel.Emit(trace, $"decoder_up_blocks_{i}", h);
        }
        h = conv_out.forward(Norms.Upcast(conv_norm_out.forward(h), nn.functional.silu));
        return scope.MoveToOuter(h);
    }
}

/// <summary>The VAE posterior N(mean, exp(logvar)) with logvar clamped to [−30, 20].</summary>
public sealed class DiagonalGaussianDistribution : IDisposable
{
    public Tensor mean { get; }
    public Tensor logvar { get; }
    public Tensor std { get; }

    public DiagonalGaussianDistribution(Tensor parameters)
    {
        using var scope = NewDisposeScope();
        var parts = parameters.chunk(2, 1);
        mean = scope.MoveToOuter(parts[0].contiguous());
        logvar = scope.MoveToOuter(parts[1].clamp(-30.0, 20.0));
        std = scope.MoveToOuter((logvar * 0.5).exp());
    }

    /// <summary>mean + std·ε with ε drawn from <paramref name="generator"/> (or given as <paramref name="noise"/>).</summary>
    public Tensor sample(Generator? generator = null, Tensor? noise = null)
    {
        using var scope = NewDisposeScope();
        var eps = noise ?? randn(mean.shape, generator, mean.dtype, mean.device);
        return scope.MoveToOuter(mean + std * eps);
    }

    public Tensor mode() => mean.alias();

    public void Dispose()
    {
        mean.Dispose();
        logvar.Dispose();
        std.Dispose();
    }
}

public sealed class AutoencoderKL : nn.Module
{
    public static AutoencoderKL from_pretrained(string path, string? variant = null, ScalarType? dtype = null, Device? device = null, string? cache_dir = null)
    {
        var folder = Hub.Resolve(path, cache_dir);
        return Checkpoints.Load(folder, () => new AutoencoderKL(AutoencoderKLConfig.FromFile(Path.Combine(folder, "config.json"))),
            "diffusion_pytorch_model", variant, dtype ?? ScalarType.Float32, device);
    }

    public void save_pretrained(string folder, long max_shard_bytes = 10_000_000_000) =>
        Checkpoints.Save(this, folder, "diffusion_pytorch_model", config.ToJson(), max_shard_bytes);

    public AutoencoderKLConfig config { get; }
    public readonly Encoder encoder;
    public readonly Decoder decoder;
    public readonly nn.Conv2d? quant_conv, post_quant_conv;

    /// <summary>Decode at most this many latents at once (bounds memory; 0 = all).</summary>
    public int decode_chunk_size { get; set; }

    public AutoencoderKL(AutoencoderKLConfig config)
    {
        this.config = config;
        encoder = register_module("encoder", new Encoder(config));
        decoder = register_module("decoder", new Decoder(config));
        if (config.use_quant_conv) quant_conv = register_module("quant_conv", new nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1));
        if (config.use_post_quant_conv) post_quant_conv = register_module("post_quant_conv", new nn.Conv2d(config.latent_channels, config.latent_channels, 1));
    }

    /// <summary>The posterior of images in [−1, 1] (NCHW).</summary>
    public DiagonalGaussianDistribution encode(Tensor x, Action<string, Tensor>? trace = null)
    {
        Tensor moments;
        using (var scope = NewDisposeScope())
        {
            var h = encoder.forward(x, trace);
            UNet2DConditionModel.Emit(trace, "encoder", h);
            moments = scope.MoveToOuter(quant_conv != null ? quant_conv.forward(h) : h.alias());
            UNet2DConditionModel.Emit(trace, "quant_conv", moments);
        }
        // The posterior's tensors belong to the caller's scope (or to the caller, via Dispose).
        using (moments) return new DiagonalGaussianDistribution(moments);
    }

    /// <summary>Images from unscaled latents (divide by scaling_factor — and add shift_factor — first).</summary>
    public Tensor decode(Tensor z, Action<string, Tensor>? trace = null)
    {
        if (decode_chunk_size > 0 && z.size(0) > decode_chunk_size)
        {
            using var s = NewDisposeScope();
            var parts = z.split(decode_chunk_size).Select(c => decode(c)).ToArray();
            return s.MoveToOuter(cat(parts));
        }
        using var scope = NewDisposeScope();
        var h = post_quant_conv != null ? post_quant_conv.forward(z) : z;
        UNet2DConditionModel.Emit(trace, "post_quant_conv", h);
        return scope.MoveToOuter(decoder.forward(h, trace));
    }

    /// <summary>decode(encode(x).mode()), or a posterior sample with a generator.</summary>
    public Tensor forward(Tensor x, bool sample_posterior = false, Generator? generator = null)
    {
        using var scope = NewDisposeScope();
        using var posterior = encode(x);
        var z = sample_posterior ? posterior.sample(generator) : posterior.mode();
        return scope.MoveToOuter(decode(z));
    }

    /// <summary>Latents for diffusion training: (mean or sample − shift_factor) · scaling_factor.</summary>
    public Tensor scale_latents(Tensor z)
    {
        using var scope = NewDisposeScope();
        var s = config.shift_factor is double sh ? z - sh : z;
        return scope.MoveToOuter(s * config.scaling_factor);
    }

    /// <summary>Inverse of <see cref="scale_latents"/>: what decode expects.</summary>
    public Tensor unscale_latents(Tensor latents)
    {
        using var scope = NewDisposeScope();
        var z = latents / config.scaling_factor;
        return scope.MoveToOuter(config.shift_factor is double sh ? z + sh : z);
    }
}
