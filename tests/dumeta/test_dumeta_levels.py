"""DuMeta++'s three levels: the hypergradients of θ (second order, Eq. 3-5) and φ (first order,
Eq. 11 without the Hessian) against hand-unrolled references, goldens, and resume with the bank."""

import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from dumeta_fixtures import INNER_LR, dual_graph, init_graph, joint_graph, toy_pool
from torch.func import functional_call

from engines import Runner
from engines.golden import check_golden, default_dtype, golden_trace
from problems.dumeta import VARIANTS, effective_upper_order, meta_trained_parameters
from problems.dumeta.data import MetaTaskSampler
from problems.dumeta.prototypes import ClassAwareRegulariser
from problems.losses import DeepSupervisedDiceCE

GOLDENS = Path(__file__).resolve().parents[2] / "assets" / "goldens"


def first_step_gradients(graph, levels):
    """Run one global step (one meta-iteration); return each named level's gradient as it was applied."""
    captured = {}
    for name in levels:
        level = graph[name]
        level.grad_callback = lambda level=level, name=name: captured.setdefault(
            name, {n: p.grad.detach().clone() for n, p in zip(level.trainable_names, level.trainable_parameters())}
        )
    runner = Runner(graph, 1, device="cpu", seed=0, precision="fp64", progress=False)
    runner.step()
    runner.close()
    return captured


def reference_batches(seed=0):
    """The batches of meta-iteration 1 drawn independently of the graph's sampler, in float64."""
    sampler = MetaTaskSampler(toy_pool(), batch_size=1, seed=seed)
    batches = {
        "inner": sampler.inner(SimpleNamespace(inner_step=1)),
        "encoder": sampler.outer("encoder"),
        "head_init": sampler.outer("head_init"),
    }
    for b in batches.values():
        b.image = b.image.double()
    return batches


def unrolled_reference(net, params, batches, *, second_order, theta_for_phi=None):
    """ω* = φ − α ∇_ω L_inner(φ, θ) (Eq. 1) by torch.func, then ∂L_outer1/∂θ (Eq. 3) at ω*, θ and
    ∂L_outer2/∂ω* (Eq. 9) at ω* and θ (or ``theta_for_phi``: the encoder after its update, Algorithm 1)."""
    seg = DeepSupervisedDiceCE()
    theta = {n: p.clone().requires_grad_(True) for n, p in params.items() if n.startswith("encoder.")}
    phi = {n: p.clone().requires_grad_(True) for n, p in params.items() if n.startswith("decoder.")}
    inner = batches["inner"]
    out = functional_call(net, {**theta, **phi}, (inner.image,))
    grads = torch.autograd.grad(seg(out.logits, inner.label), list(phi.values()), create_graph=second_order)
    omega = {n: p - INNER_LR * g for (n, p), g in zip(phi.items(), grads)}
    if not second_order:
        omega = {n: w.detach().requires_grad_(True) for n, w in omega.items()}
    outer = batches["encoder"]
    out = functional_call(net, {**theta, **omega}, (outer.image,))
    reg = ClassAwareRegulariser(net.decoder_channels(), capacity=4)  # a fresh bank, as the level's at step 1
    loss1 = seg(out.logits, outer.label) + 0.1 * reg(out.decoder_features, outer.label, outer.domain, update=True)
    d_theta = dict(zip(theta, torch.autograd.grad(loss1, list(theta.values()))))
    second = batches["head_init"]
    omega = {n: w.detach().requires_grad_(True) for n, w in omega.items()}
    if theta_for_phi is not None:
        theta = {f"encoder.{n}": t for n, t in theta_for_phi.items()}
    loss2 = seg(functional_call(net, {**theta, **omega}, (second.image,)).logits, second.label)
    d_omega = dict(zip(omega, torch.autograd.grad(loss2, list(omega.values()))))
    return d_theta, d_omega


def flat(grads, prefix=""):
    """Concatenate ``{name: tensor}`` in name order (names relative to ``prefix``; φ's keys use '__')."""
    return torch.cat(
        [t.flatten() for _, t in sorted((n.removeprefix(prefix).replace("__", "."), t) for n, t in grads.items())]
    )


