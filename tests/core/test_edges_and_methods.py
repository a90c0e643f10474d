"""Per-edge methods, order-independent uppers, the one-step method and the penalty method, against closed form."""

import functools
import itertools
import json

import pytest
import torch

from engines import Graph, GraphError, Level, Runner, closed_form
from engines.closed_form import Vector


def test_each_edge_uses_its_own_method_and_matches_its_own_analytic_value():
    result = closed_form.measure(closed_form.dual_meta(encoder_method="exact", init_method="first_order"))
    assert result["encoder"]["relative_error"] < 1e-12  # exact through the K inner steps (Eq. 3-5)
    assert result["init"]["relative_error"] < 1e-12  # first-order: FOMAML's M^T(M phi_K - t2) (Eq. 11 w/o Hessian)


def test_the_order_in_which_uppers_step_changes_neither_hypergradient():
    forward, backward = closed_form.dual_meta(), closed_form.dual_meta(swap_edges=True)
    first, second = closed_form.capture(forward), closed_form.capture(backward)
    assert [u.name for u in forward.graph["phi"]._parents] == ["encoder", "init"]
    assert [u.name for u in backward.graph["phi"]._parents] == ["init", "encoder"]
    for name in ("encoder", "init"):
        assert torch.equal(first[name], second[name]), name
        exact = backward.exact[name]()  # from the uppers' values when the inner loop ran
        assert torch.allclose(second[name], exact, rtol=1e-12, atol=1e-12), name


def test_simultaneous_uppers_stay_order_independent_when_one_loss_reads_the_other_upper():
    # init's loss reads the encoder too (DuMeta++'s head initialisation is scored through the encoder)
    forward, backward = closed_form.dual_meta(coupling=1.0), closed_form.dual_meta(coupling=1.0, swap_edges=True)
    first, second = closed_form.capture(forward), closed_form.capture(backward)
    for name in ("encoder", "init"):
        assert torch.equal(first[name], second[name]), name
        assert torch.allclose(first[name], forward.exact[name](), rtol=1e-12, atol=1e-12), name


def test_sequential_uppers_step_in_declared_order_each_after_the_previous_update():
    cf = closed_form.dual_meta(coupling=1.0, upper_order="sequential")  # encoder declared first, as Algorithm 1
    got = closed_form.capture(cf)
    for name in ("encoder", "init"):  # init's analytic value is taken at the encoder's updated θ
        assert torch.allclose(got[name], cf.exact[name](), rtol=1e-12, atol=1e-12), name
    simultaneous = closed_form.capture(closed_form.dual_meta(coupling=1.0))
    assert torch.equal(got["encoder"], simultaneous["encoder"])  # the first upper sees the same state
    change = float((got["init"] - simultaneous["init"]).norm() / simultaneous["init"].norm())
    assert change > 0.01, change  # the second one does not
    assert "upper_order=sequential" in cf.graph.describe()
    assert cf.graph.signature()["levels"]["phi"]["upper_order"] == "sequential"


def test_the_exact_replay_for_a_shared_lower_level_lands_on_the_real_iterate(tmp_path):
    cf = closed_form.dual_meta(swap_edges=True, unroll=3)
    Runner(cf.graph, 9, out=tmp_path, device="cpu", progress=False).run()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    encoder = [ln for ln in lines if ln["level"] == "encoder"]
    assert len(encoder) == 3
    for ln in encoder:
        hop = ln["hypergradient"]["encoder<-phi"]["phi->encoder"]
        assert hop["method"] == "exact" and hop["replay_gap"] < 1e-12
    init = next(ln for ln in lines if ln["level"] == "init")["hypergradient"]["init<-phi"]
    assert init["phi->init"]["method"] == "first_order" and init["norm"] > 0


