using NUnit.Framework;
using Sudo.Diffusion;
using Sudo.Torch;
using Sudo.Torch.Tests;

namespace Sudo.Reliability.Tests;

/// <summary>Every tensor is disposed by its owner or scope; none is left to the finalizer (which frees libtorch memory
/// at a time no one chooses). The soak bench (sudoml bench soak) checks the same over 10,000 training steps.</summary>
public class FinalizerTests
{
    private static long Finalized()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        return torch.finalized_tensors;
    }

    [Test]
    public void LoadingAndRunningAPipelineLeavesNothingToTheFinalizer()
    {
        var before = Finalized();
        // Found by the soak bench: CLIP's position_ids buffer was a view of an arange whose handle was never disposed.
        using (var pipe = StableDiffusionPipeline.from_pretrained(Shared.Require("golden", "pipe_sd15"), "ddim"))
        using (var scope = torch.NewDisposeScope())
        {
            var e = pipe.encode_prompt(["a red circle"], 1, true, [""]);
            Assert.That(e.prompt_embeds.shape[0], Is.EqualTo(1));
        }
        Assert.That(Finalized() - before, Is.EqualTo(0), "tensors freed by the finalizer while loading and encoding");
    }
}
