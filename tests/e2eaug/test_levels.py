"""E2EAug's generators and levels: the architecture really matters and receives hypergradients, the
vanilla generator is plain Pix2Pix, and the frozen-architecture control trains G beside W."""

from pathlib import Path

import pytest
import torch
from e2eaug_fixtures import tiny_e2eaug, tiny_frozen_architecture

from engines import Runner
from engines.golden import check_golden, golden_trace
from engines.hypergrad.paths import walk_path
from problems.e2eaug.augment import MASK_OPERATIONS, joint_augmentation, mask_augmentation
from problems.e2eaug.pix2pix import CANDIDATES, PIX2PIX_CANDIDATE, GeneratorArchitecture, MixedConv, UNetGenerator

GOLDEN = Path(__file__).resolve().parents[2] / "assets" / "goldens" / "e2eaug_levels.json"


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    """One embedded ISIC sample for the module (written by seeded code, the same on every machine)."""
    return tmp_path_factory.mktemp("isic_sample")


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
    gen = UNetGenerator(1, 3, n_down=4, ngf=8, dropout=0.0).eval()
    arch = GeneratorArchitecture(4)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    with torch.no_grad():
        before = gen(mask, arch.weights())
        arch.up[2] = torch.tensor([5.0, -5.0, 0.0])
        after = gen(mask, arch.weights())
    assert before.shape == (2, 3, 16, 16) and (before - after).abs().max() > 1e-3
    assert float(after.min()) >= -1 and float(after.max()) <= 1
    assert arch.genotype()["up"][2] == "UpConv-421"


def test_vanilla_generator_is_the_searchable_one_restricted_to_conv_421():
    """Vanilla Pix2Pix = the searchable U-Net with α one-hot on Conv/UpConv-421, minus the other candidates."""
    torch.manual_seed(0)
    searchable = UNetGenerator(1, 3, n_down=4, ngf=8, dropout=0.0).eval()
    vanilla = UNetGenerator(1, 3, n_down=4, ngf=8, dropout=0.0, candidates=(PIX2PIX_CANDIDATE,)).eval()
    k = CANDIDATES.index(PIX2PIX_CANDIDATE)
    kept = {
        name.replace(f".ops.{k}.", ".ops.0."): value
        for name, value in searchable.state_dict().items()
        if ".ops." not in name or f".ops.{k}." in name
    }
    vanilla.load_state_dict(kept)  # strict: exactly the same modules, one conv per cell
    one_hot = torch.nn.functional.one_hot(torch.full((4,), k), len(CANDIDATES)).float()
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    with torch.no_grad():
        assert torch.allclose(vanilla(mask), searchable(mask, (one_hot, one_hot)), atol=1e-6)
    assert sum(p.numel() for p in vanilla.parameters()) < sum(p.numel() for p in searchable.parameters()) / 2
    with pytest.raises(ValueError, match="pass the architecture"):
        searchable(mask)


def test_generator_refuses_sizes_it_cannot_halve():
    gen = UNetGenerator(1, 3, n_down=4, ngf=8)
    with pytest.raises(ValueError, match="divisible by 16"):
        gen(torch.zeros(1, 1, 24, 24), GeneratorArchitecture(4).weights())


def test_mask_operations_alone_and_combined():
    """Flip alone always flips; rotate / translate alone move the mask; the masks stay binary."""
    import numpy as np

    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 2:10] = 1
    image = mask[..., None].astype(np.float32)
    for seed in range(4):
        assert np.array_equal(mask_augmentation(["flip"], seed=seed)(image=image, mask=mask)["mask"], mask[:, ::-1])
    for op in ("rotate", "translate"):
        moved = [
            not np.array_equal(mask_augmentation([op], seed=s)(image=image, mask=mask)["mask"], mask) for s in range(8)
        ]
        assert sum(moved) >= 6, op
    for seed in range(4):
        assert set(np.unique(mask_augmentation(MASK_OPERATIONS, seed=seed)(image=image, mask=mask)["mask"])) <= {0, 1}
    with pytest.raises(ValueError, match="unknown mask operation 'shear'"):
        mask_augmentation(["shear"])
    with pytest.raises(ValueError, match="unknown augmentation 'shear'"):
        joint_augmentation("shear")


def test_arch_receives_a_nonzero_hypergradient_through_seg_and_through_gan(sample_root):
    graph = tiny_e2eaug(sample_root)
    runner = Runner(graph, 2, device="cpu", progress=False)
    runner.step()  # one full E2EAug step; arch updated with both paths
    runner.close()
    arch = graph["arch"]
    paths = {tuple(p.name for p in path): path for path in arch.paths}
    assert set(paths) == {("arch", "seg", "arch"), ("arch", "seg", "gan", "arch")}
    for names, path in paths.items():
        loss = arch.training_step_exec(arch.get_batch())
        first = torch.autograd.grad(loss, list(path[1].trainable_parameters()), allow_unused=True)
        grads, _ = walk_path(first, path)
        norm = torch.stack([g.norm() for g in grads]).norm()
        assert norm > 0 and torch.isfinite(norm), names
    assert arch.diagnostics["grad_norm"] > 0


def test_discriminator_and_generator_both_move(sample_root):
    graph = tiny_e2eaug(sample_root)
    gan = graph["gan"]
    d0 = [p.detach().clone() for p in gan.module.discriminator.parameters()]
    g0 = [p.detach().clone() for p in gan.module.generator.parameters()]
    Runner(graph, 2, device="cpu", progress=False).run()
    assert any(not torch.equal(a, b) for a, b in zip(d0, gan.module.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g0, gan.module.generator.parameters()))


def test_frozen_architecture_control_trains_g_and_w_but_not_a(sample_root):
    graph = tiny_frozen_architecture(sample_root)
    gan, seg = graph["gan"], graph["seg"]
    a0 = [w.clone() for w in gan.architecture.weights()]
    g0 = [p.detach().clone() for p in gan.module.generator.parameters()]
    w0 = [p.detach().clone() for p in seg.module.parameters()]
    result = Runner(graph, 2, device="cpu", progress=False).run()
    assert set(graph.levels) == {"gan", "seg"} and len(result.losses["gan"]) == len(result.losses["seg"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(a0, gan.architecture.weights()))
    assert any(not torch.equal(a, b) for a, b in zip(g0, gan.module.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(w0, seg.module.parameters()))


@pytest.mark.golden
def test_three_levels_match_golden(sample_root, update_goldens):
    # float64, deterministic, two steps of all three levels; the largest relative difference between
    # ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 and OMP_NUM_THREADS=2 (AVX512) was 2.1e-14, rtol ~500x that
    trace = golden_trace(lambda: tiny_e2eaug(sample_root), steps=2)
    check_golden(trace, GOLDEN, rtol=1e-11, atol=1e-15, update=update_goldens)
