import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _paths import PATHS, use_path
from detloss._kernels import reference_path
from detloss.heatmap import centernet_targets, draw_gaussians, gaussian_kernel, gaussian_radius


# Every test runs with the compiled CPU drawing and with the torch path.
@pytest.fixture(scope="module", autouse=True, params=PATHS)
def cpu_path(request):
    yield from use_path(request.param)


# ----------------------------------------------------------------------------------------
# slow references, written out plainly
# ----------------------------------------------------------------------------------------


def legacy_radius_reference(h: float, w: float, o: float) -> float:
    """The CornerNet / CenterNet code path: for each case a r^2 + b r + c = 0 it keeps
    (-b + sqrt(b^2 - 4ac)) / 2, never dividing by a."""
    cases = (
        (1, -(h + w), w * h * (1 - o) / (1 + o)),
        (4, -2 * (h + w), (1 - o) * w * h),
        (4 * o, 2 * o * (h + w), (o - 1) * w * h),
    )
    return min((-b + math.sqrt(b * b - 4 * a * c)) / 2 for a, b, c in cases)


def case_ious(h: float, w: float, r: float) -> tuple[float, float, float]:
    """IoU of the box with its three displaced versions at corner displacement r."""
    one = (w - r) * (h - r) / (w * h + (w + h) * r - r * r)
    two = (w - 2 * r) * (h - 2 * r) / (w * h)
    three = w * h / ((w + 2 * r) * (h + 2 * r))
    return one, two, three


def paste_reference(heatmap: torch.Tensor, x: int, y: int, r: int) -> None:
    """Paste gaussian_kernel(r) centred on (x, y), cell by cell, keeping the max."""
    kernel = gaussian_kernel(r, dtype=heatmap.dtype)
    height, width = heatmap.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            yy, xx = y + dy, x + dx
            if 0 <= yy < height and 0 <= xx < width:
                heatmap[yy, xx] = torch.maximum(heatmap[yy, xx], kernel[dy + r, dx + r])


def targets_reference(boxes, labels, mask, num_classes, size, stride, min_overlap=0.3):
    """One object at a time, in index order, in float64."""
    height, width = size
    batch, n = labels.shape
    out = {
        "heatmap": torch.zeros(batch, num_classes, height, width, dtype=torch.float64),
        "size": torch.zeros(batch, 2, height, width, dtype=torch.float64),
        "offset": torch.zeros(batch, 2, height, width, dtype=torch.float64),
        "weight": torch.zeros(batch, 1, height, width, dtype=torch.float64),
        "index": torch.zeros(batch, n, dtype=torch.long),
        "index_mask": torch.zeros(batch, n, dtype=torch.bool),
        "size_target": torch.zeros(batch, n, 2, dtype=torch.float64),
        "offset_target": torch.zeros(batch, n, 2, dtype=torch.float64),
    }
    for b in range(batch):
        owner = {}
        for i in range(n):
            if not mask[b, i]:
                continue
            x1, y1, x2, y2 = (float(v) for v in boxes[b, i])
            cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
            w, h = max(x2 - x1, 0.0) / stride, max(y2 - y1, 0.0) / stride
            ix, iy = math.floor(cx), math.floor(cy)
            r = max(0, int(gaussian_radius(h, w, min_overlap)))
            paste_reference(out["heatmap"][b, int(labels[b, i])], ix, iy, r)
            out["size"][b, :, iy, ix] = torch.tensor([w, h], dtype=torch.float64)
            out["offset"][b, :, iy, ix] = torch.tensor([cx - ix, cy - iy], dtype=torch.float64)
            out["weight"][b, 0, iy, ix] = 1
            out["index"][b, i] = iy * width + ix
            out["size_target"][b, i] = torch.tensor([w, h], dtype=torch.float64)
            out["offset_target"][b, i] = torch.tensor([cx - ix, cy - iy], dtype=torch.float64)
            owner[iy * width + ix] = i
        for i in owner.values():
            out["index_mask"][b, i] = True
    return out


