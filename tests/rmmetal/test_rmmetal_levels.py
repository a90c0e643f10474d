"""RM-MetaL's levels: batched heads, warm starts, per-step vs shared features, memory flat in K, the
hypergradient against a dense solve, one meta-test for every algorithm, and a float64 golden."""

import functools
from pathlib import Path

import pytest
import torch

from engines import Runner, track_peak_memory
from engines.golden import check_golden, default_dtype, golden_trace
from engines.hypergrad import implicit
from problems.fewshot import EpisodeStream, load_fewshot, sample_episodes
from problems.rmmetal.hypergradient_accuracy import dense_implicit_hypergradient
from problems.rmmetal.levels import ALGORITHMS, Algorithm, EpisodeSource, TaskHeads, meta_learning_graph, per_task_ce
from problems.rmmetal.metatest import meta_test

GOLDEN = Path(__file__).resolve().parents[2] / "assets" / "goldens" / "rmmetal_levels.json"


@pytest.fixture(scope="module")
def digits():
    return load_fewshot("digits", None)


def graph_for(digits, method, *, k=3, tasks=3, width=8, n_iter=5, mu=0.01, outer_lr=1e-3, seed=0):
    source = EpisodeSource(EpisodeStream(digits.splits["train"], 5, 5, 5, tasks, seed=seed))
    return meta_learning_graph(
        method,
        data=source,
        in_channels=3,
        image_size=32,
        width=width,
        n_way=5,
        n_tasks=tasks,
        inner_steps=k,
        inner_lr=0.1,
        cg_iterations=n_iter,
        mu=mu,
        seed=seed,
        outer_optimizer=functools.partial(torch.optim.Adam, lr=outer_lr),
    )


def test_batched_heads_equal_a_per_task_loop():
    torch.manual_seed(0)
    heads = TaskHeads(4, 5, 12)
    feats, labels = torch.randn(4, 10, 12), torch.randint(0, 5, (4, 10))
    batched = per_task_ce(heads(feats), labels).sum()
    grads = torch.autograd.grad(batched, [heads.weight, heads.bias])
    for i in range(4):
        linear = torch.nn.functional.linear(feats[i], heads.weight[i], heads.bias[i])
        alone = torch.nn.functional.cross_entropy(linear, labels[i])
        gi = torch.autograd.grad(alone, [heads.weight, heads.bias])
        assert torch.allclose(gi[0][i], grads[0][i], atol=1e-6) and torch.allclose(gi[1][i], grads[1][i], atol=1e-6)
        assert torch.allclose(alone, per_task_ce(heads(feats), labels)[i])


def test_maml_task_networks_equal_separate_networks(digits):
    graph = graph_for(digits, "maml", k=1, tasks=2)
    nets, meta = graph["heads"].module, graph["backbone"].module
    x = torch.rand(2, 6, 3, 32, 32)
    with torch.no_grad():
        nets.copies["head__bias"][1] += 1.0  # make the two copies differ
        batched = nets(x)
        for i in range(2):
            params = {n: nets.copies[n.replace(".", "__")][i] for n in nets.names}
            alone = torch.func.functional_call(meta, params, (x[i],))
            assert torch.allclose(batched[i], alone, atol=1e-5)


def warm_start_solution(heads):
    """The CG solution ``cg_warm`` keeps for the next outer step (its per-hop state)."""
    return next(state["solution"] for state in heads.method_state.values() if "solution" in state)


