// One flag vocabulary for every front end (the CLI, recipes, the study): command-line flags bound onto the config
// records (TrainConfig, SpoTrainConfig, or any record of init properties), whose initialisers are the only
// defaults. `--name value`, `--name=value`, booleans as bare flags or `--flag true/false`, lists as several values
// (`--validation_prompts "a cat" "a dog"`); unknown flags are refused with the valid ones and the closest match.
// Every flag of Diffusion-DPO's train.py (SUDO is a fork of it) and of diffusers' train_diffusion_dpo.py is known:
// bound with its train.py meaning, or refused with a one-line reason (UpstreamFlags; docs/flags.md is generated
// from that table by `sudoml flags --markdown`). A diffusers command line is mapped only with
// `--flag_convention diffusers` (its β_d is half train.py's β; its defaults are the diffusers script's).
using System.Globalization;
using System.Reflection;
using System.Text;

namespace Sudo.Training;

public enum FlagStatus
{
    /// <summary>Bound to a config field with the upstream meaning.</summary>
    Supported,
    /// <summary>Accepted and recorded; it changes nothing on this backend (the note says why).</summary>
    NoEffect,
    /// <summary>Refused unless given its upstream default value (the note says why).</summary>
    Rejected,
}

/// <summary>A flag of train.py and/or train_diffusion_dpo.py: the upstream defaults (null: not a flag of that
/// script), what it means there, and what Sudo does with it.</summary>
public sealed record UpstreamFlag(string name, string? train_py, string? diffusers, string meaning, FlagStatus status, string note = "", string? field = null);

public enum FlagConvention { TrainPy, Diffusers }

public static class UpstreamFlags
{
    const string S = nameof(FlagStatus.Supported);

    /// <summary>Every flag of both upstream scripts (train.py: the parse_args of Diffusion-DPO's
    /// train.py, which SUDO keeps; diffusers: examples/research_projects/diffusion_dpo/train_diffusion_dpo.py parse_args).</summary>
    public static readonly IReadOnlyList<UpstreamFlag> All =
    [
        new("pretrained_model_name_or_path", "required", "required", "base pipeline (folder or hub id)", FlagStatus.Supported, "a local folder or an org/name in the hub cache (no downloads)"),
        new("revision", "None", "None", "hub revision of the model", FlagStatus.Supported, "the snapshot refs/<revision> names in the hub cache"),
        new("variant", null, "None", "weight-file variant (fp16, ...)", FlagStatus.Supported),
        new("pretrained_vae_model_name_or_path", "None", null, "another VAE (SDXL fp16-fix)", FlagStatus.Supported),
        new("unet_init", "''", null, "start policy and reference from this UNet", FlagStatus.Supported),
        new("sdxl", "False", null, "SDXL path (Adafactor, grad checkpointing)", FlagStatus.Supported),
        new("sft", "False", null, "SFT instead of DPO", FlagStatus.Supported, "sets --method sft", "method"),
        new("beta_dpo", "5000 (−½β inside σ)", "2500 (β_d inside σ)", "DPO β", FlagStatus.Supported, "train.py's β; with --flag_convention diffusers a given β_d is doubled"),
        new("loss_type", null, "sigmoid", "DPO loss: sigmoid, hinge, ipo", FlagStatus.Rejected, "only the sigmoid loss of both papers is a preset; a recipe defines others as a Method"),
        new("choice_model", "''", null, "AI-feedback relabelling model", FlagStatus.Supported, "name=path with name pickscore, hps, aes, clip or imagereward (the reward models of sudoml eval), or a bare PickScore-like CLIPModel folder"),
        new("dreamlike_pairs_only", "False", null, "keep pairs whose two generators are both Dreamlike", FlagStatus.Supported, "'dream' in model_0 and in model_1 (case-sensitive); refused for pair folders, which have no model columns"),
        new("dataset_name", "None", "None", "dataset (hub id or local path)", FlagStatus.Supported, "a hub id found in the datasets cache (--cache_dir) or the Hub cache, a save_to_disk or parquet folder, or a pair folder; Sudo never downloads"),
        new("dataset_config_name", "None", null, "hub dataset config", FlagStatus.Supported, "the config folder of the datasets cache (default: default)"),
        new("train_data_dir", "None", null, "local imagefolder alternative", FlagStatus.Supported, "a local dataset folder (any form --dataset_name takes), used when --dataset_name is not given"),
        new("image_column", "image", null, "image column (non-Pick-a-Pic SFT)", FlagStatus.Rejected, "SFT on an image-caption folder is not supported: give a pair folder"),
        new("caption_column", "caption", null, "caption column", FlagStatus.Supported),
        new("split", "train", null, "dataset split; shuffled only when 'train'", FlagStatus.Supported, "selects the split of a hub/parquet/Arrow dataset; a pair folder has one split (the name then only decides shuffling)"),
        new("dataset_split_name", null, "validation", "dataset split", FlagStatus.Supported, "diffusers' name for --split", "split"),
        new("max_train_samples", "None", "None", "seeded shuffle, then keep the first N", FlagStatus.Supported),
        new("cache_dir", "None", "None", "datasets cache (train.py); models and datasets (diffusers)", FlagStatus.Supported, "the datasets cache, as train.py; models come from --hub_cache_dir / HF_HUB_CACHE / HF_HOME"),
        new("resolution", "None → 512 / 1024", "512", "square training resolution", FlagStatus.Supported, "unset: the model's native size"),
        new("random_crop", "False", "False", "random instead of center crop", FlagStatus.Supported),
        new("no_hflip", "False", "False", "no random horizontal flip", FlagStatus.Supported),
        new("random_flip", null, null, "", FlagStatus.Rejected, "not a flag of either script: flipping is on unless --no_hflip"),
        new("proportion_empty_prompts", "0.2", null, "caption dropout", FlagStatus.Supported),
        new("vae_encode_batch_size", null, "8", "VAE encoding chunk", FlagStatus.NoEffect, "the micro-batch is encoded at once; chunking changes memory, not results"),
        new("train_batch_size", "1", "4", "pairs per device per micro-step", FlagStatus.Supported),
        new("gradient_accumulation_steps", "1", "1", "micro-steps per optimizer step", FlagStatus.Supported),
        new("num_train_epochs", "100", "1", "epochs when max_train_steps is unset", FlagStatus.Supported),
        new("max_train_steps", "2000", "None", "optimizer steps", FlagStatus.Supported),
        new("learning_rate", "1e-8", "5e-4", "learning rate", FlagStatus.Supported),
        new("scale_lr", "False", "False", "lr × accumulation × batch × processes", FlagStatus.Supported),
        new("lr_scheduler", "constant_with_warmup", "constant", "diffusers scheduler name", FlagStatus.Supported, "constant, constant_with_warmup, linear, cosine"),
        new("lr_warmup_steps", "500", "500", "warmup steps", FlagStatus.Supported),
        new("lr_num_cycles", null, "1", "cosine_with_restarts cycles", FlagStatus.Rejected, "cosine_with_restarts is not implemented (cosine is one half-wave, as diffusers' get_scheduler gives it)"),
        new("lr_power", null, "1.0", "polynomial scheduler power", FlagStatus.Rejected, "the polynomial scheduler is not implemented"),
        new("use_adafactor", "False", null, "Adafactor; no explicit clipping", FlagStatus.Supported),
        new("use_8bit_adam", null, "False", "8-bit Adam (bitsandbytes)", FlagStatus.Rejected, "no 8-bit optimizer on this backend"),
        new("adam_beta1", "0.9", "0.9", "AdamW β1", FlagStatus.Supported),
        new("adam_beta2", "0.999", "0.999", "AdamW β2", FlagStatus.Supported),
        new("adam_weight_decay", "1e-2", "1e-2", "weight decay", FlagStatus.Supported),
        new("adam_epsilon", "1e-8", "1e-8", "AdamW ε", FlagStatus.Supported),
        new("max_grad_norm", "1.0", "1.0", "gradient-norm clip", FlagStatus.Supported),
        new("gradient_checkpointing", "False", "False", "recompute UNet blocks in backward", FlagStatus.Supported),
        new("allow_tf32", "False", "False", "TF32 matmuls", FlagStatus.NoEffect, "CUDA only; recorded, no effect on a CPU"),
        new("mixed_precision", "fp16", "None (accelerate config)", "no / fp16 / bf16", FlagStatus.Supported, "unset: fp16 on CUDA, no on a CPU (libtorch cannot compute fp16 there)"),
        new("prior_generation_precision", null, "None", "precision of prior generation", FlagStatus.NoEffect, "no prior images are generated in DPO"),
        new("enable_xformers_memory_efficient_attention", null, "False", "xFormers attention", FlagStatus.NoEffect, "attention is libtorch's; xFormers is a CUDA extension"),
        new("dataloader_num_workers", "0", "0", "loader worker processes", FlagStatus.Supported, "background decode threads with a bounded prefetch; results do not depend on the count"),
        new("noise_offset", "0", null, "offset-noise scale (\"haven't tried yet\")", FlagStatus.Rejected, "untried upstream and not implemented"),
        new("input_perturbation", "0", null, "input-perturbation scale (\"haven't tried yet\")", FlagStatus.Rejected, "untried upstream and not implemented"),
        new("seed", "None (random)", "None", "seed", FlagStatus.Supported, "Sudo's default is 0, so one command gives one result"),
        new("output_dir", "sd-model-finetuned", "diffusion-dpo-lora", "outputs and checkpoints", FlagStatus.Supported),
        new("logging_dir", "logs", "logs", "tracker folder under output_dir", FlagStatus.Supported),
        new("report_to", "tensorboard", "tensorboard", "tracker", FlagStatus.Supported, "tensorboard, all or none; wandb/comet_ml need a network service"),
        new("tracker_project_name", "tuning", null, "tracker project", FlagStatus.Supported, "TensorBoard events go to output_dir/logging_dir/<project>"),
        new("tracker_name", null, "diffusion-dpo-lora", "tracker project", FlagStatus.Supported, "diffusers' name for --tracker_project_name", "tracker_project_name"),
        new("checkpointing_steps", "500", "500", "checkpoint cadence", FlagStatus.Supported),
        new("checkpoints_total_limit", null, "None", "checkpoints kept", FlagStatus.Supported),
        new("resume_from_checkpoint", "latest", "None", "resume point", FlagStatus.Supported, "latest, a checkpoint path, or none; refused when the checkpoint's settings differ"),
        new("hard_skip_resume", "False", null, "do not iterate the loader to the resume point", FlagStatus.NoEffect, "a checkpoint stores the data position, so resuming never iterates the loader"),
        new("run_validation", null, "False", "sample validation prompts during training", FlagStatus.Rejected, "use --validation_prompts with --validation_steps"),
        new("validation_steps", null, "200", "validation cadence", FlagStatus.Supported),
        new("push_to_hub", null, "False", "upload to the Hub", FlagStatus.Rejected, "no network"),
        new("hub_token", null, "None", "Hub token", FlagStatus.Rejected, "no network"),
        new("hub_model_id", "None", "None", "Hub repository name", FlagStatus.NoEffect, "unused by train.py; nothing is uploaded"),
        new("local_rank", "-1", "-1", "distributed rank", FlagStatus.Rejected, "one process per run until data-parallel training lands"),
        new("rank", null, "4", "LoRA rank", FlagStatus.Supported, "diffusers' name for --lora_rank", "lora_rank"),
    ];