# ----------------------------------------------------------------------------------------
# gaussian_radius
# ----------------------------------------------------------------------------------------


def test_radius_reference_numbers():
    assert gaussian_radius(10, 10) == pytest.approx(2.2614, abs=1e-4)
    assert gaussian_radius(20, 40, 0.3) == pytest.approx(5.7805, abs=1e-4)
    got = gaussian_radius(torch.tensor([10.0, 20.0]), torch.tensor([10.0, 40.0]))
    torch.testing.assert_close(got, torch.tensor([2.2614, 5.7805]), atol=1e-4, rtol=0)


def test_radius_tensor_dtypes_and_broadcasting():
    h = torch.tensor([[3.0], [7.0]], dtype=torch.float64)
    w = torch.tensor([2.0, 9.0, 30.0], dtype=torch.float64)
    got = gaussian_radius(h, w)
    assert got.shape == (2, 3) and got.dtype == torch.float64
    for i in range(2):
        for j in range(3):
            assert float(got[i, j]) == pytest.approx(gaussian_radius(float(h[i, 0]), float(w[j])))
    assert gaussian_radius(torch.tensor([4, 8]), 6).dtype == torch.float32
    assert gaussian_radius(torch.tensor([4.0], dtype=torch.float16), 6.0).dtype == torch.float16
    assert isinstance(gaussian_radius(4, 6), float)


def test_radius_scales_with_the_box_without_overflow():
    # r(k h, k w) = k r(h, w); float32 squares of 1e30 would overflow without the rescaling
    got = gaussian_radius(torch.tensor([1e30, 2e-30]), torch.tensor([1e30, 4e-30]))
    torch.testing.assert_close(got, torch.tensor([2.2614e29, 5.7805e-31]), rtol=1e-4, atol=0)
    assert gaussian_radius(3e200, 6e200) == pytest.approx(gaussian_radius(3, 6) * 1e200)


def test_radius_of_empty_and_negative_sizes_is_zero():
    assert gaussian_radius(0, 0) == 0
    assert gaussian_radius(-3, 5) == 0
    got = gaussian_radius(torch.tensor([0.0, -1.0, 0.0]), torch.tensor([0.0, 4.0, 5.0]))
    assert torch.equal(got, torch.zeros(3))


@given(
    st.floats(0.5, 500),
    st.floats(0.5, 500),
    st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]),
)
@settings(max_examples=50)
def test_radius_is_the_largest_displacement_keeping_min_overlap(h, w, o):
    r = gaussian_radius(h, w, o)
    ious = case_ious(h, w, r)
    assert min(ious) >= o - 1e-9
    assert min(ious) == pytest.approx(o, abs=1e-9)  # tight: one case binds exactly
    # a slightly larger displacement breaks the guarantee
    assert min(case_ious(h, w, r * (1 + 1e-6) + 1e-9)) < o


@given(st.floats(0, 300), st.floats(0, 300), st.sampled_from([0.3, 0.5, 0.7]))
@settings(max_examples=40)
def test_legacy_radius_equals_the_original_formula(h, w, o):
    assert gaussian_radius(h, w, o, legacy=True) == pytest.approx(
        legacy_radius_reference(h, w, o), rel=1e-12, abs=1e-12
    )
    got = gaussian_radius(torch.tensor([h], dtype=torch.float64), w, o, legacy=True)
    assert float(got) == pytest.approx(legacy_radius_reference(h, w, o), rel=1e-12, abs=1e-12)


def test_legacy_radius_is_about_twice_too_large_for_square_boxes():
    assert gaussian_radius(10, 10, legacy=True) == pytest.approx(4.954451, abs=1e-6)
    assert gaussian_radius(10, 10, legacy=True) / gaussian_radius(10, 10) == pytest.approx(
        2.19, abs=0.01
    )


