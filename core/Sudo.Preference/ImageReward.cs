// ImageReward (Xu et al.; THUDM/ImageReward c1392c6: ImageReward/ImageReward.py, models/BLIP/{vit,med,blip}.py):
// BLIP's ViT image encoder, BLIP's med.py BERT with cross-attention to all image tokens, and a 5-layer linear
// MLP on the [CLS] feature; reward = (mlp − 0.16717362830052426) / 1.0333394966054072 (ImageReward.__init__).
// Parameter names follow ImageReward.pt (torch.save(model.state_dict())) so the file loads directly.
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.ML.Tokenizers;
using Sudo.Data;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Preference;

/// <summary>Sizes of the two encoders: BERT from BLIP's med_config.json, the ViT from the checkpoint's shapes (its
/// head count is not in any file: BLIP's ViT-B/L use 64-wide heads).</summary>
public sealed record ImageRewardConfig(int vit_width, int vit_depth, int vit_heads, int patch_size, int image_size,
    int hidden_size, int num_hidden_layers, int num_attention_heads, int intermediate_size, int max_position_embeddings, int vocab_size,
    double layer_norm_eps = 1e-12, string hidden_act = "gelu");

/// <summary>BLIP vit.py VisionTransformer (no classifier): pre-LN blocks, LayerNorm eps 1e-6, all tokens returned.</summary>
public sealed class BlipVisionTransformer : nn.Module
{
    public sealed class Attention : nn.Module
    {
        public readonly nn.Linear qkv, proj;
        private readonly int _heads;

        public Attention(int dim, int heads)
        {
            _heads = heads;
            qkv = register_module("qkv", new nn.Linear(dim, dim * 3));
            proj = register_module("proj", new nn.Linear(dim, dim));
        }

        public Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            var (b, n, c) = (x.size(0), x.size(1), x.size(2));
            var q = qkv.forward(x).view(b, n, 3, _heads, c / _heads).permute(2, 0, 3, 1, 4);
            var (qq, kk, vv) = (q[0], q[1], q[2]);
            var attn = qq.matmul(kk.transpose(-2, -1)) * Math.Pow(c / _heads, -0.5);
            var o = attn.softmax(-1).matmul(vv).transpose(1, 2).reshape(b, n, c);
            return scope.MoveToOuter(proj.forward(o));
        }
    }

    public sealed class Mlp : nn.Module
    {
        public readonly nn.Linear fc1, fc2;

        public Mlp(int dim, int hidden)
        {
            fc1 = register_module("fc1", new nn.Linear(dim, hidden));
            fc2 = register_module("fc2", new nn.Linear(hidden, dim));
        }

        public Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            return scope.MoveToOuter(fc2.forward(nn.functional.gelu(fc1.forward(x))));
        }
    }

    public sealed class Block : nn.Module
    {
        public readonly nn.LayerNorm norm1, norm2;
        public readonly Attention attn;
        public readonly Mlp mlp;

        public Block(int dim, int heads)
        {
            norm1 = register_module("norm1", new nn.LayerNorm(dim, 1e-6));
            attn = register_module("attn", new Attention(dim, heads));
            norm2 = register_module("norm2", new nn.LayerNorm(dim, 1e-6));
            mlp = register_module("mlp", new Mlp(dim, dim * 4));
        }

        public Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            x = x + attn.forward(norm1.forward(x));
            return scope.MoveToOuter(x + mlp.forward(norm2.forward(x)));
        }
    }

    private sealed class PatchEmbed : nn.Module
    {
        public readonly nn.Conv2d proj;
        public PatchEmbed(int patch, int dim) => proj = register_module("proj", new nn.Conv2d(3, dim, patch, stride: patch));
    }

    public readonly Parameter cls_token, pos_embed;
    private readonly PatchEmbed patch_embed;
    public readonly nn.ModuleList<Block> blocks;
    public readonly nn.LayerNorm norm;

    public BlipVisionTransformer(ImageRewardConfig c)
    {
        var g = c.image_size / c.patch_size;
        cls_token = register_parameter("cls_token", new Parameter(zeros([1, 1, c.vit_width])))!;
        pos_embed = register_parameter("pos_embed", new Parameter(zeros([1, 1 + g * g, c.vit_width])))!;
        patch_embed = register_module("patch_embed", new PatchEmbed(c.patch_size, c.vit_width));
        blocks = register_module("blocks", new nn.ModuleList<Block>());
        for (var i = 0; i < c.vit_depth; i++) blocks.append(new Block(c.vit_width, c.vit_heads));
        norm = register_module("norm", new nn.LayerNorm(c.vit_width, 1e-6));
    }

    /// <summary>patch_embed: conv (kernel = stride = patch) flattened to [B, g², W].</summary>
    public Tensor PatchEmbeddings(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(patch_embed.proj.forward(pixels).flatten(2).transpose(1, 2));
    }

    /// <summary>[B, 1 + g², W] image embeddings after the final LayerNorm.</summary>
    public Tensor forward(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        var x = PatchEmbeddings(pixels);
        x = cat([cls_token.expand(x.size(0), -1, -1), x], 1) + pos_embed.narrow(1, 0, x.size(1) + 1);
        foreach (var b in blocks) x = b.forward(x);
        return scope.MoveToOuter(norm.forward(x));
    }
}

