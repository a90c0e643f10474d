"""problems/e2eaug/methods.py and pretraining.py on 16-pixel images: each method's graph, the
pre-training budget and settings check, and graphs that do not share optimizer state."""

import pytest
import torch

from engines import Runner
from problems.e2eaug.data import SampleSizes, load_data
from problems.e2eaug.levels import segmentation_model
from problems.e2eaug.methods import METHODS, SIMPLE_METHODS, Execution, Settings, build_graph, check_settings
from problems.e2eaug.pretraining import pretrain_generators
from problems.segdata import ensure_dataset

TINY = Settings(image_size=16, ngf=4, ndf=4, batch_size=2, pretrain_steps=1, steps=2, encoder="resnet18")
CPU = Execution(torch.device("cpu"), progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    roots = {"isic2018": ensure_dataset("isic2018", None, sample_root=root)}
    roots |= {"ph2": (None, "missing"), "dermis": (None, "missing")}
    return load_data("isic2018", roots, 20, 0, TINY.image_size, SampleSizes())


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    return pretrain_generators(METHODS, TINY, data, 20, 0, tmp_path_factory.mktemp("runs"), CPU)


def _graph(method, data, pretrained):
    return build_graph(method, backbone="unet", seed=0, settings=TINY, data=data, pretrained=pretrained, execution=CPU)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_the_levels_it_names(method, data, pretrained):
    graph = _graph(method, data, pretrained)
    expected = {"e2eaug": {"gan", "seg", "arch"}, "e2eaug_frozen_arch": {"gan", "seg"}}.get(method, {"seg"})
    assert set(graph.levels) == expected
    seg = graph["seg"]
    assert (seg.synthesize is None) == (method in SIMPLE_METHODS)  # GAN-based methods draw their images
    trained = {id(p) for p in seg.trainable_parameters()}
    assert trained == {id(p) for p in seg.module.parameters() if p.requires_grad}


def test_the_segmenter_trains_only_the_parameters_its_forward_uses():
    """At 32 px the U-Net's encoder has 3 stages, but smp keeps resnet18's deeper ones: they stay
    out of the trainable set (and out of every optimizer and hypergradient)."""
    model = segmentation_model("unet", encoder="resnet18", in_channels=3, image_size=32)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(name.startswith(("encoder.layer3.", "encoder.layer4.")) for name in frozen)
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # train mode: batch statistics
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    assert all(
        p.requires_grad
        for p in segmentation_model("unet", encoder="resnet18", in_channels=3, image_size=64).parameters()
    )


def test_every_generator_gets_the_same_update_budget(pretrained):
    assert pretrained["searchable"]["made_with"]["updates"] == TINY.pretrain_steps
    assert pretrained["vanilla"]["made_with"]["updates"] == TINY.pretrain_steps + TINY.steps


def test_a_graph_does_not_update_the_pretraining_it_continues(data, pretrained):
    """Two runs built from one loaded pre-training (e.g. E2EAug after its A-frozen control) start
    from the same Adam states: the first run's steps must not write into the shared states."""
    before = [t.clone() for t in _tensors(pretrained["searchable"]["optimizers"])]
    assert before
    Runner(_graph("e2eaug_frozen_arch", data, pretrained), 2, device="cpu", progress=False).run()
    after = _tensors(pretrained["searchable"]["optimizers"])
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_a_pretraining_made_with_other_settings_is_refused(data, tmp_path):
    pretrain_generators(["e2eaug"], TINY, data, 20, 0, tmp_path, CPU)
    wider = Settings(**{**TINY.__dict__, "ngf": 8})
    with pytest.raises(ValueError, match="pix2pix__n20__seed0/pretrained.pt was pre-trained with other settings"):
        pretrain_generators(["e2eaug"], wider, data, 20, 0, tmp_path, CPU)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_size": 48}, "image_size must be a power of two >= 16"),
        ({"encoder": "no_such_encoder"}, "cannot build the unet segmenter with encoder 'no_such_encoder'"),
    ],
)
def test_settings_are_checked_before_training(change, message):
    with pytest.raises(ValueError, match=message):
        check_settings(Settings(**{**TINY.__dict__, **change}), ("unet",), 3, {})


def _tensors(obj) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []
