"""The results format: what a job writes and the report reads, defined once.

A job folder holds ``metrics.json`` (one :class:`JobMetrics`) and
``curves.npz`` (one :class:`Curves`). The job builds these objects and
writes them with :func:`write_metrics` / :func:`write_curves`; the report,
the plots and the tests read them back with :func:`read_job`. Every field is
declared here, once, with its meaning; a field that is missing or of the
wrong kind in a file fails loudly (:class:`ResultsFormatError` naming the
field) instead of turning into a silent NaN column.

``summary.csv`` columns are declared here too (:data:`SUMMARY_COLUMNS`),
each as a function of a job's results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from xbench.core.errors import XbenchError
from xbench.core.names import path_safe
from xbench.metrics.registry import FAMILIES, METRICS, floored
from xbench.perturbation.orders import ORDERS, PIXEL_ORDERS

#: 2: typed sections, estimates carry their resampling unit, localisation per method.
FORMAT_VERSION = 3  # 3: reference maps' rows marked (Curves.rows); a map that shows nothing scores as a miss
# Fields added since without a version bump, all optional with a default, so files written before
# them still load: the deletion / insertion figures (OrderScores.auc, .auc_per_class, .fractions;
# Scoring.pixel_steps, .pixels_per_step, .insertion_blur, .auc_gains_over_random); the faithfulness
# metrics (MethodScores.faithfulness, Scoring.faithfulness_gains_over_random), which also hold the complexity
# metrics of score.metrics (sparseness, complexity, effective_complexity) under their names.

# ---------------------------------------------------------------- file names
# Every file a job or a report writes, named once: writers, readers, the viewer and tracking use these names.

#: A job folder's results: the figures and settings (the job's record), the perturbation curves, the
#: scored images' heatmaps (``score.save_heatmaps``), the split of every image, the test predictions
#: and the training history (absent for a model file, which trains nothing).
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.npz"
HEATMAPS_FILE = "heatmaps.npz"
SPLIT_FILE = "split.csv"
PREDICTIONS_FILE = "test_predictions.npz"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
#: A multi-label job's per-label measurements: ``<run>/labels/<label_folder(label)>/`` (metrics.json, curves.npz, heatmaps, plots).
LABELS_DIR = "labels"
#: The job's log: Hydra names it after the task's module (``xbench/apps/run.py``), so it is named here, not written.
RUN_LOG = "run.log"
#: The composed config Hydra saves in each job folder (config.yaml, overrides.yaml).
HYDRA_DIR = ".hydra"
#: The job's figures (``plots=true``), under ``<job>/plots/``.
PLOTS_DIR = "plots"
CONFUSION_PLOT = "confusion_matrix.png"
TRAINING_PLOT = "training_curves.png"
GALLERY_PLOT = "gradcam_gallery.png"
OVERLAY_PLOT = "overlay.png"
LAST_LAYERS_PLOT = "last_layers.png"
#: Figures a job (``<name>.png``) and a report (``<name>.<format>``) both draw.
MEAN_CURVES, AOPC_BY_STEP = "mean_curves", "aopc_by_step"
MEAN_CURVES_PLOT = f"{MEAN_CURVES}.png"
AOPC_BY_STEP_PLOT = f"{AOPC_BY_STEP}.png"
PIXEL_CURVES_PLOT = "deletion_insertion.png"


def label_folder(label: str) -> str:
    """The folder name of a label's measurement (letters, digits, ``-_.`` kept; anything else ``_``; never ``.`` or ``..``).

    Two labels with the same folder name are refused before a job starts
    (:func:`xbench.pipeline.checks.check_multilabel`).
    """
    return path_safe(label)


def randomisation_plot(mode: str) -> str:
    """The model-randomisation check's figure for ``mode`` (cascading, independent)."""
    return f"randomisation_{mode}.png"


#: What ``xbench-report`` writes into its output folder; its figures are ``<name>.<format>``.
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_TEX = "summary.tex"
PAIRWISE_CSV = "pairwise.csv"
RELIABILITY_CSV = "reliability.csv"
#: Every explainer and control of the jobs, one row per model, seed and method, ranked (report.methods_table).
METHODS_CSV = "methods.csv"
AOPC_VS_RECALL = "aopc_vs_recall"
#: One row per model, seed, method and figure across the metric families (xbench.pipeline.scorecard), and its plot.
SCORECARD_CSV = "scorecard.csv"
SCORECARD_PLOT = "scorecard"


class ResultsFormatError(XbenchError):
    """A results file lacks a field or holds a value of the wrong kind."""


# ---------------------------------------------------------------- metrics.json


