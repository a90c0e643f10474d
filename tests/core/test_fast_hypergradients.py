"""The fast paths of the hypergradient methods return what the reference paths return (float64, 1e-10):
Gauss-Newton products by linearisation, forward mode and the double-VJP trick; the mixed term's shortcut;
``exact`` with a checkpointed replay; compiled modules; the default curvature of an unmarked non-convex level."""

import functools
import json

import pytest
import torch
from core_toys import mlp_graph
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from engines import DataStream, Graph, GraphError, Level, closed_form, run
from engines.hypergrad import conjugate_gradient
from engines.hypergrad.common import lower_gradient, mixed_vjp
from engines.hypergrad.curvature import curvature_model
from engines.hypergrad.linearize import linearizer_of

MODES = ("linearize", "forward", "reverse")


class Images(torch.utils.data.Dataset):
    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 2, 6, 6, generator=g, dtype=torch.float64)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(36, 3),
    ).double()


def cnn_graph(method="cg", options=None, *, unroll=1, gates=False, compiled=False, loss=None, optimizer=None):
    """Per-example weights (upper) of a small CNN with BatchNorm and dropout (lower); with ``gates`` the upper
    also scales the input channels, so the network outputs depend on the upper parameters."""
    torch.manual_seed(0)
    data = Images()
    x_val, y_val = torch.randn(8, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (8,))

    def lower(level, batch):
        x, y, idx = batch
        if gates:
            x = x * torch.sigmoid(level.weights.module.gate).view(1, -1, 1, 1)
        logits = level.module(x)
        weights = torch.sigmoid(level.weights.module(idx)).squeeze(1)
        return (weights * nn.functional.cross_entropy(logits, y, reduction="none")).mean()

    def upper(level, _):
        return nn.functional.cross_entropy(level.net.module(x_val), y_val)

    class Weights(nn.Embedding):
        def __init__(self):
            super().__init__(32, 1)
            self.gate = nn.Parameter(torch.zeros(2))

    net = small_cnn()
    module = torch.compile(net, backend="aot_eager") if compiled else net
    g = Graph("cnn")
    g.add(
        Level(
            "net",
            module,
            optimizer or functools.partial(torch.optim.SGD, lr=0.1),
            loss or lower,
            DataStream(data, 8),
            hypergrad=method,
            options=options,
            unroll=unroll,
        )
    )
    g.add(Level("weights", Weights().double(), functools.partial(torch.optim.Adam, lr=0.05), upper))
    g.bilevel("net", "weights")
    return g


def flat(ts):
    return torch.cat([t.detach().flatten() for t in ts])


def relative(a, b):
    a, b = flat(a), flat(b)
    assert b.norm() > 0, "the reference is zero: the comparison would prove nothing"
    return float((a - b).norm() / b.norm())


def products_and_mixed(level, upper, kind="gauss_newton"):
    """Per jvp mode: the product with a fixed vector, and the mixed term for it."""
    torch.manual_seed(1)
    v = [torch.randn_like(p) for p in level.trainable_parameters()]
    out = {}
    for mode in MODES:
        model = curvature_model(level, kind, jvp=mode)
        out[mode] = (model.product(v), model.mixed(v, upper), model.jvp)
    return v, out


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: cnn_graph(), id="cnn-batchnorm-dropout"),
        pytest.param(lambda: cnn_graph(gates=True), id="outputs-depend-on-upper"),
        pytest.param(lambda: mlp_graph(mark=True), id="marked-mlp-with-regulariser"),
    ],
)
def test_gauss_newton_products_and_mixed_terms_agree_across_jvp_modes(build):
    g = build()
    run(g, 3, device="cpu", progress=False)  # a real iterate, batch and random state
    net, upper = g["net"], g["weights"]
    v, out = products_and_mixed(net, upper)
    assert [out[m][2] for m in MODES] == list(MODES)  # each mode really ran (nothing fell back)
    for mode in ("linearize", "forward"):
        assert relative(out[mode][0], out["reverse"][0]) < 1e-10, mode
        assert relative(out[mode][1], out["reverse"][1]) < 1e-10, mode
    # the mixed term (shortcut through the loss head when z does not depend on the upper) equals the
    # implicit-function-theorem term formed from the full gradient's graph
    _, grads = lower_gradient(net)
    assert relative(out["linearize"][1], mixed_vjp(grads, v, upper)) < 1e-10


