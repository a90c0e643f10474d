"""The promise every recomputation of a loss keeps (docs/engine.md, "Levels"): it reuses the random
state of the real step it stands for, and it leaves the running statistics of norm layers unchanged.

Checked directly, for every method that recomputes a loss: the dropout masks a recomputation draws,
the loss it returns, the hypergradients of ``exact``/``one_step``/``darts`` against references
written out by hand with the real steps' masks, and BatchNorm running statistics against a fresh
BatchNorm fed only what the real steps fed it.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from engines import Graph, Level, Runner
from engines.closed_form import Vector

DTYPE = torch.float64
RECOMPUTING = ["darts", "sama", "one_step", "cg", "cg_warm", "neumann", "exact", "penalty"]
OPTIONS = {
    "cg": {"maxiter": 30, "tol": 1e-12},
    "cg_warm": {"maxiter": 30, "tol": 1e-12},
    "neumann": {"iterations": 3, "alpha": 0.1},
    "penalty": {"lam": 0.5, "delta": 0.0, "max_rounds": 2},
}


# ---------------------------------------------------------------------------------------------- dropout


class DropoutProblem:
    """``g(w, λ) = ½||m ⊙ (A w - B λ - y)||² + ½ρ||w||²`` with a fresh dropout mask ``m`` drawn inside
    the loss at every call, ``f(w) = ½||w - t||²``. Every call of the lower loss is recorded:
    whether it was a real step, the iterate it saw, the mask it drew and the loss it returned."""

    def __init__(self, method: str, options: dict | None = None, *, unroll: int = 3, n: int = 6, r: int = 10):
        gen = torch.Generator().manual_seed(3)
        self.A = torch.randn(r, n, generator=gen, dtype=DTYPE)
        self.B = torch.randn(r, 4, generator=gen, dtype=DTYPE)
        self.y = torch.randn(r, generator=gen, dtype=DTYPE)
        self.t = torch.randn(n, generator=gen, dtype=DTYPE)
        self.rho, self.lr, self.unroll = 0.1, 0.05, unroll
        self.calls: list[dict] = []
        lam0 = torch.randn(4, generator=gen, dtype=DTYPE)
        w0 = torch.randn(n, generator=gen, dtype=DTYPE)

        def lower(level: Level, _batch) -> torch.Tensor:
            mask = nn.functional.dropout(torch.ones(r, dtype=DTYPE), p=0.5, training=True)
            loss = self.g(level.module(), level.hyper.module(), mask)
            self.calls.append(
                {
                    "real": level.in_real_step,
                    "w": level.module().detach().clone(),
                    "mask": mask,
                    "loss": loss.detach().clone(),
                }
            )
            return loss

        self.low = Level(
            "low",
            Vector(w0),
            functools.partial(torch.optim.SGD, lr=self.lr),
            lower,
            hypergrad=method,
            unroll=unroll,
            options=options,
        )
        self.hyper = Level("hyper", Vector(lam0), functools.partial(torch.optim.SGD, lr=0.0), self.f_of)
        self.graph = Graph("dropout")
        self.graph.add(self.low, self.hyper)
        self.graph.bilevel(lower=self.low, upper=self.hyper)

    def g(self, w: torch.Tensor, lam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return 0.5 * (mask * (self.A @ w - self.B @ lam - self.y)).pow(2).sum() + 0.5 * self.rho * w @ w

    def f_of(self, level: Level, _batch) -> torch.Tensor:
        return 0.5 * (level.low.module() - self.t).pow(2).sum()

    def real(self) -> list[dict]:
        return [c for c in self.calls if c["real"]]

    def run_one_inner_loop(self) -> torch.Tensor:
        """``unroll`` global steps (the upper steps once); returns the hypergradient of its one path."""
        runner = Runner(self.graph, self.unroll, device="cpu", progress=False)
        runner.run()
        return self.hyper.hypergradients["hyper<-low"][0]


def test_a_recomputed_loss_redraws_the_real_steps_mask_and_returns_its_loss_bitwise():
    problem = DropoutProblem("darts")
    problem.run_one_inner_loop()
    last = problem.real()[-1]
    masks = [c["mask"] for c in problem.real()]
    assert not torch.equal(masks[0], masks[1])  # the masks really are random: reusing one is observable
    low = problem.low
    after = low.module.value.detach().clone()
    rng_before = torch.get_rng_state()
    with torch.no_grad():
        low.module.value.copy_(last["w"])  # back to the iterate the last real step saw
    again = low.training_step_exec(low.cur_batch)
    with torch.no_grad():
        low.module.value.copy_(after)
    assert torch.equal(problem.calls[-1]["mask"], last["mask"])
    assert torch.equal(again.detach(), last["loss"])  # bitwise, not approximately
    assert torch.equal(torch.get_rng_state(), rng_before)  # and the global generator did not advance


@pytest.mark.parametrize("method", RECOMPUTING)
def test_every_recomputation_draws_the_mask_of_the_real_step_it_stands_for(method):
    problem = DropoutProblem(method, OPTIONS.get(method))
    Runner(problem.graph, 2 * problem.unroll, device="cpu", progress=False).run()
    # each run of consecutive recomputations, with the masks of the real steps taken before it
    runs: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    reals: list[torch.Tensor] = []
    for call in problem.calls:
        if call["real"]:
            reals.append(call["mask"])
        elif runs and len(runs[-1][0]) == len(reals):
            runs[-1][1].append(call["mask"])
        else:
            runs.append((list(reals), [call["mask"]]))
    runs = [(before, masks) for before, masks in runs if before]  # the preflight has no real step to reuse
    assert len(runs) >= 2, f"{method} recomputed no loss"
    for before, masks in runs:
        if method == "exact":  # the replay stands for each step of the recorded window, in order
            window = before[-problem.unroll :]
            assert len(masks) == len(window) and all(map(torch.equal, masks, window)), method
        else:  # every other recomputation stands for the last real step
            assert all(torch.equal(m, before[-1]) for m in masks), method


def _mixed(problem: DropoutProblem, w: torch.Tensor, lam: torch.Tensor, mask, v: torch.Tensor) -> torch.Tensor:
    """``(d² g / dλ dw) v`` at ``w`` with ``mask``."""
    w = w.clone().requires_grad_(True)
    (grad_w,) = torch.autograd.grad(problem.g(w, lam, mask), w, create_graph=True)
    return torch.autograd.grad(grad_w @ v, lam)[0]


@pytest.mark.parametrize("method", ["exact", "one_step", "darts"])
def test_hypergradients_equal_references_written_with_the_real_steps_masks(method):
    problem = DropoutProblem(method)
    got = problem.run_one_inner_loop()
    lam = problem.hyper.module.value.detach().clone().requires_grad_(True)
    real = problem.real()
    assert len(real) == problem.unroll
    w_k = problem.low.module.value.detach()
    v = w_k - problem.t  # d f / d w at the lower level's solution
    if method == "exact":  # the K SGD steps written out, each with its own real mask
        w = real[0]["w"].clone().requires_grad_(True)
        for step in real:
            (grad,) = torch.autograd.grad(problem.g(w, lam, step["mask"]), w, create_graph=True)
            w = w - problem.lr * grad
        reference = torch.autograd.grad(0.5 * (w - problem.t).pow(2).sum(), lam)[0]
        assert torch.allclose(w.detach(), w_k, rtol=1e-13, atol=1e-15)  # the written-out steps are the real ones
    elif method == "one_step":  # the last step differentiated at the iterate it was taken from, with its mask
        reference = -problem.lr * _mixed(problem, real[-1]["w"], lam, real[-1]["mask"], v)
    else:  # darts: at the current iterate, with the last real step's mask
        reference = -_mixed(problem, w_k, lam, real[-1]["mask"], v)
    assert reference.norm() > 0.1
    assert torch.allclose(got, reference, rtol=1e-9, atol=1e-12), (got, reference)


# ---------------------------------------------------------------------------------------------- BatchNorm


class NormedNet(nn.Module):
    """BatchNorm first, on the input: its running statistics depend only on what is fed to it."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.bn(x))