@dataclass
class Estimate:
    """A mean with its percentile-bootstrap 95% CI.

    ``unit`` says what the bootstrap resampled ("images": the scored images of
    one job; "seeds": jobs that differ by seed only); ``n`` how many units.
    ``ci95`` is [nan, nan] below the minimum number of units (:data:`xbench.metrics.bootstrap.MIN_UNITS` images,
    ``MIN_SEEDS`` seeds: fewer cannot support a CI; docs/tools/bootstrap_coverage.py).
    """

    mean: float
    ci95: list[float]
    n: int
    unit: str = "images"


@dataclass
class OrderScores:
    """One (method, order) set of curves, summarised.

    Region orders (morf, lerf, random) are summarised by AOPC; the pixel
    orders deletion and insertion (Petsiuk et al. 2018) by the area under the
    curve over the fraction of pixels changed (``auc``; their AOPC fields are
    None / empty: insertion's x(0) is the blurred image, so "drop from x(0)"
    would not mean what AOPC means).
    """

    aopc: Estimate | None  # AOPC over the scored images (DESIGN.md: 1/(L+1) sum_k f(x0) - f(xk)); None for pixel orders
    aopc_by_step: list[float]  # AOPC(K) for K = 1..steps (empty for pixel orders)
    aopc_per_class: dict[str, float | None]  # mean per-image AOPC per TRUE class of the image (None: no image; empty for pixel orders)
    mean_curve: list[float]  # mean f(x(k)) over images, k = 0..steps
    # Pixel orders only: trapezoid AUC of f(x(k))[target] over ``fractions`` (deletion: lower is
    # better; insertion: higher is better), its per-class mean, and the curve's x axis
    # (fraction of pixels changed at k = 0..steps: min(k * pixels_per_step, H*W) / (H*W)).
    auc: Estimate | None = None
    auc_per_class: dict[str, float | None] | None = None
    fractions: list[float] | None = None


@dataclass
class RandomisationVerdict:
    """A randomisation metric's verdict (:func:`xbench.metrics.randomisation.verdicts`): its images against its baseline."""

    verdict: str  # passes | fails | inconclusive
    test: str  # "pairs bootstrap" (random_logit, smprt: the random-pair baseline) | "sign test" (emprt: against 0)
    better: str  # "below" | "above": which side of the baseline a passing map's figure lies on
    baseline: float  # the baseline's value (mean over the random pairs, or the constant)
    difference: float  # figure - baseline: the mean (pairs bootstrap) or the median (sign test); NaN when not tested
    ci95: list[float]  # its 95% CI (pairs: images bootstrapped; sign test: order statistics of the median); NaN below the minimum
    p: float  # one-sided p of "not better than the baseline"; NaN when not tested
    p_holm: float  # Holm-adjusted over the method's randomisation metrics
    n: int  # usable images


@dataclass
class MethodScores:
    """Everything scored for one explainer or control on one job's scored images."""

    orders: dict[str, OrderScores]  # "morf" / "lerf" / "random" -> scores
    n_constant_maps: int  # maps with one value everywhere (scored row-major; say nothing)
    n_nonfinite_maps: int  # maps that held NaN/inf (sanitised, then scored)
    seconds: dict[str, float]  # explain_s, curves_<order>_s
    # Reference maps (oracle, shortcut_marker) are scored on the images that
    # have their ground truth only: how many those were (None: all scored images).
    n_images: int | None = None
    abpc: Estimate | None = None  # area between LeRF and MoRF, when both were scored
    # Where the map's positive mass falls, per image then averaged (images
    # without the needed mask left out; ``n`` says how many remain):
    # lung_share, lesion_mass, pointing_hit, lesion_auroc, lesion_iou, marker_mass.
    localisation: dict[str, Estimate] = field(default_factory=dict)
    # An attribution method's axiom checked per image, logit space: |sum of the
    # attributions - what they must add up to| (Integrated Gradients and
    # DeepLIFT: y_c(x) - y_c(baseline), completeness / summation-to-delta;
    # LRP: y_c(x), conservation). None for methods without such an axiom.
    completeness_error: Estimate | None = None
    # The metrics of score.metrics by name: faithfulness (xbench.metrics.faithfulness) and complexity
    # (xbench.metrics.complexity; each metric's paper there, its direction in FAITHFULNESS_HIGHER_IS_BETTER),
    # mean over the images where defined (``n``), with CIs.
    faithfulness: dict[str, Estimate] = field(default_factory=dict)
    # The robustness metrics of score.metrics: how many noise draws (all images together) changed the class the
    # model predicts (Quantus reports them too; per image in curves.npz under changed_draws_key(metric)).
    changed_draws: dict[str, int] = field(default_factory=dict)
    # The randomisation metrics of score.metrics (random_logit, emprt, smprt): each one's verdict against its
    # baseline, Holm-corrected over this method's randomisation metrics (xbench.metrics.randomisation.verdicts).
    randomisation_verdicts: dict[str, RandomisationVerdict] = field(default_factory=dict)


