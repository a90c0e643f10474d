"""exact's differentiable optimizer updates reproduce torch.optim step for step."""

import pytest
import torch

from engines.hypergrad import diff_optim

CASES = [
    (torch.optim.SGD, {"lr": 0.1}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.5, "dampening": 0.2}),
    (torch.optim.Adam, {"lr": 0.01, "weight_decay": 1e-2}),
    (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1, "betas": (0.5, 0.99)}),
    (torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}),
    (torch.optim.RMSprop, {"lr": 0.01}),
]


@pytest.mark.parametrize("cls,kwargs", CASES, ids=[f"{c.__name__}{i}" for i, (c, _) in enumerate(CASES)])
def test_replay_matches_torch_optim(cls, kwargs):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
    opt = cls([p], **kwargs)
    values, states = [p.detach().clone()], diff_optim.snapshot_state(opt, [p])
    for _ in range(5):
        g = torch.randn(7, dtype=torch.float64)
        settings = diff_optim.group_settings(opt)
        p.grad = g.clone()
        opt.step()
        values, states = diff_optim.update(opt, [p], [g], values, states, settings)
    assert torch.allclose(values[0], p.detach(), rtol=1e-12, atol=1e-12)


def test_the_update_is_differentiable_in_the_gradient():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.5, momentum=0.9)
    g = torch.ones(3, requires_grad=True)
    values, _ = diff_optim.update(opt, [p], [g], [p.detach().clone()], [{}], diff_optim.group_settings(opt))
    (grad,) = torch.autograd.grad(values[0].sum(), g)
    assert torch.allclose(grad, torch.full((3,), -0.5))


def test_unsupported_optimizers_are_refused():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adagrad([p])
    with pytest.raises(TypeError, match="no differentiable update for Adagrad"):
        diff_optim.update(opt, [p], [torch.zeros(2)], [p.detach()], [{}], diff_optim.group_settings(opt))