def test_radius_errors():
    with pytest.raises(ValueError, match=r"min_overlap must be in \(0, 1\], got 0"):
        gaussian_radius(3, 4, 0)
    with pytest.raises(ValueError, match=r"min_overlap must be in \(0, 1\], got 1.5"):
        gaussian_radius(3, 4, 1.5)
    with pytest.raises(TypeError, match="min_overlap must be a float, got str"):
        gaussian_radius(3, 4, "0.3")
    with pytest.raises(TypeError, match="height must be a number or a tensor, got list"):
        gaussian_radius([3], 4)


# ----------------------------------------------------------------------------------------
# gaussian_kernel
# ----------------------------------------------------------------------------------------


def test_kernel_reference_numbers():
    k = gaussian_kernel(2, 5 / 6)
    assert k.shape == (5, 5) and k.dtype == torch.float32
    expected = {
        (2, 2): 1.0,
        (2, 3): 0.486752,
        (3, 3): 0.236928,
        (2, 4): 0.056135,
        (0, 0): 0.003151,
    }
    for (i, j), value in expected.items():
        assert float(k[i, j]) == pytest.approx(value, abs=1e-6)
    assert torch.equal(k, k.flip(0)) and torch.equal(k, k.T)
    # default sigma is diameter / 6
    assert torch.equal(gaussian_kernel(2), k)


def test_kernel_small_entries_are_exact_zeros():
    assert torch.equal(gaussian_kernel(0), torch.ones(1, 1))
    k = gaussian_kernel(10, sigma=1.0)
    nonzero = k[k > 0]
    assert nonzero.min() >= torch.finfo(torch.float32).eps
    # float32 eps = 1.19e-7: exp(-29 / 2) = 5.0e-7 stays, exp(-32 / 2) = 1.13e-7 goes
    assert k[10 + 5, 10 + 2] == pytest.approx(math.exp(-14.5)) and k[10 + 4, 10 + 4] == 0
    k64 = gaussian_kernel(10, sigma=1.0, dtype=torch.float64)
    # float64 eps = 2.2e-16: exp(-72 / 2) = 2.3e-16 stays, exp(-73 / 2) goes
    assert k64[10 + 6, 10 + 6] == pytest.approx(math.exp(-36)) and k64[10 + 8, 10 + 3] == 0
    assert gaussian_kernel(3, dtype=torch.float16).dtype == torch.float16


def test_kernel_errors():
    with pytest.raises(ValueError, match="radius must be >= 0, got -1"):
        gaussian_kernel(-1)
    with pytest.raises(TypeError, match="radius must be an int, got float"):
        gaussian_kernel(2.0)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0, got 0"):
        gaussian_kernel(2, 0.0)
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype, got torch\.int64"):
        gaussian_kernel(2, dtype=torch.int64)


# ----------------------------------------------------------------------------------------
# draw_gaussians
# ----------------------------------------------------------------------------------------


def test_draw_the_seed_example():
    heatmap = torch.zeros(8, 8)
    out = draw_gaussians(heatmap, torch.tensor([[3, 3]]), torch.tensor([2]))
    assert out is heatmap
    expected = torch.zeros(8, 8)
    expected[1:6, 1:6] = gaussian_kernel(2)
    assert torch.equal(heatmap, expected)


def test_draw_clips_at_every_border():
    heatmap = torch.zeros(5, 7)
    draw_gaussians(heatmap, torch.tensor([[0, 0], [6, 4]]), 2)
    k = gaussian_kernel(2)
    expected = torch.zeros(5, 7)
    expected[0:3, 0:3] = k[2:, 2:]
    expected[2:5, 4:7] = torch.maximum(expected[2:5, 4:7], k[:3, :3])
    assert torch.equal(heatmap, expected)