@dataclass
class Scoring:
    """How the heatmaps were scored, and the scores of every method."""

    explainer: str  # the configured explainer's name; the other methods are controls
    n_test: int
    n_correct: int
    n_scored: int
    subset: str  # "correct" (the paper) or "all"
    target: str  # "predicted" or "true": whose probability the curves follow
    region_size: int
    grid: list[int]  # [rows, cols] of the region grid
    n_regions: int
    steps: int
    perturbation: dict[str, Any]  # the perturbation's name and parameters
    orders: list[str]
    methods: dict[str, MethodScores]
    masks: bool  # lung masks were available
    chunks: dict[str, int]  # images_per_chunk, computed, reused
    seconds: float
    aopc_gain_over_random: Estimate | None = None  # explainer MoRF AOPC - random's, paired by image
    heatmap_cache_hit: bool = False
    # Every other method's MoRF AOPC - random's, paired by image, on the images
    # the method is scored on (reference maps: those with the lesion / marker).
    gains_over_random: dict[str, Estimate] = field(default_factory=dict)
    dtype: str = "float32"  # precision of the engine's forward passes (score.dtype); maps always float32
    # {order: "full" | "incremental"}: how each order's forward passes ran (score.method; the curves are the same).
    engine: dict[str, str] = field(default_factory=dict)
    # The pixel orders (deletion / insertion), when scored: their real number of steps K_eff,
    # pixels changed per step, and insertion's blur sigma in px (None when not scored).
    pixel_steps: int | None = None
    pixels_per_step: int | None = None
    insertion_blur: float | None = None
    # {"deletion" | "insertion": {method: AUC gain over the random control, paired by image}},
    # signed so that POSITIVE = BETTER than random: deletion random - method (a faster fall
    # is a lower AUC), insertion method - random (a faster rise is a higher AUC).
    auc_gains_over_random: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    # {metric: {method: gain over the random control, paired by image}} for the metrics of score.metrics,
    # signed so that POSITIVE = BETTER than random (method - random, or random - method for a metric
    # where lower is better: selectivity, average_drop, complexity, effective_complexity).
    faithfulness_gains_over_random: dict[str, dict[str, Estimate]] = field(default_factory=dict)


@dataclass
class SanityStepScores:
    """One randomised model of the check: how like the trained model's maps its maps still are."""

    name: str  # the group randomised at this step ("logits", "head", a backbone block)
    depth: int  # 1 (logits) .. number of groups
    layers: list[str]  # every layer re-initialised in this model
    similarity: dict[str, Estimate]  # spearman_abs / spearman_signed / ssim to the original map, mean over images
    below_baseline: dict[str, Estimate]  # similarity - random-pair baseline (images bootstrapped, pairs re-formed)
    p_below: dict[str, float]  # one-sided p of "not below the baseline", Holm-adjusted over this check's steps
    n_constant_maps: int  # this model's maps with one value everywhere (similarity 0 to a non-constant original)
    n_nonfinite_maps: int  # this model's maps that held NaN/inf (left out at this step)
    # The configured explainer only (sanity.aopc): MoRF AOPC of this model's
    # maps, curves read on this randomised model and on the trained model,
    # and the random control's on this randomised model (its own floor).
    aopc_on_randomised: Estimate | None = None
    aopc_on_trained: Estimate | None = None
    random_aopc_on_randomised: Estimate | None = None


@dataclass
class SanityScores:
    """The model-parameter randomisation check of one map (:func:`xbench.pipeline.sanity.randomisation_check`)."""

    explainer: str
    mode: str  # "cascading" | "independent"
    n_images: int
    n_left_out: int  # images whose trained-model map is constant or not finite (rank nothing): in no step and no pair
    n_pairs: int  # distinct image pairs of the baseline
    baseline: dict[str, Estimate]  # the same measures between the trained model's maps of random image pairs (CI: images bootstrapped)
    steps: list[SanityStepScores]
    verdicts: dict[str, str]  # measure -> passes | fails | inconclusive (xbench.pipeline.sanity.verdict)
    verdict: str  # the verdict on spearman_abs, the explainer's
    first_below_baseline: dict[str, int | None]  # measure -> depth of the first step below the baseline (Holm p < 0.05)