def test_describe_draw_signature_and_validation_know_the_edge_methods(tmp_path):
    cf = closed_form.dual_meta()
    text = cf.graph.describe()
    assert "encoder <- phi[exact*, K=3]" in text and "init <- phi[first_order*, K=3]" in text
    assert cf.graph.draw(tmp_path / "g.png").stat().st_size > 0
    assert ["phi", "encoder", "exact", []] in cf.graph.signature()["edge_methods"]

    def graph(**edge):
        g = Graph("g")
        g.add(
            Level(
                "low",
                Vector(torch.zeros(2)),
                functools.partial(torch.optim.SGD, lr=0.1),
                lambda lv, _: (lv.module() * lv.up.module()).sum() ** 2,
            )
        )
        g.add(
            Level(
                "up",
                Vector(torch.ones(2)),
                functools.partial(torch.optim.SGD, lr=0.1),
                lambda lv, _: lv.low.module().sum(),
            )
        )
        g.bilevel("low", "up", **edge)
        return g

    with pytest.raises(GraphError, match=r"level 'low' \(edge to 'up'\): unknown hypergrad 'nosuch'"):
        graph(hypergrad="nosuch").validate()
    with pytest.raises(GraphError, match=r"option\(s\) \['tol'\] are not understood by hypergrad 'exact'"):
        graph(hypergrad="exact", options={"tol": 1}).validate()
    with pytest.raises(TypeError, match="hypergrad must be a method name"):
        graph(hypergrad={"cg": {}})
    g2 = Graph("g2")
    g2.add(*graph().levels.values())
    g2.bilevel("low", "up")
    g2.nest("low", "up", hypergrad="cg")  # the hop through 'up' w.r.t. 'low' is never taken
    with pytest.raises(GraphError, match="no hypergradient takes that hop"):
        g2.validate()


@pytest.mark.parametrize(
    "optimizer",
    [
        None,
        functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True),
        functools.partial(torch.optim.Adam, lr=0.01),
        functools.partial(torch.optim.RMSprop, lr=0.01, momentum=0.5),
    ],
    ids=["sgd", "nesterov", "adam", "rmsprop"],
)
@pytest.mark.parametrize("unroll", [1, 3])
def test_one_step_equals_exact_through_the_last_step(optimizer, unroll):
    one = closed_form.capture(closed_form.build("quadratic", "one_step", unroll=unroll, lower_optimizer=optimizer))
    exact = closed_form.capture(
        closed_form.build("quadratic", "exact", {"truncate": 1}, unroll=unroll, lower_optimizer=optimizer)
    )
    assert torch.allclose(one["hyper"], exact["hyper"], rtol=1e-10, atol=1e-12)


def test_one_step_equals_exact_through_the_last_step_at_three_levels():
    one = closed_form.capture(closed_form.build("three_level", "one_step", unroll=2))["top"]
    exact = closed_form.capture(closed_form.build("three_level", "exact", {"truncate": 1}, unroll=2))["top"]
    assert torch.allclose(one, exact, rtol=1e-10, atol=1e-12)


def test_one_step_carries_the_step_size_that_darts_leaves_out():
    """darts is the implicit gradient with H^-1 ≈ I and no ξ: on a quadratic its hop is 1/ξ times one_step's."""
    graphs = {m: closed_form.build("quadratic", m, unroll=1) for m in ("one_step", "darts")}
    for cf in graphs.values():
        closed_form.capture(cf)
    lr = graphs["one_step"].graph["solution"].optimizer.param_groups[0]["lr"]
    one = graphs["one_step"].graph["hyper"].hypergradients["hyper<-solution"][0]
    darts = graphs["darts"].graph["hyper"].hypergradients["hyper<-solution"][0]
    assert torch.allclose(one, lr * darts, rtol=1e-8)
    assert lr < 0.5  # so the two really differ


def test_penalty_minimiser_tends_to_the_bilevel_solution_as_lambda_grows():
    data = closed_form.quadratic_data(n=6, p=3, cond=2.0)
    _, lam_star = closed_form.bilevel_minimiser(data)
    gaps = [float((closed_form.penalty_minimiser(data, lam)[1] - lam_star).norm()) for lam in (1e-2, 1.0, 1e2, 1e4)]
    assert all(a > b for a, b in itertools.pairwise(gaps)) and gaps[-1] < 1e-3 * gaps[0]


@pytest.mark.parametrize("lam", [0.3, 3.0])
def test_penalty_method_converges_to_the_penalised_minimiser(lam):
    cf = closed_form.build(
        "quadratic",
        "penalty",
        {"lam": lam, "lam_growth": 1.0, "delta": 0.0, "max_rounds": 10**9},
        unroll=2,
        n=6,
        p=3,
        cond=2.0,
        upper_lr=0.1,
        lower_optimizer=functools.partial(torch.optim.SGD, lr=0.5 / (1 + lam * 2.0)),
    )
    runner = Runner(cf.graph, 6000, device="cpu", progress=False)
    runner.run()
    data = closed_form.quadratic_data(n=6, p=3, cond=2.0)
    w, hyper = closed_form.penalty_minimiser(data, lam)
    assert torch.allclose(cf.graph["solution"].module.value.detach(), w, atol=1e-6)
    assert torch.allclose(cf.graph["hyper"].module.value.detach(), hyper, atol=1e-6)
    state = cf.graph["solution"].method_state["penalty"]
    assert state["lam"] == lam and state["met"] == 0