@st.composite
def drawing_problems(draw):
    channels = draw(st.integers(1, 3))
    height = draw(st.integers(1, 12))
    width = draw(st.integers(1, 12))
    n = draw(st.integers(0, 7))
    xs = draw(st.lists(st.integers(0, width - 1), min_size=n, max_size=n))
    ys = draw(st.lists(st.integers(0, height - 1), min_size=n, max_size=n))
    radii = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, channels - 1), min_size=n, max_size=n))
    prefill = draw(st.sampled_from(["zeros", "random", "negative"]))
    return channels, height, width, xs, ys, radii, labels, prefill


@given(drawing_problems())
def test_draw_equals_pasting_one_by_one(problem):
    channels, height, width, xs, ys, radii, labels, prefill = problem
    g = torch.Generator().manual_seed(len(xs) + height)
    base = torch.zeros(channels, height, width)
    if prefill == "random":
        base = torch.rand(channels, height, width, generator=g)
    elif prefill == "negative":
        base = -torch.rand(channels, height, width, generator=g)
    expected = base.clone()
    for x, y, r, c in zip(xs, ys, radii, labels):
        paste_reference(expected[c], x, y, r)
    centers = torch.tensor([xs, ys], dtype=torch.long).T.reshape(-1, 2)
    got = draw_gaussians(
        base.clone(), centers, torch.tensor(radii, dtype=torch.long), torch.tensor(labels)
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
    # the order of the objects does not matter
    perm = torch.randperm(len(xs), generator=g)
    got_perm = draw_gaussians(
        base.clone(), centers[perm], torch.tensor(radii)[perm], torch.tensor(labels)[perm]
    )
    torch.testing.assert_close(got_perm, got, rtol=0, atol=0)


def test_draw_mixed_radii_across_size_classes():
    # radii from every power-of-two class, including windows larger than the map
    radii = [0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 40, 70]
    g = torch.Generator().manual_seed(0)
    xs = torch.randint(0, 60, (len(radii),), generator=g)
    ys = torch.randint(0, 50, (len(radii),), generator=g)
    expected = torch.zeros(50, 60, dtype=torch.float64)
    for x, y, r in zip(xs.tolist(), ys.tolist(), radii):
        paste_reference(expected, x, y, r)
    got = draw_gaussians(
        torch.zeros(50, 60, dtype=torch.float64), torch.stack((xs, ys), 1), torch.tensor(radii)
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_and_torch_drawing_agree(dtype, monkeypatch):
    """Random objects of every size class, huge and negative radii, centres outside the
    map (unvalidated) and a map that already holds negative values and NaN: float32 maps
    are identical; float64 maps within one rounding (the compiled loop takes exp from the
    C library, torch its own vectorised exp)."""
    g = torch.Generator().manual_seed(3)
    n = 300
    radii = torch.randint(-2, 40, (n,), generator=g)
    radii[:5] = torch.tensor([0, 70, 200, 2**40, -1])
    centers = torch.stack(
        (torch.randint(-20, 90, (n,), generator=g), torch.randint(-20, 70, (n,), generator=g)), 1
    )
    labels = torch.randint(0, 3, (n,), generator=g)
    start = torch.randn(3, 50, 60, generator=g, dtype=dtype)
    start[0, 10, 10] = math.nan
    maps = []
    for forced in (False, True):
        with reference_path(forced):
            maps.append(draw_gaussians(start.clone(), centers, radii, labels, validate=False))
    compiled, fallback = maps[0].nan_to_num(7.0), maps[1].nan_to_num(7.0)
    if dtype == torch.float32:
        assert torch.equal(compiled, fallback)
    else:
        torch.testing.assert_close(compiled, fallback, rtol=torch.finfo(dtype).eps, atol=0)
    assert maps[0][0, 10, 10].isnan()


def test_draw_in_place_on_non_contiguous_and_half_maps():
    storage = torch.zeros(9, 6)
    view = storage.T  # [6, 9], not contiguous
    out = draw_gaussians(view, torch.tensor([[4, 2]]), torch.tensor([1]))
    assert out is view and storage[4, 2] == 1 and storage.sum() > 1
    half = draw_gaussians(torch.zeros(5, 5, dtype=torch.float16), torch.tensor([[2, 2]]), 2)
    assert torch.equal(half, gaussian_kernel(2, dtype=torch.float16))


def test_draw_without_objects_and_with_zero_radius():
    heatmap = torch.rand(2, 4, 4)
    before = heatmap.clone()
    draw_gaussians(
        heatmap,
        torch.zeros(0, 2, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
    )
    assert torch.equal(heatmap, before)
    point = draw_gaussians(torch.zeros(3, 3), torch.tensor([[1, 1]]), 0)
    assert point.sum() == 1 and point[1, 1] == 1


def test_draw_unvalidated_centres_outside_draw_their_visible_part():
    got = draw_gaussians(torch.zeros(6, 6), torch.tensor([[-2, 3]]), 3, validate=False)
    expected = torch.zeros(6, 6)
    paste_reference(expected, -2, 3, 3)
    assert torch.equal(got, expected) and got.sum() > 0
    nothing = draw_gaussians(torch.zeros(4, 4), torch.tensor([[1, 1]]), -1, validate=False)
    assert nothing.sum() == 0


def test_draw_errors():
    hm2 = torch.zeros(4, 5)
    hm3 = torch.zeros(2, 4, 5)
    c = torch.tensor([[1, 1]])
    with pytest.raises(ValueError, match=r"radii: expected values >= 0, got minimum -2"):
        draw_gaussians(hm2, c, torch.tensor([-2]))
    with pytest.raises(
        ValueError,
        match=r"centers: expected \(x, y\) inside the 4 x 5 map .* got \[5, 0\] at index 1",
    ):
        draw_gaussians(hm2, torch.tensor([[1, 1], [5, 0]]), 1)
    with pytest.raises(ValueError, match=r"centers: .* got \[0, -1\]"):
        draw_gaussians(hm2, torch.tensor([[0, -1]]), 1)
    with pytest.raises(
        ValueError, match=r"labels: expected values in \[0, 1\], got range \[0, 2\]"
    ):
        draw_gaussians(hm3, torch.tensor([[1, 1], [2, 2]]), 1, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"labels: required for a \[C, H, W\] heatmap"):
        draw_gaussians(hm3, c, 1)
    with pytest.raises(
        ValueError,
        match=r"labels: only allowed with a \[C, H, W\] heatmap, got heatmap shape \[4, 5\]",
    ):
        draw_gaussians(hm2, c, 1, torch.tensor([0]))
    with pytest.raises(
        ValueError, match=r"labels: expected shape \[1\] \(one per centre\), got \[2\]"
    ):
        draw_gaussians(hm3, c, 1, torch.tensor([0, 1]))
    with pytest.raises(
        ValueError, match=r"radii: expected shape \[1\] \(one per centre\), got \[3\]"
    ):
        draw_gaussians(hm2, c, torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match=r"centers: expected shape \[n, 2\], got \[2\]"):
        draw_gaussians(hm2, torch.tensor([1, 1]), 1)
    with pytest.raises(
        ValueError, match=r"heatmap: expected shape \[H, W\] or \[C, H, W\], got \[5\]"
    ):
        draw_gaussians(torch.zeros(5), c, 1)
    with pytest.raises(TypeError, match=r"centers must be an integer tensor, got torch\.float32"):
        draw_gaussians(hm2, c.float(), 1)
    with pytest.raises(TypeError, match=r"heatmap must be a floating tensor, got torch\.int64"):
        draw_gaussians(hm2.long(), c, 1)


# ----------------------------------------------------------------------------------------
# centernet_targets
# ----------------------------------------------------------------------------------------


@st.composite
def target_problems(draw):
    batch = draw(st.integers(1, 3))
    n = draw(st.integers(0, 6))
    classes = draw(st.integers(1, 3))
    height = draw(st.integers(2, 12))
    width = draw(st.integers(2, 12))
    stride = draw(st.sampled_from([1, 2, 4]))
    total = batch * n
    coords = draw(st.lists(st.floats(0, 1), min_size=4 * total, max_size=4 * total))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=total, max_size=total))
    mask = draw(st.lists(st.booleans(), min_size=total, max_size=total))
    return batch, n, classes, height, width, stride, coords, labels, mask


@given(target_problems())
def test_targets_equal_the_object_by_object_reference(problem):
    batch, n, classes, height, width, stride, coords, labels, mask = problem
    c = torch.tensor(coords, dtype=torch.float64).view(batch, n, 4)
    # boxes inside the image, some tiny, some inverted (x2 < x1 counts as zero width)
    img_w, img_h = width * stride, height * stride
    x = torch.stack((c[..., 0], c[..., 2]), -1) * (img_w - 1e-6)
    y = torch.stack((c[..., 1], c[..., 3]), -1) * (img_h - 1e-6)
    # any order: x2 < x1 is an inverted box (zero width); the centre stays inside the image
    boxes = torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), -1)
    labels_t = torch.tensor(labels, dtype=torch.long).view(batch, n)
    mask_t = torch.tensor(mask, dtype=torch.bool).view(batch, n)
    got = centernet_targets(
        boxes,
        labels_t,
        target_mask=mask_t,
        num_classes=classes,
        output_size=(height, width),
        stride=stride,
    )
    want = targets_reference(boxes, labels_t, mask_t, classes, (height, width), stride)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-12, msg=key)
    assert got["weight"].sum() == got["index_mask"].sum()


