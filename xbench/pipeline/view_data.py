"""What ``xbench-view`` shows, as plain functions (pipeline layer; no Streamlit, no Keras).

The viewer reads job folders that the pipeline wrote, and nothing else but
the scored images themselves:

- every job file through :mod:`xbench.pipeline.results` (``metrics.json``,
  ``curves.npz``), ``heatmaps.npz`` (float16 maps of the scored images) and
  ``split.csv`` (``path, label, split``), all with ``allow_pickle=False``;
- the scored images, re-read from the data the job recorded
  (``metrics.json`` ``data.root`` + the ``split.csv`` path) with the
  pipeline's decoder, so the pixels are those the job scored (the decoded
  cache holds ``decode_image`` of the same file); lung / lesion / marker
  masks from the database layout beside them, where there are any.

A path that arrives from the page (a job folder) is resolved and refused
unless it lies inside one of the folders the viewer was started on
(:meth:`Workspace.check`). Nothing is written.

The perturbed image at step k is rebuilt with the engine's own pieces:
``regions.region_order`` / ``rank_maps`` on the stored map, the job's
perturbation object and ``image_rng(seed, image_id)``, then
``where(rank < k, g(x), x)`` (ROAD: its ``fill`` on the removed set), as
``perturbation.engine`` does. ``tests/test_view.py`` feeds the rebuilt images
to the job's model and gets the stored curve back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from xbench.core.errors import XbenchError

# REGION_ORDERS: the orders whose step images can be rebuilt (pixel orders need a control's own pixel order).
from xbench.perturbation.orders import ORDERS, REGION_ORDERS
from xbench.perturbation.perturbations import PERTURBATIONS, Perturbation, image_rng
from xbench.perturbation.regions import (
    rank_maps,
    region_order,
    region_scores,
)
from xbench.pipeline import results

#: Per-image figures a gallery can sort by: (column, label, worst first = ascending?).
SORT_KEYS = {
    "aopc": ("AOPC (MoRF)", True),
    "gain": ("AOPC gain over random", True),
    "lesion_mass": ("lesion mass", True),
    "lung_share": ("lung share", True),
    "abpc": ("ABPC", True),
    "image_id": ("image id", True),
}


class ViewerError(XbenchError):
    """A folder the viewer cannot read, or a path outside the folders it was given."""


# ---------------------------------------------------------------- where the viewer may read


class Workspace:
    """The folders the viewer was started on; every job folder it reads must lie inside one."""

    def __init__(self, folders: Sequence[str | Path]):
        if not folders:
            raise ViewerError("give at least one job or multirun folder")
        roots = []
        for f in folders:
            p = Path(f).expanduser()
            if not p.is_dir():
                raise ViewerError(f"'{f}' is not a folder; give job folders (outputs/runs/..., outputs/multirun/...)")
            roots.append(p.resolve())
        self.roots = roots

    def check(self, path: str | Path) -> Path:
        """``path`` resolved (symbolic links followed), or :class:`ViewerError` when it lies outside every root."""
        p = Path(path).expanduser().resolve()
        if not any(p == r or p.is_relative_to(r) for r in self.roots):
            raise ViewerError(f"refused: '{path}' lies outside the folders this viewer was started on")
        return p

    def jobs(self) -> list[Path]:
        """The job folders with a readable ``metrics.json`` under the roots (as the report finds them)."""
        from xbench.pipeline.report import find_job_dirs

        return [d for d in find_job_dirs(self.roots) if (d / results.METRICS_FILE).is_file() and self._inside(d)]

    def _inside(self, d: Path) -> bool:
        try:
            self.check(d)
            return True
        except ViewerError:
            return False


def job_label(job: "JobView", roots: Sequence[Path] = ()) -> str:
    """A short name for a job: its folder relative to a root, then backbone and explainer."""
    rel = job.path
    for r in roots:
        if job.path == r or job.path.is_relative_to(r):
            rel = job.path.relative_to(r.parent)
            break
    sc = job.scoring
    what = [job.metrics.model.backbone or "model file"]
    if sc is not None:
        what.append(sc.explainer)
    pert = (sc.perturbation.get("name") if sc is not None else None) or ""
    if pert:
        what.append(pert)
    return f"{rel} ({', '.join(what)}, seed {job.metrics.seed})"


# ---------------------------------------------------------------- one job


@dataclass
class JobView:
    """One job folder, read: results, stored maps and the split."""

    path: Path
    result: results.JobResult
    heatmaps: dict[str, np.ndarray]  # method -> (M, S, S) float16, row i = curves.image_ids[i]
    split: pd.DataFrame  # path, label, split; row = image id
    _row_of: dict[int, int] = field(default_factory=dict)

    @property
    def metrics(self) -> results.JobMetrics:
        return self.result.metrics

    @property
    def scoring(self) -> results.Scoring | None:
        return self.result.metrics.scoring

    @property
    def curves(self) -> results.Curves | None:
        return self.result.curves

    @property
    def class_names(self) -> list[str]:
        return list(self.metrics.data.class_names)

    def maps(self) -> list[str]:
        """The methods whose maps ``heatmaps.npz`` holds."""
        return [k for k in self.heatmaps if "/" not in k]

    @property
    def methods(self) -> list[str]:
        """The scored methods, explainer first, then the controls."""
        sc = self.scoring
        if sc is None:
            return []
        return [sc.explainer] + [m for m in sc.methods if m != sc.explainer]

    def row(self, image_id: int) -> int:
        """Row of ``image_id`` in curves.npz / heatmaps.npz; ViewerError when the image was not scored."""
        if not self._row_of and self.curves is not None:
            self._row_of.update({int(i): r for r, i in enumerate(self.curves.image_ids)})
        try:
            return self._row_of[int(image_id)]
        except KeyError:
            raise ViewerError(f"image {image_id} was not scored in {self.path}") from None


def read_heatmaps(folder: Path) -> dict[str, np.ndarray]:
    """``heatmaps.npz`` of a job ({} when the job kept none); never unpickles."""
    path = folder / results.HEATMAPS_FILE
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ViewerError(f"{path}: unreadable ({exc})") from None


def load_job(folder: str | Path) -> JobView:
    """Read one job folder (metrics, curves, maps, split); :class:`ViewerError` names what is missing."""
    folder = Path(folder)
    try:
        res = results.read_job(folder)
    except results.ResultsFormatError as exc:
        raise ViewerError(str(exc)) from None
    split_path = folder / results.SPLIT_FILE
    split = pd.read_csv(split_path, keep_default_na=False) if split_path.is_file() else pd.DataFrame(columns=["path", "label", "split"])
    return JobView(folder, res, read_heatmaps(folder), split)


# ---------------------------------------------------------------- the report's tables


def shown_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A report table as the Summary page shows it: a CI bound or p-value withheld for too few units (NaN in the
    CSV) reads "n too small" (:func:`xbench.pipeline.report.mark_too_few`); such a column is shown as text
    (numbers to 4 significant digits, NaN as "n/a"). A frame with nothing withheld is returned as it is."""
    from xbench.pipeline.report import mark_too_few

    out = mark_too_few(frame)
    if out is frame:
        return frame
    for c in out.columns:
        if out[c].dtype == object and (frame[c].dtype != object):
            out[c] = [v if isinstance(v, str) else ("n/a" if v is None or not np.isfinite(v) else f"{v:.4g}") for v in out[c]]
    return out


