"""Every bad input is a clear error naming the level or argument, raised before any training."""

import functools
import sys
from pathlib import Path

import pytest
import torch
from core_toys import reweighting_graph

from engines import Graph, GraphError, Level, LossError, Runner, run
from engines.closed_form import Vector

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
import common

SGD = functools.partial(torch.optim.SGD, lr=0.1)


def two_levels(lower_loss, upper_loss=None, *, data=None, hypergrad="darts", **level_options):
    g = Graph("bad")
    g.add(Level("low", Vector(torch.zeros(3)), SGD, lower_loss, data, hypergrad=hypergrad, **level_options))
    g.add(Level("up", Vector(torch.ones(3)), SGD, upper_loss or (lambda lv, _: (lv.low.module() - 1).pow(2).sum())))
    g.bilevel("low", "up")
    return g


def coupled(lv, _):
    return (lv.module() * lv.up.module()).sum() ** 2 + lv.module().pow(2).sum()


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_steps_must_be_a_positive_integer(steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        Runner(reweighting_graph(), steps, device="cpu")


def test_recipe_step_and_method_options_are_checked_at_start_up():
    parser = __import__("argparse").ArgumentParser()
    common.add_common_arguments(parser, datasets=["x"], default_dataset="x")
    for bad in (["--steps", "0"], ["--steps", "-1"], ["--steps", "ten"], ["--workers", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(SystemExit, match="unknown method 'nosuch' for level 'seg'"):
        common.parse_hypergrad("seg=nosuch", ["gan", "seg"])
    with pytest.raises(SystemExit, match="unknown method 'nosuch'"):
        common.parse_hypergrad("nosuch", ["heads"])
    with pytest.raises(SystemExit, match="refused"):
        common.parse_hypergrad("reinforce", ["heads"])
    with pytest.raises(SystemExit, match="names level 'arch'"):
        common.parse_hypergrad("arch=cg", ["gan", "seg"])
    with pytest.raises(SystemExit, match="must read level=method"):
        common.parse_hypergrad("gan=darts,seg", ["gan", "seg"])
    assert common.parse_hypergrad("gan=one_step,seg=cg", ["gan", "seg"]) == {"gan": "one_step", "seg": "cg"}


@pytest.mark.parametrize(
    "loss,message",
    [
        (lambda lv, _: lv.module() * 2, r"scalar tensor.*got a tensor of shape \(3,\)"),
        (lambda lv, _: 1.5, "scalar tensor.*got float"),
        (lambda lv, _: {"value": lv.module().sum()}, "without a 'loss' key"),
        (lambda lv, _: torch.tensor(2.0), "does not depend on the level's own parameters"),
    ],
)
def test_malformed_losses_are_refused_before_any_step(loss, message):
    g = Graph("g")
    g.add(Level("only", Vector(torch.zeros(3)), SGD, loss))
    with pytest.raises(LossError, match=f"level 'only': .*{message}"):
        Runner(g, 5, device="cpu", progress=False).start()


def test_an_upper_loss_that_reads_no_lower_level_is_refused():
    g = two_levels(coupled, upper_loss=lambda lv, _: torch.tensor(1.0))
    with pytest.raises(LossError, match="level 'up': its loss does not depend on any parameter"):
        Runner(g, 5, device="cpu", progress=False).start()


def test_a_loss_that_needs_a_batch_at_a_level_without_data():
    g = Graph("g")
    g.add(Level("only", Vector(torch.zeros(3)), SGD, lambda lv, batch: (lv.module() - batch[0]).pow(2).sum()))
    with pytest.raises(LossError, match="level 'only': its loss failed on batch=None .*pass data="):
        Runner(g, 5, device="cpu", progress=False).start()


def test_preflight_consumes_no_data_and_no_randomness(tmp_path):
    with_check = run(reweighting_graph("darts"), 6, device="cpu", progress=False, seed=3)
    graph = reweighting_graph("darts")
    for level in graph.levels.values():
        level.preflight = lambda: False  # as if nothing could be previewed
    without = run(graph, 6, device="cpu", progress=False, seed=3)
    assert with_check.losses == without.losses


def test_hypergrad_must_be_a_name_and_options_a_dict():
    with pytest.raises(TypeError, match="level 'low': hypergrad must be a method name .*options=\\{"):
        Level("low", Vector(torch.zeros(2)), SGD, coupled, hypergrad={"cg": {"maxiter": 3}})
    with pytest.raises(TypeError, match="level 'low': options must be a dict"):
        Level("low", Vector(torch.zeros(2)), SGD, coupled, hypergrad="cg", options=["maxiter", 3])
    with pytest.raises(ValueError, match="level 'low': unroll must be an integer >= 1, got 0"):
        Level("low", Vector(torch.zeros(2)), SGD, coupled, unroll=0)


@pytest.mark.parametrize(
    "start,message",
    [
        (lambda lv: {"valeu": lv.up.module()}, r"unknown name\(s\) \['valeu'\], missing \['value'\]"),
        (lambda lv: {"value": torch.zeros(4)}, r"start value for 'value' must be a tensor of shape \(3,\), got \(4,\)"),
        (lambda lv: [lv.up.module()], "start must return a dict"),
    ],
)
def test_start_maps_are_checked_when_the_graph_is_built(start, message):
    g = two_levels(coupled, hypergrad="exact", start=start)
    with pytest.raises(GraphError, match=f"level 'low': .*{message}"):
        Runner(g, 5, device="cpu", progress=False).start()


def test_validation_must_return_numbers_and_resume_needs_a_folder():
    with pytest.raises(ValueError, match="returned str 'good' for metric 'acc'"):
        run(reweighting_graph(), 2, device="cpu", progress=False, validate=lambda g: {"acc": "good"}, valid_every=1)
    with pytest.raises(ValueError, match="validate\\(\\) must return a non-empty dict"):
        run(reweighting_graph(), 2, device="cpu", progress=False, validate=lambda g: 0.5, valid_every=1)
    with pytest.raises(ValueError, match="resume=True needs out="):
        Runner(reweighting_graph(), 2, device="cpu", resume=True)


def test_first_order_without_a_start_map_is_warned_about():
    with pytest.warns(
        UserWarning, match="level 'low': hypergrad 'first_order' without a start= map gives up no hypergradient"
    ):
        two_levels(coupled, hypergrad="first_order").validate()


@pytest.mark.parametrize(
    "method,options",
    [
        ("cg", {}),
        ("cg_warm", {}),
        ("neumann", {"iterations": 3, "alpha": 0.1}),
        ("darts", {}),
        ("exact", {}),
        ("one_step", {}),
    ],
)
def test_methods_work_when_a_lower_parameter_is_unused_in_its_own_loss(method, options):
    class TwoParts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))

    def low_loss(lv, _):
        return (lv.module.used * lv.up.module()).sum() ** 2 + lv.module.used.pow(2).sum() - lv.module.used.sum()

    g = Graph("g")
    g.add(Level("low", TwoParts(), SGD, low_loss, hypergrad=method, options=options))
    g.add(Level("up", Vector(torch.ones(3)), SGD, lambda lv, _: (lv.low.module.used - 1).pow(2).sum()))
    g.bilevel("low", "up")
    run(g, 3, device="cpu", progress=False)
    grads = g["up"].hypergradients["up<-low"][0]
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0


def test_a_solve_that_ends_worse_than_zero_is_warned_about_once_and_logged(tmp_path):
    def indefinite(lv, _):  # a saddle: CG meets negative curvature and cannot converge in 2 products
        w = lv.module()
        return w[0] ** 2 - 3 * w[1] ** 2 + 0.5 * w[2] ** 2 - w @ lv.up.module()

    g = two_levels(indefinite, hypergrad="cg", options={"maxiter": 1, "adaptive_damping": False})
    with pytest.warns(RuntimeWarning, match=r"cg through level 'low' ended with relative residual .* >= 1") as record:
        run(g, 4, out=tmp_path, device="cpu", progress=False)
    assert sum("relative residual" in str(w.message) for w in record) == 1
    lines = [__import__("json").loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    residuals = [ln["hypergradient"]["up<-low"]["low->up"]["residual"] for ln in lines if ln["level"] == "up"]
    assert len(residuals) == 4 and max(residuals) > 1  # logged at every step, warned about once