def test_cg_hypergradients_are_the_same_with_every_jvp_mode(tmp_path):
    got = {}
    for mode in MODES:
        g = cnn_graph("cg", {"jvp": mode, "maxiter": 8, "damping": 0.1})
        run(g, 4, out=tmp_path / mode, device="cpu", progress=False)
        got[mode] = g["weights"].hypergradients["weights<-net"]
        hop = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()][-1]
        assert hop["hypergradient"]["weights<-net"]["net->weights"]["jvp"] == mode
    assert relative(got["linearize"], got["reverse"]) < 1e-10
    assert relative(got["forward"], got["reverse"]) < 1e-10


def test_cg_carries_j_x_and_the_mixed_term_from_it_equals_the_direct_one():
    """CG forms ``J p`` in every Gauss-Newton product; the ``J x`` it accumulates spares the mixed term a
    tangent pass and gives the same mixed term as ``J`` applied to the solution."""
    g = cnn_graph()
    run(g, 3, device="cpu", progress=False)
    net, upper = g["net"], g["weights"]
    model = curvature_model(net, "gauss_newton")
    b = [torch.randn_like(p) for p in model.params]
    res = conjugate_gradient(model.product, b, damping=0.1, tol=1e-8, maxiter=8, image=model.image)
    assert res.image is not None and res.iterations == 8
    assert relative(res.image, model.jacobian(res.x)) < 1e-10
    direct = curvature_model(net, "gauss_newton").mixed(res.x, upper)  # a mixed term uses up its model's graph
    assert relative(model.mixed(res.x, upper, image=res.image), direct) < 1e-10


def test_the_trace_drops_arithmetic_on_zero_tangents():
    """The images have no tangent: forward mode convolves a zero tangent with the first layer's weights
    and adds it in every product. The simplified trace does neither: one convolution in the primal part
    (the forward's) and, in the tangent part, the first layer's ``conv(x, dW)`` alone."""
    g = cnn_graph()
    run(g, 2, device="cpu", progress=False)
    net = g["net"]
    curvature_model(net, "gauss_newton").product([torch.randn_like(p) for p in net.trainable_parameters()])
    (trace,) = linearizer_of(net).traces.values()
    aten = torch.ops.aten

    def ops(graph_module, target):
        return [n for n in graph_module.graph.nodes if n.op == "call_function" and n.target is target]

    assert len(ops(trace.primal, aten.convolution.default)) == 1
    assert not ops(trace.primal, aten.zeros.default) and not ops(trace.tangent, aten.zeros.default)
    (conv,) = ops(trace.tangent, aten.convolution.default)
    assert all(user.target is not aten.add.Tensor for user in conv.users)  # straight into the batch-norm tangent


def test_the_cnn_trace_runs_its_pooled_tangent_on_the_pooled_values_and_pools_channels_last():
    """ReLU -> max-pool: each product gathers the batch-norm tangent at the pooled positions first, so no
    pointwise tangent operation runs on the full 6x6 maps; the primal part pools a channels-last copy."""
    g = cnn_graph()
    run(g, 2, device="cpu", progress=False)
    net = g["net"]
    curvature_model(net, "gauss_newton").product([torch.randn_like(p) for p in net.trainable_parameters()])
    (trace,) = linearizer_of(net).traces.values()
    x, y, idx = net.cur_batch
    params = [p.detach() for p in net.trainable_parameters()]
    others = [t.detach() for n, t in net.module.named_buffers()]
    saved = trace.primal(*params, *others, x, y, idx)[trace.n_outputs :]
    ShapeProp(trace.tangent).propagate(*saved, *[torch.randn_like(p) for p in params])
    shapes = [
        tuple(n.meta["tensor_meta"].shape)
        for n in trace.tangent.graph.nodes
        if n.op == "call_function" and torch.Tag.pointwise in getattr(n.target, "tags", ())
    ]
    assert (8, 4, 6, 6) not in shapes and (8, 4, 9) in shapes  # the pooled maps, flattened per channel
    (pool,) = [n for n in trace.primal.graph.nodes if n.target is torch.ops.aten.max_pool2d_with_indices.default]
    assert pool.args[0].kwargs == {"memory_format": torch.channels_last}


