// diffusers.models.unets.unet_2d_blocks: CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn,
// UpBlock2D, CrossAttnUpBlock2D (diffusers 0.27.2), with per-block gradient checkpointing.
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>Runs a sub-module directly or, when its block has gradient checkpointing on and is training
/// with grad enabled, through torch.utils.checkpoint with the sub-module's trainable weights as inputs.</summary>
internal static class Ckpt
{
    public static Tensor Resnet(nn.Module block, ResnetBlock2D r, Tensor h, Tensor? temb)
    {
        if (!Use(block)) return r.forward(h, temb);
        return temb is null
            ? utils.checkpoint.run(xs => [r.forward(xs[0], null)], [h], r.parameters())[0]
            : utils.checkpoint.run(xs => [r.forward(xs[0], xs[1])], [h, temb], r.parameters())[0];
    }

    public static Tensor Transformer(nn.Module block, Transformer2DModel a, Tensor h, Tensor? ctx)
    {
        if (!Use(block)) return a.forward(h, ctx);
        return ctx is null
            ? utils.checkpoint.run(xs => [a.forward(xs[0], null)], [h], a.parameters())[0]
            : utils.checkpoint.run(xs => [a.forward(xs[0], xs[1])], [h, ctx], a.parameters())[0];
    }

    private static bool Use(nn.Module block) => block.gradient_checkpointing && block.training && is_grad_enabled();
}

/// <summary>A UNet down block: its output and the skip tensors it hands to the up path.</summary>
public interface IDownBlock
{
    (Tensor hidden, Tensor[] skips) forward(Tensor hidden, Tensor temb, Tensor? encoder_hidden_states, Action<string, Tensor>? trace = null);
}

public interface IUpBlock
{
    int num_resnets { get; }
    Tensor forward(Tensor hidden, Tensor[] skips, Tensor temb, Tensor? encoder_hidden_states, (long, long)? upsample_size);
}

public sealed class DownBlock2D : nn.Module, IDownBlock
{
    public readonly nn.ModuleList<ResnetBlock2D> resnets;
    public readonly nn.ModuleList<Downsample2D>? downsamplers;

    public DownBlock2D(int num_layers, int in_channels, int out_channels, int temb_channels, bool add_downsample, double eps, int groups,
        int downsample_padding, double dropout = 0)
    {
        resnets = register_module("resnets", new nn.ModuleList<ResnetBlock2D>());
        for (var i = 0; i < num_layers; i++)
            resnets.append(new ResnetBlock2D(i == 0 ? in_channels : out_channels, out_channels, temb_channels, groups, eps, dropout));
        if (add_downsample) downsamplers = register_module("downsamplers", new nn.ModuleList<Downsample2D>(new Downsample2D(out_channels, out_channels, downsample_padding)));
    }

    public (Tensor hidden, Tensor[] skips) forward(Tensor hidden, Tensor temb, Tensor? encoder_hidden_states, Action<string, Tensor>? trace = null)
    {
        var skips = new List<Tensor>();
        for (var i = 0; i < resnets.Count; i++)
        {
            hidden = Ckpt.Resnet(this, resnets[i], hidden, temb);
            UNet2DConditionModel.Emit(trace, $"resnets_{i}", hidden);
            skips.Add(hidden);
        }
        if (downsamplers != null)
        {
            hidden = downsamplers[0].forward(hidden);
            skips.Add(hidden);
        }
        return (hidden, skips.ToArray());
    }
}

public sealed class CrossAttnDownBlock2D : nn.Module, IDownBlock
{
    public readonly nn.ModuleList<ResnetBlock2D> resnets;
    public readonly nn.ModuleList<Transformer2DModel> attentions;
    public readonly nn.ModuleList<Downsample2D>? downsamplers;

    public CrossAttnDownBlock2D(int num_layers, int[] transformer_layers_per_block, int in_channels, int out_channels, int temb_channels,
        bool add_downsample, double eps, int groups, int downsample_padding, int cross_attention_dim, int num_attention_heads,
        bool use_linear_projection, bool only_cross_attention = false, double dropout = 0)
    {
        // diffusers registers attentions before resnets: that is the state_dict order.
        attentions = register_module("attentions", new nn.ModuleList<Transformer2DModel>());
        resnets = register_module("resnets", new nn.ModuleList<ResnetBlock2D>());
        for (var i = 0; i < num_layers; i++)
        {
            resnets.append(new ResnetBlock2D(i == 0 ? in_channels : out_channels, out_channels, temb_channels, groups, eps, dropout));
            attentions.append(new Transformer2DModel(num_attention_heads, out_channels / num_attention_heads, out_channels,
                transformer_layers_per_block[i], cross_attention_dim, groups, use_linear_projection, dropout, only_cross_attention));
        }
        if (add_downsample) downsamplers = register_module("downsamplers", new nn.ModuleList<Downsample2D>(new Downsample2D(out_channels, out_channels, downsample_padding)));
    }

    public (Tensor hidden, Tensor[] skips) forward(Tensor hidden, Tensor temb, Tensor? encoder_hidden_states, Action<string, Tensor>? trace = null)
    {
        var skips = new List<Tensor>();
        for (var i = 0; i < resnets.Count; i++)
        {
            hidden = Ckpt.Resnet(this, resnets[i], hidden, temb);
            UNet2DConditionModel.Emit(trace, $"resnets_{i}", hidden);
            hidden = Ckpt.Transformer(this, attentions[i], hidden, encoder_hidden_states);
            UNet2DConditionModel.Emit(trace, $"attentions_{i}", hidden);
            skips.Add(hidden);
        }
        if (downsamplers != null)
        {
            hidden = downsamplers[0].forward(hidden);
            skips.Add(hidden);
        }
        return (hidden, skips.ToArray());
    }
}

