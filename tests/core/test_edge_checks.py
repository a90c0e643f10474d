"""Every declared edge on a hypergradient path must carry something: checked before training, per edge.

Each refused graph below is one that used to run with a hypergradient of exactly zero at every step.
"""

import functools
import itertools

import pytest
import torch

from engines import Graph, GraphError, Level, LossError, Runner, closed_form, run
from engines.closed_form import Vector

SGD = functools.partial(torch.optim.SGD, lr=0.1)


def coupled(lv, _):  # the lower loss reads the upper level: w* = 2λ/3
    return (lv.module() - lv.up.module()).pow(2).sum() + lv.module().pow(2).sum() / 2


def reads_low(lv, _):  # the upper loss reads the lower level
    return (lv.low.module() - 1).pow(2).sum()


def pair(lower_loss, upper_loss, *, data=None, hypergrad=None, start=None):
    g = Graph("pair")
    g.add(Level("low", Vector(torch.zeros(3)), SGD, lower_loss, data, hypergrad=hypergrad, start=start))
    g.add(Level("up", Vector(torch.ones(3)), SGD, upper_loss))
    g.bilevel(lower="low", upper="up")
    return g


def start(graph):
    Runner(graph, 5, device="cpu", progress=False).start()


def test_the_well_formed_pair_runs_with_a_non_zero_hypergradient():
    g = pair(coupled, reads_low)
    run(g, 2, device="cpu", progress=False)
    assert g["up"].hypergradients["up<-low"][0].abs().sum() > 0


def test_a_feeds_edge_whose_lower_loss_does_not_read_the_upper_is_refused():
    g = pair(lambda lv, _: lv.module().pow(2).sum(), reads_low)
    with pytest.raises(
        LossError,
        match=r"level 'low': feeds edge up => low .*the loss of 'low' does not read the parameters of 'up', so the "
        r"hop through 'low' with respect to 'up' on up<-low would be zero",
    ):
        start(g)


def test_a_nest_edge_whose_upper_loss_does_not_read_the_lower_is_refused():
    g = pair(coupled, lambda lv, _: lv.module().pow(2).sum())  # depends on a parameter, but not on 'low'
    with pytest.raises(
        LossError,
        match=r"level 'up': nest edge low -> up .*the loss of 'up' does not read the parameters of 'low', so the "
        r"hypergradient of 'up' along up<-low would be zero at every step",
    ):
        start(g)


def test_an_unchecked_edge_would_indeed_give_a_zero_hypergradient():
    """What the check prevents: the same graph run without it has an exactly zero hypergradient."""
    g = pair(lambda lv, _: lv.module().pow(2).sum(), reads_low)
    for level in g.levels.values():
        level.preflight = lambda: True  # skip the check...
        level._checked_loss = True  # ...and its first-step fallback
    run(g, 3, device="cpu", progress=False)
    assert torch.count_nonzero(g["up"].hypergradients["up<-low"][0]) == 0


def test_a_loss_that_reads_the_upper_only_in_recomputations_is_accepted():
    def skips_graph_in_real_steps(lv, _):
        upper = lv.up.module().detach() if lv.in_real_step else lv.up.module()
        return (lv.module() - upper).pow(2).sum() + lv.module().pow(2).sum() / 2

    g = pair(skips_graph_in_real_steps, reads_low)
    run(g, 2, device="cpu", progress=False)
    assert g["up"].hypergradients["up<-low"][0].abs().sum() > 0


def test_levels_whose_batch_cannot_be_previewed_are_checked_at_their_first_step():
    batches = (torch.ones(3) for _ in itertools.count())  # a generator: no state_dict, nothing to preview
    g = pair(lambda lv, b: (lv.module() - b).pow(2).sum(), reads_low, data=batches)
    runner = Runner(g, 5, device="cpu", progress=False)
    runner.start()  # the preflight of 'low' is skipped
    with pytest.raises(LossError, match="level 'low': feeds edge up => low .*does not read the parameters of 'up'"):
        runner.step()


