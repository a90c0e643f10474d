"""The `theta` and `correlation` levels: σ(W) columns, a real hypergradient through the network (any gradient
path), a pure-noise group learns a small weight, the baselines' fixed weights, goldens, resume, and inputs
that do not fit."""

from pathlib import Path

import pytest
import torch
from taskcorr_fixtures import config, groups, make_group, pure_noise_group, settings

from engines import Runner, run
from engines.golden import check_golden, default_dtype, golden_trace
from problems.taskcorr import (
    FixedTaskWeights,
    GroupStream,
    ReconGroup,
    TaskCorrelation,
    independent_graph,
    pool_groups,
    taskcorr_graph,
    uniform_graph,
)

GOLDEN = Path(__file__).resolve().parents[2] / "assets" / "goldens" / "taskcorr_levels.json"


def captured_hypergradient(graph, steps: int, **options) -> torch.Tensor:
    """The gradient the `correlation` level receives at its first step."""
    runner = Runner(graph, steps, device="cpu", progress=False, **options)
    upper, captured = graph["correlation"], {}
    upper.grad_callback = lambda: captured.setdefault("grad", upper.module.logits.grad.detach().clone())
    for _ in range(steps):
        runner.step()
    runner.close()
    return captured["grad"]


def test_columns_of_sigma_w_sum_to_one_and_w_receives_a_hypergradient(mni_slices):
    with default_dtype(torch.float64):
        train, val = groups(mni_slices)
        graph = taskcorr_graph(config(), train, val, settings())
        hyper = captured_hypergradient(graph, 2, precision="fp64")
    assert hyper.shape == (3, 2) and torch.isfinite(hyper).all()
    assert (hyper.abs().sum(0) > 0).all()  # every column moves
    assert hyper.sum(0).abs().max() <= 1e-9 * hyper.abs().max()  # through the softmax: columns sum to 0
    weights = graph["correlation"].module.weights()
    assert torch.allclose(weights.sum(0), torch.ones(2, dtype=weights.dtype)) and (weights > 0).all()
    assert not torch.allclose(weights, torch.full_like(weights, 1 / 3))  # W took a step


@pytest.mark.parametrize("method", ["darts", "exact", "adjoint_unroll"])
def test_hypergradient_is_the_same_through_the_adjoint_path_and_autograd(mni_slices, method):
    """The engine differentiates `theta` through the costate recursion (exact needs its double backward;
    adjoint_unroll the second-order adjoint, which does not depend on the path)."""
    results = {}
    for path in ("autograd", "adjoint", "adjoint_checkpointed"):
        with default_dtype(torch.float64):
            train, val = groups(mni_slices)
            graph = taskcorr_graph(config(phases=3), train, val, settings(hypergrad=method, gradient=path))
            results[path] = captured_hypergradient(graph, 2, precision="fp64", deterministic=True)
    reference = results["autograd"]
    assert reference.abs().max() > 0
    for path in ("adjoint", "adjoint_checkpointed"):
        assert torch.allclose(results[path], reference, rtol=1e-6, atol=1e-9 * float(reference.abs().max())), path


def test_a_training_group_of_pure_noise_ends_with_a_small_weight(mni_slices):
    """Two clean groups (interleaved slices of one task) and one of pure noise, validated on the clean task."""
    clean = [make_group(mni_slices, "t1", "train", "radial", 0.3, coils=1, n=12, offset=i, every=3) for i in (0, 1)]
    noise = pure_noise_group(clean[0])
    val = [make_group(mni_slices, "t1", "val", "radial", 0.3, coils=1, n=8)]
    graph = taskcorr_graph(
        config(coils=1, phases=1), [clean[0], noise, clean[1]], val, settings(inner_steps=1, train_batch=6, val_batch=8)
    )
    graph.run(steps=30, device="cpu", progress=False)
    weights = graph["correlation"].module.weights().detach()[:, 0]
    assert weights[1] < 0.5 / 3, weights  # uniform would be 1/3
    assert weights[1] < 0.5 * min(weights[0], weights[2]), weights


@pytest.mark.golden
def test_both_levels_match_golden(mni_slices, update_goldens):
    def per_column():
        train, val = groups(mni_slices)
        return taskcorr_graph(config(), train, val, settings())

    def single_column():  # M = 1: one θ, the validation groups pooled
        train, val = groups(mni_slices)
        return taskcorr_graph(config(), train, [pool_groups("pooled", val)], settings())

    trace = {"per_column": golden_trace(per_column, 4), "single_column": golden_trace(single_column, 4)}
    check_golden(trace, GOLDEN, rtol=2e-6, atol=1e-10, update=update_goldens)  # spread measured: 1.6e-8