public sealed class UNetMidBlock2DCrossAttn : nn.Module
{
    public readonly nn.ModuleList<ResnetBlock2D> resnets;
    public readonly nn.ModuleList<Transformer2DModel> attentions;

    public UNetMidBlock2DCrossAttn(int in_channels, int temb_channels, double eps, int groups, int cross_attention_dim, int num_attention_heads,
        int transformer_layers, bool use_linear_projection, double output_scale_factor = 1.0, double dropout = 0, int num_layers = 1)
    {
        attentions = register_module("attentions", new nn.ModuleList<Transformer2DModel>());
        resnets = register_module("resnets", new nn.ModuleList<ResnetBlock2D>(new ResnetBlock2D(in_channels, in_channels, temb_channels, groups, eps, dropout, output_scale_factor)));
        for (var i = 0; i < num_layers; i++)
        {
            attentions.append(new Transformer2DModel(num_attention_heads, in_channels / num_attention_heads, in_channels, transformer_layers,
                cross_attention_dim, groups, use_linear_projection, dropout));
            resnets.append(new ResnetBlock2D(in_channels, in_channels, temb_channels, groups, eps, dropout, output_scale_factor));
        }
    }

    public Tensor forward(Tensor hidden, Tensor temb, Tensor? encoder_hidden_states)
    {
        hidden = Ckpt.Resnet(this, resnets[0], hidden, temb);
        for (var i = 0; i < attentions.Count; i++)
        {
            hidden = Ckpt.Transformer(this, attentions[i], hidden, encoder_hidden_states);
            hidden = Ckpt.Resnet(this, resnets[i + 1], hidden, temb);
        }
        return hidden;
    }
}

public sealed class UpBlock2D : nn.Module, IUpBlock
{
    public readonly nn.ModuleList<ResnetBlock2D> resnets;
    public readonly nn.ModuleList<Upsample2D>? upsamplers;
    public int num_resnets => resnets.Count;

    public UpBlock2D(int num_layers, int in_channels, int prev_output_channel, int out_channels, int temb_channels, bool add_upsample,
        double eps, int groups, double dropout = 0)
    {
        resnets = register_module("resnets", new nn.ModuleList<ResnetBlock2D>());
        for (var i = 0; i < num_layers; i++)
        {
            var skip = i == num_layers - 1 ? in_channels : out_channels;
            var resIn = i == 0 ? prev_output_channel : out_channels;
            resnets.append(new ResnetBlock2D(resIn + skip, out_channels, temb_channels, groups, eps, dropout));
        }
        if (add_upsample) upsamplers = register_module("upsamplers", new nn.ModuleList<Upsample2D>(new Upsample2D(out_channels, out_channels)));
    }

    public Tensor forward(Tensor hidden, Tensor[] skips, Tensor temb, Tensor? encoder_hidden_states, (long, long)? upsample_size)
    {
        var k = skips.Length;
        foreach (var r in resnets)
        {
            var joined = cat([hidden, skips[--k]], 1);
            hidden = Ckpt.Resnet(this, r, joined, temb);
        }
        if (upsamplers != null) hidden = upsamplers[0].forward(hidden, upsample_size);
        return hidden;
    }
}

public sealed class CrossAttnUpBlock2D : nn.Module, IUpBlock
{
    public readonly nn.ModuleList<ResnetBlock2D> resnets;
    public readonly nn.ModuleList<Transformer2DModel> attentions;
    public readonly nn.ModuleList<Upsample2D>? upsamplers;
    public int num_resnets => resnets.Count;

    public CrossAttnUpBlock2D(int num_layers, int[] transformer_layers_per_block, int in_channels, int prev_output_channel, int out_channels,
        int temb_channels, bool add_upsample, double eps, int groups, int cross_attention_dim, int num_attention_heads, bool use_linear_projection,
        bool only_cross_attention = false, double dropout = 0)
    {
        // diffusers registers attentions before resnets: that is the state_dict order.
        attentions = register_module("attentions", new nn.ModuleList<Transformer2DModel>());
        resnets = register_module("resnets", new nn.ModuleList<ResnetBlock2D>());
        for (var i = 0; i < num_layers; i++)
        {
            var skip = i == num_layers - 1 ? in_channels : out_channels;
            var resIn = i == 0 ? prev_output_channel : out_channels;
            resnets.append(new ResnetBlock2D(resIn + skip, out_channels, temb_channels, groups, eps, dropout));
            attentions.append(new Transformer2DModel(num_attention_heads, out_channels / num_attention_heads, out_channels,
                transformer_layers_per_block[i], cross_attention_dim, groups, use_linear_projection, dropout, only_cross_attention));
        }
        if (add_upsample) upsamplers = register_module("upsamplers", new nn.ModuleList<Upsample2D>(new Upsample2D(out_channels, out_channels)));
    }

    public Tensor forward(Tensor hidden, Tensor[] skips, Tensor temb, Tensor? encoder_hidden_states, (long, long)? upsample_size)
    {
        var k = skips.Length;
        for (var i = 0; i < resnets.Count; i++)
        {
            var joined = cat([hidden, skips[--k]], 1);
            hidden = Ckpt.Resnet(this, resnets[i], joined, temb);
            hidden = Ckpt.Transformer(this, attentions[i], hidden, encoder_hidden_states);
        }
        if (upsamplers != null) hidden = upsamplers[0].forward(hidden, upsample_size);
        return hidden;
    }
}