# ---------------------------------------------------------------- per-image records


def image_table(job: JobView, method: str | None = None) -> pd.DataFrame:
    """One row per scored image of ``method`` (default: the explainer): ids, classes and its per-image figures.

    Columns: image_id, row, label, predicted, target (class names), correct,
    aopc (MoRF AOPC of this image), aopc_random (the random control's),
    gain (aopc - aopc_random), abpc, and the localisation figures stored per
    image (lung_share, lesion_mass, ...). A reference map's rows are only the
    images with its ground truth.
    """
    from xbench.metrics.aopc import abpc_per_image, aopc_per_image

    c, sc = job.curves, job.scoring
    if c is None or sc is None:
        return pd.DataFrame(columns=["image_id", "row", "label", "predicted", "target", "correct"])
    method = method or sc.explainer
    names = job.class_names
    keep = c.rows(method)
    rows = np.flatnonzero(keep)
    ids = np.asarray(c.image_ids)[rows]
    frame = pd.DataFrame({
        "image_id": ids.astype(int), "row": rows,
        "label": [names[i] for i in np.asarray(c.labels)[rows]],
        "predicted": [names[i] for i in np.asarray(c.predictions)[rows]],
        "target": [names[i] for i in np.asarray(c.targets)[rows]],
        "correct": np.asarray(c.labels)[rows] == np.asarray(c.predictions)[rows],
    })
    morf = c.get(method, "morf")
    if morf is not None:
        frame["aopc"] = aopc_per_image(np.asarray(morf)[rows])
        rnd = c.get("random", "morf")
        if rnd is not None:
            frame["aopc_random"] = aopc_per_image(np.asarray(rnd)[rows])
            frame["gain"] = frame["aopc"] - frame["aopc_random"]
        lerf = c.get(method, "lerf")
        if lerf is not None:
            frame["abpc"] = abpc_per_image(np.asarray(morf)[rows], np.asarray(lerf)[rows])
    for (metric, m), v in sorted(c.per_image.items()):
        if m == method and metric != results.SCORED:
            frame[metric] = np.asarray(v, np.float64)[rows]
    return frame


