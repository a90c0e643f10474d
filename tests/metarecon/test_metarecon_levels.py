"""The metarecon levels: cross-task batches, per-sample σ(ω_i), its gradient, stair training, goldens, resume."""

import functools
import json
from pathlib import Path

import pytest
import torch

from engines import METHODS, Runner
from engines.golden import check_golden, golden_trace
from problems.metarecon import (
    SEEN_TASKS,
    CrossTaskSlices,
    StairSchedule,
    TaskWeights,
    adaptation_graph,
    conventional_graph,
    gradient_balance,
    meta_graph,
    task_losses,
)
from problems.metarecon.loa import LOANetwork, LOASettings
from problems.mri import SingleCoil, SliceSpec, load_slices

GOLDENS = Path(__file__).resolve().parents[2] / "assets" / "goldens"
METHOD = "penalty" if "penalty" in METHODS else "darts"
SIZE = (32, 32)


@pytest.fixture(scope="module")
def slices():
    return load_slices(None, spec=SliceSpec(crop=(160, 160), size=SIZE), limit={"train": 8, "val": 4, "test": 2})


@pytest.fixture(scope="module")
def masks():
    return torch.stack([task.mask(SIZE) for task in SEEN_TASKS[:2]])


def build(slices, masks, *, method=METHOD, steps_per_stage=None, unroll=2, seed=0):
    train = CrossTaskSlices(slices.splits["train"].images, masks, seed=seed)
    val = CrossTaskSlices(slices.splits["val"].images, masks, seed=seed + 1)
    return meta_graph(
        train=train,
        val=val,
        settings=LOASettings(phases=2),
        schedule=StairSchedule(2, steps_per_stage),
        batch_per_task=1,
        val_batch_per_task=1,
        unroll=unroll,
        hypergrad=method,
        theta_lr=1e-2,
        omega_lr=1e-1,
        seed=seed,
    )


def test_cross_task_batches_hold_every_task_with_its_own_slices(slices, masks):
    data = CrossTaskSlices(slices.splits["train"].images, masks, seed=0)
    item = data[3]
    assert item["target"].shape == (2, *SIZE) and item["task"].tolist() == [0, 1]
    assert torch.equal(item["mask"], masks)
    firsts = [[int(data.order[t, k]) for k in range(len(data))] for t in range(2)]
    assert sorted(firsts[0]) == sorted(firsts[1]) == list(range(8)) and firsts[0] != firsts[1]
    batch = torch.utils.data.default_collate([data[0], data[1], data[2]])
    assert batch["target"].shape == (3, 2, *SIZE)


def test_each_sample_is_regularised_with_the_weight_of_its_own_task(slices, masks):
    graph = build(slices, masks)
    theta, omega = graph["theta"], graph["omega"]
    batch = next(iter(torch.utils.data.DataLoader(CrossTaskSlices(slices.splits["train"].images, masks), batch_size=2)))
    weight = omega.module(batch["task"])
    assert weight.shape == (2, 2) and torch.allclose(weight, torch.full((2, 2), 0.5))
    before, _ = task_losses(theta.module, batch, weight, phases=2)
    with torch.no_grad():
        omega.module.omega[1] = 3.0
    after, _ = task_losses(theta.module, batch, omega.module(batch["task"]), phases=2)
    assert torch.equal(before[0], after[0]) and not torch.equal(before[1], after[1])


def test_the_task_losses_are_the_papers_sums(slices, masks):
    """Eq. 12-13 literally: ½‖F(y) − x̂‖² summed over pixels, then over the task's slices of the batch."""
    torch.manual_seed(0)
    network = LOANetwork(LOASettings(phases=2)).double()
    data = CrossTaskSlices(slices.splits["train"].images.double(), masks.double())
    batch = torch.utils.data.default_collate([data[0], data[1], data[2]])  # J = 3 slices of each of 2 tasks
    weight = torch.tensor([[0.3, 0.7]] * 3, dtype=torch.float64)
    losses, _ = task_losses(network, batch, weight, phases=2)
    for task in range(2):
        target, mask = batch["target"][:, task], batch["mask"][:, task]
        recon = network(SingleCoil(mask)(target.to(torch.complex128)), SingleCoil(mask), weight[:, task], phases=2)
        expected = sum(0.5 * (recon[j] - target[j]).abs().pow(2).sum() for j in range(3))
        assert torch.allclose(losses[task], expected, rtol=1e-12)
    assert losses.shape == (2,) and float(losses.detach().min()) > 1.0  # sums, not per-pixel means (those are < 0.1)


