// diffusers.models.embeddings: Timesteps (sinusoidal) and TimestepEmbedding.
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>get_timestep_embedding: exponent = −ln(10000)·i/(half − shift); [sin, cos] (flipped to
/// [cos, sin] with flip_sin_to_cos), computed in fp32 for timesteps given as int or float tensors.</summary>
public sealed class Timesteps(int num_channels, bool flip_sin_to_cos, double downscale_freq_shift) : nn.Module<Tensor, Tensor>
{
    public int num_channels { get; } = num_channels;

    public override Tensor forward(Tensor timesteps)
    {
        if (timesteps.dim() != 1) throw new ArgumentException($"Timesteps: expected a 1-D tensor of timesteps, got shape [{string.Join(", ", timesteps.shape)}]");
        using var scope = NewDisposeScope();
        var half = num_channels / 2;
        var exponent = arange(0, half, 1, float32, timesteps.device) * -Math.Log(10000.0) / (half - downscale_freq_shift);
        var freqs = exponent.exp();
        var emb = timesteps.@float().unsqueeze(1) * freqs.unsqueeze(0);
        emb = flip_sin_to_cos ? cat([emb.cos(), emb.sin()], -1) : cat([emb.sin(), emb.cos()], -1);
        if (num_channels % 2 == 1) emb = nn.functional.pad(emb, [0, 1]);
        return scope.MoveToOuter(emb);
    }
}

/// <summary>linear_1 → SiLU → linear_2.</summary>
public sealed class TimestepEmbedding : nn.Module<Tensor, Tensor>
{
    public readonly nn.Linear linear_1, linear_2;

    public TimestepEmbedding(int in_channels, int time_embed_dim, int? out_dim = null)
    {
        linear_1 = register_module("linear_1", new nn.Linear(in_channels, time_embed_dim));
        linear_2 = register_module("linear_2", new nn.Linear(time_embed_dim, out_dim ?? time_embed_dim));
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = Norms.Upcast(linear_1.forward(x), nn.functional.silu);
        return scope.MoveToOuter(linear_2.forward(h));
    }
}
