// The papers' reward models behind one interface (IRewardModel): PickScore, HPSv2 / v2.1, LAION aesthetic v2,
// CLIP score and ImageReward, each on the scale its evaluation code reports (golden README_rewards.md "Scales"):
// evaluation, AI-feedback relabelling (--choice_model) and SPO's candidate ranking all go through it.
using Sudo.Data;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Preference;

/// <summary>A reward model: one score per (image, prompt) pair.</summary>
public interface IRewardModel : IDisposable
{
    /// <summary>Short name used in reports and on the command line (pickscore, hps, aes, clip, imagereward).</summary>
    string name { get; }

    /// <summary>What the number means (documented scale).</summary>
    string scale { get; }

    /// <summary>Scores images[i] against prompts[i] (equal lengths).</summary>
    double[] Score(IReadOnlyList<RgbImage> images, IReadOnlyList<string> prompts);
}

/// <summary>Loads reward models by the names Diffusion-DPO's --choice_model and the papers' tables use.</summary>
public static class RewardModels
{
    /// <summary>The names <see cref="Load"/> accepts.</summary>
    public static readonly string[] Names = ["pickscore", "hps", "aes", "clip", "imagereward"];

    /// <summary>Loads <paramref name="name"/> from <paramref name="path"/>: pickscore = a CLIPModel folder (PickScore_v1)
    /// with its tokenizer (tokenizer files in the folder, else <paramref name="tokenizer"/>); hps = a folder holding
    /// HPS_v2*_compressed.pt + open_clip's model_config.json, or the .pt itself; clip = an open_clip checkpoint with
    /// its model_config.json (the HPS code with plain laion weights, as Diffusion-DPO computes CLIP score); aes = a
    /// folder holding sac+logos+ava1-l14-linearMSE.pth (with the CLIPModel there or openai/clip-vit-large-patch14 in the
    /// hub cache); imagereward = a folder with
    /// ImageReward.pt, med_config.json and bert-base-uncased/vocab.txt. <paramref name="tokenizer"/>: a CLIP BPE tokenizer
    /// folder for pickscore / hps / clip models that ship none (every CLIP BPE folder has the same vocabulary, e.g. a
    /// Stable Diffusion pipeline's tokenizer/).</summary>
    public static IRewardModel Load(string name, string path, string? tokenizer = null) => name switch
    {
        "pickscore" => PickScoreReward.from_pretrained(path, tokenizer),
        "hps" => OpenClipReward.from_pretrained(path, "hps", tokenizer),
        "clip" => OpenClipReward.from_pretrained(path, "clip", tokenizer),
        "aes" => AestheticReward.from_pretrained(path),
        "imagereward" => ImageRewardModel.from_pretrained(path),
        _ => throw new ArgumentException($"unknown reward model '{name}': expected one of {string.Join(", ", Names)}"),
    };

    /// <summary>"name=path" (or a bare name resolved in <paramref name="defaultPaths"/>) → (name, path).</summary>
    public static (string name, string path) ParseSpec(string spec)
    {
        var eq = spec.IndexOf('=');
        if (eq <= 0) throw new ArgumentException($"scorer '{spec}': expected name=path with name one of {string.Join(", ", Names)}");
        var (n, p) = (spec[..eq].Trim().ToLowerInvariant(), spec[(eq + 1)..].Trim());
        if (!Names.Contains(n)) throw new ArgumentException($"scorer '{spec}': unknown name '{n}' (expected one of {string.Join(", ", Names)})");
        return (n, p);
    }
}

/// <summary>PickScore (Kirstain et al.): a CLIPModel; score = exp(logit_scale)·cos(image, text), PickScore_v1's
/// logit scale ≈ 100, so values like the papers' 21.x (SPO Table 1). Diffusion-DPO's utils/pickscore_utils.py
/// computes the plain cosine; divide by exp(logit_scale) for that scale.</summary>
public sealed class PickScoreReward(ClipScorer scorer) : IRewardModel
{
    public ClipScorer scorer { get; } = scorer;
    public string name => "pickscore";
    public string scale => "exp(logit_scale)·cos(image, text) (PickScore_v1: 100·cos; the papers' 21.x)";

    public static PickScoreReward from_pretrained(string folder, string? tokenizer = null)
    {
        var tok = File.Exists(Path.Combine(folder, "vocab.json")) ? folder
            : Directory.Exists(Path.Combine(folder, "tokenizer")) ? Path.Combine(folder, "tokenizer")
            : tokenizer ?? throw new ArgumentException($"{folder}: no CLIP tokenizer files (vocab.json, merges.txt); pass the tokenizer folder");
        return new PickScoreReward(ClipScorer.from_pretrained(folder, tok));
    }

    public double[] Score(IReadOnlyList<RgbImage> images, IReadOnlyList<string> prompts) => scorer.Score(images, prompts);

    public void Dispose() => scorer.Dispose();
}

