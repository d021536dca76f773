// Preference losses with their diagnostics. Formulas and constants follow the upstream code named on each
// (Diffusion-DPO and SUDO train.py, SPO train_spo.py); per-sample MSEs and the losses are computed in float32 even under bf16
// autocast (β = 5000 turns 1e-7 of MSE into 2.5e-4 of logit).
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Preference;

/// <summary>A loss and what to log about it. Tensors belong to the caller's scope.</summary>
public sealed record LossOutput(Tensor loss, IReadOnlyDictionary<string, Tensor> diagnostics)
{
    public double Value(string key) => diagnostics[key].item();
}

public static class Losses
{
    /// <summary>m_i = mean over (C, H, W) of (pred − target)², per sample, in float32.</summary>
    public static Tensor per_sample_mse(Tensor pred, Tensor target)
    {
        using var scope = NewDisposeScope();
        var d = pred.to(ScalarType.Float32) - target.to(ScalarType.Float32);
        return scope.MoveToOuter(d.square().flatten(1).mean(1));
    }

    /// <summary>Diffusion-DPO (Wallace et al.; Salesforce DiffusionDPO train.py): rows [0, B) winners, [B, 2B)
    /// losers sharing t, ε and caption. Δ_j = (m_w − m_l) − (r_w − r_l), z = −½·β·Δ (scale_term = −0.5·beta_dpo),
    /// L = mean_j −log σ(z_j). β = 5000 here is the diffusers example's β_d = 2500 (its loss is
    /// −log σ(β_d·(−Δ))). Diagnostics: implicit_acc = mean[z > 0] (strict), reward_margin = mean z,
    /// model_mse = ½(mean m_w + mean m_l), ref_mse = mean r, kl = mean(m − r) (how far the policy moved).</summary>
    public static LossOutput diffusion_dpo(Tensor model_mse, Tensor ref_mse, double beta = 5000)
    {
        var n = model_mse.size(0);
        if (n % 2 != 0 || ref_mse.size(0) != n)
            throw new ArgumentException($"diffusion_dpo expects [2B] per-sample MSEs (winners then losers), got {n} and {ref_mse.size(0)}");
        using var scope = NewDisposeScope();
        var b = n / 2;
        var m = model_mse.to(ScalarType.Float32);
        var r = ref_mse.to(ScalarType.Float32).detach();
        var (mw, ml) = (m.narrow(0, 0, b), m.narrow(0, b, b));
        var (rw, rl) = (r.narrow(0, 0, b), r.narrow(0, b, b));
        var delta = (mw - ml) - (rw - rl);
        var z = delta * (-0.5 * beta);
        var loss = nn.functional.softplus(-z).mean();     // −log σ(z), stable
        var diag = new Dictionary<string, Tensor>
        {
            ["delta"] = scope.MoveToOuter(delta.detach()),
            ["z"] = scope.MoveToOuter(z.detach()),
            ["implicit_acc"] = scope.MoveToOuter(z.detach().gt(0).to(ScalarType.Float32).mean()),
            ["reward_margin"] = scope.MoveToOuter(z.detach().mean()),
            ["model_mse"] = scope.MoveToOuter(((mw.mean() + ml.mean()) * 0.5).detach()),
            ["ref_mse"] = scope.MoveToOuter(r.mean()),
            ["model_mse_w"] = scope.MoveToOuter(mw.detach().mean()),
            ["model_mse_l"] = scope.MoveToOuter(ml.detach().mean()),
            ["ref_mse_w"] = scope.MoveToOuter(rw.mean()),
            ["ref_mse_l"] = scope.MoveToOuter(rl.mean()),
            ["kl"] = scope.MoveToOuter((m.detach() - r).mean()),
        };
        return new LossOutput(scope.MoveToOuter(loss), diag);
    }

