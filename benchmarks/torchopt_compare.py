"""medmlo's implicit hypergradients side by side with TorchOpt's and with hand-written Betty, in one process.

Usage: python benchmarks/torchopt_compare.py --out DIR [--rounds N] [--threads T] [--batch B]
       [--sections cnn,accuracy,logistic,betty] [--check]

Every timed row is one *outer step* of the same bilevel program: one lower SGD step, the
hypergradient of the upper loss through it, one upper Adam step. Rows are timed round-robin (every
round each row takes one outer step, in an order that alternates between rounds) on a fixed thread
count; each row's time is divided by the reference row's time *of the same round*, and the table
gives the median and interquartile range of those ratios, so that load on the machine affects every
row alike. Times are per-process CPU time (``time.thread_time``), which other processes on the
machine do not inflate; ``--wall`` uses wall-clock time instead.

Sections:

* ``cnn`` — the benchmark CNN of ``hypergrad_cost.py`` (4 conv-BN-ReLU blocks) with one learnable
  weight per training image, damping 30 on both sides, **20 curvature products** per solve on both
  sides (TorchOpt's CG spends one product on its initial residual, so it runs 19 iterations):
  TorchOpt ``custom_root`` + ``solve_cg`` (exact Hessian) against medmlo ``cg`` with Gauss-Newton
  curvature (default) and with the exact Hessian. Also the time of one curvature product in plain
  training steps.
* ``accuracy`` — the same problem at **equal accuracy**: every solver stops at relative residual
  1e-2 (TorchOpt: ``rtol=1e-2``); the products each needed are counted.
* ``logistic`` — multinomial logistic regression (32 features x 5 classes, 512 examples, float64,
  one weight-decay per feature), exact Hessian on both sides, CG to 1e-10: framework overhead; both
  hypergradients are checked against a dense solve.
* ``betty`` — the CNN program hand-written with Betty's ``ImplicitProblem`` (medmlo's methods are
  registered in Betty's table, so the same method code runs) against the DSL, for darts, neumann
  and cg (exact Hessian on both sides): time and peak memory.

``--check`` (float64, no timing) verifies that medmlo's and TorchOpt's hypergradients agree on the
CNN and the logistic problem. TorchOpt (an optional benchmark dependency) is imported only here; without it
its rows are skipped with a message. Writes DIR/torchopt_compare.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hypergrad_cost import Images, build, cnn  # the benchmark CNN (this folder is on sys.path)
from torch import nn

from engines import DataStream, Graph, Level, Runner, track_peak_memory
from engines.hypergrad.curvature import curvature_model

try:
    import torchopt
except ImportError:  # pragma: no cover - depends on the environment
    torchopt = None

DAMPING = 30.0
LOWER_LR, UPPER_LR = 0.05, 1e-2
N_IMAGES = 256


# ---------------------------------------------------------------------------------------------- programs
class Program:
    """Something that takes outer steps; ``hypergradient()`` is the last one it formed (upper parameter order)."""

    label = ""

    def outer_step(self) -> None:
        raise NotImplementedError

    def hypergradient(self) -> torch.Tensor:
        raise NotImplementedError

    def products(self) -> float | None:
        return None


class MedmloCNN(Program):
    """The CNN program in medmlo's DSL."""

    def __init__(self, label: str, method: str, options: dict, batch: int, dtype: torch.dtype, steps: int, seed=0):
        self.label = label
        torch.manual_seed(seed)
        data = Images(N_IMAGES)
        self.x_val, self.y_val = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

        def weighted_ce(level, b):
            x, y, idx = b
            ce = nn.functional.cross_entropy(level.module(x), y, reduction="none")
            return (torch.sigmoid(level.weights.module(idx)).squeeze(1) * ce).mean()

        def val_ce(level, _):
            dtype_ = next(level.net.module.parameters()).dtype
            return nn.functional.cross_entropy(level.net.module(self.x_val.to(dtype=dtype_)), self.y_val)

        self.net = Level(
            "net",
            cnn(),
            functools.partial(torch.optim.SGD, lr=LOWER_LR),
            weighted_ce,
            DataStream(data, batch_size=batch, seed=seed),
            hypergrad=method,
            options=options,
        )
        self.weights = Level(
            "weights", nn.Embedding(N_IMAGES, 1), functools.partial(torch.optim.Adam, lr=UPPER_LR), val_ce
        )
        graph = Graph("compare")
        graph.add(self.net, self.weights)
        graph.bilevel(lower="net", upper="weights")
        self.runner = Runner(graph, steps, device="cpu", progress=False, precision=_precision(dtype))
        self.runner.start()

    def outer_step(self) -> None:
        self.runner.step()

    def hypergradient(self) -> torch.Tensor:
        return self.weights.hypergradients["weights<-net"][0].detach().clone()

    def products(self) -> float | None:
        hop = self.weights.hypergradient_report.get("weights<-net", {}).get("net->weights", {})
        return hop.get("products")