@pytest.fixture(scope="module")
def step_one():
    with default_dtype(torch.float64):
        graph, net, _ = dual_graph("dumeta++")
        params = {n: p.detach().clone() for n, p in net.named_parameters()}
        grads = first_step_gradients(graph, ["encoder", "head_init"])
        exact, fo_phi = unrolled_reference(net, params, reference_batches(), second_order=True)
        first_order, _ = unrolled_reference(net, params, reference_batches(), second_order=False)
    return grads, exact, first_order, fo_phi


def test_encoder_gradient_has_the_second_order_term_and_equals_the_unrolled_reference(step_one):
    grads, exact, first_order, _ = step_one
    got, want, fo = flat(grads["encoder"]), flat(exact, "encoder."), flat(first_order, "encoder.")
    assert torch.allclose(got, want, rtol=1e-7, atol=1e-10)
    indirect = (want - fo).norm() / want.norm()
    assert indirect > 1e-3, f"the second-order term should matter, got a relative size of {indirect:.2e}"
    assert (got - fo).norm() > 0.5 * (want - fo).norm()


def test_head_init_gradient_is_the_first_order_maml_formula(step_one):
    grads, _, _, fo_phi = step_one
    got = flat({n.removeprefix("copies."): g for n, g in grads["head_init"].items()})
    assert torch.allclose(got, flat(fo_phi, "decoder."), rtol=1e-7, atol=1e-10)


@pytest.mark.skipif(
    effective_upper_order("sequential") != "sequential", reason="this engine's Level has no upper_order option yet"
)
def test_sequential_order_forms_phis_gradient_with_the_updated_encoder():
    """Algorithm 1: θ steps first (line 8), then φ's gradient is formed through the updated encoder (line 11)."""
    with default_dtype(torch.float64):
        graph, net, _ = dual_graph("dumeta++", upper_order="sequential")
        params = {n: p.detach().clone() for n, p in net.named_parameters()}
        head_init, seen = graph["head_init"], {}
        head_init.grad_callback = lambda: seen.update(
            grad={
                n: p.grad.detach().clone() for n, p in zip(head_init.trainable_names, head_init.trainable_parameters())
            },
            theta={n: p.detach().clone() for n, p in net.encoder.named_parameters()},
        )
        runner = Runner(graph, 1, device="cpu", seed=0, precision="fp64", progress=False)
        runner.step()
        runner.close()
        _, after = unrolled_reference(net, params, reference_batches(), second_order=False, theta_for_phi=seen["theta"])
        _, before = unrolled_reference(net, params, reference_batches(), second_order=False)
    assert any(not torch.equal(t, params[f"encoder.{n}"]) for n, t in seen["theta"].items())  # θ moved first
    got = flat({n.removeprefix("copies."): g for n, g in seen["grad"].items()})
    assert torch.allclose(got, flat(after, "decoder."), rtol=1e-7, atol=1e-10)
    gap = (flat(after, "decoder.") - flat(before, "decoder.")).norm() / flat(before, "decoder.").norm()
    assert gap > 1e-3, f"the encoder's update should change φ's gradient, got a relative change of {gap:.2e}"


def test_upper_order_is_checked_and_a_missing_engine_option_is_said():
    with pytest.raises(ValueError, match="upper_order must be one of"):
        dual_graph("dumeta++", upper_order="parallel")
    expected = effective_upper_order("sequential")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dual_graph("dumeta++", upper_order="sequential")
    assert any("no upper_order option" in str(w.message) for w in caught) == (expected == "two-phase")
    assert effective_upper_order("two-phase") == "two-phase"