def test_targets_hand_worked_seed_example():
    # 64 x 64 image, stride 8: the box centre (28, 28) lands in cell (3, 3) with offset 0.5
    boxes = torch.tensor([[[20.0, 20.0, 36.0, 36.0]]])
    t = centernet_targets(boxes, torch.tensor([[2]]), num_classes=4, output_size=(8, 8), stride=8)
    assert t["heatmap"].shape == (1, 4, 8, 8) and t["heatmap"].dtype == torch.float32
    assert t["heatmap"][0, 2, 3, 3] == 1 and t["heatmap"].sum() == 1  # radius floor(0.45) = 0
    assert t["index"].tolist() == [[27]] and t["index_mask"].tolist() == [[True]]
    assert t["size_target"].tolist() == [[[2.0, 2.0]]]
    assert t["offset_target"].tolist() == [[[0.5, 0.5]]]
    assert t["size"][0, :, 3, 3].tolist() == [2.0, 2.0] and t["size"].sum() == 4
    assert t["offset"][0, :, 3, 3].tolist() == [0.5, 0.5] and t["weight"].sum() == 1


def test_targets_radius_and_gaussian_of_a_larger_box():
    # 40 x 80 px at stride 4 -> 10 x 20 cells; radius floor(2.89) = 2, legacy floor(6.78) = 6
    boxes = torch.tensor([[[8.0, 12.0, 88.0, 52.0]]])
    t = centernet_targets(boxes, torch.tensor([[0]]), num_classes=1, output_size=(20, 30))
    r = int(gaussian_radius(10, 20))
    assert r == 2
    expected = torch.zeros(20, 30)
    draw_gaussians(expected, torch.tensor([[12, 8]]), r)
    assert torch.equal(t["heatmap"][0, 0], expected)
    legacy = centernet_targets(
        boxes, torch.tensor([[0]]), num_classes=1, output_size=(20, 30), legacy_radius=True
    )
    r_legacy = int(gaussian_radius(10, 20, legacy=True))
    assert r_legacy == 6
    expected = torch.zeros(20, 30)
    draw_gaussians(expected, torch.tensor([[12, 8]]), r_legacy)
    assert torch.equal(legacy["heatmap"][0, 0], expected)


