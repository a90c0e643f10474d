"""W's hypergradient is the gradient of what is trained.

`exact` is checked against central finite differences of the validation loss after the k real θ-steps
(float64); the default, `adjoint_unroll`, against `exact` along a run (audits from the same state and
inner loop) and on a level without its own second-order products; the second-order adjoint of the
network against autograd's double backward; and `darts` is shown to drift (slow).
"""

import pytest
import torch
from taskcorr_fixtures import builder as fixtures_builder
from taskcorr_fixtures import config, groups
from test_optimal_control import problem

from engines.golden import default_dtype
from problems.taskcorr import LossWeights, reconstruction_loss
from problems.taskcorr.audit import InnerLoops, audit, cosine, finite_difference_hypergradient, graph_state
from problems.taskcorr.second_order import second_order_adjoint


def builder(slices, inner_steps: int = 2):
    with default_dtype(torch.float64):
        train, val = groups(slices)
    return fixtures_builder(train, val, config(), inner_steps)


def test_exact_is_the_derivative_of_the_validation_loss_after_the_inner_loop(mni_slices):
    """Central differences of Σ_j ℓ(θ_j^k(W); V_j), each entry of W moved by ±1e-6 and the same k Adam steps
    taken again from the same state, at the third W-step (W and Adam's moments have moved)."""
    build = builder(mni_slices)
    trained, probe = InnerLoops(build("exact", {})), InnerLoops(build("exact", {}))
    try:
        trained.step()
        trained.step()
        differences = finite_difference_hypergradient(probe, graph_state(trained.graph), eps=1e-6)
        trained.step()
        exact = trained.hypergradient()
        assert differences.abs().max() > 0
        assert float((exact - differences).norm() / differences.norm()) < 1e-5, (exact, differences)
    finally:
        probe.close()
        trained.close()


def test_adjoint_unroll_equals_exact_along_a_run(mni_slices):
    """The default, from the same state and inner loop as exact, at W-steps 1, 2 and 4, with k = 3 (float64;
    that it does not depend on the network's gradient path is tested with the levels)."""
    points = audit(builder(mni_slices, inner_steps=3), ("adjoint_unroll", {}), w_steps=4, every=2)
    assert [p.w_step for p in points] == [1, 2, 4]
    for p in points:
        assert p.reference_norm > 0
        assert p.relative_error < 1e-8, p


def test_finite_difference_products_approach_exact_as_the_step_shrinks(mni_slices):
    """Without the level's own products (a generic level), adjoint_unroll differences first-order gradients:
    right in the limit (alpha 1e-5 in float64), and off at the default alpha on this non-smooth network."""
    build = builder(mni_slices)
    small = audit(build, ("adjoint_unroll", {"products": "finite_difference", "alpha": 1e-5}), w_steps=1, every=1)
    default = audit(build, ("adjoint_unroll", {"products": "finite_difference"}), w_steps=1, every=1)
    assert small[0].relative_error < 1e-4, small
    assert default[0].relative_error > 1e-2, default


def test_second_order_adjoint_equals_autograd():
    """Gradient, Hessian-vector product and per-sample loss tangents of Σ_b c_b ℓ_b, against autograd's double
    backward through the whole unrolled network (float64), single- and multi-coil."""
    for coils, phases in ((1, 1), (3, 4)):
        net, kspace, mask, targets = problem(coils, phases=phases, batch=3)
        params = list(net.parameters())
        direction = [torch.randn_like(p) for p in params]
        weights = torch.tensor([0.2, 0.5, 1.3], dtype=torch.float64)

        def sample_loss(recon, targets=targets):
            return reconstruction_loss(recon, targets, LossWeights())

        got = second_order_adjoint(net, kspace, mask, direction, sample_loss, weights)
        cheap = second_order_adjoint(net, kspace, mask, direction, sample_loss, weights, hessian=False)
        losses = sample_loss(net(kspace, mask))
        grads = torch.autograd.grad((weights * losses).sum(), params, create_graph=True)
        hvp = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, direction)), params)
        tangents = []
        for b in range(3):
            per_sample = torch.autograd.grad(sample_loss(net(kspace, mask))[b], params)
            tangents.append(sum((g * d).sum() for g, d in zip(per_sample, direction)))
        for mine, theirs in ((got.gradient, grads), (got.hessian_product, hvp)):
            flat = torch.cat([t.flatten() for t in theirs]).detach()
            assert float((torch.cat([t.flatten() for t in mine]) - flat).norm() / flat.norm()) < 1e-10
        assert torch.allclose(got.loss_tangents, torch.stack(tangents), rtol=1e-10, atol=0)
        assert torch.equal(cheap.loss_tangents, got.loss_tangents) and cheap.hessian_product is None
        assert torch.allclose(got.losses, losses.detach(), rtol=1e-12, atol=0)


@pytest.mark.slow
def test_darts_drifts_from_the_trained_gradient_while_adjoint_unroll_does_not(mni_slices):
    """40 W-steps audited every 10: darts (H⁻¹ ≈ I, no Adam Jacobian) points away from what is trained."""
    build = builder(mni_slices)
    darts = audit(build, ("darts", {}), w_steps=40, every=10)
    ours = audit(build, ("adjoint_unroll", {}), w_steps=40, every=10)
    assert min(p.cosine for p in darts) < 0.5, darts
    assert min(p.cosine for p in ours) > 0.999, ours


def test_an_audit_of_a_method_against_itself_agrees_exactly(mni_slices):
    """The audit copies the whole state (parameters, Adam moments, data positions) into the reference graph:
    exact audited against exact gives the same hypergradient to the last bit, and the cosine is 1."""
    points = audit(builder(mni_slices), ("exact", {}), w_steps=2, every=1)
    assert [p.relative_error for p in points] == [0.0, 0.0]
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])) == pytest.approx(1.0)
