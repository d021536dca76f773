// `sudoml parity --losses <io.safetensors>`: recomputes every quantity of a losses golden file (layout in
// shared/golden/README.md, "losses/") from its inputs with the UNets it names (policy and reference), and compares.
// Every setting comes from the file: β, the SUDO weights, the SPO step count, η, β and clip range from params.json's
// `cfg`; the noise schedule from the policy pipeline's scheduler config (or `cfg.scheduler_config`); the parameters
// whose gradients are checked from the `out_<loss>_grad_<param>` tensors present. A setting the harness needs but
// cannot find, or a key it does not understand, is an error naming it.
using System.Text.Json.Nodes;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Parity;

public static class LossParity
{
    // params.json keys: read (cross-checked against the tensors where both exist) or informational.
    private static readonly Dictionary<string, string[]> KnownCfg = new()
    {
        [""] = ["dpo", "spo", "spo_formula", "grad_params", "scheduler_config", "seed", "ref_rel_scale"],
        ["dpo"] = ["beta", "beta_diffusers_default", "captions", "sudo_perm", "sudo_weights", "timesteps"],
        ["spo"] = ["beta", "captions", "clip_eps", "eta", "guidance_scale", "num_inference_steps", "timesteps"],
        ["spo_formula"] = ["beta", "clip_eps"],
    };

