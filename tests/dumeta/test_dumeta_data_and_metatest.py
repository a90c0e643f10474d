"""Algorithm 1's sampling (one dataset inner, the other two outer; resumable) and the meta-test tools."""

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from dumeta_fixtures import ring_items, toy_pool

from engines import Runner
from problems.braindata import Subject
from problems.dumeta.data import JointSampler, MetaTaskSampler, PatchItems
from problems.dumeta.metatest import fine_tuning_graph, network_from, segment_subject
from problems.dumeta.methods import DEFAULT_CAPACITY, Job, jobs_for, protocols, row_label
from problems.dumeta.net import DualUNet, head_parameters


def test_each_meta_iteration_splits_the_pool_into_one_inner_and_two_outer_datasets():
    sampler = MetaTaskSampler(toy_pool(), batch_size=2, seed=3)
    seen = set()
    for t in range(1, 13):
        inner = sampler.inner(SimpleNamespace(inner_step=1))
        a, outer = sampler.split()
        assert sampler.iteration == t and set(inner.domain.tolist()) == {a} and a not in outer
        for role in ("encoder", "head_init"):
            batch = sampler.outer(role)
            assert sorted(batch.domain.tolist()) == sorted(outer * 2) and batch.image.shape == (4, 1, 64, 64)
        seen.add(a)
        assert not torch.equal(sampler.outer("encoder").image, sampler.outer("head_init").image)  # drawn twice
    assert seen == {0, 1, 2}
    again = sampler.inner(SimpleNamespace(inner_step=2))  # a later step of the same inner loop: same dataset
    assert sampler.iteration == 12 and set(again.domain.tolist()) == {sampler.split()[0]}


def test_draws_are_a_pure_function_of_the_iteration():
    a, b = MetaTaskSampler(toy_pool(), 2, seed=1), MetaTaskSampler(toy_pool(), 2, seed=1)
    for _ in range(3):
        a.inner(SimpleNamespace(inner_step=1))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.outer("encoder").image, b.outer("encoder").image)
    assert torch.equal(a.inner(SimpleNamespace(inner_step=1)).label, b.inner(SimpleNamespace(inner_step=1)).label)
    with pytest.raises(ValueError, match="at least 2"):
        MetaTaskSampler(toy_pool()[:1], 2)
    joint = JointSampler(toy_pool(), 1, seed=0)
    assert sorted(joint(None).domain.tolist()) == [0, 1, 2] and joint.iteration == 1


def brain_subject(shape=(64, 64, 8), seed=0, series=None, time_point=None) -> Subject:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.int64)
    label[8:56, 8:56] = 1
    label[16:48, 16:48] = 2
    label[24:40, 24:40] = 3
    image = (label / 3 + 0.05 * rng.standard_normal(shape)).clip(0, 1).astype(np.float32)
    return Subject(f"s{seed}", image, label, (1.0, 1.0, 2.0), "toy", series=series, time_point=time_point)


def test_patch_items_draw_2d_axial_or_3d_patches():
    items = PatchItems("toy", [brain_subject(), brain_subject(seed=1)], (32, 32, 1))
    image, label = items.draw(5, torch.Generator().manual_seed(0))
    assert image.shape == (5, 1, 32, 32) and label.shape == (5, 32, 32) and label.dtype == torch.long
    volumes = PatchItems("toy", [brain_subject((64, 64, 64))], (64, 64, 64))
    image, label = volumes.draw(1, torch.Generator().manual_seed(0))
    assert image.shape == (1, 1, 64, 64, 64)
    same = items.draw(5, torch.Generator().manual_seed(0))
    assert torch.equal(same[0], items.draw(5, torch.Generator().manual_seed(0))[0])


@pytest.mark.parametrize("dims,roi", [(2, (64, 64)), (3, (64, 64, 64))])
def test_segment_subject_predicts_on_the_subjects_grid(dims, roi):
    net = DualUNet(dims, base_width=2)
    subject = brain_subject((64, 64, 64) if dims == 3 else (64, 64, 8))
    labels = segment_subject(net, subject, roi=roi, batch=4)
    assert labels.shape == subject.label.shape and labels.dtype == np.int64 and labels.max() <= 3
    with pytest.raises(ValueError, match="roi"):
        segment_subject(net, subject, roi=(64,) * (5 - dims))


def test_fine_tuning_trains_only_the_chosen_head_stages():
    torch.manual_seed(0)
    template = DualUNet(2, base_width=2)
    net = network_from(template, dict(template.named_parameters()))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), template.parameters()))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    support = JointSampler([ring_items("support", n=2)], batch_size=2, seed=0)
    graph = fine_tuning_graph(net, support, depth=2, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    Runner(graph, 2, device="cpu", progress=False).run()
    tuned = {id(p) for p in head_parameters(net, 2)}
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name]) != (id(p) in tuned), name
    with pytest.raises(ValueError, match="depth 0"):
        fine_tuning_graph(net, support, depth=0, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    with pytest.raises(KeyError, match="no starting value"):
        network_from(template, {})


def test_each_method_gets_the_meta_tests_of_its_tables_on_its_own_protocol_first():
    jobs = functools.partial(jobs_for, capacity=DEFAULT_CAPACITY, head_depth=3, shots=[1, 5], depths=[0, 3])
    cells = [(d, k) for d in (0, 1) for k in (1, 5)]
    assert jobs("maml") == [Job(d, k, "all") for d, k in cells] + [Job(d, k, 3) for d, k in cells]
    assert jobs("maml", both_protocols=False) == [Job(d, k, "all") for d, k in cells]
    assert jobs("randinit-2d") == [Job(d, k, "all") for d, k in cells]
    assert jobs("dumeta++") == [Job(d, k, 3) for d, k in cells] + [Job(0, 1, 0)]  # + Fig. 7's depth 0
    assert jobs("dumeta++", capacity=10) == [Job(1, 1, 3)]  # Table VI: one-shot on the second domain only
    assert jobs("joint") == [Job(0, 1, 3), Job(0, 1, "all")]  # Table V A, both ways
    assert jobs("mfl+mil") == [Job(0, 1, 3)] and jobs("truth") == [Job(1, 1, 0)]
    assert protocols("reptile", 3)[0] == "all" and protocols("sample", 3) == [3]
    assert row_label("maml", "all", 3) == "MAML, whole network" and row_label("dumeta++", 3, 3) == "DuMeta++"