def filter_sort(frame: pd.DataFrame, classes: Sequence[str] | None = None, correct: str = "all", sort: str = "aopc",
                descending: bool = False) -> pd.DataFrame:
    """The gallery's selection: true class in ``classes``, ``correct`` in all / correct / incorrect, sorted by ``sort``.

    Ascending (the default) puts the worst explanations first for every
    sort key (low AOPC, low gain over random, low lesion mass); NaN last.
    """
    f = frame
    if classes is not None:
        f = f[f["label"].isin(list(classes))]
    if correct == "correct":
        f = f[f["correct"]]
    elif correct == "incorrect":
        f = f[~f["correct"]]
    elif correct != "all":
        raise ValueError(f"correct must be all, correct or incorrect, got {correct!r}")
    if sort in f.columns:
        f = f.sort_values([sort, "image_id"], ascending=[not descending, True], na_position="last", kind="stable")
    return f


# ---------------------------------------------------------------- pixels


def image_path(job: JobView, image_id: int) -> Path:
    """The file the job decoded as ``image_id`` (split.csv row, under the recorded data root)."""
    if not 0 <= int(image_id) < len(job.split):
        raise ViewerError(f"image {image_id} is not in {job.path / results.SPLIT_FILE}")
    p = Path(str(job.split["path"].iloc[int(image_id)]))
    return p if p.is_absolute() else Path(job.metrics.data.root).expanduser() / p


def load_image(job: JobView, image_id: int) -> np.ndarray:
    """(S, S, 3) uint8: the scored image, decoded as the pipeline decodes it."""
    from xbench.data.decode import CorruptImage, decode_image

    path = image_path(job, image_id)
    if not path.is_file():
        raise ViewerError(f"image {image_id}: '{path}' is gone (the data recorded in metrics.json was moved or deleted)")
    try:
        return decode_image(path, int(job.metrics.data.image_size))
    except CorruptImage as exc:
        raise ViewerError(str(exc)) from None


