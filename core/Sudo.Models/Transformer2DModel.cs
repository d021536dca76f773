// diffusers.models.transformers.transformer_2d.Transformer2DModel (continuous input) and
// diffusers.models.attention.BasicTransformerBlock (norm_type "layer_norm", GEGLU feed-forward).
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>LN → self-attention → residual; LN → cross-attention → residual; LN → GEGLU FF → residual.</summary>
public sealed class BasicTransformerBlock : nn.Module
{
    public readonly nn.LayerNorm norm1, norm2, norm3;
    public readonly Attention attn1, attn2;
    public readonly FeedForward ff;
    public bool only_cross_attention { get; }

    public BasicTransformerBlock(int dim, int num_attention_heads, int attention_head_dim, int? cross_attention_dim, double dropout = 0,
        bool only_cross_attention = false)
    {
        this.only_cross_attention = only_cross_attention;
        norm1 = register_module("norm1", new nn.LayerNorm(dim, 1e-5));
        attn1 = register_module("attn1", new Attention(dim, only_cross_attention ? cross_attention_dim : null, num_attention_heads, attention_head_dim, dropout));
        norm2 = register_module("norm2", new nn.LayerNorm(dim, 1e-5));
        attn2 = register_module("attn2", new Attention(dim, cross_attention_dim, num_attention_heads, attention_head_dim, dropout));
        norm3 = register_module("norm3", new nn.LayerNorm(dim, 1e-5));
        ff = register_module("ff", new FeedForward(dim, dropout: dropout));
    }

    public Tensor forward(Tensor x, Tensor? encoder_hidden_states, Tensor? encoder_attention_mask = null)
    {
        using var scope = NewDisposeScope();
        var h = attn1.forward(norm1.forward(x), only_cross_attention ? encoder_hidden_states : null) + x;
        h = attn2.forward(norm2.forward(h), encoder_hidden_states, encoder_attention_mask) + h;
        h = ff.forward(norm3.forward(h)) + h;
        return scope.MoveToOuter(h);
    }
}

/// <summary>GroupNorm(eps 1e-6) → proj_in (1×1 conv, or Linear with use_linear_projection) → blocks →
/// proj_out, plus the input.</summary>
public sealed class Transformer2DModel : nn.Module
{
    public readonly nn.GroupNorm norm;
    public readonly nn.Module<Tensor, Tensor> proj_in, proj_out;
    public readonly nn.ModuleList<BasicTransformerBlock> transformer_blocks;
    public bool use_linear_projection { get; }

    public Transformer2DModel(int num_attention_heads, int attention_head_dim, int in_channels, int num_layers, int? cross_attention_dim,
        int norm_num_groups, bool use_linear_projection, double dropout = 0, bool only_cross_attention = false)
    {
        this.use_linear_projection = use_linear_projection;
        var inner = num_attention_heads * attention_head_dim;
        norm = register_module("norm", new nn.GroupNorm(norm_num_groups, in_channels, 1e-6));
        proj_in = register_module<nn.Module<Tensor, Tensor>>("proj_in", use_linear_projection ? new nn.Linear(in_channels, inner) : new nn.Conv2d(in_channels, inner, 1));
        transformer_blocks = register_module("transformer_blocks", new nn.ModuleList<BasicTransformerBlock>());
        for (var d = 0; d < num_layers; d++)
            transformer_blocks.append(new BasicTransformerBlock(inner, num_attention_heads, attention_head_dim, cross_attention_dim, dropout, only_cross_attention));
        proj_out = register_module<nn.Module<Tensor, Tensor>>("proj_out", use_linear_projection ? new nn.Linear(inner, in_channels) : new nn.Conv2d(inner, in_channels, 1));
    }

    public Tensor forward(Tensor x, Tensor? encoder_hidden_states, Tensor? encoder_attention_mask = null)
    {
        using var scope = NewDisposeScope();
        var (b, h, w) = (x.size(0), x.size(2), x.size(3));
        var t = norm.forward(x);
        Tensor tokens;
        if (!use_linear_projection)
        {
            t = proj_in.forward(t);
            tokens = t.permute(0, 2, 3, 1).reshape(b, h * w, t.size(1));
        }
        else
        {
            tokens = proj_in.forward(t.permute(0, 2, 3, 1).reshape(b, h * w, t.size(1)));
        }
        var inner = tokens.size(2);
        foreach (var block in transformer_blocks) tokens = block.forward(tokens, encoder_hidden_states, encoder_attention_mask);
        Tensor o;
        if (!use_linear_projection)
            o = proj_out.forward(tokens.reshape(b, h, w, inner).permute(0, 3, 1, 2).contiguous());
        else
            o = proj_out.forward(tokens).reshape(b, h, w, x.size(1)).permute(0, 3, 1, 2).contiguous();
        return scope.MoveToOuter(o + x);
    }
}