@dataclass
class Sanity:
    """``metrics.json`` ``sanity``: the randomisation check of the configured explainer and of ``sanity.explainers``."""

    n_images: int
    image_ids: list[int]  # the checked images (correctly classified test images, class-stratified)
    checks: list[SanityScores]
    random_aopc: Estimate | None  # MoRF AOPC of the random control on these images and the trained model: the floor of aopc_on_trained
    seconds: float


@dataclass
class DataSummary:
    source: str
    root: str
    image_size: int
    class_names: list[str]
    disease_classes: list[str]
    n_images: int
    split_counts: dict[str, int]
    class_counts: dict[str, int]
    n_skipped: int
    skipped: list[dict[str, str]]  # {"path", "reason"} of undecodable files
    masks: bool
    n_masks: int
    notes: list[str]


@dataclass
class ModelSummary:
    backbone: str | None
    gradcam_layer: str | None
    params_total: int
    params_head: int
    file: str | None = None  # the model file scored (model=file; nothing trained), else None
    file_sha256: str | None = None


@dataclass
class TrainingSummary:
    settings: dict[str, Any]
    best_epoch: int
    best_selection_score: float
    epochs_run: int
    used_feature_cache: bool
    model_cache: dict[str, Any]  # {"key", "hit"}


@dataclass
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class TestReport:
    """The test split's classification report (:func:`xbench.metrics.classification.classification_report`)."""

    class_names: list[str]
    n: int
    per_class: dict[str, ClassScores]
    accuracy: float
    macro_avg: ClassScores
    weighted_avg: ClassScores
    confusion_matrix: list[list[int]]


@dataclass
class MultilabelTestReport(TestReport):
    """A multi-label model's test report (:func:`xbench.metrics.classification.multilabel_report`), in :class:`TestReport`'s shape.

    ``class_names`` are the labels; ``per_class`` and the averages are per
    label at ``threshold`` (``support``: the label's positive test images);
    ``accuracy`` is the mean over labels of the per-label accuracy (1 - Hamming
    loss); ``confusion_matrix`` has one row [tn, fp, fn, tp] per label.
    """

    threshold: float = 0.5
    auroc: dict[str, float] = dataclasses.field(default_factory=dict)  # per label; NaN where the test images are all one way
    macro_auroc: float = float("nan")
    exact_match: float = float("nan")  # fraction of test images with every label right


@dataclass
class Targets:
    """What a multi-label job explained: the (image, label) targets (``score.labels``), and how many per label."""

    rule: str  # "positive" (ground-truth positive labels), "predicted" (probability >= threshold), or "listed" (score.labels=[...], positive images)
    threshold: float
    labels: list[str]  # the labels scored, in output order
    n_targets: dict[str, int]  # per label, the test images that are its targets (before score.subset and score.max_images)


@dataclass
class JobMetrics:
    """``metrics.json``: one job's results. ``scoring`` is None until scoring finishes."""

    xbench_version: str
    keras_backend: str
    keras_version: str
    platform: str
    seed: int
    data: DataSummary
    model: ModelSummary
    training: TrainingSummary | None  # None: the model came from a file (model=file), xbench trained nothing
    test: TestReport | MultilabelTestReport
    timings: dict[str, float]
    config: dict[str, Any] | None = None  # the resolved config (None when run from Python)
    scoring: Scoring | None = None
    sanity: Sanity | None = None  # the randomisation check (sanity.enabled)
    plots: list[str] | None = None
    format_version: int = FORMAT_VERSION
    # Multi-label models (xbench.pipeline.multilabel). The job's own metrics.json has ``targets`` (and no scoring); each scored
    # label is a measurement of its own in labels/<label>/ with ``label`` set, its ``test`` that label's (absent / present) report.
    label: str | None = None
    targets: Targets | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: Mapping) -> "JobMetrics":
        version = obj.get("format_version") if isinstance(obj, Mapping) else None
        if version != FORMAT_VERSION:
            raise ResultsFormatError(f"format_version is {version!r}, this xbench reads {FORMAT_VERSION}; run the job again with this version")
        return decode(cls, obj)


