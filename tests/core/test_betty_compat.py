"""A plain Betty program (its own ImplicitProblem subclasses, Config, Engine) that imports engines keeps working:
the methods medmlo registers under Betty's names read Betty's Config and give the correct hypergradient."""

import pytest
import torch
from betty.configs import Config, EngineConfig
from betty.engine import Engine
from betty.problems import ImplicitProblem

import engines  # noqa: F401  (registers medmlo's methods in Betty's table)
from engines.closed_form import Vector, quadratic_data


class Inner(ImplicitProblem):
    def training_step(self, batch):
        w = self.module()
        return w @ self.H @ w / 2 - w @ (self.C @ self.outer.module())

    def get_batch(self):
        return None


class Outer(ImplicitProblem):
    def training_step(self, batch):
        return (self.inner.module() - self.t).pow(2).sum() / 2

    def get_batch(self):
        return None

    def grad_callback(self):
        if self.first is None:
            self.first = self.module.value.grad.detach().clone()


def plain_betty(config: Config) -> tuple[Outer, torch.Tensor]:
    """Run a Betty program until the outer problem's first hypergradient; return it and the exact one."""
    data = quadratic_data(n=8, p=3, cond=3.0)
    H, C, t, lam = data["H"], data["C"], data["t"], data["lam0"]
    lr = 1.0 / float(torch.linalg.eigvalsh(H).max())
    inner = Inner("inner", config, module=Vector(torch.zeros(8)))
    inner.optimizer = torch.optim.SGD(inner.module.parameters(), lr=lr)
    outer = Outer("outer", Config(), module=Vector(lam))
    outer.optimizer = torch.optim.SGD(outer.module.parameters(), lr=0.0)
    inner.H, inner.C, outer.t, outer.first = H, C, t, None
    steps = config.warmup_steps + config.unroll_steps
    engine = Engine(
        [inner, outer],
        config=EngineConfig(train_iters=steps),
        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
    )
    engine.run()
    w = torch.linalg.solve(H, C @ lam)
    exact = C.T @ torch.linalg.solve(H, w - t)
    return outer, exact


@pytest.mark.parametrize(
    "config",
    [
        Config(type="cg", cg_iterations=30, warmup_steps=400),
        Config(type="cg_warm", cg_iterations=30, warmup_steps=400),
        Config(type="neumann", neumann_iterations=200, neumann_alpha=0.3, warmup_steps=400),
    ],
    ids=["cg", "cg_warm", "neumann"],
)
def test_implicit_methods_read_betty_config_and_are_exact(config):
    outer, exact = plain_betty(config)
    assert outer.first is not None
    assert torch.allclose(outer.first, exact, rtol=1e-6, atol=1e-9)
    if config.type == "cg_warm":  # the warm start lives on the plain problem, keyed by its upper
        assert outer.inner.method_state["outer"]["solution"][0].shape == (8,)


@pytest.mark.parametrize("method", ["darts", "sama"])
def test_finite_difference_methods_run_on_plain_betty_problems(method):
    outer, exact = plain_betty(Config(type=method, warmup_steps=400, darts_alpha=0.01))
    assert torch.nn.functional.cosine_similarity(outer.first, exact, dim=0) > 0.5


def test_methods_that_need_a_medmlo_level_say_so():
    with pytest.raises(TypeError, match="exact: 'inner' is not a medmlo Level"):
        plain_betty(Config(type="exact", warmup_steps=2))