class TorchOptCNN(Program):
    """The same program as a PyTorch user would write it with TorchOpt's implicit differentiation."""

    def __init__(self, label: str, batch: int, dtype: torch.dtype, solve_kwargs: dict, seed=0, source=None):
        self.label = label
        torch.manual_seed(seed)
        data = Images(N_IMAGES)
        self.x_val, self.y_val = torch.randn(batch, 3, 32, 32, dtype=dtype), torch.randint(0, 10, (batch,))
        self.net = cnn().to(dtype)
        if source is not None:
            self.net.load_state_dict(source.state_dict())
        torch.func.replace_all_batch_norm_modules_(self.net)  # running statistics cannot be updated under torch.func
        self.names = [n for n, _ in self.net.named_parameters()]
        self.params = [p.detach().clone() for p in self.net.parameters()]
        self.weights = nn.Parameter(torch.zeros(N_IMAGES, 1, dtype=dtype))
        if source is not None:
            self.weights.data.copy_(source.weights_init)
        self.upper_opt = torch.optim.Adam([self.weights], lr=UPPER_LR)
        self.stream = iter(DataStream(data, batch_size=batch, seed=seed))
        self.dtype = dtype
        self.count = 0
        counter = self

        def inner_loss(params, weights, x, y, idx):
            logits = torch.func.functional_call(self.net, dict(zip(self.names, params)), (x,))
            ce = nn.functional.cross_entropy(logits, y, reduction="none")
            return (torch.sigmoid(weights[idx]).squeeze(1) * ce).mean()

        optimality = torch.func.grad(inner_loss, argnums=0)
        base = torchopt.linear_solve.solve_cg(ridge=DAMPING, **solve_kwargs)

        def solve(matvec, b):
            def counted(u):
                counter.count += 1
                return matvec(u)

            return base(counted, b)

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
        def lower_step(params, weights, x, y, idx):
            with torch.enable_grad():  # the solver runs inside an autograd Function's forward
                params = [p.detach().requires_grad_(True) for p in params]
                loss = inner_loss(params, weights.detach(), x, y, idx)
                grads = torch.autograd.grad(loss, params)
            return tuple(p.detach() - LOWER_LR * g for p, g in zip(params, grads))

        self.lower_step = lower_step
        self.batch_override = None

    def outer_step(self) -> None:
        x, y, idx = self.batch_override or next(self.stream)
        x = x.to(self.dtype)
        self.count = 0
        params = tuple(p.detach().requires_grad_(True) for p in self.params)
        new = self.lower_step(params, self.weights, x, y, idx)
        logits = torch.func.functional_call(self.net, dict(zip(self.names, new)), (self.x_val,))
        val = nn.functional.cross_entropy(logits, self.y_val)
        self.upper_opt.zero_grad()
        val.backward()
        self.last = self.weights.grad.detach().clone()
        self.upper_opt.step()
        self.params = [p.detach() for p in new]

    def hypergradient(self) -> torch.Tensor:
        return self.last

    def products(self) -> float | None:
        return self.count


def _precision(dtype: torch.dtype) -> str:
    return "fp64" if dtype == torch.float64 else "fp32"