def test_adaptation_trains_omega_at_the_phases_it_is_scored_with(slices, masks):
    torch.manual_seed(0)
    network = LOANetwork(LOASettings(phases=3))
    network.active_phases = 1  # e.g. the best checkpoint of stair training had one phase
    graph = adaptation_graph(
        network=network, train=CrossTaskSlices(slices.splits["train"].images, masks[:1]), batch_size=2
    )
    omega = graph["omega"]
    batch = torch.utils.data.default_collate(
        [CrossTaskSlices(slices.splits["train"].images, masks[:1])[k] for k in range(2)]
    )
    weight = omega.module(batch["task"])
    at_one, _ = task_losses(network, batch, weight, phases=1)
    at_three, _ = task_losses(network, batch, weight, phases=3)
    assert omega.schedule(1) == omega.schedule(100) == 1
    assert torch.equal(omega.loss(batch)["loss"], at_one.sum()) and not torch.equal(at_one, at_three)


def test_gradient_balance_measures_the_penalty_part_of_each_gradient(slices, masks):
    """λ‖∇²_θθ L_tr ∇_θ L_tr‖ against a central difference of ∇_θ L_tr along ∇_θ L_tr, in float64."""
    graph = build(slices, masks)
    graph.build(torch.device("cpu"))  # wires the levels to each other (theta reads omega's weights)
    theta, omega = graph["theta"], graph["omega"]
    theta.module.double(), omega.module.double()
    train = torch.utils.data.default_collate(
        [CrossTaskSlices(slices.splits["train"].images.double(), masks.double())[0]]
    )
    val = torch.utils.data.default_collate([CrossTaskSlices(slices.splits["val"].images.double(), masks.double())[0]])
    params = list(theta.module.parameters())

    def grad_tr():
        return torch.autograd.grad(theta.loss(train)["loss"], params)

    g = [x.detach() for x in grad_tr()]
    h = 1e-7 / float(torch.cat([x.flatten() for x in g]).norm())  # small: no smoothed-ReLU kink or branch is crossed
    with torch.no_grad():
        for p, d in zip(params, g):
            p.add_(h * d)
    plus = grad_tr()
    with torch.no_grad():
        for p, d in zip(params, g):
            p.sub_(2 * h * d)
    minus = grad_tr()
    with torch.no_grad():
        for p, d in zip(params, g):
            p.add_(h * d)
    hg = torch.cat([((a - b) / (2 * h)).flatten() for a, b in zip(plus, minus)])
    val_grad = torch.cat([x.flatten() for x in torch.autograd.grad(omega.loss(val)["loss"], params)])
    out = gradient_balance(theta, omega, train, val, lam=1e-3)
    assert out["penalty_theta"] == pytest.approx(1e-3 * float(hg.norm()), rel=1e-4)
    assert out["theta_ratio"] == pytest.approx(1e-3 * float(hg.norm() / val_grad.norm()), rel=1e-4)
    doubled = gradient_balance(theta, omega, train, val, lam=2e-3)
    assert doubled["omega_ratio"] == pytest.approx(2 * out["omega_ratio"], rel=1e-12) and out["omega_ratio"] > 0
    other = gradient_balance(theta, omega, train, val, lam=None, indirect=[torch.ones(2, dtype=torch.float64)])
    assert other["theta_ratio"] == 0 and other["omega_ratio"] == pytest.approx(2**0.5 / out["val_grad_omega"])


def test_sigma_omega_receives_a_gradient_from_the_validation_loss(slices, masks):
    graph = build(slices, masks, method="darts")
    omega = graph["omega"]
    batch = torch.utils.data.default_collate([CrossTaskSlices(slices.splits["val"].images, masks)[0]])
    loss = omega.loss(batch)["loss"]  # Eq. 14a
    (direct,) = torch.autograd.grad(loss, omega.module.omega)
    assert (direct != 0).all()
    for method in dict.fromkeys((METHOD, "darts", "exact")):  # and a hypergradient through theta
        graph = build(slices, masks, method=method)
        runner = Runner(graph, 2, device="cpu", progress=False)
        runner.run()
        indirect = graph["omega"].last_indirect_grads
        assert indirect is not None and (indirect[0] != 0).all(), method
        assert not torch.equal(graph["omega"].module.omega.detach(), torch.zeros(2)), method