class Gates(nn.Module):
    """The upper level's module: per-feature gates from a BatchNorm of a fixed code ``z`` (the lower
    level's loss runs it, so a recomputation of that loss must leave *this* level's statistics alone too)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.logit = nn.Parameter(torch.full((4,), 0.5))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.bn(z).mean(0) + self.logit)


def _bn_graph(method: str, unroll: int):
    torch.manual_seed(0)
    x, y = torch.randn(16, 4, dtype=DTYPE), torch.randn(16, 1, dtype=DTYPE)
    x_val, y_val = torch.randn(12, 4, dtype=DTYPE) + 1.0, torch.randn(12, 1, dtype=DTYPE)
    z = torch.randn(8, 4, dtype=DTYPE) - 0.5
    mark = method == "cg_gauss_newton"

    def lower(level, batch):
        out = level.module(batch[0] * level.gates.module(z))
        if mark:
            out = level.mark_output(out)
        return (out - batch[1]).pow(2).mean()

    def upper(level, _):
        return (level.net.module(x_val) - y_val).pow(2).mean()  # runs the lower's module in train mode

    optimizer = (
        functools.partial(torch.optim.Adam, lr=0.01) if method == "sama" else functools.partial(torch.optim.SGD, lr=0.1)
    )
    options = OPTIONS.get(method)
    if mark:
        method, options = "cg", {"maxiter": 10, "curvature": "gauss_newton", "damping": 1e-2}
    gates_module = Gates().double()
    gate_values = copy.deepcopy(gates_module)(z).detach()  # train mode: batch statistics, as in every step
    net = Level(
        "net",
        NormedNet().double(),
        optimizer,
        lower,
        lambda lv: (x, y),
        hypergrad=method,
        unroll=unroll,
        options=options,
    )
    gates = Level("gates", gates_module, functools.partial(torch.optim.SGD, lr=0.0), upper)
    g = Graph("bn")
    g.add(net, gates)
    g.bilevel(lower=net, upper=gates)
    return g, (x * gate_values, x_val, z)


@pytest.mark.parametrize("method", [*RECOMPUTING, "cg_gauss_newton"])
def test_running_statistics_after_outer_steps_equal_those_of_the_real_steps_alone(method):
    unroll, steps = 2, 6
    g, (lower_input, upper_input, code) = _bn_graph(method, unroll)
    Runner(g, steps, device="cpu", progress=False).run()
    # the real steps alone: every lower step feeds its batch to the lower's BatchNorm and the code to the
    # upper's; every upper step feeds the validation batch to the lower's BatchNorm
    lower_bn, upper_bn = nn.BatchNorm1d(4).double(), nn.BatchNorm1d(4).double()
    for step in range(1, steps + 1):
        lower_bn(lower_input)
        upper_bn(code)
        if step % unroll == 0:
            lower_bn(upper_input)
    for got, want in ((g["net"].module.bn, lower_bn), (g["gates"].module.bn, upper_bn)):
        assert int(got.num_batches_tracked) == int(want.num_batches_tracked), method
        assert torch.allclose(got.running_mean, want.running_mean, rtol=1e-12, atol=1e-14), method
        assert torch.allclose(got.running_var, want.running_var, rtol=1e-12, atol=1e-14), method