/// <summary>BLIP med.py BertModel (add_pooling_layer=False) in 'multimodal' mode: post-LN layers of self-attention,
/// cross-attention to the image embeddings and a GELU feed-forward; embeddings without token types.</summary>
public sealed class BlipTextEncoder : nn.Module
{
    public sealed class SelfAttention : nn.Module
    {
        public readonly nn.Linear query, key, value;
        private readonly int _heads;

        public SelfAttention(int hidden, int kvWidth, int heads)
        {
            _heads = heads;
            query = register_module("query", new nn.Linear(hidden, hidden));
            key = register_module("key", new nn.Linear(kvWidth, hidden));
            value = register_module("value", new nn.Linear(kvWidth, hidden));
        }

        public Tensor forward(Tensor x, Tensor kv, Tensor? additiveMask)
        {
            using var scope = NewDisposeScope();
            var (b, n, h) = (x.size(0), x.size(1), query.weight.size(0));
            var d = h / _heads;
            Tensor Heads(Tensor t) => t.view(b, t.size(1), _heads, d).transpose(1, 2);
            var q = Heads(query.forward(x));
            var k = Heads(key.forward(kv));
            var v = Heads(value.forward(kv));
            var scores = q.matmul(k.transpose(-1, -2)) / Math.Sqrt(d);
            if (additiveMask is not null) scores = scores + additiveMask;
            var ctx = scores.softmax(-1).matmul(v).transpose(1, 2).reshape(b, n, h);
            return scope.MoveToOuter(ctx);
        }
    }

    public sealed class DenseNorm : nn.Module
    {
        public readonly nn.Linear dense;
        public readonly nn.LayerNorm LayerNorm;

        public DenseNorm(int input, int hidden, double eps)
        {
            dense = register_module("dense", new nn.Linear(input, hidden));
            LayerNorm = register_module("LayerNorm", new nn.LayerNorm(hidden, eps));
        }

        public Tensor forward(Tensor x, Tensor residual)
        {
            using var scope = NewDisposeScope();
            return scope.MoveToOuter(LayerNorm.forward(dense.forward(x) + residual));
        }
    }

    public sealed class AttentionBlock : nn.Module
    {
        public readonly SelfAttention self;
        public readonly DenseNorm output;

        public AttentionBlock(int hidden, int kvWidth, int heads, double eps)
        {
            self = register_module("self", new SelfAttention(hidden, kvWidth, heads));
            output = register_module("output", new DenseNorm(hidden, hidden, eps));
        }
    }

    public sealed class Intermediate : nn.Module
    {
        public readonly nn.Linear dense;
        public Intermediate(int hidden, int inter) => dense = register_module("dense", new nn.Linear(hidden, inter));
    }

    public sealed class Layer : nn.Module
    {
        public readonly AttentionBlock attention, crossattention;
        public readonly Intermediate intermediate;
        public readonly DenseNorm output;

