// `sudoml parity --schedulers <io.safetensors>`: every case of a scheduler golden file (layout in
// shared/golden/README.md: tables, timesteps, add_noise/velocity, single DDIM/DDPM steps, trajectories).
using System.Text.Json.Nodes;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Parity;

public static class SchedulerParity
{
    /// <summary>params.json keys that describe the file and change no computation.</summary>
    private static readonly string[] Informational = ["set", "item", "versions", "note", "notes", "description"];

    public static ParityReport Run(string ioPath, string? paramsPath = null, double? tolerance = null)
    {
        var factor = tolerance ?? ModelParity.Tolerances["scheduler"];
        paramsPath ??= Path.Combine(Path.GetDirectoryName(Path.GetFullPath(ioPath))!, "params.json");
        if (!File.Exists(paramsPath)) throw new FileNotFoundException($"scheduler golden params not found: {paramsPath}", paramsPath);
        var p = SchedulerConfig.ParsePythonJson(File.ReadAllText(paramsPath)) as JsonObject ?? throw new InvalidDataException($"{paramsPath}: not a JSON object");
        using var io = safetensors.safe_open(ioPath);
        var rows = new List<ParityRow>();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        void Cmp(string name, Tensor actual)
        {
            if (!io.Contains(name)) return;
            rows.Add(ModelParity.Compare(name, actual, io.get(name), factor));
        }
        Tensor In(string k) => io.get(k);
        SchedulerConfig Cfg(string k) => SchedulerConfig.FromJson((p[k] as JsonObject) ?? throw new InvalidDataException($"{paramsPath}: no {k}"), $"{paramsPath}:{k}");
        // Every case comes from the file: step counts, trajectory length, the fake model, the single-step timesteps.
        var known = new HashSet<string>(StringComparer.Ordinal) { "num_inference_steps", "n_traj", "fake_model", "ddim_case_timesteps" };
        var unknown = p.Select(kv => kv.Key).Where(k => !known.Contains(k) && !k.EndsWith("_config", StringComparison.Ordinal) && !Informational.Contains(k)).ToList();
        if (unknown.Count > 0)
            throw new InvalidDataException($"{paramsPath}: the scheduler harness does not understand {string.Join(", ", unknown.Select(k => $"'{k}'"))} " +
                $"(it reads num_inference_steps.n1/n2, n_traj, fake_model, ddim_case_timesteps and *_config; {string.Join(", ", Informational)} are informational)");
        int Int(JsonNode? n, string what) => n is JsonValue v && v.TryGetValue<int>(out var i) ? i
            : throw new InvalidDataException($"{paramsPath}: {what} must be an integer, got {n?.ToJsonString() ?? "nothing"}");
        var steps = p["num_inference_steps"] as JsonObject ?? throw new InvalidDataException($"{paramsPath}: no num_inference_steps object (expected {{\"n1\": .., \"n2\": ..}})");
        var schedules = steps.Select(kv => (tag: kv.Key, n: Int(kv.Value, $"num_inference_steps.{kv.Key}"))).ToList();
        if (!steps.ContainsKey("n1")) throw new InvalidDataException($"{paramsPath}: num_inference_steps has no n1 (the schedule of the single-step cases)");
        var n1 = Int(steps["n1"], "num_inference_steps.n1");
        var fakeSource = p["fake_model"] is JsonValue fv && fv.TryGetValue<string>(out var fs) ? fs : null;
        var fake = fakeSource is null ? null : FakeModel.Parse(fakeSource, $"{paramsPath}: fake_model");

        using var ddim = new DDIMScheduler(Cfg("ddim_config"));
        using var ddpm = new DDPMScheduler(Cfg("ddpm_config"));
        Cmp("betas", ddim.schedule.betas);
        Cmp("alphas_cumprod", ddim.schedule.alphas_cumprod);
        Cmp("ddim_final_alpha_cumprod", scalar_tensor((double)ddim.final_alpha_cumprod, float32));
        foreach (var (tag, n) in schedules)
        {
            ddim.set_timesteps(n);
            ddpm.set_timesteps(n);
            Cmp($"ddim_timesteps_{tag}", ddim.timesteps);
            Cmp($"ddpm_timesteps_{tag}", ddpm.timesteps);
        }
        if (io.Contains("add_noise_out"))
            Cmp("add_noise_out", ddim.schedule.add_noise(In("add_noise_x0"), In("add_noise_noise"), In("add_noise_timesteps")));
        if (io.Contains("velocity_out"))
            Cmp("velocity_out", ddim.schedule.get_velocity(In("add_noise_x0"), In("add_noise_noise"), In("velocity_timesteps")));

        ddim.set_timesteps(n1);
        ddpm.set_timesteps(n1);
        using var ddimV = new DDIMScheduler(Cfg("ddim_config") with { prediction_type = "v_prediction" });
        ddimV.set_timesteps(n1);
        var caseTimesteps = new List<long>();
        for (var k = 0; io.Contains($"ddim_case{k}_sample"); k++)
        {
            var c = $"ddim_case{k}_";
            var x = In(c + "sample");
            var mo = In(c + "model_output");
            var z = In(c + "variance_noise");
            var t = In(c + "timestep").item<long>();
            caseTimesteps.Add(t);
            var prevT = ddim.PrevTimestep(t);
            Cmp(c + "prev_timestep", scalar_tensor(prevT));
            var variance = ddim.get_variance(t, prevT);
            Cmp(c + "variance", scalar_tensor(variance, float32));
            Cmp(c + "std_dev_t_eta1", scalar_tensor(Math.Sqrt(variance), float32));
            var e0 = ddim.step(mo, t, x);
            Cmp(c + "eps_eta0_prev_sample", e0.prev_sample);
            Cmp(c + "eps_eta0_pred_original_sample", e0.pred_original_sample!);
            Cmp(c + "eps_eta1_prev_sample", ddim.step(mo, t, x, 1.0, new NoiseSource(noise: z)).prev_sample);
            var v0 = ddimV.step(mo, t, x);
            Cmp(c + "v_eta0_prev_sample", v0.prev_sample);
            Cmp(c + "v_eta0_pred_original_sample", v0.pred_original_sample!);
            Cmp(c + "v_eta1_prev_sample", ddimV.step(mo, t, x, 1.0, new NoiseSource(noise: z)).prev_sample);
            Cmp(c + "ddpm_prev_sample", ddpm.step(mo, t, x, 0, new NoiseSource(noise: z)).prev_sample);
        }

        if (p["ddim_case_timesteps"] is JsonArray listed)
        {
            var want = listed.Select((n, i) => (long)Int(n, $"ddim_case_timesteps[{i}]")).ToList();
            if (!want.SequenceEqual(caseTimesteps))
                throw new InvalidDataException($"{paramsPath}: ddim_case_timesteps [{string.Join(", ", want)}] but {ioPath} holds single-step cases at [{string.Join(", ", caseTimesteps)}]");
        }

        var trajectories = p.Where(kv => kv.Key.EndsWith("_config", StringComparison.Ordinal) && kv.Key is not ("ddim_config" or "ddpm_config" or "sd15_scheduler_config"))
            .Select(kv => kv.Key[..^"_config".Length]).ToList();
        if (trajectories.Any(n => io.Contains(n + "_samples")))
        {
            if (!io.Contains("traj_latent0")) throw new InvalidDataException($"{ioPath}: trajectories recorded but no traj_latent0 (their starting latent)");
            if (fake is null) throw new InvalidDataException($"{paramsPath}: trajectories recorded but no fake_model string (the model that produced their model outputs)");
        }
        var nTraj = trajectories.Any(n => io.Contains(n + "_samples")) ? Int(p["n_traj"], "n_traj") : 0;
        foreach (var name in trajectories)
        {
            if (!io.Contains(name + "_samples")) continue;
            using var s = Scheduler.FromConfig(Cfg(name + "_config"));
            s.set_timesteps(nTraj);
            Cmp(name + "_timesteps", s.timesteps);
            if (s is EulerDiscreteScheduler e) Cmp(name + "_sigmas", tensor(e.sigmas));
            if (s is DPMSolverMultistepScheduler d) Cmp(name + "_sigmas", tensor(d.sigmas));
            Cmp(name + "_init_noise_sigma", scalar_tensor(s.init_noise_sigma, float32));
            var xs = In("traj_latent0") * s.init_noise_sigma;
            Cmp(name + "_x_init", xs);
            var inputs = new List<Tensor>();
            var outputs = new List<Tensor>();
            var samples = new List<Tensor>();
            foreach (var t in s.TimestepValues)
            {
                var xin = s.scale_model_input(xs, t);
                var mo = fake!.Evaluate(s, xs, t);
                xs = s.step(mo, t, xs).prev_sample;
                inputs.Add(xin);
                outputs.Add(mo);
                samples.Add(xs);
            }
            Cmp(name + "_model_inputs", stack(inputs.ToArray()));
            Cmp(name + "_model_outputs", stack(outputs.ToArray()));
            Cmp(name + "_samples", stack(samples.ToArray()));
        }
        // Every recorded tensor must have been compared (inputs excepted).
        var inputsOnly = new HashSet<string> { "add_noise_x0", "add_noise_noise", "add_noise_timesteps", "velocity_timesteps", "traj_latent0" };
        foreach (var key in io.Keys.Order(StringComparer.Ordinal))
        {
            var isInput = inputsOnly.Contains(key) || key.EndsWith("_sample", StringComparison.Ordinal) && key.StartsWith("ddim_case", StringComparison.Ordinal)
                || key.EndsWith("_model_output", StringComparison.Ordinal) || key.EndsWith("_variance_noise", StringComparison.Ordinal) || key.EndsWith("_timestep", StringComparison.Ordinal);
            if (!isInput && rows.All(r => r.Name != key)) rows.Add(new ParityRow(key, double.NaN, double.NaN, double.NaN, false, "not computed"));
        }
        return new ParityReport("schedulers", $"max |Δ| ≤ {factor:G3} · max(1, max |reference|)", rows);
    }
}
