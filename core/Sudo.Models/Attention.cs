// diffusers.models.attention_processor.Attention with AttnProcessor2_0 (diffusers 0.27.2).
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>Multi-head attention with diffusers' names: to_q, to_k, to_v, to_out = [Linear, Dropout]; the
/// VAE variant adds group_norm, a residual connection and an output rescale.</summary>
public sealed class Attention : nn.Module
{
    public readonly nn.Linear to_q, to_k, to_v;
    public readonly nn.ModuleList to_out;
    public readonly nn.GroupNorm? group_norm;
    public int heads { get; }
    public int dim_head { get; }
    public bool residual_connection { get; }
    public double rescale_output_factor { get; }

    public Attention(int query_dim, int? cross_attention_dim = null, int heads = 8, int dim_head = 64, double dropout = 0,
        bool bias = false, bool out_bias = true, int? norm_num_groups = null, double eps = 1e-5, bool residual_connection = false,
        double rescale_output_factor = 1.0)
    {
        var inner = heads * dim_head;
        this.heads = heads;
        this.dim_head = dim_head;
        this.residual_connection = residual_connection;
        this.rescale_output_factor = rescale_output_factor;
        if (norm_num_groups is int g) group_norm = register_module("group_norm", new nn.GroupNorm(g, query_dim, eps));
        to_q = register_module("to_q", new nn.Linear(query_dim, inner, bias));
        to_k = register_module("to_k", new nn.Linear(cross_attention_dim ?? query_dim, inner, bias));
        to_v = register_module("to_v", new nn.Linear(cross_attention_dim ?? query_dim, inner, bias));
        to_out = register_module("to_out", new nn.ModuleList(new nn.Linear(inner, query_dim, out_bias), new nn.Dropout(dropout)));
    }

    /// <summary>hidden_states [B, L, C] or [B, C, H, W]; encoder_hidden_states [B, S, C'] for cross-attention.</summary>
    public Tensor forward(Tensor hidden_states, Tensor? encoder_hidden_states = null, Tensor? attention_mask = null)
    {
        using var scope = NewDisposeScope();
        var residual = hidden_states;
        var x = hidden_states;
        var ndim = x.dim();
        long b = 0, c = 0, h = 0, w = 0;
        if (ndim == 4)
        {
            (b, c, h, w) = (x.size(0), x.size(1), x.size(2), x.size(3));
            x = x.view(b, c, h * w).transpose(1, 2);
        }
        if (group_norm != null) x = group_norm.forward(x.transpose(1, 2)).transpose(1, 2);
        var ctx = encoder_hidden_states ?? x;
        var batch = x.size(0);
        // [B, L, heads·d] → [B, heads, L, d]
        Tensor Heads(Tensor t) => t.view(batch, -1, heads, dim_head).transpose(1, 2);
        var q = Heads(to_q.forward(x));
        var k = Heads(to_k.forward(ctx));
        var v = Heads(to_v.forward(ctx));
        var o = nn.functional.scaled_dot_product_attention(q, k, v, attention_mask);
        o = o.transpose(1, 2).reshape(batch, -1, heads * dim_head);
        o = ((nn.Linear)to_out[0]).forward(o);
        o = ((nn.Dropout)to_out[1]).forward(o);
        if (ndim == 4) o = o.transpose(-1, -2).reshape(b, c, h, w);
        if (residual_connection) o = o + residual;
        if (rescale_output_factor != 1.0) o = o / rescale_output_factor;
        return scope.MoveToOuter(o);
    }
}

/// <summary>diffusers GEGLU: proj to 2·inner, value · gelu(gate).</summary>
public sealed class GEGLU : nn.Module<Tensor, Tensor>
{
    public readonly nn.Linear proj;
    public GEGLU(int dim_in, int dim_out, bool bias = true) => proj = register_module("proj", new nn.Linear(dim_in, dim_out * 2, bias));

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var parts = proj.forward(x).chunk(2, -1);
        return scope.MoveToOuter(parts[0] * Norms.Upcast(parts[1], t => nn.functional.gelu(t)));
    }
}

/// <summary>diffusers FeedForward with GEGLU: net = [GEGLU, Dropout, Linear].</summary>
public sealed class FeedForward : nn.Module<Tensor, Tensor>
{
    public readonly nn.ModuleList net;

    public FeedForward(int dim, int? dim_out = null, int mult = 4, double dropout = 0, bool bias = true)
    {
        var inner = dim * mult;
        net = register_module("net", new nn.ModuleList(new GEGLU(dim, inner, bias), new nn.Dropout(dropout), new nn.Linear(inner, dim_out ?? dim, bias)));
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = ((GEGLU)net[0]).forward(x);
        h = ((nn.Dropout)net[1]).forward(h);
        return scope.MoveToOuter(((nn.Linear)net[2]).forward(h));
    }
}