    /// <summary>The diffusers example's form mean −log σ(β_d·((r_w − r_l) − (m_w − m_l))) and its accuracy
    /// (ties count ½), for comparing with runs of that script.</summary>
    public static (Tensor loss, Tensor implicit_acc, Tensor logits) diffusers_dpo(Tensor model_mse, Tensor ref_mse, double beta_d = 2500)
    {
        using var scope = NewDisposeScope();
        var b = model_mse.size(0) / 2;
        var logits = (ref_mse.narrow(0, 0, b) - ref_mse.narrow(0, b, b)) - (model_mse.narrow(0, 0, b) - model_mse.narrow(0, b, b));
        var loss = nn.functional.softplus(logits * -beta_d).mean();
        var acc = logits.gt(0).to(ScalarType.Float32).mean() + logits.eq(0).to(ScalarType.Float32).mean() * 0.5;
        return (scope.MoveToOuter(loss), scope.MoveToOuter(acc), scope.MoveToOuter(logits));
    }

    /// <summary>SFT (Diffusion-DPO's --sft): mean over winners of m_i = F.mse_loss(pred_w, target_w).</summary>
    public static LossOutput sft(Tensor model_mse_winners)
    {
        using var scope = NewDisposeScope();
        var loss = model_mse_winners.to(ScalarType.Float32).mean();
        return new LossOutput(scope.MoveToOuter(loss), new Dictionary<string, Tensor> { ["model_mse"] = scope.MoveToOuter(loss.detach()) });
    }

    /// <summary>SUDO / Self-DPO (Peng et al.): λ1·L_DPO(winners, winners[perm]) + λ2·mean m_w, λ1 = λ2 = 0.5,
    /// β = 5000 (C = −½β). Rows as for diffusion_dpo, the losers being other winners of the micro-batch.</summary>
    public static LossOutput sudo(Tensor model_mse, Tensor ref_mse, double beta = 5000, double lambda_dpo = 0.5, double lambda_mse = 0.5)
    {
        using var scope = NewDisposeScope();
        var dpo = diffusion_dpo(model_mse, ref_mse, beta);
        var b = model_mse.size(0) / 2;
        var mse = model_mse.to(ScalarType.Float32).narrow(0, 0, b).mean();
        var loss = dpo.loss * lambda_dpo + mse * lambda_mse;
        var diag = dpo.diagnostics.ToDictionary(kv => kv.Key, kv => scope.MoveToOuter(kv.Value));
        diag["dpo_loss"] = scope.MoveToOuter(dpo.loss.detach());
        diag["mse_loss"] = scope.MoveToOuter(mse.detach());
        return new LossOutput(scope.MoveToOuter(loss), diag);
    }

    /// <summary>SPO / D3PO step DPO on DDIM transition log-probabilities (SPO train_spo.py):
    /// ρ_k = clamp(exp(log p_θ(x^k) − log p_ref(x^k)), 1 − ε, 1 + ε), ε = 0.1;
    /// L = mean −log σ(β·log ρ_w − β·log ρ_l), β = 10. The clamp passes no gradient outside the band.</summary>
    public static LossOutput spo(Tensor logp_policy_w, Tensor logp_ref_w, Tensor logp_policy_l, Tensor logp_ref_l, double beta = 10, double clip_eps = 0.1)
    {
        using var scope = NewDisposeScope();
        var rw = (logp_policy_w - logp_ref_w.detach()).exp();
        var rl = (logp_policy_l - logp_ref_l.detach()).exp();
        var rwc = rw.clamp(1 - clip_eps, 1 + clip_eps);
        var rlc = rl.clamp(1 - clip_eps, 1 + clip_eps);
        var logits = rwc.log() * beta - rlc.log() * beta;
        var perSample = nn.functional.softplus(-logits);
        var diag = new Dictionary<string, Tensor>
        {
            ["ratio_w"] = scope.MoveToOuter(rw.detach()),
            ["ratio_l"] = scope.MoveToOuter(rl.detach()),
            ["ratio_w_clamped"] = scope.MoveToOuter(rwc.detach()),
            ["ratio_l_clamped"] = scope.MoveToOuter(rlc.detach()),
            ["logits"] = scope.MoveToOuter(logits.detach()),
            ["loss_per_sample"] = scope.MoveToOuter(perSample.detach()),
            ["implicit_acc"] = scope.MoveToOuter(logits.detach().gt(0).to(ScalarType.Float32).mean()),
            ["reward_margin"] = scope.MoveToOuter(logits.detach().mean()),
        };
        return new LossOutput(scope.MoveToOuter(perSample.mean()), diag);
    }
}