def test_rm_metal_warm_starts_carry_over_between_outer_steps(digits, monkeypatch):
    graph = graph_for(digits, "rm-metal", k=3)
    heads = graph["heads"]
    starts, cg_inits = [], []
    original_cg = implicit.SOLVERS["cg"]

    def spy_cg(*args, **kwargs):
        cg_inits.append(None if kwargs.get("x0") is None else [t.clone() for t in kwargs["x0"]])
        return original_cg(*args, **kwargs)

    monkeypatch.setitem(implicit.SOLVERS, "cg", spy_cg)
    ends = []
    original_step = heads.before_step

    def record(batch):
        if heads.inner_step == 1:
            starts.append(heads.module.weight.detach().clone())
        original_step(batch)

    heads.before_step = record
    runner = Runner(graph, 9, device="cpu", progress=False)
    for step in range(1, 10):
        runner.step()
        if step % 3 == 0:
            ends.append((heads.module.weight.detach().clone(), [t.clone() for t in warm_start_solution(heads)]))
    # φ^0_t = φ^K_{t-1} (Algorithm 1, line 6) and v^0_t = v^N_{t-1} (Subroutine 1, line 2)
    assert torch.equal(starts[1], ends[0][0]) and torch.equal(starts[2], ends[1][0])
    assert cg_inits[0] is None
    assert all(torch.equal(a, b) for a, b in zip(cg_inits[1], ends[0][1]))


def test_without_warm_start_every_outer_step_restarts_from_phi_0(digits):
    graph = graph_for(digits, "rm-metal-no-warm-start", k=3)
    heads = graph["heads"]
    initial = heads.module.initial_weight.clone()
    starts = []
    original = heads.before_step
    heads.before_step = lambda b: (
        starts.append(heads.module.weight.detach().clone()) if heads.inner_step == 1 else None,
        original(b),
    )
    Runner(graph, 9, device="cpu", progress=False).run()
    assert len(starts) == 3 and all(torch.equal(s, initial) for s in starts)
    assert not any("solution" in state for state in heads.method_state.values())  # plain cg keeps no solution


def test_anil_inner_loops_start_from_the_meta_learned_head(digits):
    graph = graph_for(digits, "anil", k=2, outer_lr=0.05)
    Runner(graph, 4, device="cpu", progress=False).run()
    head = graph["backbone"].module.head
    assert head.weight.abs().sum() > 0  # the start itself was meta-learned (it starts at zero)
    values = graph["heads"].start_values()
    assert torch.equal(values["weight"][1], head.weight) and values["weight"].requires_grad


def peak_of_one_outer_step(digits, method, k):
    """Peak bytes of one outer step after a warm-up one, bytes of φ, and the bytes one backbone pass
    over the support set keeps alive for backward (its activations)."""
    graph = graph_for(digits, method, k=k, tasks=4, width=4)
    runner = Runner(graph, 2 * k, device="cpu", progress=False)
    for _ in range(k):
        runner.step()
    with track_peak_memory("cpu") as mem:
        for _ in range(k):
            runner.step()
    runner.close()
    with track_peak_memory("cpu") as one_pass:
        features = graph["backbone"].module.features(graph["heads"].cur_batch.support_x)
    del features
    phi_bytes = sum(p.numel() * p.element_size() for p in graph["heads"].trainable_parameters())
    return mem.peak_bytes, phi_bytes, one_pass.retained_bytes


def test_rm_metal_memory_is_flat_in_k_while_unrolling_grows(digits):
    rm1, _, _ = peak_of_one_outer_step(digits, "rm-metal", 1)
    rm20, _, _ = peak_of_one_outer_step(digits, "rm-metal", 20)
    shared1, phi_bytes, _ = peak_of_one_outer_step(digits, "itd-bio-shared", 1)
    shared20, _, _ = peak_of_one_outer_step(digits, "itd-bio-shared", 20)
    per_step20, _, backbone_pass = peak_of_one_outer_step(digits, "itd-bio", 20)
    maml1, _, _ = peak_of_one_outer_step(digits, "maml", 1)
    maml3, _, _ = peak_of_one_outer_step(digits, "maml", 3)
    assert abs(rm20 - rm1) <= 0.10 * rm1
    # unrolling keeps every iterate φ_1..φ_K alive for the backward pass: at least 19 more of them at K = 20
    assert shared20 - shared1 >= 19 * phi_bytes
    # the reference style also keeps (nearly all) the activations of one backbone pass per replayed step
    assert backbone_pass > 0 and per_step20 - shared20 >= 0.75 * 19 * backbone_pass
    assert maml3 - maml1 >= 2 * 0.75 * backbone_pass  # MAML re-runs (and adapts) the whole network per step


