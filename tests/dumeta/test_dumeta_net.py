"""The DuMeta++ U-Net (DynUNet topology, encoder/head split by module) and its deep-supervision loss."""

import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import DynUNet

from problems.dumeta.net import DualUNet, fine_tuned_modules, head_parameters
from problems.losses import PAPER_DS_WEIGHTS, DeepSupervisedDiceCE


def dynunet_like(net: DualUNet) -> DynUNet:
    """MONAI's DynUNet with the paper's settings, holding ``net``'s weights."""
    ref = DynUNet(
        net.spatial_dims,
        1,
        4,
        [3] * 6,
        [1, 2, 2, 2, 2, 2],
        [2] * 5,
        filters=list(net.widths),
        norm_name=("INSTANCE", {"affine": True}),
        act_name="relu",
        deep_supervision=True,
        deep_supr_num=4,
    )
    blocks = [ref.input_block, *ref.downsamples, ref.bottleneck]
    for mine, theirs in zip(net.encoder.stages, blocks):
        theirs.load_state_dict(mine.state_dict())
    for mine, theirs in zip(net.decoder.stages, ref.upsamples):
        theirs.load_state_dict(mine.state_dict())
    ref.output_block.load_state_dict(net.decoder.heads[-1].state_dict())
    for i, head in enumerate(ref.deep_supervision_heads):  # DynUNet's heads run fine to coarse from 1/2
        head.load_state_dict(net.decoder.heads[-2 - i].state_dict())
    return ref


@pytest.mark.parametrize("dims", [2, 3])
def test_network_is_dynunet_with_the_papers_settings(dims):
    torch.manual_seed(0)
    net = DualUNet(dims, base_width=2)
    ref = dynunet_like(net)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.rand(2, 1, *([64] * dims))
    ref.eval()
    assert torch.allclose(net.predict(x), ref(x), atol=1e-5)
    ref.train()
    out = net(x)
    stacked = ref(x)  # [B, 5, C, *S]: DynUNet upsamples its deep-supervision logits to full size
    for k, logits in enumerate(out.logits):
        assert logits.shape == (2, 4, *([64 // 2**k] * dims))
        up = torch.nn.functional.interpolate(logits, size=x.shape[2:])
        assert torch.allclose(up, stacked[:, k], atol=1e-5)
    assert [f.shape[1] for f in out.decoder_features] == net.decoder_channels() == [2, 4, 8, 16, 20]
    assert [f.shape[2] for f in out.encoder_features] == [64, 32, 16, 8, 4]


def test_encoder_and_head_are_split_by_module_and_head_depth_selects_decoder_stages():
    net = DualUNet(2, base_width=2)
    enc = {id(p) for p in net.encoder.parameters()}
    dec = {id(p) for p in net.decoder.parameters()}
    assert not enc & dec and enc | dec == {id(p) for p in net.parameters()}
    assert head_parameters(net, 0) == []
    assert {id(p) for p in head_parameters(net, 5)} == dec
    assert {id(p) for p in head_parameters(net, "all")} == enc | dec
    three = fine_tuned_modules(net, 3)  # Appendix II: "ft 3 upsample layers" = the last three stages + outputs
    assert three == [*net.decoder.stages[2:], *net.decoder.heads[2:]]
    sizes = [sum(p.numel() for p in head_parameters(net, d)) for d in range(6)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 6
    with pytest.raises(ValueError, match="head depth"):
        head_parameters(net, 6)


def test_network_rejects_inputs_it_cannot_downsample_five_times():
    with pytest.raises(ValueError, match="divisible by 32"):
        DualUNet(2, base_width=2)(torch.rand(1, 1, 48, 64))
    with pytest.raises(ValueError, match="spatial_dims"):
        DualUNet(1)


def test_encoder_grad_false_keeps_the_encoder_out_of_the_graph():
    net = DualUNet(2, base_width=2)
    out = net(torch.rand(2, 1, 64, 64), encoder_grad=False)
    loss = sum(o.sum() for o in out.logits)
    grads = torch.autograd.grad(loss, [*net.encoder.parameters(), *net.decoder.parameters()], allow_unused=True)
    n_enc = len(list(net.encoder.parameters()))
    assert all(g is None for g in grads[:n_enc]) and all(g is not None for g in grads[n_enc:])


def test_deep_supervised_dice_ce_equals_monais_wrapper_with_the_papers_weights():
    torch.manual_seed(0)
    logits = [torch.randn(2, 4, 32 // 2**k, 32 // 2**k) for k in range(5)]
    label = torch.randint(0, 4, (2, 32, 32))
    dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5)
    want = DeepSupervisionLoss(dice_ce, weights=list(PAPER_DS_WEIGHTS))(logits, label[:, None].float())
    got = DeepSupervisedDiceCE()(logits, label)
    assert torch.allclose(got, want, atol=1e-6)
    double = DeepSupervisedDiceCE()([t.double() for t in logits], label)
    assert double.dtype == torch.float64 and torch.allclose(double.float(), want, atol=1e-5)
    with pytest.raises(ValueError, match="deep-supervision outputs"):
        DeepSupervisedDiceCE()(logits[:3], label)
    with pytest.raises(ValueError, match="int64"):
        DeepSupervisedDiceCE()(logits, label.float())
