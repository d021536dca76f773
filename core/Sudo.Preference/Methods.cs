// A preference-optimization method is a value: where its (winner, loser) pairs come from, the loss over them,
// and the reference policy the loss compares with. The presets dpo, sft, sudo and spo are defined here and
// nowhere else; a recipe composes a new method from a new pair source, a new loss, or both.
//   dpo  — Diffusion-DPO train.py: labelled pairs, −log σ(−½β·Δ), frozen reference.
//   sft  — train.py --sft: denoising loss on the winners, no reference.
//   sudo — SUDO's diff of train.py: losers = winners[randperm(B)] of the micro-batch, 0.5·DPO + 0.5·MSE.
//   spo  — SPO train_spo.py: online step-wise pairs, per-step DPO on DDIM log-probabilities, LoRA-off reference.
using Sudo.Data;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Preference;

/// <summary>What the loss compares the policy with.</summary>
public enum ReferencePolicy
{
    /// <summary>No reference (SFT).</summary>
    None,
    /// <summary>A frozen copy of the starting UNet (a full fine-tune). Under LoRA the same function is the UNet with
    /// its adapters off, which the trainer uses instead of a copy.</summary>
    FrozenCopy,
    /// <summary>The trained UNet with its LoRA adapters switched off (needs LoRA).</summary>
    AdaptersOff,
}

/// <summary>Everything one offline micro-batch yields to a loss: per-sample MSEs of policy and reference
/// ([2B]: winners then losers; the reference is null without one), the number of pairs B, the timesteps [2B] and
/// the noise schedule they index (for SNR weights and the like).</summary>
public sealed record StepInputs(Tensor model_mse, Tensor? ref_mse, int pairs, Tensor timesteps)
{
    public Sudo.Diffusion.NoiseSchedule? schedule { get; init; }
}

/// <summary>A loss over an offline micro-batch.</summary>
public delegate LossOutput LossFn(StepInputs inputs);

/// <summary>Log-probabilities of B step pairs' transitions under policy and reference (SPO).</summary>
public sealed record TransitionInputs(Tensor logp_policy_w, Tensor logp_ref_w, Tensor logp_policy_l, Tensor logp_ref_l);

/// <summary>A loss over the transitions of step-wise pairs.</summary>
public delegate LossOutput TransitionLossFn(TransitionInputs inputs);

/// <summary>One image of a micro-batch: the winner or the loser of the pair at row <c>row</c>.</summary>
public readonly record struct ImageRef(int row, bool winner);

/// <summary>Which images form the B training pairs of a micro-batch. Row i is trained under the caption of the
/// micro-batch's pair i; winners[i] is preferred over losers[i].</summary>
public sealed record PairPlan(ImageRef[] winners, ImageRef[] losers);

/// <summary>Where a method's pairs come from.</summary>
public abstract class PairSource
{
    public abstract string name { get; }
    public virtual string Describe() => name;
}

/// <summary>Pairs built from a pair folder (Pick-a-Pic-like data): the trainer draws a micro-batch of records, loads
/// each record's winner and loser with one shared crop/flip, and asks the source which images to pair.</summary>
public abstract class OfflinePairSource : PairSource
{
    /// <summary>A once-per-run change of the dataset (e.g. relabelling by a reward model).</summary>
    public virtual PairDataset Prepare(PairDataset data) => data;

    /// <summary>The pairs of one micro-batch of records. Draw any randomness from <paramref name="generator"/> (it is
    /// checkpointed, so resumed runs repeat the same pairs).</summary>
    public abstract PairPlan Plan(IReadOnlyList<PreferencePair> batch, Generator generator);

    /// <summary>Rejects settings the source cannot work with (called before any loading).</summary>
    public virtual void Validate(int train_batch_size) { }

    /// <summary>Whether the losers of the records are used at all (only informational: both are always loaded so
    /// that crops and flips, and the generator, advance the same way for every source).</summary>
    public virtual bool uses_dataset_losers => true;

    protected static PairPlan Identity(int b) =>
        new(Enumerable.Range(0, b).Select(i => new ImageRef(i, true)).ToArray(), Enumerable.Range(0, b).Select(i => new ImageRef(i, false)).ToArray());
}

/// <summary>The records' own (winner, loser) labels — Diffusion-DPO and SFT.</summary>
public sealed class DatasetPairs : OfflinePairSource
{
    public override string name => "dataset";
    public override string Describe() => "the dataset's labelled (winner, loser) pairs";
    public override PairPlan Plan(IReadOnlyList<PreferencePair> batch, Generator generator) => Identity(batch.Count);
}

