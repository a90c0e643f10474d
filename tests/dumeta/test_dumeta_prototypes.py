"""Class-aware regulariser (Eq. 12-14): hand-computed triplet terms, the memory bank, absent classes."""

import math

import pytest
import torch

from problems.dumeta.prototypes import ClassAwareRegulariser, MemoryBank, class_means, regulariser_terms, sample_anchors

R2 = 1 / math.sqrt(2)


def test_triplet_terms_match_a_hand_computed_example():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # p^CSF, p^GM, p^WM
    means = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])  # one sample: f^CSF, f^GM, f^WM
    present = torch.ones(1, 3, dtype=torch.bool)
    valid = torch.ones(3, dtype=torch.bool)
    # d = 1 - cos.  CSF: d(p0,f0) = 1 - 1/sqrt2, d(p0,f1) = 1, d(p0,f2) = 0
    #               GM:  d(p1,f1) = 0, d(p1,f0) = 1 - 1/sqrt2, d(p1,f2) = 1
    #               WM:  d(p2,f2) = 2, d(p2,f0) = 1 + 1/sqrt2, d(p2,f1) = 1
    want = torch.tensor([(1 - R2) - 1 - 0, 0 - (1 - R2) - 1, 2 - (1 + R2) - 1])
    got = regulariser_terms(protos, valid, means, present, margin=1.5)
    assert torch.allclose(got, torch.clamp(want + 1.5, min=0), atol=1e-6)
    got = regulariser_terms(protos, valid, means, present, margin=1.0)  # the hinge cuts GM at 0
    assert torch.allclose(got, torch.tensor([1 - R2, 0.0, 1 - R2]), atol=1e-6)
    got = regulariser_terms(protos, valid, means, present, margin=0.5, hinge="sum")  # Table V D: no max
    assert torch.allclose(got, want, atol=1e-6)


def test_class_means_average_the_voxels_of_each_class_at_the_feature_scale():
    features = torch.arange(2 * 2 * 2 * 2, dtype=torch.float64).view(2, 2, 2, 2)  # [B, D, 2, 2]
    label = torch.tensor(
        [
            [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0], [3, 3, 0, 0]],
            [[2, 2, 2, 2], [2, 2, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]],
        ]
    )  # [B, 4, 4] -> 2x2 by nearest
    means, present = class_means(features, label, (1, 2, 3))
    assert present.tolist() == [[True, True, True], [False, True, True]]
    assert torch.equal(means[0, 0], features[0, :, 0, 0])  # CSF is the top-left voxel at 2x2
    assert torch.equal(means[1, 1], features[1, :, 0, :].mean(-1))  # GM is the top row
    assert torch.equal(means[1, 0], torch.zeros(2, dtype=torch.float64))  # absent: zero, flagged


