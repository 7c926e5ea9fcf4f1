"""Measure the tracker against hand-checked ground truth (CLEAR-MOT: MOTA, MOTP, ID switches; IDF1).

    python -m tools.mot_eval eval   [--video V] [--gt tests/data/mot_gt_vtest.csv]   # the figures
    python -m tools.mot_eval draft  --video V --start 0 --frames 100 -o draft.csv    # GT draft
    python -m tools.mot_eval render --video V --gt G.csv --out-dir DIR               # GT sheets

Files are MOTChallenge CSV: frame (1-based), id, x, y, w, h, conf, class, visibility. How the
ground truth in tests/data was made and checked is written down in docs/tracking.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.tracking import Tracker, TrackerConfig, iou_matrix, linear_assignment
from pipeline.types import Detections

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = ROOT.parent / "shared" / "assets" / "videos" / "vtest.avi"
DEFAULT_GT = ROOT / "tests" / "data" / "mot_gt_vtest.csv"
DEFAULT_START = 50  # mot_gt_vtest.csv frame 1 is vtest.avi frame index 50
# The ground truth's boxes were drafted from the detector's when it letterboxed every frame (before
# it followed the cfg's letter_box, issue 13); `eval` feeds the tracker the same kind of boxes, so the
# figures measure tracking. Stretched, as the detector now runs yolov4-tiny: MOTA 0.757, 11 ID
# switches, 76 false positives of which 71 are one track on a rock (person, conf 0.45-0.61) -- see
# docs/tracking.md.
GT_LETTER_BOX = True

Boxes = dict[int, list[tuple[int, np.ndarray]]]  # frame -> [(id, xyxy)]


# --------------------------------------------------------------------------- files


def read_mot_csv(path: str | Path, *, ignore_regions: bool = False) -> Boxes:
    """frame -> [(id, xyxy)] from a MOTChallenge CSV (rows starting with '#' are comments).

    Rows whose 7th column (conf) is 0 are ignore regions (MOTChallenge's "do not consider"
    flag): left out, or the only ones returned with `ignore_regions=True`."""
    out: Boxes = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or row[0].lstrip().startswith("#"):
                continue
            frame, tid, x, y, w, h = int(row[0]), int(row[1]), *map(float, row[2:6])
            flag_ignore = len(row) > 6 and float(row[6]) == 0
            if flag_ignore == ignore_regions:
                out[frame].append((tid, np.array([x, y, x + w, y + h])))
    return dict(out)


def write_mot_csv(path: str | Path, boxes: Boxes, header: str = "") -> None:
    with open(path, "w", newline="") as f:
        for line in header.splitlines():
            f.write(f"# {line}\n")
        w = csv.writer(f)
        for frame in sorted(boxes):
            for tid, b in sorted(boxes[frame], key=lambda r: r[0]):
                w.writerow(
                    [frame, tid, f"{b[0]:.1f}", f"{b[1]:.1f}", f"{b[2] - b[0]:.1f}", f"{b[3] - b[1]:.1f}", 1, 1, 1]
                )


# --------------------------------------------------------------------------- metrics


@dataclass
class MotMetrics:
    """CLEAR-MOT figures (Bernardin & Stiefelhagen 2008) plus IDF1 (Ristani et al. 2016)."""

    frames: int
    gt: int  # ground-truth boxes
    matches: int
    fp: int
    fn: int
    id_switches: int
    mota: float
    motp_iou: float  # mean IoU of the matches
    idf1: float
    gt_ids: int
    hyp_ids: int

    def summary(self) -> str:
        return (
            f"MOTA {self.mota:.3f}  IDF1 {self.idf1:.3f}  ID switches {self.id_switches}  "
            f"FP {self.fp}  FN {self.fn}  GT {self.gt}  matches {self.matches}  "
            f"MOTP(IoU) {self.motp_iou:.3f}  GT ids {self.gt_ids}  tracker ids {self.hyp_ids}  "
            f"frames {self.frames}"
        )


def clear_mot(gt: Boxes, hyp: Boxes, iou_threshold: float = 0.5, ignore: Boxes | None = None) -> MotMetrics:
    """Score tracker output `hyp` against `gt` (both frame -> [(id, xyxy)]).

    A tracker box left unmatched that lies at least half inside one of the frame's `ignore`
    regions (people the annotation leaves out, e.g. hidden behind a sign) is not counted at all.

    Per frame, a ground-truth object keeps its previous tracker id while their IoU stays at
    or above `iou_threshold`; the others are matched by the Hungarian algorithm on IoU. An ID
    switch is a ground-truth object matched to another tracker id than at its last match.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
    frames = sorted(set(gt) | set(hyp))
    last: dict[int, int] = {}  # gt id -> hyp id at its last match
    matches = fp = fn = idsw = n_gt = 0
    iou_sum = 0.0
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    gt_len: dict[int, int] = defaultdict(int)
    hyp_len: dict[int, int] = defaultdict(int)
    for f in frames:
        g, h = gt.get(f, []), hyp.get(f, [])
        n_gt += len(g)
        for gid, _ in g:
            gt_len[gid] += 1
        for hid, _ in h:
            hyp_len[hid] += 1
        iou = iou_matrix(np.array([b for _, b in g]).reshape(-1, 4), np.array([b for _, b in h]).reshape(-1, 4))
        # IDF1 co-occurrence counts (any IoU >= threshold, identity-agnostic per frame)
        for i, j in zip(*np.nonzero(iou >= iou_threshold)):
            pair_counts[(g[i][0], h[j][0])] += 1
        pairs: list[tuple[int, int]] = []
        hyp_index = {hid: j for j, (hid, _) in enumerate(h)}
        used_g, used_h = set(), set()
        for i, (gid, _) in enumerate(g):
            j = hyp_index.get(last.get(gid, -(10**9)))
            if j is not None and j not in used_h and iou[i, j] >= iou_threshold:
                pairs.append((i, j))
                used_g.add(i)
                used_h.add(j)
        rest_g = [i for i in range(len(g)) if i not in used_g]
        rest_h = [j for j in range(len(h)) if j not in used_h]
        if rest_g and rest_h:
            sub = 1.0 - iou[np.ix_(rest_g, rest_h)]
            m, _, _ = linear_assignment(sub, max_cost=1.0 - iou_threshold)
            pairs += [(rest_g[a], rest_h[b]) for a, b in m]
        for i, j in pairs:
            gid, hid = g[i][0], h[j][0]
            if gid in last and last[gid] != hid:
                idsw += 1
            last[gid] = hid
            iou_sum += iou[i, j]
        matches += len(pairs)
        unmatched_h = [j for j in range(len(h)) if j not in {b for _, b in pairs}]
        if ignore and ignore.get(f) and unmatched_h:
            regions = np.array([b for _, b in ignore[f]]).reshape(-1, 4)
            for j in list(unmatched_h):
                if _inside_fraction(h[j][1], regions).max() >= 0.5:
                    unmatched_h.remove(j)
                    hyp_len[h[j][0]] -= 1
        fp += len(unmatched_h)
        fn += len(g) - len(pairs)
    # IDF1: one-to-one id mapping maximising identity true positives
    gids, hids = sorted(gt_len), sorted(hyp_len)
    idtp = 0
    if gids and hids:
        co = np.zeros((len(gids), len(hids)))
        gi, hi = {g: k for k, g in enumerate(gids)}, {h: k for k, h in enumerate(hids)}
        for (g_, h_), c in pair_counts.items():
            co[gi[g_], hi[h_]] = c
        m, _, _ = linear_assignment(-co, max_cost=0.0)
        idtp = int(sum(co[a, b] for a, b in m))
    n_hyp = sum(hyp_len.values())
    idf1 = 2 * idtp / (n_gt + n_hyp) if n_gt + n_hyp else 1.0
    mota = 1.0 - (fn + fp + idsw) / n_gt if n_gt else 0.0
    return MotMetrics(
        len(frames),
        n_gt,
        matches,
        fp,
        fn,
        idsw,
        mota,
        iou_sum / matches if matches else 0.0,
        idf1,
        len(gids),
        len(hids),
    )


