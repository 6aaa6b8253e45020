"""HungarianMatcher (cost + solve) against DETR's matching pipeline.

DETR builds one ``[B * M, sum n]`` cost with every cross-image block on the inputs'
device, copies it to the host and runs scipy per image. detloss builds ``[B, M, N]``
per-image blocks and solves them through :func:`detloss.match.hungarian`, whatever solver
that uses on the device. On the CPU both must give the same assignments (DETR size:
B = 16, M = 300 queries, 1-30 targets). On a GPU the inputs live on the device, the DETR
size runs there too, and so does a DINO-size batch (M = 900 queries, 1-100 targets); a
solver on the device may break ties differently, so there each image's assignment must
reach the same total cost, recomputed in float64 on the host from the indices.

Peers (CPU, solve only): the same padded float32 cost ``[B, M, N_max]`` and prefix target
mask are solved by :func:`detloss.match.hungarian` and by the packages a user would call
instead: scipy's ``linear_sum_assignment`` per image, lapx's ``lap.lapjvr`` per image
(``extend_cost=True``, the valid ``[M, n]`` block as the padded cost holds it, and the
same block transposed to ``[n, M]``, its faster orientation) and ``lap.lapjvr_batch`` on
the whole batch (given a zero-padded copy made outside the timed region: constant
padding columns do not change the real targets' optimum). Sizes: DETR (B = 16,
M = 300, N ~ U(1, 30)), DINO (B = 16, M = 900, N ~ U(1, 100)) and one 1000 x 1000
square (float64) against ``lapjvr``. Every image's total cost is asserted equal
(float64 sums of the same entries). A note row gives the share of matching in a
DETR-style criterion step (``DetectionLoss(HungarianMatcher)`` forward and backward,
B = 16, M = 300, 92 logits).

Run: ``python benchmarks/bench_match.py [--quick] [--repeats R] [--device cuda]
[--threads T]``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from _timing import bench_main, device_sync, time_pair
from detloss import DetectionLoss
from detloss.match import HungarianMatcher, hungarian

try:
    import lap
except ImportError:  # lapx is a benchmark-only peer
    lap = None


def _detr_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def _detr_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[:, :2])
    rb = torch.min(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b - inter
    iou = inter / union
    lt = torch.min(a[:, None, :2], b[:, :2])
    rb = torch.max(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[..., 0] * wh[..., 1]
    return iou - (area - union) / area


@torch.no_grad()
def detr_cost(outputs: dict, targets: list[dict]) -> torch.Tensor:
    """DETR's cost as published: ``[B, M, sum n]``, every image's queries against the
    targets of all images, computed on the inputs' device in their dtype."""
    bs, queries = outputs["pred_logits"].shape[:2]
    out_prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
    out_bbox = outputs["pred_boxes"].flatten(0, 1)
    tgt_ids = torch.cat([t["labels"] for t in targets])
    tgt_bbox = torch.cat([t["boxes"] for t in targets])
    cost_class = -out_prob[:, tgt_ids]
    cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
    cost_giou = -_detr_giou(_detr_xyxy(out_bbox), _detr_xyxy(tgt_bbox))
    c = 5.0 * cost_bbox + 1.0 * cost_class + 2.0 * cost_giou
    return c.view(bs, queries, -1)


@torch.no_grad()
def detr_pipeline(outputs: dict, targets: list[dict]) -> list[tuple]:
    """DETR's matcher as published: the cross-image cost, ``.cpu()``, scipy per image."""
    c = detr_cost(outputs, targets).cpu()
    sizes = [len(t["boxes"]) for t in targets]
    return [linear_sum_assignment(part[i]) for i, part in enumerate(c.split(sizes, -1))]


def make_problem(batch: int, queries: int, classes: int, max_targets: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes + 1, generator=g),
        "pred_boxes": torch.cat(
            [
                torch.rand(batch, queries, 2, generator=g) * 0.8 + 0.1,
                torch.rand(batch, queries, 2, generator=g) * 0.2 + 0.02,
            ],
            dim=-1,
        ),
    }
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, max_targets + 1, (1,), generator=g))
        boxes = torch.cat(
            [torch.rand(n, 2, generator=g) * 0.8 + 0.1, torch.rand(n, 2, generator=g) * 0.2 + 0.02],
            dim=-1,
        )
        targets.append({"boxes": boxes, "labels": torch.randint(0, classes, (n,), generator=g)})
    return outputs, targets


def to_device(outputs: dict, targets: list[dict], device: torch.device) -> tuple[dict, list]:
    """The problem moved to ``device``: generated on the host, so both devices solve the
    same numbers."""
    outputs = {key: value.to(device) for key, value in outputs.items()}
    targets = [{key: value.to(device) for key, value in t.items()} for t in targets]
    return outputs, targets