def test_penalty_holds_batches_until_the_round_limit_and_grows_lambda():
    seen = {"low": [], "up": []}

    def low_loss(level, batch):
        if level.in_real_step:
            seen["low"].append(int(batch[0]))
        return ((level.module() - batch.double()) ** 2).sum() + (level.module() * level.up.module()).sum()

    def up_loss(level, batch):
        if level.in_real_step:
            seen["up"].append(int(batch[0]))
        return ((level.low.module() - 1) ** 2).sum() + 0.1 * (level.module() ** 2).sum()

    batches = iter(torch.arange(100, dtype=torch.float64).view(-1, 1).repeat(1, 2))
    val = iter(1000 + torch.arange(100, dtype=torch.float64).view(-1, 1).repeat(1, 2))
    g = Graph("p")
    g.add(
        Level(
            "low",
            Vector(torch.zeros(2)),
            functools.partial(torch.optim.SGD, lr=0.1),
            low_loss,
            batches,
            hypergrad="penalty",
            unroll=2,
            options={"lam": 0.5, "lam_growth": 2.0, "delta": 0.0, "max_rounds": 2},
        )
    )
    g.add(Level("up", Vector(torch.zeros(2)), functools.partial(torch.optim.SGD, lr=0.1), up_loss, val))
    g.bilevel("low", "up")
    Runner(g, 8, device="cpu", progress=False).run()
    # 4 rounds of (2 low steps, 1 up step); new batches every 2 rounds (max_rounds), held in between
    assert seen["low"] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert seen["up"] == [1000, 1000, 1001, 1001]
    assert g["low"].method_state["penalty"]["lam"] == 0.5 * 2.0**2 and g["low"].method_state["penalty"]["capped"] == 2


def test_penalty_stops_the_run_when_delta_falls_below_its_tolerance():
    cf = closed_form.build(
        "quadratic",
        "penalty",
        {"lam": 1.0, "delta": 1.0, "delta_decay": 0.5, "delta_tol": 0.2, "max_rounds": 1},
        unroll=1,
        n=4,
        p=2,
        cond=2.0,
    )
    result = Runner(cf.graph, 10_000, device="cpu", progress=False).run()
    assert "penalty method converged" in result.stop_reason and result.steps < 10_000


def test_penalty_runs_resume_identically_with_held_batches_and_step_dependent_losses(tmp_path):
    """The penalty hook recomputes the upper's loss before the upper steps again: its random state and
    global step must come back from the checkpoint (a loss may depend on both, e.g. stair training)."""
    from engines import DataStream

    def graph():
        torch.manual_seed(0)
        train = torch.utils.data.TensorDataset(torch.randn(40, 3, dtype=torch.float64))
        val = torch.utils.data.TensorDataset(torch.randn(40, 3, dtype=torch.float64))

        def low_loss(level, batch):
            noise = 0.01 * torch.randn(3, dtype=torch.float64)
            return ((level.module() - batch[0].mean(0) + noise) ** 2).sum() + (level.module() * level.up.module()).sum()

        def up_loss(level, batch):
            scale = 1.0 + 0.1 * (level.global_step // 3)  # a schedule on the global step
            noise = 0.01 * torch.randn(3, dtype=torch.float64)
            return (
                scale * ((level.low.module() - batch[0].mean(0) + noise) ** 2).sum() + 0.1 * level.module().pow(2).sum()
            )

        g = Graph("p")
        g.add(
            Level(
                "low",
                Vector(torch.zeros(3)),
                functools.partial(torch.optim.Adam, lr=0.05),
                low_loss,
                DataStream(train, 4, seed=1),
                hypergrad="penalty",
                unroll=2,
                options={"lam": 0.5, "delta": 1e-3, "max_rounds": 2},
            )
        )
        g.add(
            Level(
                "up",
                Vector(torch.zeros(3)),
                functools.partial(torch.optim.Adam, lr=0.05),
                up_loss,
                DataStream(val, 4, seed=2),
            )
        )
        g.bilevel("low", "up")
        return g

    whole = graph()
    full = Runner(whole, 12, device="cpu", progress=False, seed=4).run()
    Runner(graph(), 6, out=tmp_path, device="cpu", progress=False, seed=4, checkpoint_every=2).run()
    resumed = graph()
    again = Runner(
        resumed, 12, out=tmp_path, device="cpu", progress=False, seed=4, checkpoint_every=2, resume=True
    ).run()
    assert again.losses == full.losses
    for name in ("low", "up"):
        assert torch.equal(whole[name].module.value, resumed[name].module.value), name
    assert whole["low"].method_state == resumed["low"].method_state