def test_targets_collision_rule_last_object_owns_the_cell():
    boxes = torch.tensor(
        [[[0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 12.0, 12.0], [20.0, 20.0, 24.0, 24.0]]]
    )
    labels = torch.tensor([[0, 1, 0]])
    t = centernet_targets(boxes, labels, num_classes=2, output_size=(8, 8))
    # objects 0 and 1 share cell (2, 2); both draw a peak in their own class
    assert t["heatmap"][0, 0, 2, 2] == 1 and t["heatmap"][0, 1, 2, 2] == 1
    assert t["index"].tolist() == [[18, 18, 45]]
    assert t["index_mask"].tolist() == [[False, True, True]]
    assert t["size"][0, :, 2, 2].tolist() == [2.0, 2.0]  # object 1's size, not object 0's
    assert t["size_target"][0, 0].tolist() == [4.0, 4.0]  # the loser keeps its own values
    assert t["weight"].sum() == 2
    # the order decides: swap the two and the big box owns the cell
    swapped = centernet_targets(
        boxes[:, [1, 0, 2]], labels[:, [1, 0, 2]], num_classes=2, output_size=(8, 8)
    )
    assert swapped["size"][0, :, 2, 2].tolist() == [4.0, 4.0]
    assert torch.equal(swapped["heatmap"], t["heatmap"])