        public Layer(ImageRewardConfig c)
        {
            attention = register_module("attention", new AttentionBlock(c.hidden_size, c.hidden_size, c.num_attention_heads, c.layer_norm_eps));
            crossattention = register_module("crossattention", new AttentionBlock(c.hidden_size, c.vit_width, c.num_attention_heads, c.layer_norm_eps));
            intermediate = register_module("intermediate", new Intermediate(c.hidden_size, c.intermediate_size));
            output = register_module("output", new DenseNorm(c.intermediate_size, c.hidden_size, c.layer_norm_eps));
        }

        public Tensor forward(Tensor x, Tensor selfMask, Tensor image)
        {
            using var scope = NewDisposeScope();
            var a = attention.output.forward(attention.self.forward(x, x, selfMask), x);
            // The image attention mask is all ones: its additive mask is 0 and is left out.
            var c = crossattention.output.forward(crossattention.self.forward(a, image, null), a);
            var f = output.forward(nn.functional.gelu(intermediate.dense.forward(c)), c);
            return scope.MoveToOuter(f);
        }
    }

    public sealed class Embeddings : nn.Module
    {
        public readonly nn.Embedding word_embeddings, position_embeddings;
        public readonly nn.LayerNorm LayerNorm;

        public Embeddings(ImageRewardConfig c)
        {
            word_embeddings = register_module("word_embeddings", new nn.Embedding(c.vocab_size, c.hidden_size));
            position_embeddings = register_module("position_embeddings", new nn.Embedding(c.max_position_embeddings, c.hidden_size));
            LayerNorm = register_module("LayerNorm", new nn.LayerNorm(c.hidden_size, c.layer_norm_eps));
        }
    }

    private sealed class Encoder : nn.Module
    {
        public readonly nn.ModuleList<Layer> layer;

        public Encoder(ImageRewardConfig c)
        {
            layer = register_module("layer", new nn.ModuleList<Layer>());
            for (var i = 0; i < c.num_hidden_layers; i++) layer.append(new Layer(c));
        }
    }

    public readonly Embeddings embeddings;
    private readonly Encoder encoder;

    public BlipTextEncoder(ImageRewardConfig c)
    {
        embeddings = register_module("embeddings", new Embeddings(c));
        encoder = register_module("encoder", new Encoder(c));
    }

    /// <summary>last_hidden_state [B, L, H] for ids / attention mask [B, L] and image embeddings [B, 1+g², Wv].</summary>
    public Tensor forward(Tensor input_ids, Tensor attention_mask, Tensor image_embeds)
    {
        using var scope = NewDisposeScope();
        var l = input_ids.size(1);
        var pos = arange(0, l, 1, ScalarType.Int64, input_ids.device);
        var x = embeddings.LayerNorm.forward(embeddings.word_embeddings.forward(input_ids) + embeddings.position_embeddings.forward(pos));
        // med.py get_extended_attention_mask: (1 − mask) · −10000 on the keys.
        var mask = ((1.0 - attention_mask.to(x.dtype)) * -10000.0).view(input_ids.size(0), 1, 1, l);
        foreach (var layer in encoder.layer) x = layer.forward(x, mask, image_embeds);
        return scope.MoveToOuter(x);
    }
}

/// <summary>The BLIP part of ImageReward.pt: visual_encoder and text_encoder (vision_proj / text_proj are unused by
/// the reward and not loaded).</summary>
public sealed class BlipEncoders : nn.Module
{
    public readonly BlipVisionTransformer visual_encoder;
    public readonly BlipTextEncoder text_encoder;

    public BlipEncoders(ImageRewardConfig c)
    {
        visual_encoder = register_module("visual_encoder", new BlipVisionTransformer(c));
        text_encoder = register_module("text_encoder", new BlipTextEncoder(c));
    }
}

public sealed class ImageRewardModel : nn.Module, IRewardModel
{
    /// <summary>ImageReward.__init__'s normalisation constants (the same for any checkpoint).</summary>
    public const double Mean = 0.16717362830052426, Std = 1.0333394966054072;
    /// <summary>score() tokenises with padding='max_length', truncation=True, max_length=35.</summary>
    public const int MaxLength = 35;

