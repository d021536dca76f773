// diffusers scheduler_config.json, one record for every scheduler Sudo implements (unknown fields are
// ignored; missing ones take the class defaults of diffusers 0.27.2).
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Models;

namespace Sudo.Diffusion;

public sealed record SchedulerConfig
{
    public string _class_name { get; init; } = "DDIMScheduler";
    public int num_train_timesteps { get; init; } = 1000;
    public double beta_start { get; init; } = 0.0001;
    public double beta_end { get; init; } = 0.02;
    public string beta_schedule { get; init; } = "linear";
    public double[]? trained_betas { get; init; }
    public string prediction_type { get; init; } = "epsilon";
    public int steps_offset { get; init; }
    public bool set_alpha_to_one { get; init; } = true;
    public bool clip_sample { get; init; } = true;
    public double clip_sample_range { get; init; } = 1.0;
    public bool thresholding { get; init; }
    /// <summary>null: the class default (leading for DDPM/DDIM, linspace for Euler/DPM-Solver).</summary>
    public string? timestep_spacing { get; init; }
    public bool rescale_betas_zero_snr { get; init; }
    public string? variance_type { get; init; } = "fixed_small";
    public bool use_karras_sigmas { get; init; }
    public string interpolation_type { get; init; } = "linear";
    public string algorithm_type { get; init; } = "dpmsolver++";
    public int solver_order { get; init; } = 2;
    public string solver_type { get; init; } = "midpoint";
    public bool lower_order_final { get; init; } = true;
    public bool euler_at_final { get; init; }
    public string final_sigmas_type { get; init; } = "zero";
    public double lambda_min_clipped { get; init; } = double.NegativeInfinity;
    /// <summary>PNDM: skip the Runge-Kutta warm-up and run PLMS only (Stable Diffusion's configs set it).</summary>
    public bool skip_prk_steps { get; init; }

    public static SchedulerConfig FromFile(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"scheduler config not found: {path}", path);
        return FromJson(File.ReadAllText(path), path);
    }

    /// <summary>Python's json writes NaN / Infinity / -Infinity bare (diffusers' lambda_min_clipped): quote
    /// them so System.Text.Json reads them as named literals.</summary>
    public static JsonNode? ParsePythonJson(string json) => ConfigJson.ParsePython(json);

    public static SchedulerConfig FromJson(string json, string source = "scheduler config")
    {
        JsonObject o;
        try
        {
            o = ConfigJson.ParsePython(json, source) as JsonObject ?? throw new InvalidDataException($"{source}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON: {e.Message}", e);
        }
        return FromJson(o, source);
    }

    /// <summary>The record from a parsed scheduler_config.json (System.Text.Json; the initialisers are the defaults).</summary>
    public static SchedulerConfig FromJson(JsonObject o, string source = "scheduler config")
    {
        var c = ConfigJson.Read<SchedulerConfig>(o, source);
        if (c.prediction_type is not ("epsilon" or "v_prediction" or "sample"))
            throw new NotSupportedException($"{source}: prediction_type '{c.prediction_type}' is not supported (epsilon, v_prediction, sample)");
        if (c.thresholding) throw new NotSupportedException($"{source}: dynamic thresholding is not supported");
        return c;
    }

    /// <summary>runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (PNDM there; these fields are shared).</summary>
    public static SchedulerConfig SD15 => new()
    {
        beta_start = 0.00085,
        beta_end = 0.012,
        beta_schedule = "scaled_linear",
        steps_offset = 1,
        set_alpha_to_one = false,
        clip_sample = false,
        skip_prk_steps = true,
    };
}