/// <summary>SUDO's self-pairs: the loser of pair i is the winner of pair perm[i] of the same micro-batch, perm =
/// torch.randperm(B) as in SUDO's train.py (a winner may meet itself: the pair then only adds its MSE). With
/// <c>derangement</c> the random order is rotated by one so that no winner is its own loser.</summary>
public sealed class SelfPairs(bool derangement = false) : OfflinePairSource
{
    public bool derangement { get; } = derangement;
    public override string name => derangement ? "self_deranged" : "self";
    public override bool uses_dataset_losers => false;
    public override string Describe() => "losers = other winners of the micro-batch (randperm" + (derangement ? ", no self-pairs)" : "; self-pairs allowed, as upstream)");

    public override void Validate(int train_batch_size)
    {
        if (derangement && train_batch_size < 2) throw new ArgumentException("--sudo_derangement needs --train_batch_size ≥ 2");
        if (train_batch_size == 1)
            Console.Error.WriteLine("warning: SUDO with --train_batch_size 1 pairs every winner with itself: the loss collapses to 0.5·SFT (upstream behaviour)");
    }

    public override PairPlan Plan(IReadOnlyList<PreferencePair> batch, Generator generator)
    {
        var b = batch.Count;
        using var perm = randperm(b, generator);
        var p = perm.ToArray<long>();
        if (derangement && b >= 2)
        {
            var rotated = new long[b];
            for (var i = 0; i < b; i++) rotated[p[i]] = p[(i + 1) % b];
            p = rotated;
        }
        return new(Enumerable.Range(0, b).Select(i => new ImageRef(i, true)).ToArray(), p.Select(j => new ImageRef((int)j, true)).ToArray());
    }
}

/// <summary>AI feedback (Diffusion-DPO's --choice_model): before training, every record is relabelled by a scorer
/// (image path, caption) → score; the preferred image becomes the winner, equal scores are dropped. Pairs are then
/// drawn by <c>inner</c>.</summary>
public sealed class AiFeedbackPairs(Func<string, string, double> score, OfflinePairSource? inner = null) : OfflinePairSource
{
    private readonly OfflinePairSource _inner = inner ?? new DatasetPairs();
    public override string name => "ai_feedback+" + _inner.name;
    public override string Describe() => "pairs relabelled by a reward model, then " + _inner.Describe();
    public override PairDataset Prepare(PairDataset data) => _inner.Prepare(data).Relabeled(score);
    public override PairPlan Plan(IReadOnlyList<PreferencePair> batch, Generator generator) => _inner.Plan(batch, generator);
    public override void Validate(int train_batch_size) => _inner.Validate(train_batch_size);
    public override bool uses_dataset_losers => _inner.uses_dataset_losers;
}

/// <summary>SPO's step-wise resampler (<see cref="SpoSampler"/>): at each denoising step k candidates are drawn
/// from one x_t, scored by a step-aware preference model, best and worst form a pair when the score gap passes the
/// threshold, and a random candidate continues the chain. Built by the SPO trainer from these settings.</summary>
public sealed class StepwiseResampler(SpoConfig settings) : PairSource
{
    public SpoConfig settings { get; } = settings;
    public override string name => "stepwise";
    public override string Describe() =>
        $"step-wise resampler: DDIM {settings.num_inference_steps} steps, η {settings.eta}, CFG {settings.guidance_scale}, k = {settings.num_sample_each_step}, "
        + $"from step {settings.divert_start_step}, threshold {settings.threshold}" + (settings.num_inner_step > 0 ? $", {settings.num_inner_step} inner steps" : "");
}

/// <summary>A method: a name (recorded in every run), a pair source, a loss and a reference policy. The loss is a
/// <see cref="LossFn"/> for offline sources and a <see cref="TransitionLossFn"/> for the step-wise resampler.</summary>
public sealed record Method
{
    public string name { get; }
    public PairSource pairs { get; }
    public Delegate loss { get; }
    public ReferencePolicy reference { get; }
    /// <summary>One line on what the loss computes (printed at the start of a run).</summary>
    public string loss_description { get; init; } = "a loss defined in a recipe";

    public Method(string name, PairSource pairs, Delegate loss, ReferencePolicy reference)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Any(c => !(char.IsLetterOrDigit(c) || c is '_' or '-' or '.')))
            throw new ArgumentException($"method name '{name}': use letters, digits, '_', '-' or '.' (it names runs and checkpoints)");
        (this.name, this.pairs, this.loss, this.reference) = (name, pairs, loss, reference);
        switch (pairs)
        {
            case OfflinePairSource when loss is not LossFn:
                throw new ArgumentException($"method {name}: an offline pair source ({pairs.name}) needs a LossFn over per-sample MSEs, got {loss.GetType().Name}");
            case StepwiseResampler when loss is not TransitionLossFn:
                throw new ArgumentException($"method {name}: the step-wise resampler needs a TransitionLossFn over transition log-probabilities, got {loss.GetType().Name}");
            case StepwiseResampler when reference == ReferencePolicy.FrozenCopy:
                throw new ArgumentException($"method {name}: step-wise training uses LoRA; its reference is the UNet with adapters off (ReferencePolicy.AdaptersOff)");
        }
    }

    public LossFn offline_loss => loss as LossFn ?? throw new InvalidOperationException($"method {name} trains on {pairs.name} pairs, not offline pairs");
    public TransitionLossFn transition_loss => loss as TransitionLossFn ?? throw new InvalidOperationException($"method {name} trains on offline pairs, not step-wise transitions");

    /// <summary>The same method with another loss (keeps the pair source and reference).</summary>
    public Method WithLoss(Delegate newLoss, string? description = null) =>
        new(name, pairs, newLoss, reference) { loss_description = description ?? "a loss defined in a recipe" };

    public string Describe() => $"method {name}: pairs from {pairs.Describe()}; loss {loss_description}; reference {reference switch
    {
        ReferencePolicy.None => "none",
        ReferencePolicy.FrozenCopy => "frozen copy of the starting UNet",
        _ => "the UNet with LoRA adapters off",
    }}";
}

