using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;
namespace Sudo.Bench;

/// <summary>A small real training run for the README's main command: a conv net learns where a bright
/// blob sits in a noisy 16×16 image (left/right × top/bottom, 4 classes). Exercises conv2d, GroupNorm,
/// SiLU, Linear, cross-entropy, AdamW, warmup+cosine schedule, gradient clipping, scopes and a
/// safetensors round trip.</summary>
public static class ConvNetDemo
{
    public sealed class Net : nn.Module<Tensor, Tensor>
    {
        public readonly nn.Conv2d conv1, conv2;
        public readonly nn.GroupNorm norm;
        public readonly nn.Linear head;

        public Net()
        {
            conv1 = register_module("conv1", new nn.Conv2d(1, 16, 3, padding: 1));
            conv2 = register_module("conv2", new nn.Conv2d(16, 32, 3, stride: 2, padding: 1));
            norm = register_module("norm", new nn.GroupNorm(4, 32));
            head = register_module("head", new nn.Linear(32 * 4, 4));
        }

        public override Tensor forward(Tensor x)
        {
            var h = nn.functional.silu(conv1.forward(x));
            h = nn.functional.silu(norm.forward(conv2.forward(h)));
            h = nn.functional.avg_pool2d(h, 4);           // [B, 32, 2, 2]: keeps where things are
            return head.forward(h.flatten(1));
        }
    }

    public static (Tensor images, Tensor labels) Batch(int n, Generator g)
    {
        using var scope = NewDisposeScope();
        var labels = randint(0, 4, [n], g);
        var noise = randn([n, 1, 16, 16], g);
        var ys = arange(16).view(1, 1, 16, 1).@float();
        var xs = arange(16).view(1, 1, 1, 16).@float();
        var cy = ((labels / 2).@long().@float() * 8 + 4).view(n, 1, 1, 1) + (rand([n, 1, 1, 1], g) - 0.5) * 4;
        var cx = ((labels % 2).@float() * 8 + 4).view(n, 1, 1, 1) + (rand([n, 1, 1, 1], g) - 0.5) * 4;
        var blob = ((ys - cy).square() + (xs - cx).square()).mul(-1.0 / 8).exp();
        return scope.MoveToOuter(noise + blob, labels);
    }

    /// <summary>Trains and returns (first loss, last loss, held-out accuracy, accuracy after reload).</summary>
    public static (double firstLoss, double lastLoss, double accuracy, double reloadedAccuracy) Run(int steps = 300, long seed = 0, Action<int, double, double>? log = null, string? checkpointDir = null)
    {
        manual_seed(seed);
        using var g = new Generator(seed);
        using var net = new Net();
        using var opt = new optim.AdamW(net.parameters(), lr: 3e-3, weight_decay: 1e-2);
        var sched = optim.lr_scheduler.get_scheduler("cosine", opt, num_warmup_steps: steps / 10, num_training_steps: steps);
        double first = double.NaN, last = double.NaN;
        for (var step = 0; step < steps; step++)
        {
            using var scope = NewDisposeScope();
            var (x, y) = Batch(32, g);
            var loss = nn.functional.cross_entropy(net.forward(x), y);
            opt.zero_grad();
            loss.backward();
            nn.utils.clip_grad_norm_(net.parameters(), 1.0);
            opt.step();
            sched.step();
            var l = loss.item();
            if (step == 0) first = l;
            last = l;
            log?.Invoke(step, l, sched.get_last_lr()[0]);
        }
        using var eg = new Generator(seed + 1000);
        var acc = Accuracy(net, eg);
        var dir = checkpointDir ?? Path.Combine(Path.GetTempPath(), $"sudo-demo-{Environment.ProcessId}");
        var path = Path.Combine(dir, "convnet.safetensors");
        var sd = net.state_dict();
        safetensors.save_file(sd, path);
        foreach (var t in sd.Values) t.Dispose();
        using var net2 = new Net();
        var loaded = safetensors.load_file(path);
        net2.load_state_dict(loaded);
        foreach (var t in loaded.Values) t.Dispose();
        using var eg2 = new Generator(seed + 1000);
        var acc2 = Accuracy(net2, eg2);
        if (checkpointDir is null) Directory.Delete(dir, recursive: true);
        return (first, last, acc, acc2);
    }

    private static double Accuracy(Net net, Generator g)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        net.eval();
        var (x, y) = Batch(512, g);
        var acc = net.forward(x).argmax(1).eq(y).@float().mean().item();
        net.train();
        return acc;
    }
}