/// <summary>The LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor simple_inference.py) as
/// Diffusion-DPO's utils/aes_utils.py Selector computes it: CLIPImageProcessor → CLIPModel.get_image_features →
/// divided by its L2 norm (no epsilon) → MLP [Linear(E,1024), Linear(1024,128), Linear(128,64), Linear(64,16),
/// Linear(16,1)] (no activations; Dropouts are identities in eval) → the raw output (LAION's 1–10-like scale).
/// The prompt is not used.</summary>
public sealed class AestheticReward : IRewardModel
{
    public const string MlpFileName = "sac+logos+ava1-l14-linearMSE.pth";
    public CLIPModel clip { get; }
    public AestheticMlp mlp { get; }
    public string name => "aes";
    public string scale => "raw MLP output on normalised CLIP ViT-L/14 image embeddings (LAION aesthetic v2, ~1–10)";

    public AestheticReward(CLIPModel clip, AestheticMlp mlp) => (this.clip, this.mlp) = (clip, mlp);

    /// <summary>The CLIP image tower the LAION MLP was trained on (Diffusion-DPO's aes_utils.py loads it by this id).</summary>
    public const string DefaultClip = "openai/clip-vit-large-patch14";

    /// <summary><paramref name="path"/>: a folder holding the MLP file (or the .pth itself); the CLIPModel is that folder
    /// when it has a config.json, else <paramref name="clipFolder"/>, else openai/clip-vit-large-patch14 from the local
    /// Hugging Face cache.</summary>
    public static AestheticReward from_pretrained(string path, string? clipFolder = null)
    {
        var (folder, mlpPath) = File.Exists(path) ? (Path.GetDirectoryName(Path.GetFullPath(path))!, path) : (path, Path.Combine(path, MlpFileName));
        if (!File.Exists(mlpPath)) throw new FileNotFoundException($"the aesthetic MLP {MlpFileName} is not in {folder}; pass the folder holding it or its path", mlpPath);
        clipFolder ??= File.Exists(Path.Combine(folder, "config.json")) ? folder : Hub.Resolve(DefaultClip);
        var clip = CLIPModel.from_pretrained(clipFolder);
        try
        {
            return new AestheticReward(clip, AestheticMlp.Load(mlpPath));
        }
        catch
        {
            clip.Dispose();
            throw;
        }
    }

    /// <summary>Normalised image embeddings [N, E] (the MLP input) of preprocessed pixels.</summary>
    public Tensor Embeddings(Tensor pixel_values)
    {
        using var scope = NewDisposeScope();
        var e = clip.get_image_features(pixel_values);
        return scope.MoveToOuter(e / e.norm(2, [-1], keepdim: true));
    }

    public Tensor Preprocess(IReadOnlyList<RgbImage> images)
    {
        var size = clip.config.vision_config.image_size;
        return Images.ClipPreprocess(images, size, size);
    }

    public double[] Score(IReadOnlyList<RgbImage> images, IReadOnlyList<string> prompts)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return mlp.forward(Embeddings(Preprocess(images).to(clip.logit_scale.device))).flatten().ToArray<double>();
    }

    public void Dispose()
    {
        clip.Dispose();
        mlp.Dispose();
    }
}

/// <summary>The aesthetic MLP with the real file's parameter names: layers.{0,2,4,6,7}.{weight,bias}.</summary>
public sealed class AestheticMlp : nn.Module<Tensor, Tensor>
{
    private sealed class Layers : nn.Module
    {
        public readonly nn.Linear[] linears;

        public Layers(int e)
        {
            int[] sizes = [e, 1024, 128, 64, 16, 1];
            int[] names = [0, 2, 4, 6, 7];
            linears = new nn.Linear[5];
            for (var i = 0; i < 5; i++)
                linears[i] = register_module(names[i].ToString(System.Globalization.CultureInfo.InvariantCulture), new nn.Linear(sizes[i], sizes[i + 1]));
        }
    }

    private readonly Layers _layers;
    public int input_size { get; }

    public AestheticMlp(int inputSize)
    {
        input_size = inputSize;
        _layers = register_module("layers", new Layers(inputSize));
    }

    /// <summary>Loads the MLP from the torch.save'd state dict (safe loader); the input size is read from the file.</summary>
    public static AestheticMlp Load(string path)
    {
        var sd = Checkpoints.ReadWeights(path);
        try
        {
            if (!sd.TryGetValue("layers.0.weight", out var w0))
                throw new InvalidDataException($"{path}: no layers.0.weight; expected the LAION aesthetic MLP (keys layers.{{0,2,4,6,7}}.{{weight,bias}})");
            AestheticMlp m;
            using (nn.init.skip()) m = new AestheticMlp((int)w0.size(1));
            Checkpoints.LoadInto(m, sd, path);
            m.eval();
            return m;
        }
        finally
        {
            foreach (var t in sd.Values) t.Dispose();
        }
    }

    /// <summary>The MLP; <paramref name="trace"/> receives each Linear's output named by its index.</summary>
    public Tensor forward(Tensor x, Action<int, Tensor>? trace)
    {
        using var scope = NewDisposeScope();
        int[] names = [0, 2, 4, 6, 7];
        for (var i = 0; i < 5; i++)
        {
            x = _layers.linears[i].forward(x);
            trace?.Invoke(names[i], DisposeScope.HandOut(x));
        }
        return scope.MoveToOuter(x);
    }

    public override Tensor forward(Tensor x) => forward(x, null);
}