def load_masks(job: JobView, image_id: int) -> dict[str, np.ndarray]:
    """{"lungs" | "lesions" | "markers": (S, S) bool} where the database layout has them (class/images/x.png -> class/<kind>/x.png)."""
    from xbench.data.decode import decode_mask

    path = image_path(job, image_id)
    label = job.metrics.label
    if label is not None:  # a label of a multi-label job: lung masks at <mask_root>/<path>, this label's lesions at <lesion_root>/<label>/<path>
        data, root = (job.metrics.config or {}).get("data") or {}, Path(job.metrics.data.root)
        rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        roots = (("lungs", Path(data.get("mask_root") or root / "masks")), ("lesions", Path(data.get("lesion_root") or root / "lesions") / label))
        candidates = [(kind, r.expanduser() / rel) for kind, r in roots]
    elif path.parent.name != "images":
        return {}
    else:
        candidates = [(kind, path.parent.parent / folder / path.name) for kind, folder in (("lungs", "masks"), ("lesions", "lesions"), ("markers", "markers"))]
    out = {}
    for kind, m in candidates:
        if m.is_file():
            try:
                out[kind] = np.asarray(decode_mask(m, int(job.metrics.data.image_size)), bool)
            except Exception:  # a damaged mask file: shown as absent, as the pipeline scores it
                continue
    return out


def perturbation_of(job: JobView) -> Perturbation:
    """The job's perturbation object, rebuilt from ``scoring.perturbation`` (its name and parameters)."""
    sc = job.scoring
    if sc is None:
        raise ViewerError(f"{job.path} was not scored")
    params = dict(sc.perturbation)
    name = params.pop("name", None)
    if name not in PERTURBATIONS:
        raise ViewerError(f"{job.path}: unknown perturbation {name!r}")
    return PERTURBATIONS[name](**params)


def steps_of(job: JobView, method: str, order: str) -> int:
    """K of the stored curves of (method, order)."""
    c = job.curves.get(method, order) if job.curves is not None else None
    if c is None:
        raise ViewerError(f"{job.path}: no {order} curves of {method}")
    return int(np.asarray(c).shape[1] - 1)


def rank_map(job: JobView, method: str, order: str, image_id: int) -> np.ndarray:
    """(S, S) int32: the step at which each pixel's region is perturbed, as the engine ranked it."""
    sc = job.scoring
    if order not in REGION_ORDERS:
        raise ViewerError(f"step images are rebuilt for the region orders {REGION_ORDERS}, not {order!r}")
    if method not in job.heatmaps:
        raise ViewerError(f"{job.path}: no stored map of {method} (score.save_heatmaps was off)")
    r = job.row(image_id)
    size = int(job.heatmaps[method].shape[1])
    key = results.region_scores_key(method)
    if key in job.heatmaps:  # the region sums the engine ranked: the exact order
        scores = np.asarray(job.heatmaps[key][r : r + 1], np.float64)
    else:  # a job written before they were stored: from the float16 map (near-ties may swap)
        scores = region_scores(np.asarray(job.heatmaps[method][r : r + 1], np.float32), sc.region_size)
    order_ = region_order(scores, order, seed=job.metrics.seed, image_ids=np.asarray([int(image_id)]))
    return rank_maps(order_, size, size, sc.region_size)[0]


def exact_order(job: JobView, method: str) -> bool:
    """True when the job stored ``method``'s region sums (step images are then exactly the scored ones)."""
    return results.region_scores_key(method) in job.heatmaps


def perturbed_image(job: JobView, method: str, order: str, image_id: int, k: int, image: np.ndarray | None = None) -> np.ndarray:
    """(S, S, 3) float32 in [0, 1]: x(k), the image with its k first regions (by ``method``'s ``order``) perturbed.

    The same pieces as ``perturbation.engine.perturbation_curves``: the
    job's perturbation, drawn from ``image_rng(seed, image_id)``, and
    ``where(rank < k, g(x), x)``; ROAD imputes the removed set with its
    ``fill`` (Keras is imported for that one).
    """
    from xbench.data.pixels import to_unit_float

    steps = steps_of(job, method, order)
    if not 0 <= int(k) <= steps:
        raise ViewerError(f"step must lie in [0, {steps}], got {k}")
    x = to_unit_float(load_image(job, image_id) if image is None else image)
    rank = rank_map(job, method, order, image_id)
    pert = perturbation_of(job)
    rng = image_rng(job.metrics.seed, int(image_id))
    removed = rank < int(k)
    if pert.mask_dependent:
        draws = pert.draws(x, rng)
        out = pert.fill(x[None], removed[None, ..., None], draws[None])
        return np.asarray(out, np.float32)[0]
    g = pert(x, rng)
    return np.where(removed[..., None], g, x).astype(np.float32)