    public static readonly IReadOnlyDictionary<string, UpstreamFlag> ByName = All.ToDictionary(f => f.name);

    /// <summary>The defaults the diffusers script differs in (applied before its flags with --flag_convention diffusers).</summary>
    public static TrainConfig DiffusersDefaults(TrainConfig c) => c with
    {
        beta_dpo = 2 * 2500,
        learning_rate = 5e-4,
        lr_scheduler = "constant",
        train_batch_size = 4,
        output_dir = "diffusion-dpo-lora",
        resume_from_checkpoint = null,
        split = "validation",
        max_train_steps = null,
        num_train_epochs = 1,
        lora_rank = 4,
        resolution = 512,
        validation_steps = 200,
        tracker_project_name = "diffusion-dpo-lora",
        proportion_empty_prompts = 0,
    };

    /// <summary>docs/flags.md: every flag of both scripts and every Sudo setting of TrainConfig.</summary>
    public static string Markdown()
    {
        var sb = new StringBuilder();
        sb.AppendLine("# Training flags");
        sb.AppendLine();
        sb.AppendLine("Generated by `./sudoml flags --markdown` from `UpstreamFlags.All` and `TrainConfig` (a test checks this file is current).");
        sb.AppendLine("`train.py` is Diffusion-DPO's (SUDO's fork keeps its flags); `diffusers` is `examples/research_projects/diffusion_dpo/train_diffusion_dpo.py`.");
        sb.AppendLine("Where the two differ, `train.py` wins; a diffusers command line is read with `--flag_convention diffusers`, which starts from the");
        sb.AppendLine("diffusers defaults and doubles its `--beta_dpo` (its β_d multiplies −Δ inside σ, train.py's β multiplies −½Δ). Refused flags are accepted");
        sb.AppendLine("when given their upstream default. Flags take `--name value` or `--name=value`; booleans also `--flag true/false`.");
        sb.AppendLine();
        sb.AppendLine("| flag | train.py default | diffusers default | upstream meaning | Sudo | status |");
        sb.AppendLine("|---|---|---|---|---|---|");
        foreach (var f in All.Where(f => f.train_py != null || f.diffusers != null))
        {
            var ours = f.field is { } field ? $"→ `{field}`. {f.note}" : f.note;
            sb.AppendLine($"| `--{f.name}` | {f.train_py ?? "—"} | {f.diffusers ?? "—"} | {f.meaning} | {ours.Trim()} | {f.status} |");
        }
        sb.AppendLine();
        sb.AppendLine("## Sudo's own settings (TrainConfig)");
        sb.AppendLine();
        sb.AppendLine("| flag | default |");
        sb.AppendLine("|---|---|");
        var d = RunRecord.ConfigNode(new TrainConfig());
        foreach (var (k, v) in d)
            if (!ByName.ContainsKey(k)) sb.AppendLine($"| `--{k}` | {v?.ToJsonString() ?? "null"} |");
        return sb.ToString();
    }
}