/// <summary>The settings the presets read (TrainConfig's flags of the same names).</summary>
public sealed record MethodSettings
{
    public double beta_dpo { get; init; } = 5000;
    public double sudo_lambda_dpo { get; init; } = 0.5;
    public double sudo_lambda_mse { get; init; } = 0.5;
    public bool sudo_derangement { get; init; }
    public SpoConfig spo { get; init; } = SpoConfig.SD15;
}

/// <summary>The four methods of the papers, defined once.</summary>
public static class Methods
{
    /// <summary>Diffusion-DPO: L = mean −log σ(−½·β·((m_w − m_l) − (r_w − r_l))), β = beta_dpo (train.py scale_term).</summary>
    public static Method dpo(double beta_dpo = 5000) =>
        new("dpo", new DatasetPairs(), new LossFn(s => Losses.diffusion_dpo(s.model_mse, RequireReference(s), beta_dpo)), ReferencePolicy.FrozenCopy)
        {
            loss_description = $"−log σ(−½·β·Δ), β = {beta_dpo} (Diffusion-DPO train.py; the diffusers example's β_d = {beta_dpo / 2} is the same loss)",
        };

    /// <summary>SFT: the mean MSE of the winners.</summary>
    public static Method sft() =>
        new("sft", new DatasetPairs(), new LossFn(s => Losses.sft(s.model_mse.narrow(0, 0, s.pairs))), ReferencePolicy.None)
        {
            loss_description = "mean denoising MSE of the winners (Diffusion-DPO --sft)",
        };

    /// <summary>SUDO / Self-DPO: λ_dpo·L_DPO(winners, winners[perm]) + λ_mse·mean m_w.</summary>
    public static Method sudo(double beta_dpo = 5000, double lambda_dpo = 0.5, double lambda_mse = 0.5, bool derangement = false) =>
        new("sudo", new SelfPairs(derangement), new LossFn(s => Losses.sudo(s.model_mse, RequireReference(s), beta_dpo, lambda_dpo, lambda_mse)), ReferencePolicy.FrozenCopy)
        {
            loss_description = $"{lambda_dpo}·DPO(β = {beta_dpo}) + {lambda_mse}·MSE of the winners (SUDO)",
        };

    /// <summary>SPO: clamp the transition likelihood ratios to [1 − ε, 1 + ε], −log σ(β·(log ρ_w − log ρ_l)).</summary>
    public static Method spo(SpoConfig? settings = null)
    {
        var c = settings ?? SpoConfig.SD15;
        return new("spo", new StepwiseResampler(c),
            new TransitionLossFn(i => Losses.spo(i.logp_policy_w, i.logp_ref_w, i.logp_policy_l, i.logp_ref_l, c.beta, c.clip_eps)), ReferencePolicy.AdaptersOff)
        {
            loss_description = $"per-step DPO on DDIM log-probabilities, ratios clamped to [{1 - c.clip_eps}, {1 + c.clip_eps}], β = {c.beta} (SPO train_spo.py)",
        };
    }

    public static IReadOnlyList<string> Names { get; } = ["dpo", "sft", "sudo", "spo"];

    /// <summary>The preset of this name with these settings: the one place a method name selects behaviour.</summary>
    public static Method Preset(string name, MethodSettings? settings = null)
    {
        var s = settings ?? new MethodSettings();
        return name switch
        {
            "dpo" => dpo(s.beta_dpo),
            "sft" => sft(),
            "sudo" => sudo(s.beta_dpo, s.sudo_lambda_dpo, s.sudo_lambda_mse, s.sudo_derangement),
            "spo" => spo(s.spo),
            _ => throw new ArgumentException($"unknown method '{name}': the presets are {string.Join(", ", Names)}; a recipe defines others as a Method value"),
        };
    }

    static Tensor RequireReference(StepInputs s) =>
        s.ref_mse ?? throw new InvalidOperationException("this loss compares with a reference, but the method's reference policy is None");
}