# ---------------------------------------------------------------------------------------------- logistic
def logistic_data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, c, n = 32, 5, 512
    w = torch.randn(d, c, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (x @ w + 0.5 * torch.randn(n, c, generator=g, dtype=torch.float64)).argmax(1)
    xv = torch.randn(n, d, generator=g, dtype=torch.float64)
    yv = (xv @ w).argmax(1)
    return {"x": x, "y": y, "xv": xv, "yv": yv, "lam": torch.full((d,), -2.0, dtype=torch.float64)}


def _logistic_inner(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(x @ w, y) + 0.5 * (lam.exp()[:, None] * w * w).sum()


class _Weights(nn.Module):
    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = nn.Parameter(value.clone())

    def forward(self) -> torch.Tensor:
        return self.value


class MedmloLogistic(Program):
    def __init__(self, label: str, data: dict, steps: int):
        self.label = label
        self.data = data
        cg_opts = {"maxiter": 100, "tol": 1e-10, "curvature": "hessian", "adaptive_damping": False}

        def inner(level, _):
            return _logistic_inner(level.module(), level.decay.module(), data["x"], data["y"])

        def outer(level, _):
            return nn.functional.cross_entropy(data["xv"] @ level.w.module(), data["yv"])

        self.w = Level(
            "w", _Weights(torch.zeros(32, 5, dtype=torch.float64)), _sgd(0.5), inner, hypergrad="cg", options=cg_opts
        )
        self.decay = Level("decay", _Weights(data["lam"]), functools.partial(torch.optim.Adam, lr=1e-2), outer)
        graph = Graph("logistic")
        graph.add(self.w, self.decay)
        graph.bilevel(lower="w", upper="decay")
        self.runner = Runner(graph, 10**6, device="cpu", progress=False, precision="fp64")
        self.runner.start()

    def outer_step(self) -> None:
        self.runner.step()

    def hypergradient(self) -> torch.Tensor:
        return self.decay.hypergradients["decay<-w"][0].detach().clone()


class TorchOptLogistic(Program):
    def __init__(self, label: str, data: dict):
        self.label = label
        self.data = data
        self.w = torch.zeros(32, 5, dtype=torch.float64)
        self.lam = nn.Parameter(data["lam"].clone())
        self.upper_opt = torch.optim.Adam([self.lam], lr=1e-2)
        optimality = torch.func.grad(_logistic_inner, argnums=0)

        @torchopt.diff.implicit.custom_root(
            optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=100, rtol=1e-10)
        )
        def lower_step(w, lam, x, y):
            with torch.enable_grad():  # the solver runs inside an autograd Function's forward
                w = w.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(_logistic_inner(w, lam.detach(), x, y), w)
            return w.detach() - 0.5 * g

        self.lower_step = lower_step

    def outer_step(self) -> None:
        d = self.data
        new = self.lower_step(self.w.requires_grad_(True), self.lam, d["x"], d["y"])
        val = nn.functional.cross_entropy(d["xv"] @ new, d["yv"])
        self.upper_opt.zero_grad()
        val.backward()
        self.last = self.lam.grad.detach().clone()
        self.upper_opt.step()
        self.w = new.detach()

    def hypergradient(self) -> torch.Tensor:
        return self.last


def dense_logistic_hypergradient(w: torch.Tensor, lam: torch.Tensor, data: dict) -> torch.Tensor:
    """``-d²g/dλdw H⁻¹ ∇_w f`` at ``(w, λ)`` by dense matrices (the reference)."""
    w = w.detach().requires_grad_(True)
    lam = lam.detach().requires_grad_(True)
    n = w.numel()
    H = torch.autograd.functional.hessian(
        lambda v: _logistic_inner(v.view_as(w), lam, data["x"], data["y"]), w.flatten()
    )
    f = nn.functional.cross_entropy(data["xv"] @ w, data["yv"])
    (gf,) = torch.autograd.grad(f, w)
    v = torch.linalg.solve(H, gf.flatten())
    (gw,) = torch.autograd.grad(_logistic_inner(w, lam, data["x"], data["y"]), w, create_graph=True)
    (mixed,) = torch.autograd.grad(gw.flatten(), lam, grad_outputs=v)
    assert v.numel() == n
    return -mixed


def _sgd(lr: float) -> Callable:
    return functools.partial(torch.optim.SGD, lr=lr)


# ---------------------------------------------------------------------------------------------- Betty
def betty_cnn(method: str, config_fields: dict, batch: int, steps: int):
    """The CNN program hand-written with Betty's ImplicitProblem/Engine (what medmlo's DSL replaces)."""
    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.problems import ImplicitProblem

    torch.manual_seed(0)
    data = Images(N_IMAGES)
    x_val, y_val = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True)

    class Net(ImplicitProblem):
        def training_step(self, b):
            x, y, idx = b
            ce = nn.functional.cross_entropy(self.module(x), y, reduction="none")
            return (torch.sigmoid(self.weights.module(idx)).squeeze(1) * ce).mean()

    class Weights(ImplicitProblem):
        def training_step(self, b):
            return nn.functional.cross_entropy(self.net.module(x_val), y_val)

        def get_batch(self):
            return None

    net_module = cnn()
    net = Net("net", Config(type=method, log_step=-1, **config_fields), module=net_module, train_data_loader=loader)
    net.optimizer = torch.optim.SGD(net_module.parameters(), lr=LOWER_LR)
    weights_module = nn.Embedding(N_IMAGES, 1)
    weights = Weights("weights", Config(log_step=-1), module=weights_module)
    weights.optimizer = torch.optim.Adam(weights_module.parameters(), lr=UPPER_LR)
    return Engine(
        [net, weights],
        config=EngineConfig(train_iters=steps, logger_type="none"),
        dependencies={"u2l": {weights: [net]}, "l2u": {net: [weights]}},
    )


