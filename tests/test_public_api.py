import detloss
import detloss.losses
import detloss.match
import detloss.postprocess


def test_every_exported_name_exists_and_all_is_sorted_and_unique():
    for module in (detloss, detloss.losses, detloss.match, detloss.postprocess):
        names = module.__all__
        assert len(names) == len(set(names))
        for name in names:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_design_contract_names_are_public():
    for name in (
        "sigmoid_focal_loss",
        "giou_loss",
        "diou_loss",
        "ciou_loss",
        "iou_loss",
        "negative_prob",
        "DetectionLoss",
        "MultiBoxLoss",
        "PointLoss",
        "gaussian_focal_loss",
        "CenterNetLoss",
        "ap_loss",
        "APLoss",
    ):
        assert hasattr(detloss.losses, name)
    for name in (
        "Matching",
        "hungarian",
        "max_iou",
        "closest_target",
        "closest_prediction",
        "sinkhorn",
        "HungarianMatcher",
        "SinkhornMatcher",
    ):
        assert hasattr(detloss.match, name)
    for name in ("nms", "batched_nms", "ssd_detect", "centernet_decode", "decode_points"):
        assert hasattr(detloss.postprocess, name)