    public ImageRewardConfig config { get; }
    public readonly BlipEncoders blip;
    public readonly AestheticMlp mlp;
    public BertWordPiece tokenizer { get; }
    public string name => "imagereward";
    public string scale => "(mlp(BLIP [CLS] feature) − 0.16717) / 1.03334: ImageReward's standardised reward (≈ N(0, 1) over its training images)";

    public ImageRewardModel(ImageRewardConfig config, BertWordPiece tokenizer)
    {
        this.config = config;
        this.tokenizer = tokenizer;
        blip = register_module("blip", new BlipEncoders(config));
        mlp = register_module("mlp", new AestheticMlp(config.hidden_size));
    }

    /// <summary>Loads a folder holding ImageReward.pt, BLIP's med_config.json and bert-base-uncased/vocab.txt (or a
    /// vocab.txt given by <paramref name="vocab"/>). The ViT's sizes come from the checkpoint; its head count is
    /// width / 64 (BLIP ViT-B/L) unless <paramref name="vitHeads"/> is given.</summary>
    public static ImageRewardModel from_pretrained(string folder, string? vocab = null, int? vitHeads = null, string? checkpoint = null)
    {
        var ckpt = checkpoint ?? Path.Combine(folder, "ImageReward.pt");
        var medPath = Path.Combine(folder, "med_config.json");
        if (!File.Exists(ckpt)) throw new FileNotFoundException($"{folder}: no ImageReward.pt", ckpt);
        if (!File.Exists(medPath)) throw new FileNotFoundException($"{folder}: no med_config.json (BLIP's BERT configuration)", medPath);
        // ImageReward loads BertTokenizer.from_pretrained('bert-base-uncased'): a bert-base-uncased/ folder beside the
        // checkpoint, else that repository in the local Hugging Face cache.
        vocab ??= File.Exists(Path.Combine(folder, "bert-base-uncased", "vocab.txt")) ? Path.Combine(folder, "bert-base-uncased", "vocab.txt")
            : (TryHub("bert-base-uncased") ?? TryHub("google-bert/bert-base-uncased")) is { } hub ? Path.Combine(hub, "vocab.txt")
            : Path.Combine(folder, "bert-base-uncased", "vocab.txt");
        if (Directory.Exists(vocab)) vocab = Path.Combine(vocab, "vocab.txt");
        if (!File.Exists(vocab)) throw new FileNotFoundException($"no WordPiece vocab.txt for ImageReward (bert-base-uncased's): {vocab}", vocab);
        var tok = CreateTokenizer(vocab);
        var med = JsonNode.Parse(File.ReadAllText(medPath)) as JsonObject ?? throw new InvalidDataException($"{medPath}: not a JSON object");
        int M(string k) => med[k]?.GetValue<int>() ?? throw new InvalidDataException($"{medPath}: no {k}");
        var sd = Checkpoints.ReadWeights(ckpt);
        try
        {
            Tensor W(string k) => sd.TryGetValue(k, out var t) ? t : throw new InvalidDataException($"{ckpt}: no '{k}': not an ImageReward state dict");
            var patch = W("blip.visual_encoder.patch_embed.proj.weight");
            var width = (int)patch.size(0);
            var p = (int)patch.size(2);
            var tokens = (int)W("blip.visual_encoder.pos_embed").size(1);
            var g = (int)Math.Round(Math.Sqrt(tokens - 1));
            var depth = sd.Keys.Where(k => k.StartsWith("blip.visual_encoder.blocks.", StringComparison.Ordinal))
                .Select(k => int.Parse(k.Split('.')[3], System.Globalization.CultureInfo.InvariantCulture)).DefaultIfEmpty(-1).Max() + 1;
            // vocab_size in med_config is overwritten by the tokenizer's length (vocab.txt + [DEC] + [ENC]).
            var wordEmb = W("blip.text_encoder.embeddings.word_embeddings.weight");
            var cfg = new ImageRewardConfig(width, depth, vitHeads ?? Math.Max(1, width / 64), p, g * p,
                M("hidden_size"), M("num_hidden_layers"), M("num_attention_heads"), M("intermediate_size"), M("max_position_embeddings"), (int)wordEmb.size(0),
                med["layer_norm_eps"]?.GetValue<double>() ?? 1e-12);
            ImageRewardModel model;
            using (nn.init.skip()) model = new ImageRewardModel(cfg, tok);
            try
            {
                var kept = sd.Where(kv => !kv.Key.StartsWith("blip.vision_proj.", StringComparison.Ordinal) && !kv.Key.StartsWith("blip.text_proj.", StringComparison.Ordinal)
                    && !kv.Key.EndsWith("embeddings.position_ids", StringComparison.Ordinal)).ToDictionary(kv => kv.Key, kv => kv.Value);
                Checkpoints.LoadInto(model, kept, ckpt);
                model.eval();
                return model;
            }
            catch
            {
                model.Dispose();
                throw;
            }
        }
        finally
        {
            foreach (var t in sd.Values) t.Dispose();
        }
    }

