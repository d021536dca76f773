using NUnit.Framework;
using static Sudo.Torch.torch;

namespace Sudo.Torch.Tests;

public class ModuleTests
{
    /// <summary>A diffusers-shaped module: attention with to_q/to_k/to_v and to_out = [Linear, Dropout].</summary>
    private sealed class Attn : nn.Module<Tensor, Tensor>
    {
        public readonly nn.Linear to_q, to_k, to_v;
        public readonly nn.ModuleList to_out;
        public Attn(long dim)
        {
            to_q = register_module("to_q", new nn.Linear(dim, dim, bias: false));
            to_k = register_module("to_k", new nn.Linear(dim, dim, bias: false));
            to_v = register_module("to_v", new nn.Linear(dim, dim, bias: false));
            to_out = register_module("to_out", new nn.ModuleList(new nn.Linear(dim, dim), new nn.Dropout(0.0)));
        }
        public override Tensor forward(Tensor x) =>
            ((nn.Linear)to_out[0]).forward(nn.functional.scaled_dot_product_attention(to_q.forward(x), to_k.forward(x), to_v.forward(x)));
    }

    private sealed class Net : nn.Module
    {
        public readonly nn.ModuleList<Attn> attentions;
        public readonly nn.GroupNorm norm;
        public Net(long dim)
        {
            attentions = register_module("attentions", new nn.ModuleList<Attn>(new Attn(dim), new Attn(dim)));
            norm = register_module("norm", new nn.GroupNorm(2, dim));
            register_buffer("position_ids", arange(4).view(1, 4));
            register_buffer("scratch", zeros([1]), persistent: false);
        }
    }

    [Test]
    public void NamesAreTheExplicitDottedPaths()
    {
        using var net = new Net(4);
        var names = net.state_dict().Keys.ToArray();
        // PyTorch's order: a module's own parameters and persistent buffers, then its children.
        Assert.That(names, Is.EqualTo(new[]
        {
            "position_ids",
            "attentions.0.to_q.weight", "attentions.0.to_k.weight", "attentions.0.to_v.weight",
            "attentions.0.to_out.0.weight", "attentions.0.to_out.0.bias",
            "attentions.1.to_q.weight", "attentions.1.to_k.weight", "attentions.1.to_v.weight",
            "attentions.1.to_out.0.weight", "attentions.1.to_out.0.bias",
            "norm.weight", "norm.bias",
        }));
        Assert.That(net.named_buffers().Select(b => b.name), Is.EqualTo(new[] { "position_ids", "scratch" }));
        Assert.That(net.named_modules().Select(m => m.name), Does.Contain("attentions.1.to_out.1"));
        Assert.That(net.get_submodule("attentions.1.to_out.0"), Is.InstanceOf<nn.Linear>());
        Assert.Throws<KeyNotFoundException>(() => net.get_submodule("attentions.2"));
        Assert.That(net.num_parameters(), Is.EqualTo(2 * (3 * 16 + 16 + 4) + 8));
    }

    [Test]
    public void StrictLoadingReportsEveryProblem()
    {
        using var net = new Net(4);
        using var scope = NewDisposeScope();
        var sd = net.state_dict();
        sd.Remove("norm.bias");
        sd["extra.weight"] = zeros([1]);
        sd["attentions.0.to_q.weight"] = zeros([4, 5]);
        var e = Assert.Throws<InvalidDataException>(() => net.load_state_dict(sd));
        Assert.That(e!.Message, Does.Contain("missing keys (1): norm.bias"));
        Assert.That(e.Message, Does.Contain("unexpected keys (1): extra.weight"));
        Assert.That(e.Message, Does.Contain("attentions.0.to_q.weight: checkpoint [4, 5] vs model [4, 4]"));
        // non-strict still refuses shape mismatches, but tolerates missing/unexpected keys
        sd["attentions.0.to_q.weight"] = ones([4, 4]);
        var r = net.load_state_dict(sd, strict: false);
        Assert.That(r.MissingKeys, Is.EqualTo(new[] { "norm.bias" }));
        Assert.That(r.UnexpectedKeys, Is.EqualTo(new[] { "extra.weight" }));
        Assert.That(net.attentions[0].to_q.weight.sum().item(), Is.EqualTo(16));
    }

