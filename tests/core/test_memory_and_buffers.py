"""Graph lifetimes: no memory growth over outer steps; exact's norm-buffer policy."""

import functools

import pytest
import torch
from core_toys import reweighting_graph
from torch import nn

from engines import Graph, Level, Runner, track_peak_memory


@pytest.mark.parametrize("method", ["exact", "cg_warm", "darts"])
def test_peak_memory_after_200_outer_steps_equals_that_after_20(method):
    graph = reweighting_graph(method, unroll=2)
    runner = Runner(graph, 400, device="cpu", progress=False)
    peaks, retained = {}, {}
    for step in range(1, 401):
        with track_peak_memory("cpu") as mem:
            runner.step()
        if step % 2 == 0:  # one outer step = 2 lower steps + 1 upper step
            outer = step // 2
            peaks[outer], retained[outer] = mem.peak_bytes, mem.retained_bytes
    runner.close()
    assert peaks[20] > 0
    assert peaks[200] == peaks[20], (peaks[20], peaks[200])
    assert retained[200] == retained[20]


def test_cpu_memory_tracker_sees_the_graph_that_a_longer_unroll_keeps():
    w = torch.randn(64, 64, requires_grad=True)

    def unrolled(k):
        with track_peak_memory("cpu") as mem:
            h = torch.randn(32, 64)
            for _ in range(k):
                h = torch.tanh(h @ w)
            h.sum().backward()
        return mem.peak_bytes

    assert unrolled(20) > unrolled(10) > unrolled(1)


def test_cpu_memory_tracker_skips_autograd_zero_tensors():
    """Double backward through an op with an unused input makes an "efficient zero" tensor, which has no
    storage to read; the tracker must count it as nothing instead of failing."""
    with track_peak_memory("cpu") as mem:
        zero = torch._efficientzerotensor((256, 256))
        kept = torch.ones(256, 256)
    assert zero._is_zerotensor() and mem.peak_bytes == kept.untyped_storage().nbytes()


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.fc(x))))


def _bn_graph(unroll):
    torch.manual_seed(0)
    xs = [torch.randn(16, 3) for _ in range(unroll)]
    ys = [torch.randn(16, 1) for _ in range(unroll)]
    x_val, y_val = torch.randn(16, 3), torch.randn(16, 1)
    scale = nn.Linear(1, 3, bias=False)
    nn.init.ones_(scale.weight)

    def lower_loss(level, batch):
        x, y = batch
        return (level.module(x * level.scale.module.weight.squeeze(1)) - y).pow(2).mean()

    def upper_loss(level, _):
        return (level.net.module(x_val) - y_val).pow(2).mean()

    batches = iter([(x, y) for x, y in zip(xs, ys)] * 1000)
    net = Level(
        "net",
        BNNet(),
        functools.partial(torch.optim.SGD, lr=0.1, momentum=0.5),
        lower_loss,
        lambda lv: next(batches),
        hypergrad="exact",
        unroll=unroll,
    )
    up = Level("scale", scale, functools.partial(torch.optim.SGD, lr=0.0), upper_loss)
    g = Graph("bn")
    g.add(net, up)
    g.bilevel(lower=net, upper=up)
    return g, xs, ys, x_val, y_val


def test_exact_through_batchnorm_matches_a_hand_unrolled_reference_and_leaves_buffers_alone():
    unroll = 3
    g, xs, ys, x_val, y_val = _bn_graph(unroll)
    net, up = g["net"], g["scale"]
    init = {k: v.detach().clone() for k, v in net.module.state_dict().items()}

    captured = {}
    up.grad_callback = lambda: captured.setdefault("grad", up.module.weight.grad.detach().clone())
    runner = Runner(g, unroll, device="cpu", progress=False)
    for _ in range(unroll):
        runner.step()
    runner.close()
    after_hop = net.module.bn.running_mean.clone()

    # reference: the same K momentum-SGD steps written out by hand with torch.func, from the same start
    model = BNNet()
    model.load_state_dict(init)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    s = torch.ones(3, requires_grad=True)
    bufs_mom = dict.fromkeys(params)
    for x, y in zip(xs, ys):
        out = torch.func.functional_call(model, {**params, **buffers}, (x * s,))
        grads = torch.autograd.grad((out - y).pow(2).mean(), list(params.values()), create_graph=True)
        new = {}
        for (n, p), gr in zip(params.items(), grads):
            bufs_mom[n] = gr if bufs_mom[n] is None else 0.5 * bufs_mom[n] + gr
            new[n] = p - 0.1 * bufs_mom[n]
        params = new
    val = torch.func.functional_call(model, {**params, **buffers}, (x_val,))  # the upper's loss runs in train mode
    reference = torch.autograd.grad((val - y_val).pow(2).mean(), s)[0]

    assert torch.allclose(captured["grad"].squeeze(1), reference, rtol=1e-4, atol=1e-6)
    # running statistics moved K times by the real steps and once by the upper's loss, exactly as in the
    # reference: the replay's own K BatchNorm updates were discarded
    assert torch.allclose(after_hop, buffers["bn.running_mean"], atol=1e-6)
