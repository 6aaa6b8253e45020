import pytest
import torch

from detloss.batching import as_padded, pad_targets, unpad_targets


def test_pad_and_unpad_round_trip_with_empty_images():
    targets = [
        {"boxes": torch.rand(3, 4), "labels": torch.tensor([1, 2, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.rand(1, 4), "labels": torch.tensor([7])},
    ]
    padded = pad_targets(targets)
    assert padded["boxes"].shape == (3, 3, 4)
    assert padded["labels"].dtype == torch.int64
    assert padded["mask"].tolist() == [[True] * 3, [False] * 3, [True, False, False]]
    back = unpad_targets(padded)
    for original, restored in zip(targets, back, strict=True):
        for key in ("boxes", "labels"):
            assert torch.equal(original[key], restored[key])


def test_bare_tensors_and_all_empty_batch():
    padded = pad_targets([torch.zeros(0, 2), torch.zeros(0, 2)])
    assert padded["points"].shape == (2, 0, 2)
    assert padded["mask"].shape == (2, 0)


def test_as_padded_accepts_padded_dicts_with_non_prefix_masks():
    padded = {
        "boxes": torch.rand(2, 3, 4),
        "labels": torch.zeros(2, 3, dtype=torch.long),
        "mask": torch.tensor([[0, 1, 1], [1, 0, 0]]),
    }
    out = as_padded(padded, ("boxes", "labels"), batch_size=2)
    assert out["mask"].dtype == torch.bool
    assert out["mask"].tolist() == [[False, True, True], [True, False, False]]


def test_errors():
    with pytest.raises(TypeError, match="targets must be a list of per-image dicts or tensors"):
        pad_targets(torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="expected at least one image"):
        pad_targets([])
    with pytest.raises(ValueError, match=r"targets\[1\]: expected keys \['boxes', 'labels'\]"):
        pad_targets(
            [{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1)}, {"boxes": torch.zeros(1, 4)}]
        )
    with pytest.raises(
        ValueError, match=r"targets\[0\]: every value must have the same first dimension"
    ):
        pad_targets([{"boxes": torch.zeros(2, 4), "labels": torch.zeros(1)}])
    with pytest.raises(ValueError, match=r"targets\[1\]\['points'\]: expected shape \[n, 2\]"):
        pad_targets([torch.zeros(1, 2), torch.zeros(1, 3)])
    with pytest.raises(ValueError, match=r"missing \['mask'\]"):
        as_padded({"boxes": torch.zeros(1, 1, 4), "labels": torch.zeros(1, 1)}, ("boxes", "labels"))
    with pytest.raises(ValueError, match=r"expected 3 images .* got 2"):
        as_padded([torch.zeros(1, 2)] * 2, ("points",), batch_size=3)
    with pytest.raises(ValueError, match=r"targets\['boxes'\]: expected leading shape \[1, 2\]"):
        as_padded(
            {"boxes": torch.zeros(1, 3, 4), "labels": torch.zeros(1, 2), "mask": torch.ones(1, 2)},
            ("boxes", "labels"),
        )
