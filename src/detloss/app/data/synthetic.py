"""Deterministic synthetic data sets written as real files.

Two generators, each writing PNG images plus annotations in the formats that
:mod:`detloss.app.data` reads back, so a synthetic set exercises exactly the code path of a
user's own data:

* :func:`make_crowds` -- point annotations. Heads are soft blobs of varying radius,
  contrast and colour on textured backgrounds, placed uniformly or in clusters, from 0 to
  ``max_count`` per image; the annotation of a head is its blob centre (sub-pixel).
  Written as ``images/*.png`` plus ``points.json`` (see :mod:`detloss.app.data.points`).
* :func:`make_shapes` -- boxes. Filled or outlined circles, squares, triangles and crosses
  of varied sizes and colours, overlapping, among clutter strokes that are not objects.
  Written as ``images/*.png`` plus COCO ``instances.json`` (see :mod:`detloss.app.data.coco`).

Pixel coordinates follow the continuous convention used everywhere in detloss: the
image spans ``[0, W] x [0, H]`` and pixel ``(i, j)`` covers ``[j, j + 1] x [i, i + 1]``,
so its centre is ``(j + 0.5, i + 0.5)``.

Image ``k`` of a set depends only on ``(seed, k)``: regenerating a set, or a larger set
with the same seed, reproduces the same first images bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._common import require_pil

__all__ = [
    "SHAPE_CLASSES",
    "CrowdSpec",
    "ShapeSpec",
    "make_crowds",
    "make_shapes",
    "render_crowd",
    "render_shapes",
]

#: Category names of :func:`make_shapes`, in label order (COCO category ids are 1-based).
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")


def _size(size: int | Sequence[int], name: str = "image_size") -> tuple[int, int]:
    """``(height, width)`` from an int or a pair."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(h, int) and isinstance(w, int)) or h < 16 or w < 16:
        raise ValueError(f"{name}: expected an int or (height, width) >= 16, got {size!r}")
    return h, w


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a ``cells x cells`` random grid, bilinearly upsampled."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    ys = np.linspace(0, cells, h, endpoint=False) + 0.5 * cells / h
    xs = np.linspace(0, cells, w, endpoint=False) + 0.5 * cells / w
    y0 = np.clip(ys.astype(int), 0, cells - 1)
    x0 = np.clip(xs.astype(int), 0, cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    # Smoothstep weights hide the grid lines of plain bilinear interpolation.
    fy = fy * fy * (3 - 2 * fy)
    fx = fx * fx * (3 - 2 * fx)
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _background(rng: np.random.Generator, h: int, w: int, texture: float) -> np.ndarray:
    """A textured RGB background ``float[H, W, 3]`` in [0, 1]."""
    base = rng.uniform(0.3, 0.75, size=3)
    tint = rng.uniform(-0.12, 0.12, size=3)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    for cells, amp in ((2, 0.12), (6, 0.08), (max(h, w) // 6, 0.06)):
        noise = _smooth_noise(rng, h, w, cells)
        img += texture * amp * noise[..., None] * (1 + tint)
    # A linear illumination gradient and fine grain.
    gy, gx = rng.uniform(-0.1, 0.1, size=2)
    yy = np.linspace(-1, 1, h)[:, None, None]
    xx = np.linspace(-1, 1, w)[None, :, None]
    img += gy * yy + gx * xx
    img += texture * rng.normal(0.0, 0.025, size=(h, w, 3))
    return img


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _run_jobs(fn, jobs: list[tuple], workers: int) -> list:
    """``[fn(*job) for job in jobs]``, in order, on ``workers`` processes when > 1."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(jobs) < 2:
        return [fn(*job) for job in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, *zip(*jobs, strict=True), chunksize=16))


def _write_crowd(images: Path, spec: CrowdSpec, seed: int, k: int) -> tuple[str, list]:
    Image, _ = require_pil()
    pixels, pts = render_crowd(np.random.default_rng([seed, k]), spec)
    name = f"crowd_{k:05d}.png"
    Image.fromarray(pixels).save(images / name)
    return name, [[round(float(x), 3), round(float(y), 3)] for x, y in pts]


def _write_shapes(
    images: Path, spec: ShapeSpec, seed: int, k: int
) -> tuple[str, np.ndarray, np.ndarray]:
    Image, _ = require_pil()
    pixels, boxes, labels = render_shapes(np.random.default_rng([seed, k]), spec)
    name = f"shapes_{k:05d}.png"
    Image.fromarray(pixels).save(images / name)
    return name, boxes, labels


# ----------------------------------------------------------------------------- crowds


@dataclass(frozen=True)
class CrowdSpec:
    """Settings of :func:`make_crowds`.

    Attributes:
        image_size: ``H`` or ``(H, W)`` in pixels.
        count_range: inclusive ``(min, max)`` number of heads per image (drawn uniformly;
            dense draws stop early if the image is full at ``min_distance``).
        radius_range: blob radius (Gaussian sigma, pixels) range; each image scales it
            with the row (a perspective cue), each head jitters it.
        contrast_range: blob contrast against the background, in [0, 1].
        clustered_fraction: fraction of images whose heads are drawn in clusters.
        min_distance: minimum distance between two heads, in pixels.
        texture: background texture strength (0 = flat).

    Example:
        >>> import numpy as np
        >>> pixels, points = render_crowd(np.random.default_rng(0), CrowdSpec(image_size=(24, 40), count_range=(5, 5)))
        >>> pixels.shape, pixels.dtype, points.shape
        ((24, 40, 3), dtype('uint8'), (5, 2))
    """

    image_size: int | tuple[int, int] = 128
    count_range: tuple[int, int] = (0, 300)
    radius_range: tuple[float, float] = (1.2, 2.6)
    contrast_range: tuple[float, float] = (0.35, 0.8)
    clustered_fraction: float = 0.5
    min_distance: float = 4.5
    texture: float = 1.0


def _place_points(
    rng: np.random.Generator,
    count: int,
    h: int,
    w: int,
    min_distance: float,
    clustered: bool,
    margin: float,
) -> np.ndarray:
    """Up to ``count`` points ``float[n, 2]`` at least ``min_distance`` apart.

    Candidates are drawn in batches and accepted one by one against a coarse occupancy
    grid, so a dense image costs O(n) work rather than O(n^2).
    """
    cell = min_distance / math.sqrt(2)  # a grid cell holds at most one accepted point
    gh, gw = int(h / cell) + 1, int(w / cell) + 1
    grid = np.full((gh, gw), -1, dtype=np.int64)
    pts: list[tuple[float, float]] = []
    if count == 0:
        return np.zeros((0, 2))
    if clustered:
        k = int(rng.integers(1, 6))
        centres = rng.uniform([margin, margin], [w - margin, h - margin], size=(k, 2))
        spreads = rng.uniform(0.06, 0.2, size=k) * min(h, w)
    reach = math.ceil(min_distance / cell)
    attempts = 0
    budget = 40 * count + 200
    while len(pts) < count and attempts < budget:
        batch = 64
        attempts += batch
        if clustered:
            which = rng.integers(0, k, size=batch)
            cand = centres[which] + rng.normal(size=(batch, 2)) * spreads[which, None]
            # A small share of isolated heads between the clusters.
            loose = rng.random(batch) < 0.1
            cand[loose] = rng.uniform([0, 0], [w, h], size=(int(loose.sum()), 2))
        else:
            cand = rng.uniform([0, 0], [w, h], size=(batch, 2))
        for x, y in cand:
            if not (margin <= x <= w - margin and margin <= y <= h - margin):
                continue
            gx, gy = int(x / cell), int(y / cell)
            ok = True
            for j in range(max(gy - reach, 0), min(gy + reach + 1, gh)):
                for i in range(max(gx - reach, 0), min(gx + reach + 1, gw)):
                    q = grid[j, i]
                    if q >= 0:
                        px, py = pts[q]
                        if (px - x) ** 2 + (py - y) ** 2 < min_distance**2:
                            ok = False
                            break
                if not ok:
                    break
            if ok:
                grid[gy, gx] = len(pts)
                pts.append((float(x), float(y)))
                if len(pts) == count:
                    break
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def render_crowd(rng: np.random.Generator, spec: CrowdSpec) -> tuple[np.ndarray, np.ndarray]:
    """One crowd image ``uint8[H, W, 3]`` and its head points ``float[n, 2]`` (x, y).

    Example:
        >>> import numpy as np
        >>> spec = CrowdSpec(image_size=32, count_range=(4, 4))
        >>> a, pa = render_crowd(np.random.default_rng(1), spec)
        >>> b, pb = render_crowd(np.random.default_rng(1), spec)
        >>> bool((a == b).all()), pa.shape, bool(((pa >= 0) & (pa <= 32)).all())
        (True, (4, 2), True)
    """
    h, w = _size(spec.image_size)
    lo, hi = spec.count_range
    count = int(rng.integers(lo, hi + 1))
    clustered = bool(rng.random() < spec.clustered_fraction)
    r_lo, r_hi = spec.radius_range
    img = _background(rng, h, w, spec.texture)
    pts = _place_points(rng, count, h, w, spec.min_distance, clustered, margin=1.0)
    n = len(pts)
    if n:
        # Radius grows down the image (nearer heads look larger), jittered per head.
        top, bottom = np.sort(rng.uniform(r_lo, r_hi, size=2))
        radius = top + (bottom - top) * pts[:, 1] / h
        radius = np.clip(radius * rng.uniform(0.85, 1.15, size=n), 0.8, None)
        c_lo, c_hi = spec.contrast_range
        contrast = rng.uniform(c_lo, c_hi, size=n)
        # Mostly dark heads (hair) on a lighter scene, some light ones.
        dark = rng.random(n) < 0.8
        colour = np.where(
            dark[:, None], rng.uniform(0.0, 0.2, size=(n, 3)), rng.uniform(0.8, 1.0, size=(n, 3))
        )
        yy = np.arange(h)[:, None] + 0.5
        xx = np.arange(w)[None, :] + 0.5
        alpha = np.zeros((h, w))
        shade = np.zeros((h, w, 3))
        half = math.ceil(3 * radius.max()) + 1
        for (x, y), r, c, col in zip(pts, radius, contrast, colour, strict=True):
            x0, x1 = max(int(x) - half, 0), min(int(x) + half + 1, w)
            y0, y1 = max(int(y) - half, 0), min(int(y) + half + 1, h)
            d2 = (xx[:, x0:x1] - x) ** 2 + (yy[y0:y1] - y) ** 2
            a = c * np.exp(-0.5 * d2 / (r * r))
            # Overlapping heads take the stronger blob instead of summing into a darker one.
            win = a > alpha[y0:y1, x0:x1]
            alpha[y0:y1, x0:x1] = np.where(win, a, alpha[y0:y1, x0:x1])
            shade[y0:y1, x0:x1] = np.where(win[..., None], col, shade[y0:y1, x0:x1])
        img = img * (1 - alpha[..., None]) + shade * alpha[..., None]
    return _to_uint8(img), pts


def _set_maker(
    name: str,
    spec_type: type,
    write_image: Callable[..., tuple],
    write_annotations: Callable[[Path, tuple[int, int], list[tuple]], Path],
    doc: str,
) -> Callable[..., Path]:
    """``make(root, num_images, spec=None, *, seed=0, workers=1) -> Path``: draw and save
    image ``k`` by ``write_image(images_dir, spec, seed, k)``, then write the annotations
    of all of them by ``write_annotations(root, (height, width), drawn)``."""

    def make(
        root: str | Path,
        num_images: int,
        spec: object | None = None,
        *,
        seed: int = 0,
        workers: int = 1,
    ) -> Path:
        require_pil()
        if not isinstance(num_images, int) or num_images < 0:
            raise ValueError(f"num_images must be a non-negative int, got {num_images!r}")
        spec = spec or spec_type()
        size = _size(spec.image_size)
        lo, hi = spec.count_range
        if not 0 <= lo <= hi:
            raise ValueError(f"count_range: expected 0 <= min <= max, got {spec.count_range!r}")
        root = Path(root)
        images = root / "images"
        images.mkdir(parents=True, exist_ok=True)
        jobs = [(images, spec, seed, k) for k in range(num_images)]
        return write_annotations(root, size, _run_jobs(write_image, jobs, workers))

    make.__name__ = make.__qualname__ = name
    make.__doc__ = doc
    return make


_SET_ARGS = """
    Args:
        root: output directory (created).
        num_images: number of images.
        spec: generator settings (:class:`{spec}`; default ``{spec}()``).
        seed: image ``k`` is drawn from ``numpy.random.default_rng([seed, k])``.
        workers: processes drawing images in parallel (the result does not depend on it).
"""


def _write_points_json(root: Path, size: tuple[int, int], drawn: list[tuple]) -> Path:
    path = root / "points.json"
    path.write_text(json.dumps(dict(drawn), indent=0))
    return path


make_crowds = _set_maker(
    "make_crowds",
    CrowdSpec,
    _write_crowd,
    _write_points_json,
    """Write a synthetic crowd set: ``root/images/crowd_00000.png ...`` and
    ``root/points.json``.
"""
    + _SET_ARGS.format(spec="CrowdSpec")
    + """
    Returns:
        The path of ``points.json``: ``{"crowd_00000.png": [[x, y], ...], ...}`` with paths
        relative to ``root/images``.

    Example:
        >>> import json, tempfile
        >>> path = make_crowds(tempfile.mkdtemp(), 2, CrowdSpec(image_size=32, count_range=(1, 3)))
        >>> points = json.loads(path.read_text())
        >>> sorted(points), all(1 <= len(p) <= 3 for p in points.values())
        (['crowd_00000.png', 'crowd_00001.png'], True)
""",
)


# ----------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ShapeSpec:
    """Settings of :func:`make_shapes`.

    Attributes:
        image_size: ``H`` or ``(H, W)`` in pixels.
        count_range: inclusive ``(min, max)`` number of objects per image.
        size_range: object size range (box side before the shape's own aspect), pixels.
        max_overlap: largest IoU allowed between two objects' boxes.
        outline_fraction: fraction of objects drawn as outlines rather than filled.
        clutter: number range of clutter strokes (lines and specks that are not objects).

    Example:
        >>> import numpy as np
        >>> pixels, boxes, labels = render_shapes(np.random.default_rng(0), ShapeSpec(image_size=64, count_range=(2, 2)))
        >>> pixels.shape, boxes.shape, labels.shape
        ((64, 64, 3), (2, 4), (2,))
    """

    image_size: int | tuple[int, int] = 128
    count_range: tuple[int, int] = (1, 6)
    size_range: tuple[float, float] = (14.0, 44.0)
    max_overlap: float = 0.3
    outline_fraction: float = 0.35
    clutter: tuple[int, int] = (2, 8)


def _iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + areas - inter)


def _shape_polygon(kind: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray | None:
    """Vertices ``float[k, 2]`` of a polygonal shape; None for a circle."""
    if kind == 0:
        return None
    r = size / 2
    if kind == 1:  # square, slightly rotated
        base = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * r / math.sqrt(1.3)
    elif kind == 2:  # equilateral-ish triangle
        t = np.deg2rad([90, 210, 330])
        base = np.stack([np.cos(t), -np.sin(t)], axis=1) * r
    else:  # cross: a plus sign with arms of width size / 3
        a, b = r, r / 3
        base = np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b],
             [-a, b], [-a, -b], [-b, -b]],
            dtype=float,
        )  # fmt: skip
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return base @ rot.T + np.array([cx, cy])


def render_shapes(
    rng: np.random.Generator, spec: ShapeSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One shapes image ``uint8[H, W, 3]``, boxes ``float[n, 4]`` (xyxy) and labels ``int[n]``.

    Drawn at twice the resolution and downsampled, so edges are anti-aliased and a box is
    the exact extent of the shape's geometry (outline width included).

    Example:
        >>> import numpy as np
        >>> pixels, boxes, labels = render_shapes(np.random.default_rng(3), ShapeSpec(image_size=48))
        >>> bool((boxes[:, 2:] > boxes[:, :2]).all()), [SHAPE_CLASSES[k] in SHAPE_CLASSES for k in labels][:1]
        (True, [True])
    """
    Image, ImageDraw = require_pil()
    h, w = _size(spec.image_size)
    ss = 2  # supersampling factor
    bg = _to_uint8(_background(rng, h * ss, w * ss, 0.8))
    canvas = Image.fromarray(bg)
    draw = ImageDraw.Draw(canvas)
    lo, hi = spec.count_range
    count = int(rng.integers(lo, hi + 1))
    # Clutter: strokes and specks in object-like colours, drawn under the objects.
    for _ in range(int(rng.integers(spec.clutter[0], spec.clutter[1] + 1))):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.random() < 0.6:
            p = rng.uniform(0, 1, size=4) * [w, h, w, h] * ss
            draw.line([tuple(p[:2]), tuple(p[2:])], fill=colour, width=int(rng.integers(1, 4)))
        else:
            cx, cy = rng.uniform(0, 1, size=2) * [w, h] * ss
            r = rng.uniform(1, 3) * ss
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    s_lo, s_hi = spec.size_range
    for _ in range(count * 8):
        if len(boxes) == count:
            break
        kind = int(rng.integers(0, len(SHAPE_CLASSES)))
        size = float(rng.uniform(s_lo, s_hi))
        outline = bool(rng.random() < spec.outline_fraction)
        width = float(rng.uniform(1.5, 3.0)) if outline else 0.0
        angle = float(rng.uniform(-0.35, 0.35)) if kind != 2 else float(rng.uniform(-np.pi, np.pi))
        cx = float(rng.uniform(size / 2, w - size / 2))
        cy = float(rng.uniform(size / 2, h - size / 2))
        poly = _shape_polygon(kind, cx, cy, size, angle)
        if poly is None:
            r = size / 2
            box = np.array([cx - r, cy - r, cx + r, cy + r])
        else:
            box = np.concatenate([poly.min(0), poly.max(0)])
        box = np.clip(box, 0, [w, h, w, h])
        if box[2] - box[0] < 4 or box[3] - box[1] < 4:
            continue
        if len(boxes) and _iou_one(box, np.stack(boxes)).max() > spec.max_overlap:
            continue
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        # Keep objects visible: push the colour away from the local background.
        local = bg[int(cy * ss), int(cx * ss)].astype(int)
        if sum(abs(a - b) for a, b in zip(colour, local, strict=True)) < 150:
            colour = tuple(255 - v for v in local)
        # Outlines are drawn inside the geometry so the box stays the shape's extent.
        if poly is None:
            ell = [v * ss for v in box]
            if outline:
                draw.ellipse(ell, outline=colour, width=max(int(width * ss), 1))
            else:
                draw.ellipse(ell, fill=colour)
        else:
            pts = [tuple(v) for v in poly * ss]
            if outline:
                draw.polygon(pts, outline=colour, width=max(int(width * ss), 1))
            else:
                draw.polygon(pts, fill=colour)
        boxes.append(box)
        labels.append(kind)
    pixels = np.asarray(canvas.resize((w, h), Image.Resampling.BOX))
    box_arr = np.stack(boxes) if boxes else np.zeros((0, 4))
    return pixels, box_arr, np.asarray(labels, dtype=np.int64)


def _write_coco(root: Path, size: tuple[int, int], drawn: list[tuple]) -> Path:
    h, w = size
    images: list[dict] = []
    annotations: list[dict] = []
    for k, (name, boxes, labels) in enumerate(drawn):
        images.append({"id": k + 1, "file_name": name, "width": w, "height": h})
        for box, label in zip(boxes, labels, strict=True):
            x0, y0, x1, y1 = (round(float(v), 3) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": k + 1,
                    "category_id": int(label) + 1,
                    "bbox": [x0, y0, round(x1 - x0, 3), round(y1 - y0, 3)],
                    "area": round((x1 - x0) * (y1 - y0), 3),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)]
    path = root / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


make_shapes = _set_maker(
    "make_shapes",
    ShapeSpec,
    _write_shapes,
    _write_coco,
    """Write a synthetic shapes set: ``root/images/shapes_00000.png ...`` and COCO
    ``root/instances.json`` (categories :data:`SHAPE_CLASSES` with ids 1..4, boxes as
    ``[x, y, w, h]``).
"""
    + _SET_ARGS.format(spec="ShapeSpec")
    + """
    Returns:
        The path of ``instances.json``.

    Example:
        >>> import json, tempfile
        >>> path = make_shapes(tempfile.mkdtemp(), 1, ShapeSpec(image_size=64, count_range=(2, 2)))
        >>> coco = json.loads(path.read_text())
        >>> coco["images"], len(coco["annotations"])
        ([{'id': 1, 'file_name': 'shapes_00000.png', 'width': 64, 'height': 64}], 2)
""",
)