    private static string? TryHub(string repo)
    {
        try
        {
            return Hub.Resolve(repo);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or ArgumentException or InvalidDataException)
        {
            return null;
        }
    }

    /// <summary>BertTokenizer.from_pretrained('bert-base-uncased') + add_special_tokens [DEC] (bos) and [ENC].</summary>
    public static BertWordPiece CreateTokenizer(string vocabPath) => BertWordPiece.FromVocab(vocabPath, ["[DEC]", "[ENC]"]);

    /// <summary>tokenizer(prompt, padding='max_length', truncation=True, max_length=35): [CLS] + pieces[:33] + [SEP],
    /// padded with [PAD]; the attention mask marks the tokens.</summary>
    public (long[] ids, long[] mask) Tokenize(string prompt, int maxLength = MaxLength)
    {
        var body = tokenizer.Encode(prompt);
        var ids = new List<long> { tokenizer.cls_token_id };
        ids.AddRange(body.Take(maxLength - 2).Select(i => (long)i));
        ids.Add(tokenizer.sep_token_id);
        var mask = Enumerable.Repeat(1L, ids.Count).ToList();
        while (ids.Count < maxLength)
        {
            ids.Add(tokenizer.pad_token_id);
            mask.Add(0);
        }
        return (ids.ToArray(), mask.ToArray());
    }

    /// <summary>ImageReward's _transform(S) on a decoded RGB image: Pillow bicubic Resize(S) of the shorter side (longer
    /// side int(S·long/short)), torchvision CenterCrop (half-to-even offsets), ToTensor, Normalize (OpenAI CLIP
    /// mean/std). [3, S, S].</summary>
    public Tensor Preprocess(RgbImage image, Action<string, Tensor>? trace = null)
    {
        using var scope = NewDisposeScope();
        var s = config.image_size;
        var (h, w) = Images.ShorterSideSize(image.Height, image.Width, s);
        var resized = Images.PillowResize(image, h, w);
        trace?.Invoke("resized", DisposeScope.HandOut(resized));
        var x = resized.narrow(2, Images.TorchvisionCropOffset(h, s), s).narrow(3, Images.TorchvisionCropOffset(w, s), s).squeeze(0) / 255f;
        var mean = tensor(Images.ClipMean.Select(v => (float)v).ToArray(), [3, 1, 1]);
        var std = tensor(Images.ClipStd.Select(v => (float)v).ToArray(), [3, 1, 1]);
        return scope.MoveToOuter((x - mean) / std);
    }

    /// <summary>The [CLS] cross-attention feature [N, H] of preprocessed pixels [N, 3, S, S] and a prompt (each image is
    /// its own batch of 1 through the encoders, as inference_rank).</summary>
    public Tensor Features(Tensor pixels, string prompt, Action<string, Tensor>? trace = null)
    {
        using var scope = NewDisposeScope();
        var (ids, mask) = Tokenize(prompt);
        var dev = blip.visual_encoder.cls_token.device;
        var idsT = tensor(ids, [1, ids.Length], device: dev);
        var maskT = tensor(mask, [1, mask.Length], device: dev);
        var feats = new List<Tensor>();
        for (var i = 0; i < pixels.size(0); i++)
        {
            var img = blip.visual_encoder.forward(pixels.narrow(0, i, 1));
            var hs = blip.text_encoder.forward(idsT, maskT, img);
            if (trace is not null)
            {
                trace("image_embeds", DisposeScope.HandOut(img));
                trace("last_hidden_state", DisposeScope.HandOut(hs));
            }
            feats.Add(hs.select(1, 0));
        }
        return scope.MoveToOuter(cat(feats.ToArray()));
    }