def decode(kind, value, path: str = ""):
    """Build ``kind`` (a dataclass or a typing form of them) from JSON data, checking every field.

    Raises :class:`ResultsFormatError` naming the first missing or ill-typed field.
    """
    where = path or "(top)"
    if isinstance(kind, str):
        raise TypeError(f"unresolved type {kind!r} at {where}")
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ResultsFormatError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(kind)
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(kind)})
        if unknown:
            raise ResultsFormatError(f"unknown field '{path + '.' if path else ''}{unknown[0]}' (a misspelling, or a file from another xbench version)")
        out = {}
        for f in dataclasses.fields(kind):
            sub = f"{path}.{f.name}" if path else f.name
            if f.name in value:
                out[f.name] = decode(hints[f.name], value[f.name], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ResultsFormatError(f"missing field '{sub}'")
        return kind(**out)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return decode(a, value, path)
            except ResultsFormatError as exc:
                errors.append(str(exc))
        raise ResultsFormatError(errors[0] if errors else f"{where}: unexpected None")
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ResultsFormatError(f"{where}: expected an object, got {type(value).__name__}")
        _, vt = typing.get_args(kind) or (str, Any)
        return {k: decode(vt, v, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ResultsFormatError(f"{where}: expected a list, got {type(value).__name__}")
        (it,) = typing.get_args(kind) or (Any,)
        return [decode(it, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind is Any:
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ResultsFormatError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ResultsFormatError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind in (str, bool):
        if not isinstance(value, kind):
            raise ResultsFormatError(f"{where}: expected {kind.__name__}, got {value!r}")
        return value
    raise TypeError(f"no decoder for {kind!r} at {where}")


# ---------------------------------------------------------------- curves.npz


def region_scores_key(method: str) -> str:
    """Name of a method's (M, L) float64 region relevance in ``heatmaps.npz``.

    ``heatmaps.npz`` holds, per scored method, ``<method>``: the (M, S, S)
    float16 maps (to look at), and ``<method>/regions``: the region sums of
    the float32 maps the engine ranked (``regions.region_scores``, regions in
    row-major order), so MoRF / LeRF orders can be rebuilt exactly (float16
    rounding can swap regions of nearly equal relevance). Row i = curves row i.
    """
    return f"{method}/regions"


def curve_key(method: str, order: str) -> str:
    """Name of a (method, order) curve array in ``curves.npz``."""
    return f"{method}/{order}"


def changed_draws_key(metric: str) -> str:
    """The per-image "metric" of a robustness metric's noise draws that changed the predicted class (curves.npz: ``<key>@<method>``)."""
    return f"{metric}.changed_draws"


def per_image_key(metric: str, method: str) -> str:
    """Name of a per-image metric array (e.g. lesion_mass of gradcam) in ``curves.npz``."""
    return f"{metric}@{method}"


#: The per-image "metric" that marks (1/0) the rows a reference map is scored on.
SCORED = "scored"


@dataclass
class Curves:
    """``curves.npz``: the scored images and their curves, row i = scored image i.

    Attributes:
        image_ids: (M,) int64 rows of the decoded split (stable image ids).
        labels, predictions, targets: (M,) int64 true class, predicted class,
            and the class whose probability the curves follow.
        curves: {(method, order): (M, steps + 1) float32 f(x(k))[target]}.
        per_image: {(metric, method): (M,) float32}, NaN where undefined
            (lung_share, lesion_mass, ...). The metric ``SCORED`` (1/0) marks
            the rows a reference map is scored on (the images with its ground
            truth); read it through :meth:`rows` and :meth:`scored`.
    """

    image_ids: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    targets: np.ndarray
    curves: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    per_image: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    _INDEX = ("image_ids", "labels", "predictions", "targets")

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {k: np.asarray(getattr(self, k), np.int64) for k in self._INDEX}
        out.update({curve_key(m, o): np.asarray(c, np.float32) for (m, o), c in self.curves.items()})
        out.update({per_image_key(k, m): np.asarray(v, np.float32) for (k, m), v in self.per_image.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "Curves":
        missing = [k for k in cls._INDEX if k not in arrays]
        if missing:
            raise ResultsFormatError(f"curves file lacks '{missing[0]}'")
        out = cls(*(np.asarray(arrays[k]) for k in cls._INDEX))
        for name, a in arrays.items():
            if "/" in name:
                m, o = name.split("/", 1)
                out.curves[(m, o)] = a
            elif "@" in name:
                k, m = name.split("@", 1)
                out.per_image[(k, m)] = a
        return out

    def get(self, method: str, order: str) -> np.ndarray | None:
        """All M rows of one curve set (every scored image, whether or not the method counts it); see :meth:`scored`."""
        return self.curves.get((method, order))

    def rows(self, method: str) -> np.ndarray:
        """(M,) bool: the images ``method``'s figures count (a reference map: those with its ground truth; any other method: all)."""
        r = self.per_image.get((SCORED, method))
        return np.ones(len(self.image_ids), bool) if r is None else np.asarray(r) > 0

    def scored(self, method: str, order: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(image ids, curves) of the rows ``method`` is scored on, or None without curves: what every figure of it reads."""
        c = self.get(method, order)
        if c is None:
            return None
        keep = self.rows(method)
        return np.asarray(self.image_ids)[keep], np.asarray(c)[keep]


# ---------------------------------------------------------------- reading and writing


def write_metrics(run_dir: str | Path, metrics: JobMetrics) -> Path:
    from xbench.core import io

    return io.write_json(Path(run_dir) / METRICS_FILE, metrics.to_dict())


def write_curves(run_dir: str | Path, curves: Curves) -> Path:
    from xbench.core import io

    return io.write_npz(Path(run_dir) / CURVES_FILE, curves.to_arrays())


def read_metrics(run_dir: str | Path) -> JobMetrics:
    """The job's metrics; :class:`ResultsFormatError` names the file and the first bad field."""
    path = Path(run_dir) / METRICS_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsFormatError(f"{path}: unreadable ({exc})") from None
    try:
        return JobMetrics.from_dict(raw)
    except ResultsFormatError as exc:
        raise ResultsFormatError(f"{path}: {exc}") from None


def read_curves(run_dir: str | Path) -> Curves:
    path = Path(run_dir) / CURVES_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            return Curves.from_arrays({k: z[k] for k in z.files})
    except (OSError, ValueError) as exc:
        raise ResultsFormatError(f"{path}: unreadable ({exc})") from None


@dataclass
class JobResult:
    """A finished job as the report sees it."""

    path: Path
    metrics: JobMetrics
    curves: Curves | None = None

    @property
    def scoring(self) -> Scoring | None:
        return self.metrics.scoring

    def explainer_scores(self) -> MethodScores | None:
        sc = self.scoring
        return None if sc is None else sc.methods[sc.explainer]


def test_scores(job: JobResult) -> ClassScores:
    """The test figures the tables quote for a job: the macro average over its classes, or, for one label of a multi-label model,
    that label's own (the "present" class of its view: a macro average would mix in the recall of "absent")."""
    t = job.metrics.test
    return t.per_class[job.metrics.label] if job.metrics.label is not None else t.macro_avg


def read_job(run_dir: str | Path) -> JobResult:
    """metrics.json and, when the job was scored, curves.npz of one job folder."""
    metrics = read_metrics(run_dir)
    curves = read_curves(run_dir) if metrics.scoring is not None else None
    return JobResult(Path(run_dir), metrics, curves)


# ---------------------------------------------------------------- summary.csv

_NAN = float("nan")


def _explainer_estimate(j: JobResult, pick: Callable[[MethodScores], Estimate | None]) -> Estimate | None:
    m = j.explainer_scores()
    return None if m is None else pick(m)


def _morf(m: MethodScores) -> Estimate | None:
    o = m.orders.get("morf")
    return None if o is None else o.aopc


def _mean(e: Estimate | None) -> float:
    return _NAN if e is None else e.mean


def _low(e: Estimate | None) -> float:
    return _NAN if e is None else e.ci95[0]


def _high(e: Estimate | None) -> float:
    return _NAN if e is None else e.ci95[1]


def _loc(metric: str, method: str | None = None):
    def pick(j: JobResult) -> Estimate | None:
        sc = j.scoring
        if sc is None:
            return None
        m = sc.methods.get(method or sc.explainer)
        return None if m is None else m.localisation.get(metric)

    return pick


@dataclass(frozen=True)
class Column:
    name: str
    description: str
    get: Callable[[JobResult], Any]


def _perturbation_label(p: Mapping | None) -> str:
    if not p:
        return ""
    params = ",".join(f"{k}={v}" for k, v in p.items() if k != "name")
    return f"{p.get('name', '?')}({params})"


def _gain(j: JobResult) -> Estimate | None:
    return None if j.scoring is None else j.scoring.aopc_gain_over_random


def _method_morf(method: str):
    def pick(j: JobResult) -> Estimate | None:
        sc = j.scoring
        m = None if sc is None else sc.methods.get(method)
        return None if m is None else _morf(m)

    return pick


SUMMARY_COLUMNS: tuple[Column, ...] = (
    Column("job", "the job folder", lambda j: str(j.path)),
    Column("model", "backbone", lambda j: j.metrics.model.backbone),
    Column("seed", "the run seed", lambda j: j.metrics.seed),
    Column("explainer", "the scored explainer", lambda j: j.scoring.explainer if j.scoring else ""),
    Column("perturbation", "perturbation and its parameters", lambda j: _perturbation_label(j.scoring.perturbation) if j.scoring else ""),
    Column("subset", "which test images were scored", lambda j: j.scoring.subset if j.scoring else ""),
    Column("region_size", "region side in pixels", lambda j: j.scoring.region_size if j.scoring else _NAN),
    Column("test_accuracy", "test accuracy", lambda j: j.metrics.test.accuracy),
    Column("test_macro_recall", "test recall, macro average over classes (a label of a multi-label model: that label's recall)",
           lambda j: test_scores(j).recall),
    Column("test_macro_f1", "test F1, macro average (a label of a multi-label model: that label's F1)", lambda j: test_scores(j).f1),
    Column("aopc", "explainer MoRF AOPC, mean over scored images", lambda j: _mean(_explainer_estimate(j, _morf))),
    Column("aopc_ci_low", "its 95% bootstrap CI over images, low", lambda j: _low(_explainer_estimate(j, _morf))),
    Column("aopc_ci_high", "... high", lambda j: _high(_explainer_estimate(j, _morf))),
    Column("abpc", "explainer ABPC (LeRF - MoRF area)", lambda j: _mean(_explainer_estimate(j, lambda m: m.abpc))),
    Column("aopc_random", "the random control's MoRF AOPC over all scored images (the gain is paired over the explainer's own)", lambda j: _mean(_method_morf("random")(j))),
    Column("aopc_gain_over_random", "explainer - random MoRF AOPC, paired by image", lambda j: _mean(_gain(j))),
    Column("gain_ci_low", "its 95% bootstrap CI over images, low", lambda j: _low(_gain(j))),
    Column("gain_ci_high", "... high", lambda j: _high(_gain(j))),
    Column("lung_share", "share of the explainer's positive mass inside the lungs", lambda j: _mean(_loc("lung_share")(j))),
)
SUMMARY_COLUMNS += tuple(
    Column(name, desc, (lambda m: lambda j: _mean(_loc(m)(j)))(name))
    for name, desc in (
        ("lesion_mass", "share of the explainer's positive mass inside the lesion (images with a lesion)"),
        ("pointing_hit", "share of images whose map maximum lies on the lesion (pointing game)"),
        ("lesion_auroc", "AUROC of the map as a pixel classifier of the lesion"),
        ("lesion_iou", "IoU of the Otsu-thresholded map with the lesion"),
        ("marker_mass", "share of the explainer's positive mass on the shortcut marker (images with one)"),
    )
)


def _order_auc(order: str, method: str | None = None):
    """The AUC estimate of ``order`` (deletion / insertion) for ``method`` (default: the explainer), or None."""
    def pick(j: JobResult) -> Estimate | None:
        sc = j.scoring
        m = None if sc is None else sc.methods.get(method or sc.explainer)
        o = None if m is None else m.orders.get(order)
        return None if o is None else o.auc

    return pick


def _auc_gain(order: str):
    def pick(j: JobResult) -> Estimate | None:
        sc = j.scoring
        return None if sc is None else sc.auc_gains_over_random.get(order, {}).get(sc.explainer)

    return pick


def _estimate_columns(name: str, description: str, pick: Callable[[JobResult], Estimate | None]) -> tuple[Column, ...]:
    """``name`` (the mean) and ``name_ci_low`` / ``name_ci_high`` (its 95% bootstrap CI over images)."""
    return (Column(name, description, lambda j: _mean(pick(j))),
            Column(f"{name}_ci_low", "its 95% bootstrap CI over images, low", lambda j: _low(pick(j))),
            Column(f"{name}_ci_high", "... high", lambda j: _high(pick(j))))


def _better(order: str) -> str:
    """Which area of ``order``'s curve is better: "higher" or "lower" (:data:`xbench.perturbation.orders.ORDERS`)."""
    return "higher" if ORDERS[order].higher_is_better else "lower"


#: Pixel deletion / insertion (Petsiuk et al. 2018): AUC over the fraction of pixels changed, NaN when the order was not scored.
PIXEL_AUC_COLUMNS: tuple[Column, ...] = tuple(
    c
    for order, better, sign in ((o, _better(o), "explainer - random" if ORDERS[o].gain_sign > 0 else "random - explainer") for o in PIXEL_ORDERS)
    for c in (
        _estimate_columns(f"{order}_auc", f"explainer {order} AUC over the fraction of pixels changed ({better} is better), mean over scored images",
                          _order_auc(order))
        + _estimate_columns(f"{order}_auc_random", f"the random control's {order} AUC (a uniformly random pixel order), all scored images",
                            _order_auc(order, "random"))
        + _estimate_columns(f"{order}_auc_gain_over_random", f"{sign} {order} AUC, paired by image: positive = better than random",
                            _auc_gain(order))
    )
)
SUMMARY_COLUMNS += PIXEL_AUC_COLUMNS

#: Direction of each metric of score.metrics (faithfulness and complexity): True where a higher value is the better map.
FAITHFULNESS_HIGHER_IS_BETTER: dict[str, bool] = {name: cls.higher_is_better for name, cls in METRICS.items()}


def _faithfulness(metric: str, method: str | None = None):
    def pick(j: JobResult) -> Estimate | None:
        sc = j.scoring
        m = None if sc is None else sc.methods.get(method or sc.explainer)
        return None if m is None else m.faithfulness.get(metric)

    return pick


def _faithfulness_gain(metric: str):
    def pick(j: JobResult) -> Estimate | None:
        sc = j.scoring
        return None if sc is None else sc.faithfulness_gains_over_random.get(metric, {}).get(sc.explainer)

    return pick


#: The metrics of score.metrics (family by family): the explainer's mean with its CI over images, and its gain over the random control
#: where random is a floor (not robustness: :data:`xbench.metrics.registry.UNFLOORED_FAMILIES`); NaN when not scored.
FAITHFULNESS_COLUMNS: tuple[Column, ...] = tuple(
    c
    for name, higher in FAITHFULNESS_HIGHER_IS_BETTER.items()
    for c in (
        _estimate_columns(name, f"explainer {name} ({'higher' if higher else 'lower'} is better; xbench.metrics.{FAMILIES[name]}), mean over images",
                          _faithfulness(name))
        + (_estimate_columns(f"{name}_gain_over_random", f"{'explainer - random' if higher else 'random - explainer'} {name}, paired by image: "
                             "positive = better than random", _faithfulness_gain(name)) if floored(name) else ())
    )
)
SUMMARY_COLUMNS += FAITHFULNESS_COLUMNS


def _sanity(job: JobResult) -> SanityScores | None:
    """The configured explainer's randomisation check (its first mode), or None."""
    sa, sc = job.metrics.sanity, job.scoring
    if sa is None or not sa.checks:
        return None
    name = sc.explainer if sc else sa.checks[0].explainer
    return next((c for c in sorted(sa.checks, key=lambda c: c.mode != "cascading") if c.explainer == name), None)


def _sanity_head(job: JobResult) -> Estimate | None:
    """Similarity (Spearman, absolute maps) once the logits and the head are randomised: a depth fixed in advance, not the lowest found."""
    c = _sanity(job)
    if c is None or not c.steps:
        return None
    step = next((s for s in c.steps if s.name == "head"), c.steps[0])
    return step.similarity["spearman_abs"]


SUMMARY_COLUMNS += (
    Column("lesion_mass_random", "the random control's lesion_mass on the same images", lambda j: _mean(_loc("lesion_mass", "random")(j))),
    Column("images_scored", "scored test images", lambda j: j.scoring.n_scored if j.scoring else 0),
    Column("images_correct", "correctly classified test images", lambda j: j.scoring.n_correct if j.scoring else _NAN),
    Column("images_test", "test images", lambda j: j.metrics.test.n),
)
SUMMARY_COLUMNS += (
    Column("sanity_verdict", "model-randomisation check of the explainer: passes | fails | inconclusive (Spearman of absolute maps)",
           lambda j: c.verdict if (c := _sanity(j)) else ""),
    Column("sanity_depth_below_baseline", "first randomised depth (1 = logits) below the random-pair baseline (Holm-adjusted p < 0.05)",
           lambda j: _NAN if (c := _sanity(j)) is None or c.first_below_baseline.get("spearman_abs") is None else c.first_below_baseline["spearman_abs"]),
    Column("sanity_mode", "the check's mode these columns report (cascading first when several ran)", lambda j: c.mode if (c := _sanity(j)) else ""),
    Column("sanity_similarity_head", "Spearman (absolute maps) to the original once logits and head are randomised (the first step without a head)",
           lambda j: _mean(_sanity_head(j))),
    Column("sanity_head_ci_low", "its 95% bootstrap CI over images, low", lambda j: _low(_sanity_head(j))),
    Column("sanity_head_ci_high", "... high", lambda j: _high(_sanity_head(j))),
    Column("sanity_baseline", "mean Spearman (absolute maps) between the trained model's maps of random image pairs",
           lambda j: _NAN if (c := _sanity(j)) is None else c.baseline["spearman_abs"].mean),
)


def summary_row(job: JobResult) -> dict[str, Any]:
    """One ``summary.csv`` row: every :data:`SUMMARY_COLUMNS` value plus per-class test recall."""
    row = {c.name: c.get(job) for c in SUMMARY_COLUMNS}
    row.update({f"recall/{c}": s.recall for c, s in job.metrics.test.per_class.items()})
    return row


def is_nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)