    public static ParityReport Run(string ioPath, double? tolerance = null)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(ioPath))!;
        var paramsPath = Path.Combine(dir, "params.json");
        if (!File.Exists(paramsPath)) throw new FileNotFoundException($"losses golden params not found: {paramsPath}", paramsPath);
        var p = SchedulerConfig.ParsePythonJson(File.ReadAllText(paramsPath)) as JsonObject
            ?? throw new InvalidDataException($"{paramsPath}: not a JSON object");
        var cfg = p["cfg"] as JsonObject ?? throw new InvalidDataException($"{paramsPath}: no 'cfg' object");
        foreach (var (section, keys) in KnownCfg)
        {
            var o = section == "" ? cfg : cfg[section] as JsonObject;
            if (o == null) continue;
            var unknown = o.Select(kv => kv.Key).Except(keys).ToList();
            if (unknown.Count > 0)
                throw new InvalidDataException($"{paramsPath}: the losses harness does not understand cfg{(section == "" ? "" : "." + section)}." +
                    $"{string.Join(", ", unknown)} (it knows {string.Join(", ", keys)})");
        }
        JsonObject Section(string name) => cfg[name] as JsonObject ?? throw new InvalidDataException($"{paramsPath}: no cfg.{name} object");
        double Num(JsonObject o, string section, string key) =>
            o[key] is JsonValue v && v.TryGetValue<double>(out var d) ? d : throw new InvalidDataException($"{paramsPath}: cfg.{section}.{key} must be a number");
        string Str(string key) => p[key] is JsonValue v && v.TryGetValue<string>(out var s) ? s : throw new InvalidDataException($"{paramsPath}: no '{key}' (a folder relative to {dir})");

        // β = 5000 amplifies rounding: relative 1e-4 on the losses (README of the golden set), 1e-5 elsewhere.
        var tol = tolerance ?? 1e-4;
        var policyDir = Path.GetFullPath(Path.Combine(dir, Str("policy_unet")));
        using var policy = UNet2DConditionModel.from_pretrained(policyDir);
        using var reference = UNet2DConditionModel.from_pretrained(Path.GetFullPath(Path.Combine(dir, Str("ref_unet"))));
        reference.requires_grad_(false);
        var schedulerConfig = ScheduleOf(cfg, policyDir, paramsPath);
        using var io = safetensors.safe_open(ioPath);
        using var schedule = new NoiseSchedule(schedulerConfig);
        var rows = new List<ParityRow>();
        using var scope = NewDisposeScope();
        Tensor In(string k) => io.Contains(k) ? io.get(k) : throw new InvalidDataException($"{ioPath}: input '{k}' missing");
        void Cmp(string key, Tensor actual, double? t = null)
        {
            if (io.Contains(key)) rows.Add(ModelParity.Compare(key, actual.detach(), io.get(key), t ?? tol));
        }
        void CrossCheck(JsonObject o, string section, string key, long[] actual)
        {
            if (o[key] is not JsonArray a) return;
            var listed = a.Select(x => x!.GetValue<long>()).ToArray();
            if (!listed.SequenceEqual(actual))
                throw new InvalidDataException($"{paramsPath}: cfg.{section}.{key} [{string.Join(", ", listed)}] disagrees with the tensors of {ioPath} [{string.Join(", ", actual)}]");
        }

        // The policy parameters whose gradients were recorded, from the tensor names (dots written as '_').
        var byKey = policy.named_parameters().ToDictionary(x => x.name.Replace('.', '_'), x => x);
        List<(string key, string param)> GradKeys(string loss)
        {
            var prefix = $"out_{loss}_grad_";
            var found = new List<(string, string)>();
            foreach (var k in io.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).Order(StringComparer.Ordinal))
            {
                var suffix = k[prefix.Length..];
                if (!byKey.TryGetValue(suffix, out var np))
                    throw new InvalidDataException($"{ioPath}: {k} names no parameter of the policy UNet ({policyDir}): expected out_{loss}_grad_<parameter name with '.' written '_'>, e.g. {prefix}{byKey.Keys.Last()}");
                found.Add((k, np.name));
            }
            return found;
        }
        if (cfg["grad_params"] is JsonArray gp)
        {
            var listed = gp.Select(x => x!.GetValue<string>()).Order(StringComparer.Ordinal).ToList();
            foreach (var loss in new[] { "dpo", "sudo", "spo" })
            {
                var recorded = GradKeys(loss).Select(g => g.param).Order(StringComparer.Ordinal).ToList();
                if (recorded.Count > 0 && !recorded.SequenceEqual(listed))
                    throw new InvalidDataException($"{paramsPath}: cfg.grad_params [{string.Join(", ", listed)}] but {ioPath} records {loss} gradients of [{string.Join(", ", recorded)}]");
            }
        }
        void Grads(string loss, Tensor value)
        {
            var keys = GradKeys(loss);
            if (keys.Count == 0) return;
            policy.zero_grad();
            value.backward();
            var parameters = policy.named_parameters().ToDictionary(x => x.name, x => x.parameter);
            foreach (var (key, name) in keys)
                Cmp(key, parameters[name].grad ?? zeros_like(parameters[name]), 1e-3);
        }

        double? beta = null, betaDiffusers = null, lambdaDpo = null, lambdaMse = null;
        if (io.Contains("in_dpo_latents"))
        {
            var dpo = Section("dpo");
            beta = Num(dpo, "dpo", "beta");
            CrossCheck(dpo, "dpo", "timesteps", In("in_dpo_timesteps").ToArray<long>()[..(int)(In("in_dpo_timesteps").size(0) / 2)]);
            if (io.Contains("out_dpo_diffusers_loss_beta_default") || io.Contains("out_dpo_diffusers_logits") || io.Contains("out_dpo_diffusers_implicit_acc"))
                betaDiffusers = Num(dpo, "dpo", "beta_diffusers_default");
            if (io.Contains("in_sudo_latents"))
            {
                var w = dpo["sudo_weights"] as JsonArray;
                if (w is not { Count: 2 }) throw new InvalidDataException($"{paramsPath}: cfg.dpo.sudo_weights must be [λ_dpo, λ_mse]");
                (lambdaDpo, lambdaMse) = (w[0]!.GetValue<double>(), w[1]!.GetValue<double>());
                CrossCheck(dpo, "dpo", "sudo_perm", In("in_sudo_perm").ToArray<long>());
            }
        }
        foreach (var kind in new[] { "dpo", "sudo" })
        {
            if (!io.Contains($"in_{kind}_latents")) continue;
            var x0 = In($"in_{kind}_latents");
            var noise = In("in_dpo_noise");
            var ts = In("in_dpo_timesteps");
            var ehs = In("in_dpo_encoder_hidden_states");
            var xt = schedule.add_noise(x0, noise, ts);
            Cmp($"dbg_{kind}_noisy_latents", xt);
            var pred = policy.forward(xt, ts, ehs);
            Tensor refPred;
            using (no_grad()) refPred = reference.forward(xt, ts, ehs);
            Cmp($"dbg_{kind}_model_pred", pred);
            Cmp($"dbg_{kind}_ref_pred", refPred);
            var m = Losses.per_sample_mse(pred, noise);
            var r = Losses.per_sample_mse(refPred, noise);
            Cmp($"out_{kind}_model_mse", m);
            Cmp($"out_{kind}_ref_mse", r);
            var b = m.size(0) / 2;
            if (kind == "dpo")
            {
                var o = Losses.diffusion_dpo(m, r, beta!.Value);
                Cmp("out_dpo_delta", o.diagnostics["delta"], 1e-5);
                // z = −½β·Δ: compare with |Δz| ≤ 1e-3 as the golden README advises.
                Cmp("out_dpo_z", o.diagnostics["z"], 1e-3);
                // The loss is a mean of −log σ(z) over pairs, whose derivative in z is below 1 in magnitude: its error is
                // bounded by z's, so it gets z's tolerance (1e-3 · max(1, max|z|)). A fixed 1e-4 failed on an Intel
                // AVX-512 CPU where z differed by 7.5e-4 (within its bound) and the loss by 2.7e-4.
                var zTol = 1e-3 * Math.Max(1, io.Contains("out_dpo_z") ? io.get("out_dpo_z").abs().max().item() : o.diagnostics["z"].abs().max().item());
                Cmp("out_dpo_loss", o.loss, Math.Max(tol, zTol));
                Cmp("out_dpo_implicit_acc", o.diagnostics["implicit_acc"], 0);
                Cmp("out_dpo_model_mse_logged", o.diagnostics["model_mse"]);
                Cmp("out_dpo_ref_mse_logged", o.diagnostics["ref_mse"]);
                if (betaDiffusers is double bd)
                {
                    var (dl, dacc, logits) = Losses.diffusers_dpo(m, r, bd);
                    Cmp("out_dpo_diffusers_logits", logits, 1e-5);
                    // diffusers' logit is z at its own β: the same bound scaled by the ratio of the βs
                    Cmp("out_dpo_diffusers_loss_beta_default", dl, Math.Max(tol, zTol * Math.Max(1, bd / beta.Value)));
                    Cmp("out_dpo_diffusers_implicit_acc", dacc, 0);
                }
                // The same number β plugged into diffusers' form: β/β_d times the amplification of rounding in the MSEs.
                if (io.Contains("out_dpo_diffusers_loss_beta_same"))
                    Cmp("out_dpo_diffusers_loss_beta_same", Losses.diffusers_dpo(m, r, beta.Value).loss, Math.Max(tol, zTol) * Math.Max(1, beta.Value / (betaDiffusers ?? beta.Value)));
                Cmp("out_sft_loss", Losses.sft(m.narrow(0, 0, b)).loss);
                Grads("dpo", o.loss);
            }
            else
            {
                var o = Losses.sudo(m, r, beta!.Value, lambdaDpo!.Value, lambdaMse!.Value);
                Cmp("out_sudo_delta", o.diagnostics["delta"], 1e-5);
                Cmp("out_sudo_z", o.diagnostics["z"], 1e-3);
                Cmp("out_sudo_dpo_loss", o.diagnostics["dpo_loss"]);
                // A self-paired row (perm[j] = j) has z ≈ 0 decided by last-bit rounding: that pair may flip.
                var deg = In("in_sudo_perm").ToArray<long>().Where((v, j) => v == j).Count();
                Cmp("out_sudo_implicit_acc", o.diagnostics["implicit_acc"], (double)deg / b + 1e-6);
                Cmp("out_sudo_mse_loss", o.diagnostics["mse_loss"]);
                Cmp("out_sudo_loss", o.loss);
                Grads("sudo", o.loss);
            }
        }

        // SPO step-DPO with CFG in both models on a DDIM schedule of the recorded length and η.
        if (io.Contains("in_spo_x_t"))
        {
            var spo = Section("spo");
            using var ddim = new DDIMScheduler(schedulerConfig with { _class_name = "DDIMScheduler" });
            ddim.set_timesteps((int)Num(spo, "spo", "num_inference_steps"));
            var x = In("in_spo_x_t");
            var t = In("in_spo_timesteps");
            CrossCheck(spo, "spo", "timesteps", t.ToArray<long>());
            var w_ = In("in_spo_guidance_scale").item();
            if (spo["guidance_scale"] is JsonValue gv && Math.Abs(gv.GetValue<double>() - w_) > 1e-6 * Math.Max(1, Math.Abs(w_)))
                throw new InvalidDataException($"{paramsPath}: cfg.spo.guidance_scale {gv} disagrees with in_spo_guidance_scale {w_}");
            var ctx = cat([In("in_spo_encoder_hidden_states_uncond"), In("in_spo_encoder_hidden_states_cond")]);
            Tensor Cfg(UNet2DConditionModel u)
            {
                var o = u.forward(cat([x, x]), cat([t, t]), ctx).chunk(2);
                return o[0] + w_ * (o[1] - o[0]);
            }
            var epsP = Cfg(policy);
            Tensor epsR;
            using (no_grad()) epsR = Cfg(reference);
            Cmp("out_spo_eps_policy", epsP);
            Cmp("out_spo_eps_ref", epsR);
            Cmp("dbg_spo_prev_timesteps", tensor(t.ToArray<long>().Select(v => Math.Max(ddim.PrevTimestep(v), 0)).ToArray()), 0);
            var eta = Num(spo, "spo", "eta");
            var drawW = ddim.step_with_logprob(epsP.detach(), t, x, eta, new NoiseSource(noise: In("in_spo_noise_w")));
            var drawL = ddim.step_with_logprob(epsP.detach(), t, x, eta, new NoiseSource(noise: In("in_spo_noise_l")));
            Cmp("dbg_spo_pred_original_sample", drawW.pred_original_sample);
            Cmp("out_spo_sigma", drawW.std_dev_t);
            Cmp("out_spo_mu_policy", drawW.prev_sample_mean);
            Cmp("out_spo_x_prev_w", drawW.prev_sample);
            Cmp("out_spo_x_prev_l", drawL.prev_sample);
            var pw = ddim.step_with_logprob(epsP, t, x, eta, prev_sample: drawW.prev_sample);
            var pl = ddim.step_with_logprob(epsP, t, x, eta, prev_sample: drawL.prev_sample);
            var rw = ddim.step_with_logprob(epsR, t, x, eta, prev_sample: drawW.prev_sample);
            var rl = ddim.step_with_logprob(epsR, t, x, eta, prev_sample: drawL.prev_sample);
            Cmp("out_spo_mu_ref", rw.prev_sample_mean);
            Cmp("out_spo_logp_policy_w", pw.log_prob);
            Cmp("out_spo_logp_policy_l", pl.log_prob);
            Cmp("out_spo_logp_ref_w", rw.log_prob);
            Cmp("out_spo_logp_ref_l", rl.log_prob);
            var so = Losses.spo(pw.log_prob, rw.log_prob, pl.log_prob, rl.log_prob, Num(spo, "spo", "beta"), Num(spo, "spo", "clip_eps"));
            foreach (var k in new[] { "ratio_w", "ratio_l", "ratio_w_clamped", "ratio_l_clamped", "logits", "loss_per_sample" })
                Cmp($"out_spo_{k}", so.diagnostics[k]);
            Cmp("out_spo_loss", so.loss);
            Grads("spo", so.loss);
        }

        // Formula-only SPO cases (clamp bounds and their zero gradients): out_spof_grad_<name> is ∂L/∂in_spof_<name>.
        if (io.Contains("in_spof_logp_policy_w"))
        {
            var sf = Section("spo_formula");
            var inputs = new[] { "logp_policy_w", "logp_ref_w", "logp_policy_l", "logp_ref_l" }.ToDictionary(n => n, n => In("in_spof_" + n).detach());
            var gradKeys = io.Keys.Where(k => k.StartsWith("out_spof_grad_", StringComparison.Ordinal)).ToList();
            foreach (var k in gradKeys)
            {
                var n = k["out_spof_grad_".Length..];
                if (!inputs.ContainsKey(n)) throw new InvalidDataException($"{ioPath}: {k} names no formula input (expected out_spof_grad_<one of {string.Join(", ", inputs.Keys)}>)");
                inputs[n] = inputs[n].requires_grad_();
            }
            var f = Losses.spo(inputs["logp_policy_w"], inputs["logp_ref_w"], inputs["logp_policy_l"], inputs["logp_ref_l"], Num(sf, "spo_formula", "beta"), Num(sf, "spo_formula", "clip_eps"));
            foreach (var k in new[] { "ratio_w", "ratio_l", "ratio_w_clamped", "ratio_l_clamped", "logits", "loss_per_sample" })
                Cmp($"out_spof_{k}", f.diagnostics[k]);
            Cmp("out_spof_loss", f.loss);
            if (gradKeys.Count > 0)
            {
                f.loss.backward();
                foreach (var k in gradKeys) Cmp(k, inputs[k["out_spof_grad_".Length..]].grad!, 1e-5);
            }
        }

        // The formulas alone, from the stored per-sample MSEs (exact check, as the golden README advises).
        foreach (var kind in new[] { "dpo", "sudo" })
        {
            if (!io.Contains($"out_{kind}_model_mse") || !io.Contains($"out_{kind}_ref_mse") || beta is null) continue;
            var m = In($"out_{kind}_model_mse");
            var r = In($"out_{kind}_ref_mse");
            var o = kind == "dpo" ? Losses.diffusion_dpo(m, r, beta.Value) : Losses.sudo(m, r, beta.Value, lambdaDpo!.Value, lambdaMse!.Value);
            void F(string key, Tensor actual, double t) { if (io.Contains(key)) rows.Add(ModelParity.Compare("formula:" + key, actual.detach(), io.get(key), t)); }
            F($"out_{kind}_delta", o.diagnostics["delta"], 1e-6);
            F($"out_{kind}_z", o.diagnostics["z"], 1e-6);
            F($"out_{kind}_implicit_acc", o.diagnostics["implicit_acc"], 0);
            F($"out_{kind}_loss", o.loss, 1e-6);
            if (kind == "dpo")
            {
                if (betaDiffusers is double bd)
                {
                    F("out_dpo_diffusers_loss_beta_default", Losses.diffusers_dpo(m, r, bd).loss, 1e-6);
                    F("out_dpo_diffusers_implicit_acc", Losses.diffusers_dpo(m, r, bd).implicit_acc, 0);
                }
                F("out_dpo_diffusers_loss_beta_same", Losses.diffusers_dpo(m, r, beta.Value).loss, 1e-6);
            }
        }

        foreach (var k in io.Keys.Where(k => k.StartsWith("out_", StringComparison.Ordinal) || k.StartsWith("dbg_", StringComparison.Ordinal)).Order(StringComparer.Ordinal))
            if (rows.All(r => r.Name != k)) rows.Add(new ParityRow(k, double.NaN, double.NaN, double.NaN, false, "not computed"));
        return new ParityReport("losses", $"max |Δ| ≤ {tol:G3} · max(1, max |reference|) (z: |Δ| ≤ 1e-3; gradients 1e-3; accuracies exact but for self-paired rows; formula:* rows recompute from the stored MSEs at 1e-6)", rows);
    }

    /// <summary>The training noise schedule: cfg.scheduler_config if the file gives one, else the scheduler of the
    /// pipeline the policy UNet belongs to (<c>&lt;policy&gt;/../scheduler/scheduler_config.json</c>).</summary>
    private static SchedulerConfig ScheduleOf(JsonObject cfg, string policyDir, string paramsPath)
    {
        if (cfg["scheduler_config"] is JsonObject sc) return SchedulerConfig.FromJson(sc, $"{paramsPath}: cfg.scheduler_config");
        var path = Path.Combine(Path.GetDirectoryName(policyDir.TrimEnd('/'))!, "scheduler", "scheduler_config.json");
        if (!File.Exists(path))
            throw new InvalidDataException($"{paramsPath}: no cfg.scheduler_config and the policy UNet {policyDir} has no sibling scheduler/scheduler_config.json: the noise schedule is unknown");
        return SchedulerConfig.FromFile(path);
    }
}
