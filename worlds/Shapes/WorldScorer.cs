using Sudo.Data;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using Sudo.Training;
using static Sudo.Torch.torch;
namespace Sudo.Worlds.Shapes;

/// <summary>The shapes world's learned PickScore-like scorer: a tiny CLIPModel (the world's own vocabulary)
/// wrapped in the step-aware preference model and trained with PickScore's pairwise loss on a pair folder — on
/// clean images (t = 0; the plain scorer, used for AI-feedback relabelling) or, given the base pipeline, on
/// its decoded x̂₀ at random t (SPO's step-aware variant). Agreement is measured on held-out pairs.</summary>
public static class WorldScorer
{
    /// <summary>The world's oracle for SPO: the judge's score of each decoded x̂₀ against its prompt, times
    /// <paramref name="scale"/> as a logit (scale 10: a judge gap of 0.02 passes SPO's threshold 0.1). The judge
    /// reads x̂₀ at every t, so this is the ceiling a learned step-aware scorer can approach.</summary>
    /// <summary>The rewards this world registers by name for SPO's --scorer: "world-judge" is <see cref="JudgeReward"/>;
    /// any other name (a model folder) gives null.</summary>
    public static StepReward? Named(string? scorer) => scorer == "world-judge" ? JudgeReward() : null;

    public static StepReward JudgeReward(double scale = 10) => (images, prompts, t) =>
    {
        using var cpu = images.detach().to(Device.CPU).to(ScalarType.Float32);
        var scores = new float[prompts.Count];
        for (var i = 0; i < prompts.Count; i++)
        {
            using var img = cpu[i];
            scores[i] = (float)(scale * Judge.Score(Images.FromTensor(img), prompts[i]).score);
        }
        return torch.tensor(scores).to(images.device);
    };

    public static CLIPModel NewClip(CLIPTokenizer tok, int resolution, long seed = 0)
    {
        manual_seed(seed);
        return new CLIPModel(new CLIPConfig
        {
            text_config = new CLIPTextConfig
            {
                vocab_size = tok.vocab_size,
                hidden_size = 64,
                intermediate_size = 128,
                num_hidden_layers = 2,
                num_attention_heads = 4,
                max_position_embeddings = tok.model_max_length,
                hidden_act = "gelu",
                bos_token_id = tok.bos_token_id,
                eos_token_id = tok.eos_token_id,
                pad_token_id = tok.pad_token_id,
            },
            vision_config = new CLIPVisionConfig { hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, num_attention_heads = 4, image_size = resolution, patch_size = 4, hidden_act = "gelu" },
            projection_dim = 32,
        });
    }

    /// <summary>Trains <paramref name="spm"/> on pairs[train] and returns (step, loss, train accuracy) every
    /// <paramref name="log_every"/> steps. basePipe null: clean images at t = 0.</summary>
    public static List<(int step, double loss, double accuracy)> Train(StepAwarePreferenceModel spm, CLIPTokenizer tok, PairDataset pairs, IReadOnlyList<int> train,
        int steps, int batch_size = 16, double learning_rate = 3e-4, Sudo.Diffusion.StableDiffusionPipeline? basePipe = null, int log_every = 50, long seed = 0)
    {
        var res = spm.clip.config.vision_config.image_size;
        using var gen = new Generator(seed);
        using var opt = new optim.AdamW(spm.parameters().Where(p => p.requires_grad), lr: learning_rate, weight_decay: 1e-2);
        var curve = new List<(int, double, double)>();
        double lossSum = 0, accSum = 0;
        var n = 0;
        for (var step = 1; step <= steps; step++)
        {
            using var scope = NewDisposeScope();
            var idx = Enumerable.Range(0, batch_size).Select(_ => train[(int)randint(0, train.Count, [1], gen).item<long>()]).ToList();
            var both = stack(idx.Select(i => pairs.LoadPair(i, res, false, true, gen)).ToArray());   // [B, 2, 3, H, W]
            var t = basePipe is null ? zeros([batch_size], ScalarType.Int64) : randint(0, 1000, [batch_size], gen);
            var (loss, acc) = SpmTraining.Loss(spm, basePipe, both.select(1, 0), both.select(1, 1), idx.Select(i => pairs.Pairs[i].caption).ToList(), tok, t);
            opt.zero_grad();
            loss.backward();
            opt.step();
            lossSum += loss.item();
            accSum += acc.item();
            n++;
            if (step % log_every == 0 || step == steps)
            {
                curve.Add((step, lossSum / n, accSum / n));
                lossSum = accSum = n = 0;
            }
        }
        return curve;
    }

    /// <summary>Fraction of pairs[indices] on which the scorer (clean images, t = 0) prefers the labelled winner.</summary>
    public static double Agreement(StepAwarePreferenceModel spm, CLIPTokenizer tok, PairDataset pairs, IReadOnlyList<int> indices)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var res = spm.clip.config.vision_config.image_size;
        using var gen = new Generator(0);
        var both = stack(indices.Select(i => pairs.LoadPair(i, res, false, false, gen)).ToArray());
        var ids = tok.call(indices.Select(i => pairs.Pairs[i].caption).ToList(), tok.model_max_length).input_ids;
        var t = zeros([indices.Count]);
        var sw = spm.score(spm.preprocess(both.select(1, 0)), ids, t);
        var sl = spm.score(spm.preprocess(both.select(1, 1)), ids, t);
        return sw.gt(sl).to(ScalarType.Float32).mean().item();
    }

    /// <summary>Agreement of the step-aware scorer on x̂₀ predicted by the base at timestep t from the noised winner and
    /// loser (shared noise), the input SPO's sampler scores at that step.</summary>
    public static double AgreementAt(StepAwarePreferenceModel spm, CLIPTokenizer tok, PairDataset pairs, IReadOnlyList<int> indices,
        Sudo.Diffusion.StableDiffusionPipeline basePipe, int t, long seed = 0)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        manual_seed(seed);
        var res = spm.clip.config.vision_config.image_size;
        using var gen = new Generator(0);
        double correct = 0;
        for (var s = 0; s < indices.Count; s += 32)
        {
            using var inner = NewDisposeScope();
            var idx = indices.Skip(s).Take(32).ToList();
            var both = stack(idx.Select(i => pairs.LoadPair(i, res, false, false, gen)).ToArray());
            var (_, acc) = SpmTraining.Loss(spm, basePipe, both.select(1, 0), both.select(1, 1), idx.Select(i => pairs.Pairs[i].caption).ToList(), tok,
                full([idx.Count], t, ScalarType.Int64));
            correct += acc.item() * idx.Count;
        }
        return correct / indices.Count;
    }
}
