// diffusers.models.unets.unet_2d_condition.UNet2DConditionModel (diffusers 0.27.2): SD1.x, SD2.x, SDXL.
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Models;

/// <summary>SDXL's added conditioning: pooled text embeddings [B, D] and time ids [B, 6].</summary>
public sealed record AddedCondKwargs(Tensor text_embeds, Tensor time_ids);

public sealed class UNet2DConditionModel : nn.Module
{
    /// <summary>Loads a diffusers unet folder (or hub id): config.json + diffusion_pytorch_model[.variant].safetensors
    /// (or its sharded index); fp16 files are upcast to the requested dtype (default float32).</summary>
    public static UNet2DConditionModel from_pretrained(string path, string? variant = null, ScalarType? dtype = null, Device? device = null, string? cache_dir = null)
    {
        var folder = Hub.Resolve(path, cache_dir);
        return Checkpoints.Load(folder, () => new UNet2DConditionModel(UNet2DConditionConfig.FromFile(Path.Combine(folder, "config.json"))),
            "diffusion_pytorch_model", variant, dtype ?? ScalarType.Float32, device);
    }

    /// <summary>Writes config.json and diffusion_pytorch_model.safetensors (sharded above 10 GB, as diffusers).</summary>
    public void save_pretrained(string folder, long max_shard_bytes = 10_000_000_000) =>
        Checkpoints.Save(this, folder, "diffusion_pytorch_model", config.ToJson(), max_shard_bytes);

    public UNet2DConditionConfig config { get; }
    public readonly nn.Conv2d conv_in, conv_out;
    public readonly Timesteps time_proj;
    public readonly TimestepEmbedding time_embedding;
    public readonly Timesteps? add_time_proj;
    public readonly TimestepEmbedding? add_embedding;
    public readonly nn.ModuleList down_blocks, up_blocks;
    public readonly UNetMidBlock2DCrossAttn mid_block;
    public readonly nn.GroupNorm conv_norm_out;
    private readonly int _numUpsamplers;

    public UNet2DConditionModel(UNet2DConditionConfig config)
    {
        config.Validate();
        this.config = config;
        var n = config.NumBlocks;
        var boc = config.block_out_channels;
        // diffusers' naming quirk: num_attention_heads defaults to attention_head_dim.
        var heads = PerBlock.Expand(config.num_attention_heads ?? config.attention_head_dim, n, 8, "num_attention_heads");
        var crossDim = PerBlock.Expand(config.cross_attention_dim, n, 1280, "cross_attention_dim");
        var layers = PerBlock.Expand(config.layers_per_block, n, 2, "layers_per_block");
        var tlpb = PerBlock.Expand(config.transformer_layers_per_block, n, 1, "transformer_layers_per_block");
        var onlyCross = config.only_cross_attention.Length == 1 ? Enumerable.Repeat(config.only_cross_attention[0], n).ToArray() : config.only_cross_attention;

        conv_in = register_module("conv_in", new nn.Conv2d(config.in_channels, boc[0], config.conv_in_kernel, padding: (config.conv_in_kernel - 1) / 2));
        var timeEmbedDim = config.time_embedding_dim ?? boc[0] * 4;
        time_proj = register_module("time_proj", new Timesteps(boc[0], config.flip_sin_to_cos, config.freq_shift));
        time_embedding = register_module("time_embedding", new TimestepEmbedding(boc[0], timeEmbedDim));
        if (config.addition_embed_type == "text_time")
        {
            add_time_proj = register_module("add_time_proj", new Timesteps(config.addition_time_embed_dim!.Value, config.flip_sin_to_cos, config.freq_shift));
            add_embedding = register_module("add_embedding", new TimestepEmbedding(config.projection_class_embeddings_input_dim!.Value, timeEmbedDim));
        }

        // diffusers creates both block lists before the mid block: state_dict order is down, up, mid.
        down_blocks = register_module("down_blocks", new nn.ModuleList());
        up_blocks = register_module("up_blocks", new nn.ModuleList());
        var output = boc[0];
        for (var i = 0; i < n; i++)
        {
            var input = output;
            output = boc[i];
            var final = i == n - 1;
            down_blocks.append(config.down_block_types[i] == "CrossAttnDownBlock2D"
                ? new CrossAttnDownBlock2D(layers[i], Enumerable.Repeat(tlpb[i], layers[i]).ToArray(), input, output, timeEmbedDim, !final,
                    config.norm_eps, config.norm_num_groups, config.downsample_padding, crossDim[i], heads[i], config.use_linear_projection,
                    onlyCross[i], config.dropout)
                : new DownBlock2D(layers[i], input, output, timeEmbedDim, !final, config.norm_eps, config.norm_num_groups,
                    config.downsample_padding, config.dropout));
        }

        mid_block = register_module("mid_block", new UNetMidBlock2DCrossAttn(boc[^1], timeEmbedDim, config.norm_eps, config.norm_num_groups,
            crossDim[^1], heads[^1], tlpb[^1], config.use_linear_projection, config.mid_block_scale_factor, config.dropout));

        var rboc = boc.Reverse().ToArray();
        var rheads = heads.Reverse().ToArray();
        var rlayers = layers.Reverse().ToArray();
        var rcross = crossDim.Reverse().ToArray();
        var rtlpb = config.reverse_transformer_layers_per_block ?? tlpb.Reverse().ToArray();
        var ronly = onlyCross.Reverse().ToArray();
        output = rboc[0];
        for (var i = 0; i < n; i++)
        {
            var final = i == n - 1;
            var prev = output;
            output = rboc[i];
            var input = rboc[Math.Min(i + 1, n - 1)];
            if (!final) _numUpsamplers++;
            var nl = rlayers[i] + 1;
            up_blocks.append(config.up_block_types[i] == "CrossAttnUpBlock2D"
                ? new CrossAttnUpBlock2D(nl, Enumerable.Repeat(rtlpb[i], nl).ToArray(), input, prev, output, timeEmbedDim, !final,
                    config.norm_eps, config.norm_num_groups, rcross[i], rheads[i], config.use_linear_projection, ronly[i], config.dropout)
                : new UpBlock2D(nl, input, prev, output, timeEmbedDim, !final, config.norm_eps, config.norm_num_groups, config.dropout));
        }

        conv_norm_out = register_module("conv_norm_out", new nn.GroupNorm(config.norm_num_groups, boc[0], config.norm_eps));
        conv_out = register_module("conv_out", new nn.Conv2d(boc[0], config.out_channels, config.conv_out_kernel, padding: (config.conv_out_kernel - 1) / 2));
    }