def test_a_first_order_hop_whose_start_map_ignores_the_upper_is_refused():
    g = pair(coupled, reads_low, hypergrad="first_order", start=lambda lv: {"value": torch.zeros(3)})
    with pytest.raises(
        LossError,
        match=r"hypergrad 'first_order', which differentiates only the start map of 'low', and that map does not "
        r"read 'up'",
    ):
        start(g)


def test_an_upper_read_only_through_the_start_map_needs_a_method_that_differentiates_it():
    # MAML's shape: the inner loss never reads θ; θ enters through φ_0 = θ only
    assert closed_form.measure(closed_form.build("maml", "exact"))["meta"]["relative_error"] < 1e-8
    with pytest.raises(
        LossError, match="level 'adapted': .*hypergrad 'darts' does not differentiate the start map of 'adapted'"
    ):
        start(closed_form.build("maml", "darts").graph)


def test_a_top_level_reading_the_lowest_level_of_a_pair_gets_the_chain_through_it():
    cf = closed_form.chain_through_pair("cg", {"maxiter": 50, "tol": 1e-14})
    assert "top <- weights[cg, K=4] <- hyper[cg, K=4]" in cf.graph.describe()
    assert "hyper -> top via weights" in cf.graph.describe()
    result = closed_form.measure(cf)["top"]
    assert result["relative_error"] < 1e-10, result
    top = cf.graph["top"]
    path = top.hypergradients["top<-weights<-hyper"][0]
    direct = 0.1 * top.module.value.detach()  # r ρ: the top loss's own term
    assert torch.allclose(path, cf.exact["top"]() - direct, rtol=1e-10, atol=1e-12)
    assert path.norm() > 1.0  # the path carries most of dF/dρ


@pytest.mark.parametrize("method", ["exact", "darts"])
def test_the_chain_through_a_pair_is_formed_for_unrolled_and_finite_difference_methods(method):
    result = closed_form.measure(closed_form.chain_through_pair(method))["top"]
    assert result["cosine"] > 0.9, result


def three_levels(declare):
    cf = closed_form.chain_through_pair("cg")
    g = Graph("three")
    g.add(*cf.graph.levels.values())
    g.bilevel(lower="weights", upper="hyper")
    g.feeds("top", into="hyper")
    declare(g)
    return g


def test_the_three_level_graph_built_by_the_old_advice_is_refused_with_the_declaration_that_works():
    g = three_levels(lambda g: g.nest(lower="hyper", upper="top"))  # top's loss reads weights, not hyper
    with pytest.raises(
        LossError,
        match=r"level 'top': nest edge hyper -> top .*the loss of 'top' does not read the parameters of 'hyper'.*"
        r"declare g.nest\(lower='hyper', upper='top', via='weights'\) instead, so that the path runs "
        r"top <- weights <- hyper",
    ):
        start(g)


def test_a_feeds_edge_without_a_chain_names_the_via_declaration():
    g = three_levels(lambda g: None)
    with pytest.raises(
        GraphError,
        match=r"no chain of nest edges leads from 'hyper' up to 'top'.*g.nest\(lower='hyper', upper='top', "
        r"via='weights'\) if the loss of 'top' reads 'weights', whose loss reads 'hyper'",
    ):
        g.validate()


def test_a_via_level_must_read_the_lower_level_and_lie_below_the_upper():
    def graph(*edges):
        g = Graph("g")
        for name in ("a", "b", "c", "top"):
            g.add(Level(name, Vector(torch.zeros(2)), SGD, lambda lv, _: lv.module().sum()))
        for edge in edges:
            edge(g)
        return g

    g = graph(lambda g: g.nest("b", "top", via="a"))
    with pytest.raises(GraphError, match=r"via='a'\) says that the loss of 'a' reads 'b', but no edge declares it"):
        g.validate()
    g = graph(lambda g: g.feeds("b", into="a"), lambda g: g.nest("b", "top", via="a"))
    with pytest.raises(GraphError, match="'a' must lie below 'top'"):
        g.validate()
    g = graph(lambda g: g.nest("b", "top", via="b"))
    with pytest.raises(GraphError, match="via must be a third level"):
        g.validate()
    with pytest.raises(GraphError, match="declared twice"):
        graph(lambda g: g.nest("b", "top"), lambda g: g.nest("b", "top", via="a"))
