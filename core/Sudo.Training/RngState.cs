using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Training;

/// <summary>A checkpoint's rng.safetensors: the trainer's generator ("trainer") and libtorch's default
/// generator ("torch_default"), so a resumed run draws the same numbers an uninterrupted one would.</summary>
internal static class RngState
{
    public const string FileName = "rng.safetensors";

    public static void Save(string checkpointDir, Generator trainer)
    {
        using var scope = NewDisposeScope();
        safetensors.save_file(new Dictionary<string, Tensor> { ["trainer"] = trainer.get_state(), ["torch_default"] = get_rng_state() },
            Path.Combine(checkpointDir, FileName));
    }

    public static void Load(string checkpointDir, Generator trainer)
    {
        using var f = safetensors.safe_open(Path.Combine(checkpointDir, FileName));
        using var r = f.get("trainer", copy: true);
        trainer.set_state(r);
        using var g = f.get("torch_default", copy: true);
        set_rng_state(g);
    }
}