def _inside_fraction(box: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Share of `box`'s area inside each region."""
    x1 = np.maximum(box[0], regions[:, 0])
    y1 = np.maximum(box[1], regions[:, 1])
    x2 = np.minimum(box[2], regions[:, 2])
    y2 = np.minimum(box[3], regions[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)


# --------------------------------------------------------------------------- running


def read_frames(video: str | Path, start: int, count: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise ValueError(f"video {str(video)!r} cannot be opened")
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    while len(frames) < count:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    if len(frames) < count:
        raise ValueError(f"video {str(video)!r} has only {start + len(frames)} frames, wanted {start + count}")
    return frames


def detect_frames(
    frames: list[np.ndarray],
    onnx: str | Path,
    labels: str | Path | None,
    conf_threshold: float = 0.1,
    letter_box: bool | str = "auto",
) -> list[Detections]:
    """Person detections of each frame from the project's detector (YOLOv4-tiny by default);
    `letter_box` is model.letter_box."""
    from pipeline.config import ModelConfig
    from pipeline.detector import Detector

    det = Detector.from_config(
        ModelConfig(onnx=str(onnx), conf_threshold=conf_threshold, classes=["person"], letter_box=letter_box),
        onnx,
        labels,
    )
    return [det.detect([img])[0][0] for img in frames]


def track_frames(dets: list[Detections], settings: TrackerConfig | None = None, fps: float = 10.0) -> Boxes:
    """Run a fresh Tracker over per-frame detections: frame (1-based) -> [(id, xyxy)]."""
    tracker = Tracker(settings or TrackerConfig())
    out: Boxes = {}
    for k, d in enumerate(dets):
        r = tracker.update(d, k / fps)
        out[k + 1] = [(int(t), r.xyxy[i].astype(np.float64)) for i, t in enumerate(r.tracker_id)]
    return out


def gt_range(gt: Boxes) -> tuple[int, int]:
    return min(gt), max(gt)


# --------------------------------------------------------------------------- ground-truth draft


def draft_ground_truth(
    dets: list[Detections], min_conf: float = 0.5, link_iou: float = 0.3, max_gap: int = 8, min_len: int = 5
) -> Boxes:
    """An offline first draft (to be corrected by hand): confident person boxes linked frame
    to frame by IoU (Hungarian), gaps of up to `max_gap` frames bridged by linear interpolation,
    tracklets shorter than `min_len` dropped. Uses future frames, unlike the online tracker."""
    tracks: list[dict] = []  # {"id", "boxes": {frame: xyxy}}
    next_id = 1
    for f, d in enumerate(dets, start=1):
        keep = d.confidence >= min_conf
        boxes = d.xyxy[keep].astype(np.float64)
        live = [t for t in tracks if f - max(t["boxes"]) <= max_gap + 1]
        last = np.array([t["boxes"][max(t["boxes"])] for t in live]).reshape(-1, 4)
        m, _, un_d = linear_assignment(1 - iou_matrix(last, boxes), max_cost=1 - link_iou)
        for a, b in m:
            live[a]["boxes"][f] = boxes[b]
        for b in un_d:
            tracks.append({"id": next_id, "boxes": {f: boxes[b]}})
            next_id += 1
    out: Boxes = defaultdict(list)
    for t in tracks:
        fs = sorted(t["boxes"])
        if len(fs) < min_len:
            continue
        for a, b in zip(fs, fs[1:]):
            for f in range(a, b):
                w = (f - a) / (b - a)
                out[f].append((t["id"], (1 - w) * t["boxes"][a] + w * t["boxes"][b]))
        out[fs[-1]].append((t["id"], t["boxes"][fs[-1]]))
    return dict(out)


def render_sheets(
    video: str | Path,
    start: int,
    boxes: Boxes,
    out_dir: str | Path,
    per_sheet: int = 12,
    cols: int = 3,
    crop: tuple[int, int, int, int] | None = None,
) -> list[Path]:
    """Draw ids on frames (start + frame - 1) into contact sheets for checking by eye."""
    import cv2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first, last = gt_range(boxes)
    frames = read_frames(video, start + first - 1, last - first + 1)
    paths = []
    rng = np.random.default_rng(7)
    colors = {
        tid: tuple(int(c) for c in rng.integers(60, 255, 3))
        for tid in sorted({t for v in boxes.values() for t, _ in v})
    }
    for s in range(0, len(frames), per_sheet):
        tiles = []
        for k in range(s, min(s + per_sheet, len(frames))):
            img = frames[k].copy()
            f = first + k
            for tid, b in boxes.get(f, []):
                x1, y1, x2, y2 = (int(round(v)) for v in b)
                cv2.rectangle(img, (x1, y1), (x2, y2), colors[tid], 2)
                cv2.putText(img, str(tid), (x1, max(12, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colors[tid], 2)
            if crop:
                x, y, w, h = crop
                img = img[y : y + h, x : x + w]
            cv2.putText(img, f"frame {f}", (5, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 255), 2)
            tiles.append(img)
        while len(tiles) % cols:
            tiles.append(np.zeros_like(tiles[0]))
        sheet = np.vstack([np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)])
        path = out_dir / f"sheet_{first + s:04d}.png"
        cv2.imwrite(str(path), sheet)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- command line


def _model_paths(a: argparse.Namespace) -> tuple[Path, Path]:
    models = ROOT / "data" / "models"
    return Path(a.onnx or models / "yolov4-tiny-416.onnx"), Path(a.labels or models / "coco.names")


def evaluate(
    video: str | Path,
    gt_path: str | Path,
    start: int,
    onnx: str | Path,
    labels: str | Path | None,
    settings: TrackerConfig | None = None,
    conf_threshold: float = 0.1,
    letter_box: bool | str = GT_LETTER_BOX,
) -> MotMetrics:
    """Detector + tracker on the frames the ground truth covers, scored with `clear_mot`; frames are
    fitted to the detector as the ground truth's draft was (`GT_LETTER_BOX`) unless `letter_box` says."""
    gt = read_mot_csv(gt_path)
    first, last = gt_range(gt)
    frames = read_frames(video, start + first - 1, last - first + 1)
    hyp = track_frames(detect_frames(frames, onnx, labels, conf_threshold, letter_box), settings)
    hyp = {f + first - 1: v for f, v in hyp.items()}
    return clear_mot(gt, hyp, ignore=read_mot_csv(gt_path, ignore_regions=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.mot_eval", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("eval", "draft", "render"):
        s = sub.add_parser(name)
        s.add_argument("--video", default=str(DEFAULT_VIDEO))
        s.add_argument("--start", type=int, default=DEFAULT_START, help="video frame index (0-based) of GT frame 1")
        s.add_argument("--onnx")
        s.add_argument("--labels")
        if name == "eval":
            s.add_argument("--gt", default=str(DEFAULT_GT))
            s.add_argument("--json", action="store_true", help="print the figures as JSON")
            s.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="FIELD=VALUE",
                help="tracker setting (TrackerConfig field), repeatable",
            )
        elif name == "draft":
            s.add_argument("--frames", type=int, default=100)
            s.add_argument("-o", "--output", required=True)
        else:
            s.add_argument("--gt", required=True)
            s.add_argument("--out-dir", required=True)
            s.add_argument("--crop", help="x,y,w,h of the region to show")
    a = p.parse_args(argv)
    onnx, labels = _model_paths(a)
    if a.cmd == "eval":
        settings = TrackerConfig(**dict(kv.split("=", 1) for kv in a.set))
        m = evaluate(a.video, a.gt, a.start, onnx, labels, settings)
        print(json.dumps(asdict(m), indent=2) if a.json else m.summary())
    elif a.cmd == "draft":
        frames = read_frames(a.video, a.start, a.frames)
        draft = draft_ground_truth(detect_frames(frames, onnx, labels, 0.3))
        write_mot_csv(a.output, draft, f"DRAFT from {Path(a.video).name} frames {a.start}..{a.start + a.frames - 1}")
        print(
            f"{sum(map(len, draft.values()))} boxes, {len({t for v in draft.values() for t, _ in v})} ids -> {a.output}"
        )
    else:
        crop = tuple(int(v) for v in a.crop.split(",")) if a.crop else None
        for path in render_sheets(a.video, a.start, read_mot_csv(a.gt), a.out_dir, crop=crop):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