def parameters(graph) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{p}": t.detach().clone()
        for name, level in graph.levels.items()
        for p, t in level.module.named_parameters()
    }


def test_resume_gives_the_same_parameters_and_losses(mni_slices, tmp_path):
    def build():
        train, val = groups(mni_slices)
        return taskcorr_graph(config(), train, val, settings())

    options = {"device": "cpu", "progress": False, "checkpoint_every": 2}
    full_graph = build()
    full = run(full_graph, 8, out=tmp_path / "full", **options)
    run(build(), 4, out=tmp_path / "split", **options)
    resumed_graph = build()
    with torch.no_grad():  # spoil the fresh weights: everything must come from the checkpoint
        for level in resumed_graph.levels.values():
            for p in level.module.parameters():
                p.add_(0.5)
    resumed = run(resumed_graph, 8, out=tmp_path / "split", resume=True, **options)
    a, b = parameters(full_graph), parameters(resumed_graph)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.losses == full.losses


def test_the_baselines_train_the_same_networks_on_fixed_weights(mni_slices):
    """uniform: θ_j on the N training groups and V_j, equal weights; independent: θ_j on V_j alone; both with
    the learned model's M networks and initialisation."""
    train, val = groups(mni_slices)
    learned = taskcorr_graph(config(), train, val, settings())
    uniform = uniform_graph(config(), train, val, settings())
    independent = independent_graph(config(), val, settings(), samples_per_step=6)
    assert list(uniform.levels) == ["theta"] and list(independent.levels) == ["theta"]
    expected_uniform = torch.tensor([[0.25, 0.25]] * 3 + [[0.25, 0.0], [0.0, 0.25]])
    assert torch.equal(uniform["theta"].task_correlation.weights(), expected_uniform)
    assert torch.equal(independent["theta"].task_correlation.weights(), torch.eye(2))
    start = learned["theta"].module.state_dict()
    for graph in (uniform, independent):
        assert len(graph["theta"].module) == 2
        assert all(torch.equal(start[k], v) for k, v in graph["theta"].module.state_dict().items())
    losses = uniform["theta"].group_losses(next(GroupStream([*train, *val], 2)))
    assert (losses[3, 1] == 0) and (losses[4, 0] == 0) and (losses[:3] > 0).all()  # V_j only in column j
    before = [p.detach().clone() for p in independent["theta"].module.parameters()]
    independent.run(steps=2, device="cpu", progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, independent["theta"].module.parameters()))
    assert independent["theta"].cur_batch.kspace.shape[0] == 2 * 4  # 6 asked, capped at the 4 samples of V_j
    with pytest.raises(ValueError, match="columns summing to 1"):
        FixedTaskWeights(torch.tensor([[0.5], [0.6]]))


def test_group_counts_that_do_not_fit_fail_clearly(mni_slices):
    train, val = groups(mni_slices)
    with pytest.raises(ValueError, match="N = 4 training groups were asked for, but 3"):
        taskcorr_graph(config(), train, val, settings(), n_train=4)
    with pytest.raises(ValueError, match="M = 1 validation groups were asked for, but 2"):
        taskcorr_graph(config(), train, val, settings(), n_val=1)
    with pytest.raises(ValueError, match=r"initial W has shape \(2, 2\), expected \(N, M\) = \(3, 2\)"):
        taskcorr_graph(config(), train, val, settings(), initial_logits=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="needs N >= 2 training groups"):
        taskcorr_graph(config(), train[:1], val, settings())
    with pytest.raises(ValueError, match="no validation groups"):
        taskcorr_graph(config(), train, [], settings())
    with pytest.raises(ValueError, match="has 2 coils; the network was built for 4"):
        taskcorr_graph(config(coils=4), train, val, settings())
    with pytest.raises(ValueError, match="fewer than the batch size 9"):
        GroupStream(train, 9)
    with pytest.raises(ValueError, match="masks must be"):
        ReconGroup("bad", train[0].kspace, train[0].masks[:, 0], train[0].coils)
    with pytest.raises(ValueError, match="expected"):
        TaskCorrelation(3, 2, initial=torch.zeros(3))