    /// <summary>Hands an intermediate value to a trace callback as a new handle the callback owns.</summary>
    internal static void Emit(Action<string, Tensor>? trace, string name, Tensor t)
    {
        if (trace is null) return;
        trace(name, DisposeScope.HandOut(t));
    }

    /// <summary>Turns recomputation in backward on or off for every down, mid and up block.</summary>
    public void enable_gradient_checkpointing(bool on = true)
    {
        foreach (var m in down_blocks.children().Concat(up_blocks.children()).Append(mid_block)) m.gradient_checkpointing = on;
    }

    /// <summary>The noise (or v) prediction for latents x_t [B, C, H, W] at timestep(s) t (a 0-dim or [B]
    /// int or float tensor) given encoder_hidden_states [B, S, D]. <paramref name="trace"/> receives
    /// intermediate values under diffusers' module names (for parity reports); it owns (disposes) them.</summary>
    public Tensor forward(Tensor sample, Tensor timestep, Tensor encoder_hidden_states, AddedCondKwargs? added_cond_kwargs = null,
        Action<string, Tensor>? trace = null)
    {
        if (sample.dim() != 4 || sample.size(1) != config.in_channels)
            throw new ArgumentException($"UNet2DConditionModel: sample must be [B, {config.in_channels}, H, W], got [{string.Join(", ", sample.shape)}]");
        using var scope = NewDisposeScope();
        var batch = sample.size(0);
        // 1. time: 0-dim → [1] → broadcast to the batch.
        var t = timestep.dim() == 0 ? timestep.unsqueeze(0) : timestep;
        t = t.to(sample.device).expand(batch);
        var tEmb = time_proj.forward(t).to(sample.dtype);
        Emit(trace, "time_proj", tEmb);
        var emb = time_embedding.forward(tEmb);
        Emit(trace, "time_embedding", emb);
        if (add_embedding != null)
        {
            if (added_cond_kwargs is null)
                throw new ArgumentException("this UNet has addition_embed_type 'text_time': pass added_cond_kwargs (text_embeds, time_ids)");
            var timeEmbeds = add_time_proj!.forward(added_cond_kwargs.time_ids.flatten());
            Emit(trace, "add_time_proj", timeEmbeds);
            var addEmbeds = cat([added_cond_kwargs.text_embeds, timeEmbeds.reshape(added_cond_kwargs.text_embeds.size(0), -1)], -1).to(emb.dtype);
            var aug = add_embedding.forward(addEmbeds);
            Emit(trace, "add_embedding", aug);
            emb = emb + aug;
        }

        // 2. pre-process
        var upFactor = 1L << _numUpsamplers;
        var forwardUpsampleSize = sample.size(2) % upFactor != 0 || sample.size(3) % upFactor != 0;
        var h = conv_in.forward(sample);
        Emit(trace, "conv_in", h);

        // 3. down
        var skips = new List<Tensor> { h };
        for (var i = 0; i < down_blocks.Count; i++)
        {
            var prefix = $"down_blocks_{i}_";
            var (hidden, res) = ((IDownBlock)down_blocks[i]).forward(h, emb, encoder_hidden_states,
                trace is null ? null : (n, t) => trace(prefix + n, t));
            h = hidden;
            skips.AddRange(res);
            Emit(trace, $"down_blocks_{i}", h);
        }

        // 4. mid
        h = mid_block.forward(h, emb, encoder_hidden_states);
        Emit(trace, "mid_block", h);

        // 5. up
        for (var i = 0; i < up_blocks.Count; i++)
        {
            var block = (IUpBlock)up_blocks[i];
            var final = i == up_blocks.Count - 1;
            var res = skips.GetRange(skips.Count - block.num_resnets, block.num_resnets).ToArray();
            skips.RemoveRange(skips.Count - block.num_resnets, block.num_resnets);
            (long, long)? size = !final && forwardUpsampleSize ? (skips[^1].size(2), skips[^1].size(3)) : null;
            h = block.forward(h, res, emb, encoder_hidden_states, size);
            Emit(trace, $"up_blocks_{i}", h);
        }

        // 6. post-process
        h = conv_norm_out.forward(h);
        Emit(trace, "conv_norm_out", h);
        h = conv_out.forward(Norms.Upcast(h, nn.functional.silu));
        return scope.MoveToOuter(h);
    }
}
