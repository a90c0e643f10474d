"""E2EAug's searchable generator and levels: the architecture really matters, and receives hypergradients."""

import pytest
import torch
from betty.hypergradient import get_grads
from e2eaug_fixtures import tiny_e2eaug

from engines import Runner
from engines.golden import check_golden, trace_run
from problems.pix2pix import CANDIDATES, GeneratorArchitecture, MixedConv, SearchableUNetGenerator

GOLDEN = __import__("pathlib").Path(__file__).resolve().parents[2] / "assets" / "goldens" / "e2eaug_levels.json"


@pytest.mark.parametrize("transposed", [False, True])
def test_mixed_op_with_one_hot_weights_equals_that_single_op(transposed):
    torch.manual_seed(0)
    mixed = MixedConv(4, 6, transposed=transposed, bias=True)
    x = torch.randn(2, 4, 8, 8)
    for k in range(len(CANDIDATES)):
        one_hot = torch.nn.functional.one_hot(torch.tensor(k), len(CANDIDATES)).float()
        assert torch.allclose(mixed(x, one_hot), mixed.ops[k](x), atol=1e-6)
    side = 16 if transposed else 4
    assert all(op(x).shape[-1] == side for op in mixed.ops)  # every candidate halves / doubles exactly


def test_architecture_changes_the_generator_output():
    torch.manual_seed(0)
    gen = SearchableUNetGenerator(1, 3, n_down=4, ngf=8, dropout=0.0).eval()
    arch = GeneratorArchitecture(4)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    with torch.no_grad():
        before = gen(mask, arch.weights())
        arch.up[2] = torch.tensor([5.0, -5.0, 0.0])
        after = gen(mask, arch.weights())
    assert before.shape == (2, 3, 16, 16) and (before - after).abs().max() > 1e-3
    assert -1 <= float(after.min()) and float(after.max()) <= 1
    assert arch.genotype()["up"][2] == "UpConv-421"


def test_generator_refuses_sizes_it_cannot_halve():
    gen = SearchableUNetGenerator(1, 3, n_down=4, ngf=8)
    with pytest.raises(ValueError, match="divisible by 16"):
        gen(torch.zeros(1, 1, 24, 24), GeneratorArchitecture(4).weights())


def test_arch_receives_a_nonzero_hypergradient_through_seg_and_through_gan(tmp_path):
    graph = tiny_e2eaug(tmp_path)
    runner = Runner(graph, 2, device="cpu", progress=False)
    runner.step()  # one full E2EAug step; arch updated with both paths
    runner.close()
    arch = graph["arch"]
    paths = {tuple(p.name for p in path): path for path in arch.paths}
    assert set(paths) == {("arch", "seg", "arch"), ("arch", "seg", "gan", "arch")}
    loss = arch.training_step_exec(arch.get_batch())
    for names, path in paths.items():
        grads = get_grads(loss, path, True, False)
        norm = torch.stack([g.norm() for g in grads]).norm()
        assert norm > 0 and torch.isfinite(norm), names
    assert arch.diagnostics["grad_norm"] > 0


def test_discriminator_and_generator_both_move(tmp_path):
    graph = tiny_e2eaug(tmp_path)
    gan = graph["gan"]
    d0 = [p.detach().clone() for p in gan.module.discriminator.parameters()]
    g0 = [p.detach().clone() for p in gan.module.generator.parameters()]
    Runner(graph, 2, device="cpu", progress=False).run()
    assert any(not torch.equal(a, b) for a, b in zip(d0, gan.module.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g0, gan.module.generator.parameters()))


@pytest.mark.golden
def test_three_levels_match_golden(tmp_path, update_goldens):
    graph = tiny_e2eaug(tmp_path)
    result = graph.run(steps=3, device="cpu", progress=False, seed=0)
    check_golden(trace_run(graph, result), GOLDEN, rtol=1e-3, atol=1e-5, update=update_goldens)