def test_stair_training_adds_phases_one_at_a_time(slices, masks, tmp_path):
    schedule = StairSchedule(3, 4)
    assert [schedule(s) for s in range(1, 15)] == [1] * 4 + [2] * 4 + [3] * 6
    assert StairSchedule(3)(1) == 3 and schedule.total_stair_steps == 8
    graph = build(slices, masks, method="darts", steps_per_stage=2)
    runner = Runner(graph, 6, out=tmp_path, device="cpu", progress=False)
    raw = graph["theta"].module.alpha_raw
    initial = raw.detach().clone()
    for _ in range(2):
        runner.step()
    assert raw[0] != initial[0] and raw[1] == initial[1]  # phase 2 is not active in the first stage
    runner.run()
    assert raw[1] != initial[1]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["phases"] for e in logged if e["level"] == "theta"] == [1, 1, 2, 2, 2, 2]


def test_single_level_graphs_train_what_they_should(slices, masks):
    images = slices.splits["train"].images
    conventional = conventional_graph(
        train=CrossTaskSlices(images, masks[:1]),
        settings=LOASettings(phases=2),
        schedule=StairSchedule(2),
        batch_size=2,
    )
    assert list(conventional.levels) == ["theta"] and conventional["theta"].weights_from is None
    Runner(conventional, 2, device="cpu", progress=False).run()
    network = conventional["theta"].module
    before = [p.detach().clone() for p in network.parameters()]
    adapted = adaptation_graph(network=network, train=CrossTaskSlices(images[:4], masks[1:]), batch_size=2, lr=0.5)
    Runner(adapted, 2, device="cpu", progress=False).run()
    assert all(torch.equal(a, b) for a, b in zip(before, network.parameters()))  # θ frozen (a copy is used)
    assert isinstance(adapted["omega"].module, TaskWeights) and adapted["omega"].module.omega.item() != 0
    with pytest.raises(ValueError, match="per task"):
        conventional_graph(
            train=CrossTaskSlices(images, masks),
            settings=LOASettings(phases=2),
            schedule=StairSchedule(2),
            batch_size=2,
        )


@pytest.mark.golden
def test_golden_meta_levels(slices, masks, update_goldens):
    trace = golden_trace(functools.partial(build, slices, masks, steps_per_stage=2), 6)
    assert set(trace) == {"theta", "omega"} and len(trace["theta"]["loss"]) == 6 and len(trace["omega"]["loss"]) == 3
    check_golden(trace, GOLDENS / "metarecon_levels.json", rtol=2.5e-4, atol=1e-9, update=update_goldens)


@pytest.mark.golden
def test_golden_conventional_and_adaptation(slices, masks, update_goldens):
    images = slices.splits["train"].images

    def conventional():
        return conventional_graph(
            train=CrossTaskSlices(images, masks[:1]),
            settings=LOASettings(phases=2),
            schedule=StairSchedule(2),
            batch_size=2,
            lr=1e-2,
        )

    def adaptation():
        torch.manual_seed(1)
        from problems.metarecon.loa import LOANetwork

        return adaptation_graph(
            network=LOANetwork(LOASettings(phases=2)), train=CrossTaskSlices(images, masks[1:]), batch_size=2, lr=0.1
        )

    trace = {"conventional": golden_trace(conventional, 3), "adaptation": golden_trace(adaptation, 3)}
    check_golden(trace, GOLDENS / "metarecon_single_levels.json", rtol=2.5e-4, atol=1e-9, update=update_goldens)


@pytest.mark.parametrize("method", sorted({METHOD, "darts"}))
def test_resume_is_identical(slices, masks, tmp_path, method):
    """8 steps straight equal 4 steps, a checkpoint, and 4 resumed steps (stair stages included)."""
    straight = build(slices, masks, method=method, steps_per_stage=2)
    Runner(straight, 8, device="cpu", progress=False, seed=3).run()
    first = build(slices, masks, method=method, steps_per_stage=2)
    Runner(first, 4, out=tmp_path, device="cpu", progress=False, seed=3, checkpoint_every=2).run()
    second = build(slices, masks, method=method, steps_per_stage=2)
    Runner(second, 8, out=tmp_path, device="cpu", progress=False, seed=3, checkpoint_every=2, resume=True).run()
    for name in ("theta", "omega"):
        for a, b in zip(straight[name].module.parameters(), second[name].module.parameters()):
            assert torch.equal(a, b), name