    /// <summary>Rewards of images for one prompt (inference_rank): (mlp(features) − mean) / std.</summary>
    public Tensor Rewards(Tensor pixels, string prompt)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(((mlp.forward(Features(pixels, prompt)) - Mean) / Std).flatten());
    }

    public double[] Score(IReadOnlyList<RgbImage> images, IReadOnlyList<string> prompts)
    {
        if (images.Count != prompts.Count) throw new ArgumentException($"{images.Count} images but {prompts.Count} prompts");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var dev = blip.visual_encoder.cls_token.device;
        var result = new double[images.Count];
        for (var i = 0; i < images.Count; i++)
            result[i] = Rewards(Preprocess(images[i]).unsqueeze(0).to(dev), prompts[i]).item();
        return result;
    }
}

/// <summary>transformers' slow BertTokenizer (do_lower_case=True) over any vocab.txt (line number = id): special and
/// added tokens are split off the raw text whole; the rest goes through BasicTokenizer (control characters dropped,
/// whitespace normalised, spaces around CJK characters, NFC, lower case, NFD accent stripping, punctuation split) and
/// then WordPiece (Microsoft.ML.Tokenizers' WordPieceTokenizer: greedy longest match with "##" continuations, a word
/// with an unmatchable rest or over 100 characters → [UNK]). Added tokens take the ids after the file's last line.</summary>
public sealed class BertWordPiece
{
    private readonly WordPieceTokenizer _wordPiece;
    private readonly Dictionary<string, int> _specials;
    private readonly System.Text.RegularExpressions.Regex _specialPattern;
    public int pad_token_id { get; }
    public int unk_token_id { get; }
    public int cls_token_id { get; }
    public int sep_token_id { get; }
    public int mask_token_id { get; }
    public IReadOnlyDictionary<string, int> special_tokens => _specials;

    private BertWordPiece(WordPieceTokenizer wp, Dictionary<string, int> specials)
    {
        _wordPiece = wp;
        _specials = specials;
        _specialPattern = new System.Text.RegularExpressions.Regex(string.Join("|", specials.Keys.OrderByDescending(k => k.Length).Select(System.Text.RegularExpressions.Regex.Escape)));
        (pad_token_id, unk_token_id, cls_token_id, sep_token_id, mask_token_id) = (specials["[PAD]"], specials["[UNK]"], specials["[CLS]"], specials["[SEP]"], specials["[MASK]"]);
    }