def assert_same_totals(outputs: dict, targets: list[dict], reference: list, ours: list) -> None:
    """Each image's assignment is complete and costs what DETR's does, both summed on one
    float64 host cost, so that exact ties may be broken either way. Each side solves its
    own float32 cost; a near-tie that their rounding decides differently would fail, which
    the random inputs here make unlikely (at DINO size on the CPU the indices agree)."""
    host_outputs = {key: value.detach().cpu().double() for key, value in outputs.items()}
    host_targets = [
        {"boxes": t["boxes"].cpu().double(), "labels": t["labels"].cpu()} for t in targets
    ]
    cost = detr_cost(host_outputs, host_targets).numpy()
    offsets = np.cumsum([0] + [len(t["boxes"]) for t in targets])
    for i, ((rows, cols), (pred, tgt)) in enumerate(zip(reference, ours, strict=True)):
        block = cost[i, :, offsets[i] : offsets[i + 1]]
        pred, tgt = pred.cpu().numpy(), tgt.cpu().numpy()
        n = block.shape[1]
        assert len(np.unique(pred)) == n and sorted(tgt.tolist()) == list(range(n)), i
        want, got = block[rows, cols].sum(), block[pred, tgt].sum()
        rel = abs(got - want) / max(1.0, abs(want))
        assert rel <= 1e-9, f"image {i}: total cost {got:.12g}, DETR's {want:.12g} (rel {rel:.1e})"


