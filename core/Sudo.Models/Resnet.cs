// diffusers.models.resnet: ResnetBlock2D, Downsample2D, Upsample2D (diffusers 0.27.2).
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>norm1 → SiLU → conv1 (+ time_emb_proj(SiLU(temb))) → norm2 → SiLU → dropout → conv2, plus the
/// (1×1 conv_shortcut) input, divided by output_scale_factor.</summary>
public sealed class ResnetBlock2D : nn.Module
{
    public readonly nn.GroupNorm norm1, norm2;
    public readonly nn.Conv2d conv1, conv2;
    public readonly nn.Linear? time_emb_proj;
    public readonly nn.Dropout dropout;
    public readonly nn.Conv2d? conv_shortcut;
    public double output_scale_factor { get; }

    public ResnetBlock2D(int in_channels, int out_channels, int? temb_channels, int groups, double eps, double dropout = 0,
        double output_scale_factor = 1.0)
    {
        this.output_scale_factor = output_scale_factor;
        norm1 = register_module("norm1", new nn.GroupNorm(groups, in_channels, eps));
        conv1 = register_module("conv1", new nn.Conv2d(in_channels, out_channels, 3, padding: 1));
        if (temb_channels is int tc) time_emb_proj = register_module("time_emb_proj", new nn.Linear(tc, out_channels));
        norm2 = register_module("norm2", new nn.GroupNorm(groups, out_channels, eps));
        this.dropout = register_module("dropout", new nn.Dropout(dropout));
        conv2 = register_module("conv2", new nn.Conv2d(out_channels, out_channels, 3, padding: 1));
        if (in_channels != out_channels) conv_shortcut = register_module("conv_shortcut", new nn.Conv2d(in_channels, out_channels, 1));
    }

    public Tensor forward(Tensor input, Tensor? temb)
    {
        using var scope = NewDisposeScope();
        var h = Norms.Upcast(norm1.forward(input), nn.functional.silu);
        h = conv1.forward(h);
        if (time_emb_proj != null && temb != null)
        {
            var t = time_emb_proj.forward(Norms.Upcast(temb, nn.functional.silu));
            h = h + t.unsqueeze(-1).unsqueeze(-1);
        }
        h = Norms.Upcast(norm2.forward(h), nn.functional.silu);
        h = conv2.forward(dropout.forward(h));
        var x = conv_shortcut != null ? conv_shortcut.forward(input) : input;
        var o = x + h;
        if (output_scale_factor != 1.0) o = o / output_scale_factor;
        return scope.MoveToOuter(o);
    }
}

/// <summary>A stride-2 3×3 conv named "conv"; with padding 0 (the VAE encoder) the input is first padded
/// by one on the right and bottom, as diffusers does.</summary>
public sealed class Downsample2D : nn.Module<Tensor, Tensor>
{
    public readonly nn.Conv2d conv;
    private readonly int _padding;

    public Downsample2D(int channels, int out_channels, int padding = 1)
    {
        _padding = padding;
        conv = register_module("conv", new nn.Conv2d(channels, out_channels, 3, stride: 2, padding: padding));
    }

    public override Tensor forward(Tensor x)
    {
        if (_padding != 0) return conv.forward(x);
        using var padded = nn.functional.pad(x, [0, 1, 0, 1]);
        return conv.forward(padded);
    }
}

/// <summary>Nearest 2× upsampling (or to output_size) then a 3×3 conv named "conv". bf16 is upsampled in
/// fp32, as diffusers does.</summary>
public sealed class Upsample2D : nn.Module
{
    public readonly nn.Conv2d conv;

    public Upsample2D(int channels, int out_channels) =>
        conv = register_module("conv", new nn.Conv2d(channels, out_channels, 3, padding: 1));

    public Tensor forward(Tensor x, (long h, long w)? output_size = null)
    {
        using var scope = NewDisposeScope();
        var up = Norms.Upcast(x, t => output_size is { } s
            ? nn.functional.interpolate(t, size: s)
            : nn.functional.interpolate(t, 2.0));
        return scope.MoveToOuter(conv.forward(up));
    }
}
