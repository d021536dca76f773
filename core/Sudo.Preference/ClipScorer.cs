// A PickScore / HPSv2-style reward: exp(logit_scale)·cos(image features, text features) of a CLIPModel,
// with CLIPImageProcessor's preprocessing (Pillow-like bicubic, center crop, CLIP mean/std).
using Sudo.Data;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Preference;

public sealed class ClipScorer(CLIPModel model, CLIPTokenizer tokenizer) : IDisposable
{
    public CLIPModel model { get; } = model;
    public CLIPTokenizer tokenizer { get; } = tokenizer;

    public static ClipScorer from_pretrained(string modelFolder, string tokenizerFolder) =>
        new(CLIPModel.from_pretrained(modelFolder), CLIPTokenizer.from_pretrained(tokenizerFolder));

    /// <summary>One score per (image, caption).</summary>
    public double[] Score(IReadOnlyList<RgbImage> images, IReadOnlyList<string> captions)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var size = model.config.vision_config.image_size;
        var pixels = Images.ClipPreprocess(images, size, size).to(model.logit_scale.device);
        var img = model.get_image_features(pixels);
        var txt = model.get_text_features(tokenizer.call(captions, 77, model.logit_scale.device).input_ids);
        img = img / img.norm(2, [-1], keepdim: true);
        txt = txt / txt.norm(2, [-1], keepdim: true);
        return ((img * txt).sum(-1) * model.logit_scale.exp()).ToArray<double>();
    }

    public double Score(string imagePath, string caption) => Score([ImageCodecs.Load(imagePath)], [caption])[0];

    public void Dispose() => model.Dispose();
}