def test_a_linearisation_is_retaken_when_the_loss_changes_behind_its_back():
    """A Python number baked into the trace (here a temperature that changes every step) is caught by
    comparing the traced outputs with the eager ones: the trace is retaken and products stay exact."""
    temperature = {"t": 1.0}

    def lower(level, batch):
        x, y, idx = batch
        logits = level.module(x * temperature["t"])
        weights = torch.sigmoid(level.weights.module(idx)).squeeze(1)
        return (weights * nn.functional.cross_entropy(logits, y, reduction="none")).mean()

    g = cnn_graph(loss=lower)
    run(g, 2, device="cpu", progress=False)
    net = g["net"]
    v = [torch.randn_like(p) for p in net.trainable_parameters()]
    curvature_model(net, "gauss_newton").product(v)
    first = linearizer_of(net).traced
    temperature["t"] = 1.7
    fast = curvature_model(net, "gauss_newton")
    assert fast.jvp == "linearize" and linearizer_of(net).traced == first + 1
    assert relative(fast.product(v), curvature_model(net, "gauss_newton", jvp="reverse").product(v)) < 1e-10
    curvature_model(net, "gauss_newton")
    assert linearizer_of(net).traced == first + 1  # unchanged loss: the trace is reused


class _NoJvpTanh(torch.autograd.Function):
    """tanh with a backward formula only: forward-mode AD cannot go through it."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class _NoJvpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(_NoJvpTanh.apply(self.a(x)))


def test_a_network_without_forward_mode_falls_back_to_the_double_vjp_trick():
    g = mlp_graph(regulariser=False, module=_NoJvpNet().double())
    run(g, 2, device="cpu", progress=False)
    net = g["net"]
    v = [torch.randn_like(p) for p in net.trainable_parameters()]
    model = curvature_model(net, "gauss_newton")
    got = model.product(v)
    assert model.jvp == "reverse" and "forward mode failed" in model.notes()
    assert relative(got, curvature_model(net, "gauss_newton", jvp="reverse").product(v)) < 1e-12
    assert curvature_model(net, "gauss_newton").jvp == "reverse"  # remembered for the level's later solves


def test_an_unmarked_non_convex_level_gets_gauss_newton_curvature_by_default(tmp_path):
    """Without mark_output, the outputs of the level's own module are linearised: default cg on a
    non-convex MLP is Gauss-Newton (equal to marking the logits) and its solves converge."""
    run(mlp_graph(), 12, out=tmp_path / "auto", device="cpu", progress=False)
    run(mlp_graph(mark=True), 12, out=tmp_path / "marked", device="cpu", progress=False)
    hops = {}
    for name in ("auto", "marked"):
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        hops[name] = [ln["hypergradient"]["weights<-net"] for ln in lines if ln["level"] == "weights"]
    auto = [h["net->weights"] for h in hops["auto"]]
    assert all(h["curvature"] == "gauss_newton" and h["residual"] <= 1e-2 for h in auto)
    for a, m in zip(hops["auto"], hops["marked"]):
        assert a["norm"] == pytest.approx(m["norm"], rel=1e-10)


def test_without_module_outputs_auto_is_the_hessian_and_gauss_newton_says_what_is_missing():
    def by_parts(level, batch):  # reads the module's layers one by one: no call of level.module itself
        x, y, idx = batch
        net = level.module
        logits = net[2](net[1](net[0](x)))
        weights = torch.sigmoid(level.weights.module(idx)).squeeze(1)
        return (weights * nn.functional.cross_entropy(logits, y, reduction="none")).mean()

    g = mlp_graph(loss=by_parts)
    run(g, 1, device="cpu", progress=False)
    assert curvature_model(g["net"], "auto").kind == "hessian"
    with pytest.raises(GraphError, match="level 'net': curvature='gauss_newton' needs a loss that calls"):
        curvature_model(g["net"], "gauss_newton")


def test_outputs_that_feed_one_another_are_not_linearised_separately():
    def unrolled(level, batch):  # the module applied to its own output, as in an unrolled network
        x, y = batch
        h = level.module(x)
        return nn.functional.cross_entropy(level.module(h), y)

    def marked(level, batch):
        x, y = batch
        h = level.mark_output(level.module(x))
        return nn.functional.cross_entropy(level.mark_output(level.module(h)), y)

    square = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).double()

    def graph(loss):
        g = Graph("unrolled")
        data = torch.utils.data.TensorDataset(torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 3, (16,)))
        g.add(Level("net", square, functools.partial(torch.optim.SGD, lr=0.1), loss, DataStream(data, 8)))
        return g

    g = graph(unrolled)
    run(g, 1, device="cpu", progress=False)
    model = curvature_model(g["net"], "auto")
    assert model.kind == "hessian" and "feed one another" in model.notes()
    g = graph(marked)
    run(g, 1, device="cpu", progress=False)
    with pytest.raises(GraphError, match="marked outputs that do not feed one another"):
        curvature_model(g["net"], "auto")


@pytest.mark.parametrize(
    ("problem", "options"),
    [
        ("quadratic", {}),
        ("three_level", {}),
        ("maml", {}),
        ("quadratic", {"truncate": 3}),
    ],
)
@pytest.mark.parametrize("checkpoint", [True, 1, 4])
def test_exact_with_a_checkpointed_replay_equals_the_full_replay(problem, options, checkpoint):
    full = closed_form.capture(closed_form.build(problem, "exact", dict(options)))
    ckpt = closed_form.capture(closed_form.build(problem, "exact", {**options, "checkpoint": checkpoint}))
    for name in full:
        assert relative([ckpt[name]], [full[name]]) < 1e-10, name


def test_exact_checkpointing_through_batchnorm_dropout_and_adam_equals_the_full_replay():
    got = {}
    for label, options in (
        ("full", {}),
        ("checkpoint", {"checkpoint": True}),
        ("truncated", {"checkpoint": 2, "truncate": 3}),
    ):
        g = cnn_graph("exact", options, unroll=4, optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
        run(g, 8, device="cpu", progress=False)
        got[label] = g["weights"].hypergradients["weights<-net"]
    assert relative(got["checkpoint"], got["full"]) < 1e-10
    assert relative(got["truncated"], got["full"]) > 1e-3  # truncation changes it: the test can tell them apart


@pytest.mark.parametrize("bad", [0, -2, 1.5, "yes"])
def test_exact_refuses_a_bad_checkpoint_option_when_the_level_is_built(bad):
    with pytest.raises(ValueError, match=r"level 'net'.*option 'checkpoint' must be True or False or an integer >= 1"):
        cnn_graph("exact", {"checkpoint": bad}, unroll=2)


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_implicit_methods_refuse_an_unknown_jvp_mode_when_the_level_is_built(method):
    with pytest.raises(
        ValueError, match=r"level 'net'.*option 'jvp' must be one of \['linearize', 'forward', 'reverse'\]"
    ):
        cnn_graph(method, {"jvp": "fast"})


@pytest.mark.parametrize(
    ("method", "options", "unroll"),
    [
        ("darts", {}, 1),
        ("one_step", {}, 1),
        ("cg", {"maxiter": 5, "damping": 0.1}, 1),
        ("neumann", {"iterations": 3, "alpha": 0.1}, 1),
        ("exact", {}, 2),
        ("exact", {"checkpoint": True}, 2),
    ],
)
def test_a_compiled_module_gives_the_eager_hypergradient(method, options, unroll):
    """Real steps run the compiled module; every recomputation runs the original module eagerly."""
    got = {}
    for compiled in (False, True):
        g = cnn_graph(method, options, unroll=unroll, compiled=compiled)
        run(g, 2 * unroll, device="cpu", progress=False)
        got[compiled] = g["weights"].hypergradients["weights<-net"]
        report = g["weights"].hypergradient_report["weights<-net"]["net->weights"]
        if method in ("cg", "neumann"):
            assert report["jvp"] == "linearize"
    assert relative(got[True], got[False]) < 1e-10