    [Test]
    public void StateDictRoundTripAndDtypeConversionOnLoad()
    {
        using var a = new Net(4);
        using var b = new Net(4);
        using var scope = NewDisposeScope();
        var sd = a.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.is_floating_point() ? kv.Value.to(float64) : kv.Value);
        b.load_state_dict(sd);
        foreach (var ((na, pa), (nb, pb)) in a.named_parameters().Zip(b.named_parameters()))
        {
            Assert.That(nb, Is.EqualTo(na));
            Assert.That(pb.dtype, Is.EqualTo(ScalarType.Float32));
            Assert.That(pb.equal(pa), Is.True, na);
        }
    }

    [Test]
    public void ParametersSurviveScopesAndModulesMoveInPlace()
    {
        nn.Linear lin;
        Parameter p;
        using (var scope = NewDisposeScope())
        {
            lin = new nn.Linear(3, 2);            // built inside a scope: its parameters must not be swallowed
            p = new Parameter(randn([2]));
        }
        Assert.That(lin.weight.IsDisposed, Is.False);
        Assert.That(p.IsDisposed, Is.False);
        Assert.That(p.requires_grad, Is.True);
        var w = lin.weight;
        lin.to(float64);
        Assert.That(ReferenceEquals(w, lin.weight), Is.True);
        Assert.That(lin.weight.dtype, Is.EqualTo(ScalarType.Float64));
        lin.to(ScalarType.BFloat16);
        Assert.That(lin.bias!.dtype, Is.EqualTo(ScalarType.BFloat16));
        lin.freeze();
        Assert.That(lin.parameters().All(q => !q.requires_grad), Is.True);
        lin.unfreeze();
        Assert.That(lin.num_parameters(trainableOnly: true), Is.EqualTo(8));
        Assert.That(lin.training, Is.True);
        lin.eval();
        Assert.That(lin.training, Is.False);
        lin.Dispose();
        p.Dispose();
        Assert.That(w.IsDisposed, Is.True);
    }

    [Test]
    public void DefaultInitMatchesPyTorchBounds()
    {
        manual_seed(0);
        using var lin = new nn.Linear(100, 50);
        using var conv = new nn.Conv2d(8, 4, 3, groups: 2);
        Assert.That(lin.weight.abs().max().item(), Is.LessThanOrEqualTo(1 / Math.Sqrt(100)));
        Assert.That(lin.weight.abs().max().item(), Is.GreaterThan(0.9 / Math.Sqrt(100)));
        Assert.That(lin.bias!.abs().max().item(), Is.LessThanOrEqualTo(1 / Math.Sqrt(100)));
        Assert.That(conv.weight.shape, Is.EqualTo(new long[] { 4, 4, 3, 3 }));
        Assert.That(conv.weight.abs().max().item(), Is.LessThanOrEqualTo(1 / Math.Sqrt(36)));
        using var ln = new nn.LayerNorm(5);
        Assert.That(ln.weight!.sum().item(), Is.EqualTo(5));
        using var skip = nn.init.skip();
        using var raw = new nn.Linear(2, 2);      // uninitialised: loading will overwrite it
        Assert.That(raw.weight.shape, Is.EqualTo(new long[] { 2, 2 }));
    }

    [Test]
    public void MetaDeviceChecksNamesAndShapesWithoutMemory()
    {
        using (device_scope(Device.Meta))
        {
            using var big = new nn.Linear(100_000, 100_000);   // 40 GB if it were real
            Assert.That(big.weight.device.Type, Is.EqualTo(DeviceType.Meta));
            Assert.That(big.weight.shape, Is.EqualTo(new long[] { 100_000, 100_000 }));
            using var scope = NewDisposeScope();
            var e = Assert.Throws<InvalidOperationException>(() =>
                big.load_state_dict(new Dictionary<string, Tensor> { ["weight"] = zeros([100_000, 100_000], device: Device.Meta), ["bias"] = zeros([100_000], device: Device.Meta) }));
            Assert.That(e!.Message, Does.Contain("meta device"));
        }
        Assert.That(default_device, Is.EqualTo(Device.CPU));
    }

    [Test]
    public void SequentialRunsInOrder()
    {
        using var scope = NewDisposeScope();
        using var seq = new nn.Sequential(new nn.Linear(2, 3), new nn.SiLU(), new nn.Linear(3, 1));
        Assert.That(seq.state_dict().Keys, Is.EqualTo(new[] { "0.weight", "0.bias", "2.weight", "2.bias" }));
        var x = randn([5, 2]);
        var l0 = (nn.Linear)seq[0];
        var l2 = (nn.Linear)seq[2];
        Check.Close(seq.forward(x), l2.forward(nn.functional.silu(l0.forward(x))), 0, "sequential");
    }

    [Test]
    public void CpuOffloadLendsFrozenWeightsToTheDeviceForOneScope()
    {
        // On a machine without a GPU the "device copies" are CPU clones (copyOnCpu): the scope must swap them in,
        // keep the parameter objects, and swap the host weights back, so a change to the lent copy is dropped.
        using var scope = NewDisposeScope();
        using var g = new Generator(0);
        var net = new Attn(8);
        foreach (var p in net.parameters()) using (no_grad()) p.copy_(randn(p.shape, g));
        var before = net.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var weight = net.to_q.weight;
        var x = randn([2, 4, 8], g);
        var y0 = net.forward(x).detach();
        var e = Assert.Throws<ArgumentException>(() => new CpuOffload(net, Device.CPU, copyOnCpu: true))!;
        Assert.That(e.Message, Does.Contain("frozen").And.Contain("requires_grad_(false)"));
        net.requires_grad_(false);
        var off = new CpuOffload(net, Device.CPU, copyOnCpu: true);
        Assert.That(off.active);
        using (off.onto())
        {
            Assert.That(ReferenceEquals(net.to_q.weight, weight), "the parameter objects are kept");
            Check.Close(net.forward(x), y0, 0, "forward with the lent weights");
            using (off.onto()) Check.Close(net.forward(x), y0, 0, "a nested scope keeps the lent weights");
            Check.Close(net.forward(x), y0, 0, "after the nested scope the weights are still lent");
            using (no_grad()) foreach (var p in net.parameters()) p.add_(1.0);
        }
        foreach (var (k, v) in net.state_dict()) Check.Close(v, before[k], 0, $"{k}: the lent copy leaked back");
        var cpuOff = new CpuOffload(net, Device.CPU);
        Assert.That(cpuOff.active, Is.False, "a CPU execution device moves nothing");
        using (cpuOff.onto())
        {
            using (no_grad()) weight.add_(1.0);
        }
        Check.Close(weight, before["to_q.weight"] + 1, 0, "inactive: the module's own weights were used");
    }

    [Test]
    public void BackendSwitchesReadBackWhatWasSetAndOneDnnOffChangesNoResult()
    {
        using var scope = NewDisposeScope();
        var mk = torch.backends.mkldnn.enabled;
        var tf = torch.backends.cuda.matmul.allow_tf32;
        try
        {
            torch.backends.cuda.matmul.allow_tf32 = true;
            Assert.That(torch.backends.cuda.matmul.allow_tf32, Is.True);
            torch.backends.cuda.matmul.allow_tf32 = false;
            Assert.That(torch.backends.cuda.matmul.allow_tf32, Is.False);
            // A convolution and its input gradient with oneDNN on and off agree to fp32 rounding — unless the
            // environment turned oneDNN off because this libtorch's is known wrong (scripts/check-libtorch2.sh).
            Assume.That(Environment.GetEnvironmentVariable("SUDO_MKLDNN"), Is.Not.EqualTo("0"),
                "SUDO_MKLDNN=0: this libtorch's oneDNN kernels are not compared");
            using var g = new Generator(0);
            var conv = new nn.Conv2d(16, 4, 3, padding: 1);
            var x = randn([2, 16, 8, 8], g);
            Tensor Run(bool onednn)
            {
                torch.backends.mkldnn.enabled = onednn;
                Assert.That(torch.backends.mkldnn.enabled, Is.EqualTo(onednn));
                var xi = x.detach().requires_grad_();
                conv.forward(xi).square().sum().backward();
                return xi.grad!;
            }
            Check.Close(Run(false), Run(true), 1e-4, "input gradient, oneDNN off vs on");
        }
        finally
        {
            torch.backends.mkldnn.enabled = mk;
            torch.backends.cuda.matmul.allow_tf32 = tf;
        }
    }
}