def test_targets_accept_list_and_padded_dict_forms():
    g = torch.Generator().manual_seed(0)
    per_image = []
    for count in (3, 0, 2):
        xy = torch.rand(count, 2, generator=g) * 40
        wh = torch.rand(count, 2, generator=g) * 20 + 1
        per_image.append(
            {
                "boxes": torch.cat((xy, xy + wh), 1),
                "labels": torch.randint(0, 5, (count,), generator=g),
            }
        )
    from_list = centernet_targets(per_image, num_classes=5, output_size=(16, 16))
    padded = (
        torch.zeros(3, 3, 4),
        torch.zeros(3, 3, dtype=torch.long),
        torch.zeros(3, 3, dtype=torch.bool),
    )
    for i, d in enumerate(per_image):
        k = d["boxes"].shape[0]
        padded[0][i, :k], padded[1][i, :k], padded[2][i, :k] = d["boxes"], d["labels"], True
    from_tensors = centernet_targets(
        padded[0], padded[1], target_mask=padded[2], num_classes=5, output_size=(16, 16)
    )
    with pytest.warns(FutureWarning, match="pass target_mask by keyword"):
        by_position = centernet_targets(*padded, num_classes=5, output_size=(16, 16))
    for key in by_position:
        assert torch.equal(by_position[key], from_tensors[key]), key
    from_dict = centernet_targets(
        {"boxes": padded[0], "labels": padded[1], "mask": padded[2]},
        num_classes=5,
        output_size=(16, 16),
    )
    for key in from_list:
        assert torch.equal(from_list[key], from_tensors[key]), key
        assert torch.equal(from_dict[key], from_tensors[key]), key
    assert from_list["heatmap"][1].sum() == 0 and from_list["weight"][1].sum() == 0


def test_targets_without_objects_are_zeros():
    for n in (0, 3):
        t = centernet_targets(
            torch.full((2, n, 4), float("nan")),  # padding content is never read
            torch.full((2, n), -7),
            target_mask=torch.zeros(2, n, dtype=torch.bool),
            num_classes=3,
            output_size=(5, 6),
        )
        assert t["heatmap"].shape == (2, 3, 5, 6) and t["index"].shape == (2, n)
        for key in ("heatmap", "size", "offset", "weight", "size_target", "offset_target"):
            assert torch.isfinite(t[key]).all() and t[key].sum() == 0, key
        assert not t["index_mask"].any() and (t["index"] == 0).all()