class BettyCNN(Program):
    def __init__(self, label: str, method: str, config_fields: dict, batch: int, steps: int):
        self.label = label
        self.engine = betty_cnn(method, config_fields, batch, steps)
        self.step_count = 0

    def outer_step(self) -> None:
        self.step_count += 1
        self.engine.global_step = self.step_count
        self.engine.train_step()


# ---------------------------------------------------------------------------------------------- timing
def clock(wall: bool) -> Callable[[], float]:
    return time.perf_counter if wall else time.thread_time


def interleaved(programs: list[Program], reference: Program, rounds: int, wall: bool) -> dict[str, list[float]]:
    """Round-robin timing: ratios of every program's outer step to the reference's in the same round."""
    now = clock(wall)
    ratios: dict[str, list[float]] = {p.label: [] for p in programs}
    everyone = [reference, *programs]
    for r in range(rounds):
        order = everyone if r % 2 == 0 else everyone[::-1]
        times = {}
        for p in order:
            t0 = now()
            p.outer_step()
            times[p.label] = now() - t0
        for p in programs:
            ratios[p.label].append(times[p.label] / times[reference.label])
    ratios[reference.label + " (s)"] = []
    return ratios


def summary(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def product_cost(batch: int, rounds: int, wall: bool) -> dict[str, float]:
    """Time of one curvature product of each kind, in plain training steps of the same CNN (same rounds)."""
    now = clock(wall)
    prog = MedmloCNN("probe", "cg", {"maxiter": 1}, batch, torch.float32, 10**6)
    for _ in range(2):
        prog.outer_step()
    net = prog.net
    plain = Runner(build(None, 1, {}, batch), 10**6, device="cpu", progress=False)
    plain.step()
    v = [torch.randn_like(p) for p in net.trainable_parameters()]
    models = {
        "gauss_newton (linearize)": curvature_model(net, "gauss_newton", jvp="linearize"),
        "gauss_newton (forward)": curvature_model(net, "gauss_newton", jvp="forward"),
        "gauss_newton (reverse, double VJP)": curvature_model(net, "gauss_newton", jvp="reverse"),
        "hessian": curvature_model(net, "hessian"),
    }
    out: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        t0 = now()
        plain.step()
        base = now() - t0
        for k, m in models.items():
            t0 = now()
            m.product(v)
            out[k].append((now() - t0) / base)
    return {k: statistics.median(x) for k, x in out.items()}


# ---------------------------------------------------------------------------------------------- sections
def section_cnn(args: argparse.Namespace) -> list[dict]:
    steps = 10**6
    cg20 = {"maxiter": 20, "tol": 0.0, "damping": DAMPING, "adaptive_damping": False}
    programs: list[Program] = [
        MedmloCNN("medmlo cg, Gauss-Newton", "cg", cg20, args.batch, torch.float32, steps),
        MedmloCNN("medmlo cg, Hessian", "cg", {**cg20, "curvature": "hessian"}, args.batch, torch.float32, steps),
    ]
    reference: Program
    if torchopt is None:
        print(
            "TorchOpt is not installed: its columns are skipped (pip install torchopt); ratios are to medmlo's Hessian cg"
        )
        reference = programs.pop()
    else:
        reference = TorchOptCNN(
            "TorchOpt custom_root + solve_cg", args.batch, torch.float32, {"maxiter": 19, "rtol": 0.0}
        )
    return _table("cnn: equal products (20 per solve), damping 30", programs, reference, args)


def section_accuracy(args: argparse.Namespace) -> list[dict]:
    steps = 10**6
    tol = {"maxiter": 20, "tol": 1e-2, "damping": DAMPING, "adaptive_damping": False}
    programs: list[Program] = [
        MedmloCNN("medmlo cg, Gauss-Newton, tol 1e-2", "cg", tol, args.batch, torch.float32, steps),
        MedmloCNN(
            "medmlo cg, Hessian, tol 1e-2", "cg", {**tol, "curvature": "hessian"}, args.batch, torch.float32, steps
        ),
    ]
    if torchopt is None:
        print("TorchOpt is not installed: the equal-accuracy section is skipped")
        return []
    reference = TorchOptCNN("TorchOpt solve_cg, rtol 1e-2", args.batch, torch.float32, {"maxiter": 20, "rtol": 1e-2})
    return _table("cnn: equal accuracy (relative residual 1e-2), damping 30", programs, reference, args)


def section_logistic(args: argparse.Namespace) -> list[dict]:
    data = logistic_data()
    programs: list[Program] = [MedmloLogistic("medmlo cg (Hessian)", data, 10**6)]
    if torchopt is None:
        print("TorchOpt is not installed: the logistic section is skipped")
        return []
    reference = TorchOptLogistic("TorchOpt custom_root + solve_cg", data)
    return _table("logistic regression (float64): framework overhead", programs, reference, args)


def section_betty(args: argparse.Namespace) -> list[dict]:
    rows = []
    cases = [
        ("darts", {}, {}),
        (
            "neumann",
            {"iterations": 5, "alpha": 0.02, "curvature": "hessian"},
            {"neumann_iterations": 5, "neumann_alpha": 0.02},
        ),
        ("cg", {"maxiter": 5, "curvature": "hessian"}, {"cg_iterations": 5}),
    ]
    for method, options, fields in cases:
        dsl = MedmloCNN(f"medmlo DSL {method}", method, options, args.batch, torch.float32, 10**6)
        betty = BettyCNN(f"hand-written Betty {method}", method, fields, args.batch, 10**6)
        for p in (dsl, betty):
            p.outer_step()
        rows += _table(f"DSL against hand-written Betty: {method}", [dsl], betty, args)
        with track_peak_memory("cpu") as mem_dsl:
            dsl.outer_step()
        with track_peak_memory("cpu") as mem_betty:
            betty.outer_step()
        rows[-1]["memory_ratio"] = mem_dsl.peak_bytes / mem_betty.peak_bytes
        print(f"  peak memory DSL / Betty: {rows[-1]['memory_ratio']:.3f}")
    return rows


def _table(title: str, programs: list[Program], reference: Program, args: argparse.Namespace) -> list[dict]:
    for p in [reference, *programs]:  # warm-up: allocator, Adam state, traces
        for _ in range(2):
            p.outer_step()
    ratios = interleaved(programs, reference, args.rounds, args.wall)
    print(f"\n{title} — time per outer step / {reference.label!r} (median, IQR over {args.rounds} rounds)")
    rows = []
    for p in programs:
        low, median, high = summary(ratios[p.label])
        products = p.products()
        rows.append(
            {
                "section": title,
                "program": p.label,
                "reference": reference.label,
                "time_ratio": median,
                "time_ratio_q1": low,
                "time_ratio_q3": high,
                "products": products,
                "reference_products": reference.products(),
                "rounds": args.rounds,
                "threads": args.threads,
                "clock": "wall" if args.wall else "thread CPU time",
            }
        )
        extra = f"   products {products} (reference {reference.products()})" if products is not None else ""
        print(f"  {p.label:<42} {median:6.3f} ({low:.3f}-{high:.3f}){extra}")
    return rows


def check(args: argparse.Namespace) -> list[dict]:
    """float64: medmlo's and TorchOpt's hypergradients on the same state and batch (no timing)."""
    rows = []
    if torchopt is None:
        print("TorchOpt is not installed: --check skipped")
        return rows
    torch.set_default_dtype(torch.float64)
    try:
        options = {"maxiter": 200, "tol": 1e-12, "damping": DAMPING, "adaptive_damping": False}
        for label, opts in (("Hessian", {**options, "curvature": "hessian"}), ("Gauss-Newton", options)):
            med = MedmloCNN(f"medmlo {label}", "cg", opts, args.batch, torch.float64, 10**6)
            med.weights_init = med.weights.module.weight.detach().clone()
            state = {k: v.clone() for k, v in med.net.module.state_dict().items()}
            med.outer_step()
            source = cnn().double()
            source.load_state_dict(state)
            source.weights_init = med.weights_init
            ref = TorchOptCNN("TorchOpt", args.batch, torch.float64, {"maxiter": 200, "rtol": 1e-12}, source=source)
            ref.x_val, ref.y_val = med.x_val.double(), med.y_val
            ref.batch_override = med.net.cur_batch
            ref.outer_step()
            a, b = med.hypergradient(), ref.hypergradient()
            err = float((a - b).norm() / b.norm())
            print(f"check cnn, medmlo {label} vs TorchOpt (exact Hessian): relative difference {err:.2e}")
            rows.append({"section": "check", "program": f"cnn {label}", "relative_difference": err})
        data = logistic_data()
        med, ref = MedmloLogistic("medmlo", data, 10**6), TorchOptLogistic("TorchOpt", data)
        for _ in range(3):
            lam_med, lam_ref = med.decay.module.value.detach().clone(), ref.lam.detach().clone()
            med.outer_step()
            ref.outer_step()
        points = (
            ("medmlo", med.hypergradient(), med.w.module.value.detach(), lam_med),
            ("TorchOpt", ref.hypergradient(), ref.w, lam_ref),
        )
        for name, got, w, lam in points:
            dense = dense_logistic_hypergradient(w, lam, data)
            err = float((got - dense).norm() / dense.norm())
            print(f"check logistic, {name} vs dense solve: relative error {err:.2e}")
            rows.append({"section": "check", "program": f"logistic {name}", "relative_error": err})
    finally:
        torch.set_default_dtype(torch.float32)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for torchopt_compare.json")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (CNN)")
    parser.add_argument("--sections", default="cnn,accuracy,logistic,betty", help="comma-separated sections")
    parser.add_argument("--wall", action="store_true", help="wall-clock instead of per-process CPU time")
    parser.add_argument("--check", action="store_true", help="float64 agreement checks instead of timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rows: list[dict[str, Any]] = []
    if args.check:
        rows = check(args)
    else:
        sections = {
            "cnn": section_cnn,
            "accuracy": section_accuracy,
            "logistic": section_logistic,
            "betty": section_betty,
        }
        for name in args.sections.split(","):
            rows += sections[name](args)
        if "cnn" in args.sections:
            cost = product_cost(args.batch, args.rounds, args.wall)
            print("\ntime of one curvature product / one plain training step (median):")
            for k, v in cost.items():
                print(f"  {k:<36} {v:.2f}")
            rows.append({"section": "product cost", **cost})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "torchopt_compare.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out / 'torchopt_compare.json'}")


if __name__ == "__main__":
    main()