def test_regulariser_end_to_end_with_prototypes_from_the_bank():
    # K = 1 scale, D = 2, two datasets with one 1x3 "image" each: voxel j carries tissue j + 1
    features = torch.tensor(
        [[[[1.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]], [[[1.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]]]]
    )  # [B=2, D=2, 1, 3]
    label = torch.tensor([[[1, 2, 3]], [[1, 2, 3]]])
    domain = torch.tensor([0, 1])
    reg = ClassAwareRegulariser([2], margin=1.5, capacity=10)
    loss = reg([features], label, domain, update=True)
    f = features[:, :, 0, :].transpose(1, 2)  # [B, C, D]: f[b, c] = feature of voxel c
    protos = f.mean(0)  # the bank holds both samples' means
    terms = torch.stack(
        [
            regulariser_terms(
                protos, torch.ones(3, dtype=torch.bool), f[b : b + 1], torch.ones(1, 3, dtype=torch.bool), margin=1.5
            )
            for b in range(2)
        ]
    )
    assert torch.allclose(loss, terms.sum() / (3 * 2 * 1))
    assert reg.bank.filled.tolist() == [[2, 2, 2]]
    again = reg([features], label, domain, update=False)  # a recomputation: the bank does not grow
    assert torch.allclose(again, loss) and reg.bank.filled.tolist() == [[2, 2, 2]]


def test_absent_classes_contribute_nothing_and_never_give_nan():
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    only_csf = torch.ones(2, 8, 8, dtype=torch.long)  # GM and WM absent: no triplet is defined
    for anchor in ("prototype", "sample"):
        reg = ClassAwareRegulariser([4], anchor=anchor, capacity=5)
        loss = reg([features], only_csf, torch.tensor([0, 1]), update=True)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, features, allow_unused=True)
        assert grad is None or torch.isfinite(grad).all()
    label = torch.randint(0, 4, (2, 8, 8))
    label[1][label[1] == 1] = 0  # sample 1 lacks CSF: only sample 0 enters
    reg = ClassAwareRegulariser([4], capacity=5)
    loss = reg([features], label, torch.tensor([0, 0]), update=True)
    means, present = class_means(features, label, (1, 2, 3))
    protos, valid = reg.bank.prototypes(0)
    want = regulariser_terms(protos, valid, means[:1], present[:1], margin=1.5).sum() / 3
    assert torch.isfinite(loss) and torch.allclose(loss, want)
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_sample_anchors_use_the_other_dataset_of_the_batch():
    means = torch.arange(4 * 3 * 2, dtype=torch.float64).view(4, 3, 2)
    present = torch.ones(4, 3, dtype=torch.bool)
    present[3, 1] = False
    anchors, valid = sample_anchors(means, present, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(anchors[0], means[2:].mean(0).where(torch.tensor([[True], [False], [True]]), means[2, 1:2]))
    assert torch.allclose(anchors[3], means[:2].mean(0)) and valid.all()


def test_memory_bank_is_a_fifo_of_fixed_capacity():
    bank = MemoryBank(capacity=3, dims=[1], n_classes=1)
    present = torch.ones(2, 1, dtype=torch.bool)
    bank.push(0, torch.tensor([[[1.0]], [[2.0]]]), present)
    assert bank.prototypes(0)[0].item() == pytest.approx(1.5)
    bank.push(0, torch.tensor([[[3.0]], [[4.0]]]), present)  # 1 is the oldest: overwritten
    assert sorted(bank.entries[0][0, :, 0].tolist()) == [2.0, 3.0, 4.0]
    assert bank.prototypes(0)[0].item() == pytest.approx(3.0) and bank.filled.item() == 3
    bank.push(0, torch.tensor([[[5.0]], [[6.0]], [[7.0]], [[8.0]], [[9.0]]]), torch.ones(5, 1, dtype=torch.bool))
    assert sorted(bank.entries[0][0, :, 0].tolist()) == [7.0, 8.0, 9.0]  # more than N at once: the last N
    bank.push(0, torch.tensor([[[100.0]]]), torch.zeros(1, 1, dtype=torch.bool))  # absent: not stored
    assert bank.prototypes(0)[0].item() == pytest.approx(8.0)
    empty = MemoryBank(capacity=2, dims=[1], n_classes=2)
    protos, valid = empty.prototypes(0)
    assert valid.tolist() == [False, False] and torch.isfinite(protos).all()


def test_memory_bank_state_round_trips_and_refuses_another_shape():
    bank = MemoryBank(capacity=2, dims=[3, 2], n_classes=3)
    means = torch.randn(4, 3, 3)
    bank.push(0, means, torch.rand(4, 3) > 0.3)
    copy = MemoryBank(capacity=2, dims=[3, 2], n_classes=3)
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.prototypes(0)[0], bank.prototypes(0)[0]) and torch.equal(copy.cursor, bank.cursor)
    with pytest.raises(ValueError, match="capacity"):
        MemoryBank(capacity=5, dims=[3, 2], n_classes=3).load_state_dict(bank.state_dict())
    with pytest.raises(ValueError, match=">= 1"):
        MemoryBank(capacity=0, dims=[3])