def test_targets_degenerate_box_is_a_single_peak():
    boxes = torch.tensor([[[10.0, 10.0, 10.0, 10.0], [30.0, 8.0, 26.0, 12.0]]])  # point, inverted
    t = centernet_targets(boxes, torch.tensor([[0, 0]]), num_classes=1, output_size=(8, 10))
    assert (
        t["heatmap"].sum() == 2 and t["heatmap"][0, 0, 2, 2] == 1 and t["heatmap"][0, 0, 2, 7] == 1
    )
    assert t["size_target"].tolist() == [[[0.0, 0.0], [0.0, 1.0]]]  # inverted x: zero width


def test_targets_dtypes():
    boxes = torch.tensor([[[1.0, 2.0, 9.0, 13.0]]])
    labels = torch.tensor([[0]])
    for dtype, expected in (
        (torch.float64, torch.float64),
        (torch.float16, torch.float32),
        (torch.int64, torch.float32),
    ):
        t = centernet_targets(boxes.to(dtype), labels, num_classes=1, output_size=(4, 4))
        for key in ("heatmap", "size", "offset", "weight", "size_target", "offset_target"):
            assert t[key].dtype == expected, (dtype, key)
        assert t["index"].dtype == torch.int64 and t["index_mask"].dtype == torch.bool


def test_targets_validation():
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [60.0, 4.0, 72.0, 8.0]]])
    labels = torch.tensor([[0, 1]])
    kwargs = {"num_classes": 2, "output_size": (4, 16)}
    with pytest.raises(
        ValueError,
        match=r"boxes: expected centres inside the 4 x 16 output grid .* at \[0, 1\] with centre cell \[16, 1\]",
    ):
        centernet_targets(boxes, labels, **kwargs)
    dropped = centernet_targets(boxes, labels, validate=False, **kwargs)
    assert dropped["index_mask"].tolist() == [[True, False]]
    assert dropped["heatmap"][0, 1].sum() == 0 and dropped["weight"].sum() == 1
    ok = boxes.clone()
    ok[0, 1] = torch.tensor([40.0, 4.0, 52.0, 8.0])
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 1\], got 2 at \[0, 1\]"):
        centernet_targets(ok, torch.tensor([[0, 2]]), **kwargs)
    nan = ok.clone()
    nan[0, 0, 2] = float("nan")
    with pytest.raises(ValueError, match=r"boxes: expected finite coordinates, got .* at \[0, 0\]"):
        centernet_targets(nan, labels, **kwargs)
    with pytest.raises(
        ValueError, match=r"labels: expected shape \[1, 2\] \(the boxes'\), got \[2\]"
    ):
        centernet_targets(ok, torch.tensor([0, 1]), **kwargs)
    with pytest.raises(
        ValueError, match=r"target_mask: expected shape \[1, 2\] \(the boxes'\), got \[1, 3\]"
    ):
        centernet_targets(ok, labels, target_mask=torch.ones(1, 3, dtype=torch.bool), **kwargs)
    with pytest.raises(ValueError, match=r"boxes: expected shape \[B, n, 4\], got \[2, 4\]"):
        centernet_targets(ok[0], labels, **kwargs)
    with pytest.raises(TypeError, match=r"labels must be an integer tensor, got torch\.float32"):
        centernet_targets(ok, labels.float(), **kwargs)
    with pytest.raises(ValueError, match="labels: required with a boxes tensor"):
        centernet_targets(ok, **kwargs)
    with pytest.raises(
        ValueError, match="labels and target_mask: pass them only with a boxes tensor"
    ):
        centernet_targets([{"boxes": ok[0], "labels": labels[0]}], labels, **kwargs)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        centernet_targets(ok, labels, num_classes=0, output_size=(4, 16))
    with pytest.raises(ValueError, match=r"output_size: expected \(H, W\), got 4"):
        centernet_targets(ok, labels, num_classes=2, output_size=4)
    with pytest.raises(ValueError, match=r"stride must be a finite number > 0, got -4"):
        centernet_targets(ok, labels, stride=-4, **kwargs)