# ---------------------------------------------------------------- pictures


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """(S, S, 3) uint8: the map (normalised to [0, 1] per image) blended over the image."""
    from matplotlib import colormaps

    x = np.asarray(image, np.float32)
    x = x / 255.0 if np.asarray(image).dtype == np.uint8 else x
    h = np.asarray(heat, np.float32)
    lo, hi = float(np.nanmin(h)), float(np.nanmax(h))
    h = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    colour = colormaps[cmap](h)[..., :3].astype(np.float32)
    out = (1 - alpha) * x + alpha * colour
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """(S, S) bool: the pixels of ``mask`` that touch a pixel outside it (4-neighbours)."""
    m = np.asarray(mask, bool)
    p = np.pad(m, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


#: Outline colours of the masks (RGB).
MASK_COLOURS = {"lungs": (0, 255, 255), "lesions": (255, 0, 255), "markers": (255, 255, 0)}


def draw_outlines(picture: np.ndarray, masks: dict[str, np.ndarray], which: Sequence[str]) -> np.ndarray:
    """``picture`` (uint8 RGB) with the outlines of the chosen masks drawn in :data:`MASK_COLOURS`."""
    out = np.array(picture, copy=True)
    for kind in which:
        if kind in masks:
            out[outline(masks[kind])] = MASK_COLOURS[kind]
    return out


def upscale(picture: np.ndarray, width: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement to about ``width`` px (small phantoms stay sharp instead of blurred by the browser)."""
    f = max(1, int(math.ceil(width / max(1, picture.shape[1]))))
    return np.repeat(np.repeat(picture, f, axis=0), f, axis=1) if f > 1 else picture


def to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(x, np.float32), 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------- one image's figures


def curve_table(job: JobView, image_id: int, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per step k: f(x(k))[target] of every stored (method, order) curve of this image (columns "method/order")."""
    r = job.row(image_id)
    cols = {}
    for (m, o), c in job.curves.curves.items():
        if ORDERS[o].pixel or (methods is not None and m not in methods):
            continue
        if not job.curves.rows(m)[r]:
            continue
        cols[results.curve_key(m, o)] = np.asarray(c)[r].astype(np.float64)
    n = max((len(v) for v in cols.values()), default=0)
    frame = pd.DataFrame({"k": np.arange(n)})
    for k, v in cols.items():
        frame[k] = v
    return frame


def image_figures(job: JobView, image_id: int, method: str) -> dict[str, float]:
    """This image's per-image figures for ``method``: AOPC per stored region order, ABPC, gain over random, localisation."""
    from xbench.metrics.aopc import aopc_per_image

    r = job.row(image_id)
    out = {}
    for o in REGION_ORDERS:
        c = job.curves.get(method, o)
        if c is not None:
            out[f"aopc_{o}"] = float(aopc_per_image(np.asarray(c)[r : r + 1])[0])
    rnd = job.curves.get("random", "morf")
    if rnd is not None and "aopc_morf" in out:
        out["aopc_random_control"] = float(aopc_per_image(np.asarray(rnd)[r : r + 1])[0])
        out["gain_over_random"] = out["aopc_morf"] - out["aopc_random_control"]
    if "aopc_morf" in out and "aopc_lerf" in out:
        out["abpc"] = out["aopc_morf"] - out["aopc_lerf"]  # = abpc_per_image(morf, lerf): the k = 0 terms cancel
    for (metric, m), v in sorted(job.curves.per_image.items()):
        if m == method and metric != results.SCORED:
            out[metric] = float(np.asarray(v)[r])
    return out