/// <summary>The result of binding: the record and the notes to print (flags accepted without effect).</summary>
public sealed record Bound<T>(T value, IReadOnlyList<string> notes, IReadOnlySet<string> given, IReadOnlyDictionary<string, string> extras);

public static class Flags
{
    /// <summary>Binds <paramref name="args"/> onto <paramref name="start"/> (default: a fresh record, i.e. its
    /// initialisers). <paramref name="extras"/>: flags a recipe adds (name → default), returned as strings.</summary>
    public static Bound<T> Bind<T>(IReadOnlyList<string> args, T? start = null, IReadOnlyDictionary<string, string>? extras = null) where T : class
    {
        var props = typeof(T).GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite).ToDictionary(p => p.Name);
        var tokens = Tokenize(args);
        var convention = FlagConvention.TrainPy;
        foreach (var (name, value) in tokens.Where(t => t.name == "flag_convention"))
            convention = value switch
            {
                "diffusers" => FlagConvention.Diffusers,
                "train_py" or "train.py" => FlagConvention.TrainPy,
                _ => throw new ArgumentException($"--flag_convention {value}: expected train_py (the default: Diffusion-DPO/SUDO train.py) or diffusers (train_diffusion_dpo.py)"),
            };
        var value0 = start ?? Activator.CreateInstance<T>();
        if (convention == FlagConvention.Diffusers)
            value0 = value0 is TrainConfig tc ? (T)(object)UpstreamFlags.DiffusersDefaults(tc)
                : throw new ArgumentException("--flag_convention diffusers applies to offline training (TrainConfig) only");
        var values = new Dictionary<string, object?>();
        var notes = new List<string>();
        var given = new HashSet<string>();
        var extraValues = extras?.ToDictionary(kv => kv.Key, kv => kv.Value) ?? [];
        foreach (var (rawName, rawValue) in tokens)
        {
            if (rawName == "flag_convention") continue;
            var name = rawName;
            var value = rawValue;
            if (extras != null && extras.ContainsKey(name))
            {
                extraValues[name] = value ?? "true";
                given.Add(name);
                continue;
            }
            UpstreamFlags.ByName.TryGetValue(name, out var up);
            if (up != null && (up.status != FlagStatus.Supported || up.field != null || !props.ContainsKey(name)))
            {
                if (up.status == FlagStatus.Rejected)
                {
                    if (!IsDefault(up, value, convention)) throw new ArgumentException($"--{name}: not supported — {up.note}");
                    continue;
                }
                if (up.status == FlagStatus.NoEffect)
                {
                    notes.Add($"note: --{name} is accepted for compatibility and changes nothing here: {up.note}");
                    if (!props.ContainsKey(name)) continue;
                }
                if (name == "sft" && up.field == "method")
                {
                    if (ParseBool(name, value))
                    {
                        if (values.TryGetValue("method", out var prior) && (string?)prior != "sft") throw new ArgumentException($"--sft contradicts --method {prior}");
                        values["method"] = "sft";
                        given.Add("method");
                    }
                    continue;
                }
                if (up.field != null) name = up.field;
            }
            if (!props.TryGetValue(name, out var prop)) throw Unknown(rawName, props.Keys.Concat(extras?.Keys ?? []).Concat(UpstreamFlags.ByName.Keys));
            var parsed = Parse(rawName, prop.PropertyType, value, Nullability.Create(prop).WriteState == System.Reflection.NullabilityState.Nullable);
            if (convention == FlagConvention.Diffusers && name == "beta_dpo") parsed = 2 * (double)parsed!;
            if (name == "method" && values.TryGetValue("method", out var m) && (string?)m == "sft" && (string?)parsed != "sft")
                throw new ArgumentException($"--method {parsed} contradicts --sft");
            values[name] = parsed;
            given.Add(name);
        }
        // Apply onto a copy made with the record's own clone (so unset fields keep the initialisers' values).
        var clone = (T)typeof(T).GetMethod("<Clone>$")!.Invoke(value0, null)!;
        foreach (var (k, v) in values) props[k].SetValue(clone, v);
        return new Bound<T>(clone, notes, given, extraValues);
    }

    /// <summary>The command line that binds to <paramref name="value"/>: `--name value` for every field that differs
    /// from the record's initialiser (booleans as bare flags or `--name false`, lists as several values, null as
    /// `none`). Flags.Bind(ToArgs(x)) equals x; the study launches recipes with it.</summary>
    public static List<string> ToArgs<T>(T value) where T : class
    {
        var defaults = RunRecord.ConfigNode(Activator.CreateInstance<T>());
        var args = new List<string>();
        foreach (var p in typeof(T).GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite))
        {
            var v = p.GetValue(value);
            var node = System.Text.Json.JsonSerializer.SerializeToNode(v, p.PropertyType);
            if (System.Text.Json.Nodes.JsonNode.DeepEquals(node, defaults[p.Name])) continue;
            switch (v)
            {
                case null: args.AddRange(["--" + p.Name, "none"]); break;
                case bool b: args.AddRange(b ? ["--" + p.Name] : ["--" + p.Name, "false"]); break;
                case string[] list: args.Add("--" + p.Name); args.AddRange(list); break;
                case double d: args.AddRange(["--" + p.Name, d.ToString("R", CultureInfo.InvariantCulture)]); break;
                case IFormattable f: args.AddRange(["--" + p.Name, f.ToString(null, CultureInfo.InvariantCulture)]); break;
                default: args.AddRange(["--" + p.Name, v.ToString()!]); break;
            }
        }
        return args;
    }

    /// <summary>Flags of a script that trains nothing: each must be one of <paramref name="options"/> (name → default).</summary>
    public static IReadOnlyDictionary<string, string> Options(IReadOnlyList<string> args, IReadOnlyDictionary<string, string> options)
    {
        var values = options.ToDictionary(kv => kv.Key, kv => kv.Value);
        foreach (var (name, value) in Tokenize(args))
        {
            if (!options.ContainsKey(name)) throw Unknown(name, options.Keys);
            values[name] = value ?? "true";
        }
        return values;
    }

    static bool IsDefault(UpstreamFlag f, string? value, FlagConvention c)
    {
        var d = (c == FlagConvention.Diffusers ? f.diffusers ?? f.train_py : f.train_py ?? f.diffusers)?.Split(' ')[0];
        if (d is null) return false;
        var v = value ?? "true";
        if (d is "False" or "True") return string.Equals(v, d, StringComparison.OrdinalIgnoreCase);
        if (d == "None") return v is "None" or "none" or "";
        return double.TryParse(d, NumberStyles.Float, CultureInfo.InvariantCulture, out var dv) && double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var vv)
            ? dv == vv : string.Equals(v, d.Trim('\''), StringComparison.Ordinal);
    }

    /// <summary>(name, value) pairs; value is null for a bare flag. Names lose their leading dashes and have '-' turned into '_'.</summary>
    public static List<(string name, string? value)> Tokenize(IReadOnlyList<string> args)
    {
        var list = new List<(string, string?)>();
        for (var i = 0; i < args.Count; i++)
        {
            var a = args[i];
            if (a == "--") continue;
            if (!a.StartsWith("--") || a.Length == 2)
                throw new ArgumentException($"unexpected argument '{a}': flags are --name value or --name=value");
            var body = a[2..];
            var eq = body.IndexOf('=');
            string name;
            string? value = null;
            if (eq >= 0) { name = body[..eq]; value = body[(eq + 1)..]; }
            else
            {
                name = body;
                // Every following non-flag token is a value (lists take several: --validation_prompts "a" "b").
                var vals = new List<string>();
                while (i + 1 < args.Count && !IsFlag(args[i + 1])) vals.Add(args[++i]);
                value = vals.Count switch { 0 => null, 1 => vals[0], _ => string.Join("\u001f", vals) };
            }
            list.Add((name.Replace('-', '_'), value));
        }
        return list;
    }

    static bool IsFlag(string s) => s.StartsWith("--") && s.Length > 2 && !double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out _);

    static bool ParseBool(string name, string? v) => v switch
    {
        null => true,
        _ when string.Equals(v, "true", StringComparison.OrdinalIgnoreCase) || v == "1" => true,
        _ when string.Equals(v, "false", StringComparison.OrdinalIgnoreCase) || v == "0" => false,
        _ => throw new ArgumentException($"--{name} {v}: expected true or false (or the bare flag)"),
    };

    private static readonly System.Reflection.NullabilityInfoContext Nullability = new();

    /// <param name="nullable">whether the setting is declared nullable (string? / int?): only then does "none" mean
    /// null. For a non-nullable string such as report_to, "none" is the value itself.</param>
    static object? Parse(string name, Type t, string? v, bool nullable)
    {
        var inner = Nullable.GetUnderlyingType(t);
        nullable |= inner != null;
        var target = inner ?? t;
        if (target == typeof(bool)) return ParseBool(name, v);
        if (v is null) throw new ArgumentException($"--{name} needs a value ({Describe(target)})");
        if (nullable && v is "none" or "None" or "null") return null;
        if (target == typeof(string[])) return v.Split('\u001f');
        if (v.Contains('\u001f')) throw new ArgumentException($"--{name} takes one value, got several: {v.Replace('\u001f', ' ')}");
        try
        {
            if (target == typeof(string)) return v;
            if (target == typeof(int)) return int.Parse(v, NumberStyles.Integer, CultureInfo.InvariantCulture);
            if (target == typeof(long)) return long.Parse(v, NumberStyles.Integer, CultureInfo.InvariantCulture);
            if (target == typeof(double)) return double.Parse(v, NumberStyles.Float, CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new ArgumentException($"--{name} {v}: expected {Describe(target)}");
        }
        throw new NotSupportedException($"--{name}: settings of type {t.Name} cannot be given as flags");
    }

    static string Describe(Type t) =>
        t == typeof(int) || t == typeof(long) ? "an integer" : t == typeof(double) ? "a number" : t == typeof(string[]) ? "one or more values" : "a value";

    static ArgumentException Unknown(string name, IEnumerable<string> valid)
    {
        var names = valid.Distinct().OrderBy(n => n, StringComparer.Ordinal).ToList();
        var closest = names.MinBy(n => Levenshtein(n, name))!;
        return new ArgumentException($"unknown flag --{name} (did you mean --{closest}?). Valid flags: {string.Join(" ", names.Select(n => "--" + n))}");
    }

    static int Levenshtein(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (var i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (var j = 0; j <= b.Length; j++) d[0, j] = j;
        for (var i = 1; i <= a.Length; i++)
            for (var j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}