def test_inner_loop_restarts_from_phi_and_the_bank_fills_from_the_encoder_step():
    graph, net, sampler = dual_graph("dumeta++", batch_size=2)
    head, phi = graph["head"], graph["head_init"].module
    starts = []
    original = head.on_inner_loop_start

    def spy():
        original()
        starts.append([p.detach().clone() for p in head.trainable_parameters()])

    head.on_inner_loop_start = spy
    runner = Runner(graph, 3, device="cpu", progress=False)
    for _ in range(3):
        runner.step()
        # after every meta-iteration the head holds ω*, not φ; the next inner loop restarts from φ
        assert any(not torch.equal(a, b) for a, b in zip(head.trainable_parameters(), phi.values().values()))
    runner.close()
    assert len(starts) == 3 and sampler.iteration == 3
    bank = graph["encoder"].regulariser.bank
    assert bank.filled.max() == 4 and bank.filled.min() >= 1  # capacity 4: full after 3 steps of 4 samples


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_builds_and_steps(variant):
    graph, net, _ = dual_graph(variant)
    assert ("head_init" in graph.levels) == VARIANTS[variant].meta_init
    result = graph.run(steps=2, device="cpu", progress=False)
    assert all(len(v) == 2 for v in result.losses.values())
    start = meta_trained_parameters(graph, net)
    assert set(start) == {n for n, _ in net.named_parameters()}


@pytest.mark.parametrize("kind", ["maml", "reptile"])
def test_init_learning_baselines_adapt_the_whole_network_from_phi(kind):
    graph, net, _ = init_graph(kind, inner_steps=2)
    phi_before = {n: t.detach().clone() for n, t in graph["init"].module.values().items()}
    result = graph.run(steps=4, device="cpu", progress=False)
    assert len(result.losses["adapted"]) == 4 and len(result.losses["init"]) == 2
    phi_after = graph["init"].module.values()
    assert any(not torch.equal(phi_before[n], phi_after[n]) for n in phi_before)
    start = meta_trained_parameters(graph, net)
    assert all(torch.equal(start[n], phi_after[n].detach()) for n in phi_after)


def test_reptile_moves_phi_toward_the_adapted_weights():
    graph, net, _ = init_graph("reptile", inner_steps=2)
    init = graph["init"]
    captured = {}
    init.grad_callback = lambda: captured.setdefault("grad", [p.grad.clone() for p in init.trainable_parameters()])
    phi = {n: t.detach().clone() for n, t in init.module.values().items()}
    graph.run(steps=2, device="cpu", progress=False)
    adapted = dict(net.named_parameters())  # ω_K after the first inner loop (φ not yet reloaded)
    want = [phi[n] - adapted[n].detach() for n in init.module.names]
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(captured["grad"], want))


def test_joint_training_is_one_level_on_the_whole_pool():
    graph, _, sampler = joint_graph()
    graph.run(steps=2, device="cpu", progress=False)
    assert list(graph.levels) == ["network"] and sampler.iteration == 2
    assert sorted(graph["network"].cur_batch.domain.tolist()) == [0, 1, 2]


def test_resume_is_identical_with_the_memory_bank(tmp_path):
    def final_state(steps_then_resume):
        graph, net, _ = dual_graph("dumeta++", seed=1)
        out = tmp_path / f"run{len(steps_then_resume)}"
        result = None
        for i, steps in enumerate(steps_then_resume):
            if i:
                graph, net, _ = dual_graph("dumeta++", seed=1)
            result = Runner(
                graph, steps, out=out, device="cpu", seed=1, deterministic=True, progress=False, resume=i > 0
            ).run()
        return graph, net, result

    straight, net_a, result_a = final_state([3])
    resumed, net_b, result_b = final_state([1, 3])
    assert result_a.losses == result_b.losses
    for (name, a), b in zip(net_a.named_parameters(), net_b.parameters()):
        assert torch.equal(a, b), name
    assert all(
        torch.equal(a, b)
        for a, b in zip(straight["head_init"].module.parameters(), resumed["head_init"].module.parameters())
    )
    bank_a, bank_b = straight["encoder"].regulariser.bank, resumed["encoder"].regulariser.bank
    assert torch.equal(bank_a.filled, bank_b.filled) and torch.equal(bank_a.cursor, bank_b.cursor)
    assert all(torch.equal(a, b) for a, b in zip(bank_a.entries, bank_b.entries))
    assert bank_a.filled.max() == 4  # capacity 4 reached: the FIFO has wrapped (6 pushes) before and after resume


@pytest.mark.golden
def test_dumeta_levels_golden(update_goldens):
    trace = golden_trace(lambda: dual_graph("dumeta++", batch_size=2)[0], steps=3)
    check_golden(trace, GOLDENS / "dumeta_levels.json", rtol=1e-10, atol=1e-12, update=update_goldens)