    public static BertWordPiece FromVocab(string vocabPath, IReadOnlyList<string> addedTokens)
    {
        var lines = File.ReadLines(vocabPath).Select(l => l.TrimEnd('\r')).ToList();
        var ids = new Dictionary<string, int>();
        for (var i = 0; i < lines.Count; i++) ids.TryAdd(lines[i], i);
        var specials = new Dictionary<string, int>();
        foreach (var k in new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" })
            specials[k] = ids.TryGetValue(k, out var id) ? id : throw new InvalidDataException($"{vocabPath}: no {k} token");
        var next = lines.Count;
        foreach (var t in addedTokens) specials[t] = ids.TryGetValue(t, out var id) ? id : next++;
        using var stream = File.OpenRead(vocabPath);
        var wp = WordPieceTokenizer.Create(stream, new WordPieceOptions { UnknownToken = "[UNK]", ContinuingSubwordPrefix = "##", MaxInputCharsPerWord = 100 });
        return new BertWordPiece(wp, specials);
    }

    /// <summary>Ids without [CLS]/[SEP], truncation or padding.</summary>
    public List<int> Encode(string text)
    {
        var result = new List<int>();
        var at = 0;
        foreach (System.Text.RegularExpressions.Match m in _specialPattern.Matches(text))
        {
            EncodeBasic(text[at..m.Index], result);
            result.Add(_specials[m.Value]);
            at = m.Index + m.Length;
        }
        EncodeBasic(text[at..], result);
        return result;
    }

    private void EncodeBasic(string text, List<int> into)
    {
        foreach (var word in BasicTokenize(text))
            into.AddRange(_wordPiece.EncodeToIds(word, considerPreTokenization: false, considerNormalization: false));
    }

    /// <summary>transformers' BasicTokenizer.tokenize (tokenize_chinese_chars, lower case with accent stripping,
    /// punctuation split).</summary>
    public static List<string> BasicTokenize(string text)
    {
        var sb = new System.Text.StringBuilder();
        foreach (var r in text.EnumerateRunes())
        {
            var cp = r.Value;
            if (cp == 0 || cp == 0xFFFD || IsControl(r)) continue;
            if (IsWhitespace(r)) sb.Append(' ');
            else if (IsCjk(cp)) sb.Append(' ').Append(r.ToString()).Append(' ');
            else sb.Append(r.ToString());
        }
        var cleaned = sb.ToString().Normalize(System.Text.NormalizationForm.FormC);
        var output = new List<string>();
        foreach (var token in cleaned.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            var lowered = token.ToLowerInvariant().Normalize(System.Text.NormalizationForm.FormD);
            var stripped = new System.Text.StringBuilder();
            foreach (var r in lowered.EnumerateRunes())
                if (Rune.GetUnicodeCategory(r) != System.Globalization.UnicodeCategory.NonSpacingMark) stripped.Append(r.ToString());
            var current = new System.Text.StringBuilder();
            foreach (var r in stripped.ToString().EnumerateRunes())
            {
                if (IsPunctuation(r))
                {
                    if (current.Length > 0) output.Add(current.ToString());
                    current.Clear();
                    output.Add(r.ToString());
                }
                else current.Append(r.ToString());
            }
            if (current.Length > 0) output.Add(current.ToString());
        }
        return output;
    }

    private static bool IsWhitespace(Rune r) =>
        r.Value is ' ' or '\t' or '\n' or '\r' || Rune.GetUnicodeCategory(r) == System.Globalization.UnicodeCategory.SpaceSeparator;

    private static bool IsControl(Rune r)
    {
        if (r.Value is '\t' or '\n' or '\r') return false;
        return Rune.GetUnicodeCategory(r) is System.Globalization.UnicodeCategory.Control or System.Globalization.UnicodeCategory.Format
            or System.Globalization.UnicodeCategory.Surrogate or System.Globalization.UnicodeCategory.PrivateUse or System.Globalization.UnicodeCategory.OtherNotAssigned;
    }

    private static bool IsPunctuation(Rune r)
    {
        var cp = r.Value;
        if (cp is >= 33 and <= 47 or >= 58 and <= 64 or >= 91 and <= 96 or >= 123 and <= 126) return true;
        return Rune.GetUnicodeCategory(r) is System.Globalization.UnicodeCategory.ConnectorPunctuation or System.Globalization.UnicodeCategory.DashPunctuation
            or System.Globalization.UnicodeCategory.OpenPunctuation or System.Globalization.UnicodeCategory.ClosePunctuation
            or System.Globalization.UnicodeCategory.InitialQuotePunctuation or System.Globalization.UnicodeCategory.FinalQuotePunctuation
            or System.Globalization.UnicodeCategory.OtherPunctuation;
    }

    private static bool IsCjk(int cp) =>
        cp is >= 0x4E00 and <= 0x9FFF or >= 0x3400 and <= 0x4DBF or >= 0x20000 and <= 0x2A6DF or >= 0x2A700 and <= 0x2B73F
            or >= 0x2B740 and <= 0x2B81F or >= 0x2B820 and <= 0x2CEAF or >= 0xF900 and <= 0xFAFF or >= 0x2F800 and <= 0x2FA1F;
}