def padded_problem(
    batch: int, m: int, max_targets: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A float32 cost ``[B, M, N_max]`` (padding slots hold random numbers too), its prefix
    target mask and each image's target count."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, max_targets + 1, (batch,), generator=g)
    cost = torch.rand(batch, m, max_targets, generator=g)
    mask = torch.arange(max_targets) < counts[:, None]
    return cost, mask, counts.tolist()


def _totals_from_pairs(block64: np.ndarray, counts: list[int], pairs: list) -> np.ndarray:
    """Each image's total, from (pred indices, target indices) on its float64 block."""
    return np.array(
        [block64[i][rows, cols].sum() for i, (rows, cols) in enumerate(pairs)], dtype=np.float64
    )


def _our_totals(cost64: np.ndarray, p2t: torch.Tensor) -> np.ndarray:
    p2t = p2t.numpy()
    return np.array(
        [cost64[i][p2t[i] >= 0, p2t[i][p2t[i] >= 0]].sum() for i in range(len(p2t))],
        dtype=np.float64,
    )


def _peers(cost: torch.Tensor, counts: list[int], threads: int) -> dict[str, Callable]:
    """The peer solvers on the padded cost, each returning per-image (preds, targets)."""
    host = cost.numpy()
    peers: dict[str, Callable] = {
        "scipy per image": lambda: [
            linear_sum_assignment(host[i, :, :n]) for i, n in enumerate(counts)
        ]
    }
    if lap is None:
        return peers

    def lapjvr_tall() -> list:
        out = []
        for i, n in enumerate(counts):
            _, rows, cols = lap.lapjvr(host[i, :, :n], extend_cost=True)
            out.append((rows, cols))
        return out

    def lapjvr_wide() -> list:
        out = []
        for i, n in enumerate(counts):
            _, rows, cols = lap.lapjvr(np.ascontiguousarray(host[i, :, :n].T), extend_cost=True)
            out.append((cols, rows))
        return out

    zero_padded = np.where(
        np.arange(host.shape[2]) < np.array(counts)[:, None, None], host, np.float32(0)
    )

    def lapjvr_batch() -> list:
        _, rows_list, cols_list = lap.lapjvr_batch(zero_padded, extend_cost=True, n_threads=threads)
        return [
            (rows[cols < n], cols[cols < n])
            for rows, cols, n in zip(rows_list, cols_list, counts, strict=True)
        ]

    peers["lapx lapjvr per image [M, n]"] = lapjvr_tall
    peers["lapx lapjvr per image [n, M]"] = lapjvr_wide
    peers["lapx lapjvr_batch"] = lapjvr_batch
    return peers


def peer_rows(
    repeats: int, quick: bool, threads: int, wanted: Callable[[str], bool] = lambda name: True
) -> list[dict]:
    """Solve-only rows against scipy and lapx (CPU), and the criterion-step note: those
    whose name ``wanted`` accepts."""
    rows = []
    batch = 4 if quick else 16
    sizes = [(300, 30), (900, 100)] if not quick else [(300, 30)]
    for m, max_targets in sizes:
        cost, mask, counts = padded_problem(batch, m, max_targets)
        cost64 = cost.double().numpy()
        want = _our_totals(cost64, hungarian(cost, target_mask=mask).pred_to_target)
        for name, peer in _peers(cost, counts, threads).items():
            row_name = f"solve B={batch} M={m} N~U(1,{max_targets}) vs {name}"
            if not wanted(row_name):
                continue
            got = _totals_from_pairs(cost64, counts, peer())
            np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=name)
            baseline, mine = time_pair(
                peer, lambda c=cost, k=mask: hungarian(c, target_mask=k), repeats
            )
            rows.append(
                {
                    "name": row_name,
                    "baseline_s": baseline,
                    "ours_s": mine,
                    "note": f"same totals asserted; {threads} thread(s)",
                }
            )
    side = 200 if quick else 1000
    if lap is not None and wanted(f"solve {side}x{side} float64 vs lapx lapjvr"):
        square = np.random.default_rng(0).random((side, side))
        square_t = torch.from_numpy(square)
        _, square_rows, square_cols = lap.lapjvr(square)
        ours = hungarian(square_t).pred_to_target[0].numpy()
        want, got = square[square_rows, square_cols].sum(), square[np.arange(side), ours].sum()
        assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (got, want)
        baseline, mine = time_pair(
            lambda: lap.lapjvr(square), lambda: hungarian(square_t), max(3, repeats // 2)
        )
        rows.append(
            {
                "name": f"solve {side}x{side} float64 vs lapx lapjvr",
                "baseline_s": baseline,
                "ours_s": mine,
                "note": f"same total asserted; {threads} thread(s)",
            }
        )
    if wanted("matching share of a criterion step"):
        rows.append(criterion_share_row(repeats, quick))
    return rows


def criterion_share_row(repeats: int, quick: bool, calls: int = 5) -> dict:
    """The share of the matcher in a DETR-style criterion step (forward + backward).

    ``max(repeats, 10)`` rounds, each timing ``calls`` steps then ``calls`` matcher calls
    (each call after an untimed one); a round's share is the ratio of its two fastest
    calls: another process on the machine only ever adds time, so the fastest of a few
    calls is the least disturbed, and the two sides of a round see the same machine.
    Min / median / max over the rounds."""
    batch = 4 if quick else 16
    outputs, targets = make_problem(batch, 300, 91, 30)
    matcher = HungarianMatcher(1.0, 5.0, 2.0, box_format="cxcywh")
    criterion = DetectionLoss(matcher, box_format="cxcywh")

    def step() -> None:
        leaf = {k: v.detach().requires_grad_(True) for k, v in outputs.items()}
        criterion(leaf, targets).backward()

    step_times, match_times = [], []
    for _ in range(max(repeats, 10)):
        for fn, out in ((step, step_times), (lambda: matcher(outputs, targets), match_times)):
            times = []
            for _ in range(calls):
                fn()
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            out.append(min(times))
    shares = sorted(m / s for m, s in zip(match_times, step_times, strict=True))
    note = (
        f"matching share of a DETR criterion step (B={batch}, M=300, 92 logits, fwd+bwd): "
        f"min {shares[0]:.0%} median {statistics.median(shares):.0%} max {shares[-1]:.0%} "
        f"(fastest calls, medians over rounds: step {statistics.median(step_times) * 1e3:.2f} "
        f"ms, matching {statistics.median(match_times) * 1e3:.2f} ms, "
        f"{torch.get_num_threads()} thread(s))"
    )
    return {"name": "matching share of a criterion step", "note": note}


def run(
    repeats: int = 5,
    quick: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    only: str | None = None,
) -> list[dict]:
    """The matcher against DETR's pipeline, then (on the CPU) the peer solvers, with
    ``threads`` torch intra-op threads (default 2; the compiled solver uses a second
    thread only when torch may); ``only``: just the rows whose name contains it."""

    def wanted(name: str) -> bool:
        return only is None or only in name

    before = torch.get_num_threads()
    torch.set_num_threads(threads or 2)
    try:
        rows = _detr_rows(repeats, quick, device, wanted)
        if torch.device(device).type == "cpu":
            rows += peer_rows(repeats, quick, torch.get_num_threads(), wanted)
    finally:
        torch.set_num_threads(before)
    return rows


def _detr_rows(
    repeats: int, quick: bool, device: str, wanted: Callable[[str], bool] = lambda name: True
) -> list[dict]:
    dev = torch.device(device)
    batch = 4 if quick else 16
    # (queries, most targets per image): DETR's size, and on a GPU also DINO's.
    sizes = [(100 if quick else 300, 30)]
    if dev.type != "cpu":
        sizes.append((900, 100))
    matcher = HungarianMatcher(1.0, 5.0, 2.0, box_format="cxcywh")
    results = []
    for queries, max_targets in sizes:
        name = f"hungarian matcher B={batch} M={queries} N~U(1,{max_targets}) C=91"
        if not wanted(name):
            continue
        outputs, targets = to_device(*make_problem(batch, queries, 91, max_targets), dev)
        reference = detr_pipeline(outputs, targets)
        ours = matcher(outputs, targets).pairs()
        assert_same_totals(outputs, targets, reference, ours)
        if dev.type == "cpu":
            note = "same assignments asserted"
            for (rows, cols), (pred, tgt) in zip(reference, ours, strict=True):
                order = rows.argsort()
                assert pred.tolist() == rows[order].tolist()
                assert tgt.tolist() == cols[order].tolist()
        else:
            note = (
                "same total cost per image asserted (float64, rel 1e-9); baseline = DETR's "
                f"cost on {dev.type}, .cpu(), scipy per image"
            )

        baseline, mine = time_pair(
            lambda outputs=outputs, targets=targets: detr_pipeline(outputs, targets),
            lambda outputs=outputs, targets=targets: matcher(outputs, targets),
            repeats,
            sync=device_sync(dev),
        )
        results.append({"name": name, "baseline_s": baseline, "ours_s": mine, "note": note})
    return results


if __name__ == "__main__":
    bench_main(run, __doc__)