def captured_hypergradient(digits, method):
    """The upper level's gradient at its first outer step, in float64."""
    with default_dtype(torch.float64):
        graph = graph_for(digits, method, k=3, outer_lr=0.0)
        upper, captured = graph["backbone"], {}
        upper.grad_callback = lambda: captured.setdefault(
            "g", torch.cat([p.grad.flatten() for p in upper.trainable_parameters()])
        )
        Runner(graph, 3, device="cpu", precision="fp64", progress=False).run()
    return captured["g"]


@pytest.mark.parametrize("method", ["itd-bio", "anil"])
def test_per_step_features_give_the_hypergradient_of_shared_features(digits, method):
    """Recomputing θ(support) in every replayed step changes what is held in memory, not the maths."""
    per_step = captured_hypergradient(digits, method)
    shared = captured_hypergradient(digits, f"{method}-shared")
    assert ALGORITHMS[method].features == "per_step" and ALGORITHMS[f"{method}-shared"].features == "shared"
    assert per_step.norm() > 0 and (per_step - shared).norm() <= 1e-10 * shared.norm()


def test_algorithm_configurations_are_checked():
    with pytest.raises(ValueError, match="features"):
        Algorithm(adapt="head", start="fixed", hypergrad="exact", regularised=True, features="twice")
    with pytest.raises(ValueError, match="per_step"):
        Algorithm(adapt="all", start="meta", hypergrad="exact", regularised=False, features="shared")


def test_rm_metal_hypergradient_matches_the_dense_implicit_one(digits):
    graph = graph_for(digits, "rm-metal", k=30, tasks=2, width=4, n_iter=20, mu=0.1, outer_lr=0.0)
    upper, captured = graph["backbone"], {}
    upper.grad_callback = lambda: captured.setdefault(
        "cg", torch.cat([p.grad.flatten() for p in upper.trainable_parameters()])
    )
    Runner(graph, 30, device="cpu", progress=False).run()
    dense = dense_implicit_hypergradient(graph)
    assert torch.nn.functional.cosine_similarity(captured["cg"], dense, dim=0) > 0.99


def test_every_algorithm_is_the_same_graph_with_another_configuration(digits):
    shapes = set()
    for method in ALGORITHMS:
        graph = graph_for(digits, method, k=2)
        shapes.add((tuple(sorted(graph.levels)), tuple(tuple(e) for e in graph.signature()["nest"])))
        assert graph["heads"].hypergrad == ALGORITHMS[method].hypergrad
    assert len(shapes) == 1


def test_meta_test_scores_the_backbone_alone(digits):
    """One protocol for all: the head start an algorithm learned (ANIL, MAML) is not used, so two
    models with the same backbone score the same, and fine-tuning does fit the support set."""
    anil = graph_for(digits, "anil", k=1)["backbone"].module
    itd = graph_for(digits, "itd-bio", k=1)["backbone"].module
    assert anil.head is not None and itd.head is None
    with torch.no_grad():
        anil.head.weight.normal_()
    assert all(
        torch.equal(a, b) for a, b in zip(anil.backbone.state_dict().values(), itd.backbone.state_dict().values())
    )
    episodes = sample_episodes(
        digits.splits["test"], n_way=5, k_shot=5, k_query=5, n_tasks=20, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(meta_test(anil, episodes, steps=20, lr=0.05), meta_test(itd, episodes, steps=20, lr=0.05))
    untuned = meta_test(itd, episodes, steps=0, lr=0.05)
    assert torch.all(untuned == 0.2)  # a zero head predicts class 0 for every image: chance, 1 of 5 classes
    assert meta_test(itd, episodes, steps=20, lr=0.05).mean() > 0.3


def golden_traces(digits):
    """A short float64 trace of RM-MetaL (implicit, warm) and of ITD-BiO (exact, per-step features)."""
    return {
        method: golden_trace(lambda method=method: graph_for(digits, method, k=3), steps=6)
        for method in ("rm-metal", "itd-bio")
    }


@pytest.mark.golden
def test_both_levels_match_golden(digits, update_goldens):
    check_golden(golden_traces(digits), GOLDEN, rtol=2e-7, atol=1e-9, update=update_goldens)
