"""Reference models: shapes, reference points, weights loading, the fine-tuning schedule, and
the point decoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detloss.app.models.centernet import CenterNet
from detloss.app.models.p2pnet import (
    VGG16_CHANNELS,
    VGG16_DEPTHS,
    P2PNet,
    TwoStageFinetune,
    VGGBackbone,
    set_backbone_frozen,
)
from detloss.points import anchor_points
from detloss.postprocess.points import decode_points, point_scores


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_p2pnet_shapes_and_reference_points(head):
    torch.manual_seed(0)
    model = P2PNet.tiny(head=head).eval()
    out = model(torch.rand(2, 3, 64, 48))
    m = 8 * 6 * 4
    assert out["pred_points"].shape == (2, m, 2)
    assert out["pred_logits"].shape == ((2, m) if head == "sigmoid" else (2, m, 2))
    # The regression starts at zero: proposals sit on the reference points.
    torch.testing.assert_close(out["pred_points"][0], anchor_points(64, 48))
    # Prior probability 0.1 at the start.
    prob = point_scores(out["pred_logits"])
    torch.testing.assert_close(prob, torch.full_like(prob, 0.1), atol=0.02, rtol=0)


def test_p2pnet_offsets_scaled_by_gamma_and_partial_cells():
    model = P2PNet.tiny(gamma=100.0).eval()
    nn.init.constant_(model.reg_head[-1].bias, 0.01)
    out = model(torch.rand(1, 3, 30, 17))  # partial cells: ceil(30/8)=4, ceil(17/8)=3
    assert out["pred_points"].shape == (1, 4 * 3 * 4, 2)
    torch.testing.assert_close(out["pred_points"][0], anchor_points(30, 17) + 1.0)


def test_p2pnet_gradients_flow_and_rows_cols():
    model = P2PNet.tiny(rows=1, cols=3)
    out = model(torch.rand(2, 3, 32, 32))
    assert out["pred_points"].shape == (2, 4 * 4 * 3, 2)
    (out["pred_points"].sum() + out["pred_logits"].sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_vgg16_layout_matches_torchvision_indices():
    backbone = VGGBackbone(VGG16_CHANNELS, VGG16_DEPTHS)
    convs = [i for i, m in enumerate(backbone.features) if isinstance(m, nn.Conv2d)]
    pools = [i for i, m in enumerate(backbone.features) if isinstance(m, nn.MaxPool2d)]
    # torchvision vgg16_bn: conv at 0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40;
    # its pools at 6, 13, 23, 33, 43 (the last one is not part of this backbone).
    assert convs == [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
    assert pools == [6, 13, 23, 33]
    feats = backbone(torch.rand(1, 3, 32, 32))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert [f.shape[1] for f in feats] == list(VGG16_CHANNELS)


def test_backbone_weights_from_local_file(tmp_path):
    torch.manual_seed(0)
    src = P2PNet.tiny()
    path = tmp_path / "vgg.pth"
    # torchvision-style checkpoint: features.* plus unrelated classifier tensors.
    state = {k: v for k, v in src.backbone.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    model = P2PNet.tiny(backbone_weights=path)
    for k, v in src.backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match=r"backbone_weights: no such file '.*nope\.pth'"):
        P2PNet.tiny(backbone_weights=tmp_path / "nope.pth")
    with pytest.raises(
        ValueError,
        match=r"backbone_weights: '.*vgg\.pth' does not fit this backbone \(channels \(64, 128, 256, 512, 512\)\): features\.0\.weight: expected \[64, 3, 3, 3\], got \[8, 3, 3, 3\]",
    ):
        P2PNet(backbone_weights=path)


def test_two_stage_finetune():
    model = P2PNet.tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = TwoStageFinetune(model, opt, frozen_epochs=2, lr_scale=0.1)
    model.train()
    assert schedule.step(0) == 1
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head_parameters())
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(m.training for m in bns)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    out = model(torch.rand(2, 3, 32, 32))
    (out["pred_points"].square().mean() + out["pred_logits"].mean()).backward()
    opt.step()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN statistics untouched
    assert schedule.step(1) == 1 and opt.param_groups[0]["lr"] == 0.1
    assert schedule.step(2) == 2
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(m.training for m in bns)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    schedule.step(3)  # scaled once only
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"lr_scale must be in \(0, 1\], got 2"):
        TwoStageFinetune(model, opt, 1, lr_scale=2)
    with pytest.raises(TypeError, match="model must have a 'backbone' module, got Linear"):
        set_backbone_frozen(nn.Linear(2, 2))


def test_p2pnet_errors():
    with pytest.raises(ValueError, match="head must be one of 'sigmoid', 'softmax', got 'relu'"):
        P2PNet.tiny(head="relu")
    with pytest.raises(ValueError, match="rows must be a positive int, got 0"):
        P2PNet.tiny(rows=0)
    with pytest.raises(
        ValueError, match=r"images: expected shape \[B, 3, H, W\], got \[2, 1, 8, 8\]"
    ):
        P2PNet.tiny()(torch.rand(2, 1, 8, 8))
    # Under 16 pixels the backbone's last max-pooling would have nothing to pool.
    for h, w in [(15, 40), (40, 15), (8, 8)]:
        with pytest.raises(
            ValueError,
            match=rf"images: expected height and width >= 16 pixels .*\[1, 3, {h}, {w}\]",
        ):
            P2PNet.tiny()(torch.rand(1, 3, h, w))
    assert P2PNet.tiny().eval()(torch.rand(1, 3, 16, 16))["pred_points"].shape[1] > 0
    with pytest.raises(
        ValueError, match="channels and depths: expected 5 stages each, got 4 and 5"
    ):
        VGGBackbone((8, 8, 8, 8), VGG16_DEPTHS)


def test_centernet_shapes_and_init():
    torch.manual_seed(0)
    model = CenterNet.tiny(num_classes=3).eval()
    out = model(torch.rand(2, 3, 64, 50))
    assert out["heatmap"].shape == (2, 3, 16, 13)
    assert out["size"].shape == out["offset"].shape == (2, 2, 16, 13)
    prob = out["heatmap"].sigmoid()
    assert abs(float(prob.detach().mean()) - 0.1) < 0.05
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        CenterNet(0)
    with pytest.raises(
        ValueError, match=r"images: expected shape \[B, 3, H, W\], got \[3, 64, 64\]"
    ):
        model(torch.rand(3, 64, 64))


def test_centernet_trains_with_centernet_loss():
    from detloss.heatmap import centernet_targets
    from detloss.losses.centernet import CenterNetLoss

    torch.manual_seed(0)
    model = CenterNet.tiny(num_classes=2)
    images = torch.rand(2, 3, 32, 32)
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 20.0, 16.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    out = model(images)
    dense = centernet_targets(targets, num_classes=2, output_size=(8, 8), stride=4)
    loss = CenterNetLoss()(out, dense)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------- decode_points


def test_decode_points_strict_threshold():
    points = torch.arange(12.0).reshape(2, 3, 2)
    logits = torch.tensor([[0.0, 1.0, -1.0], [5.0, 5.0, 0.0]])
    out = decode_points(points, logits)  # sigmoid(0) = 0.5 is not > 0.5
    assert out[0]["points"].tolist() == [[2.0, 3.0]]
    assert out[1]["points"].tolist() == [[6.0, 7.0], [8.0, 9.0]]
    torch.testing.assert_close(out[1]["scores"], torch.sigmoid(torch.tensor([5.0, 5.0])))
    assert [len(o["points"]) for o in decode_points(points, logits, score_threshold=0.0)] == [3, 3]


def test_decode_points_softmax_and_half():
    points = torch.rand(1, 2, 2)
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    out = decode_points(points, logits)
    assert out[0]["points"].shape == (1, 2)
    torch.testing.assert_close(out[0]["scores"], torch.softmax(logits[0, 0], 0)[1:])
    half = decode_points(points.half(), logits.half())
    assert half[0]["points"].dtype == torch.float16 and half[0]["scores"].dtype == torch.float32
    empty = decode_points(torch.zeros(2, 0, 2), torch.zeros(2, 0))
    assert [o["points"].shape for o in empty] == [(0, 2), (0, 2)]


def test_decode_points_errors():
    with pytest.raises(ValueError, match=r"points: expected shape \[B, M, 2\], got \[2, 3\]"):
        decode_points(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(
        ValueError,
        match=r"logits: expected shape \[2, 3\] or \[2, 3, 2\] \(points' B and M\), got \[2, 4\]",
    ):
        decode_points(torch.zeros(2, 3, 2), torch.zeros(2, 4))
    with pytest.raises(
        ValueError, match=r"logits: expected shape \[B, M\] or \[B, M, 2\], got \[2, 3, 3\]"
    ):
        decode_points(torch.zeros(2, 3, 2), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\), got 1"):
        decode_points(torch.zeros(1, 1, 2), torch.zeros(1, 1), score_threshold=1)


def test_p2pnet_fine_features_option():
    assert P2PNet.tiny().lateral3 is not None
    assert P2PNet(channels=(4, 4, 4, 4, 4), depths=(1, 1, 1, 1, 1)).lateral3 is None
    model = P2PNet.tiny(fine_features=True).eval()
    for h, w in ((30, 17), (64, 64), (44, 36)):
        out = model(torch.rand(1, 3, h, w))
        assert out["pred_points"].shape == (1, -(-h // 8) * -(-w // 8) * 4, 2)
