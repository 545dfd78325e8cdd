"""Read job folders and build the comparison tables and plots (pipeline layer).

Reads only what jobs wrote, through :mod:`xbench.pipeline.results`; never the live
config. A folder with ``.hydra/`` but no readable ``metrics.json`` is an
incomplete or failed job: listed, skipped.

A *measurement* is identified by everything that defines it (the resolved
config without the seed and the settings that cannot change a figure); only
jobs that differ by seed alone are pooled, and a table row, a band and a
curve line is one measurement, labelled by the settings in which it differs
from the others. Every statistic says what it resamples: images within one
job, or seeds across the jobs of one measurement.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from xbench.metrics import comparison
from xbench.metrics.aopc import abpc_per_image, aopc_by_step, aopc_per_image
from xbench.metrics.registry import floored
from xbench.metrics.bootstrap import TOO_FEW_TEXT, bootstrap_band, bootstrap_ci, format_interval, too_few_units
from xbench.perturbation.orders import ORDERS, PIXEL_ORDERS
from xbench.pipeline import results
from xbench.pipeline.identity import _flags, identity
from xbench.pipeline.scorecard import per_image

log = logging.getLogger(__name__)

#: Settings shown as their own columns (the rest of what differs goes into "Setting").
SHOWN = ("model.backbone", "explainer.name", "perturbation")


@dataclass
class Collected:
    jobs: list[results.JobResult]
    incomplete: list[tuple[str, str]]  # (folder, why)
    # Multi-label jobs' own folders (their test report per label); each scored label is a job of ``jobs`` (labels/<label>/).
    multilabel: list[results.JobResult] = field(default_factory=list)


def find_job_dirs(folders: Sequence[str | Path]) -> list[Path]:
    """Every folder at or under ``folders`` that looks like a job (metrics.json or .hydra/)."""
    found = set()
    for f in folders:
        f = Path(f)
        if not f.exists():
            raise FileNotFoundError(f"'{f}' does not exist; give job folders (outputs/runs/..., outputs/multirun/...)")
        for marker in list(f.rglob(results.METRICS_FILE)) + list(f.rglob(results.HYDRA_DIR)):
            d = marker.parent
            if d.name != "models" and "decoded" not in d.parts:
                found.add(d)
    return sorted(found, key=lambda p: (str(p.parent), int(p.name) if p.name.isdigit() else 0, p.name))


def collect(folders: Sequence[str | Path]) -> Collected:
    jobs, incomplete, multilabel = [], [], []
    for d in find_job_dirs(folders):
        if not (d / results.METRICS_FILE).is_file():
            incomplete.append((str(d), "no metrics.json (the job failed or is still running)"))
            continue
        try:
            job = results.read_job(d)
        except results.ResultsFormatError as exc:
            incomplete.append((str(d), str(exc)))
            continue
        cfg = job.metrics.config or {}
        if isinstance(job.metrics.test, results.MultilabelTestReport) and job.metrics.label is None:
            multilabel.append(job)  # its labels' measurements are the jobs under it
            for label in job.metrics.targets.labels if job.metrics.targets is not None else []:
                folder = d / results.LABELS_DIR / results.label_folder(label)
                if job.metrics.targets.n_targets.get(label) and not (folder / results.METRICS_FILE).is_file():
                    incomplete.append((str(folder), f"label {label}: no metrics.json (its scoring did not finish)"))
            continue
        if job.scoring is None and (cfg.get("score") or {}).get("enabled"):
            incomplete.append((str(d), "scoring did not finish (classification results only)"))
        jobs.append(job)
    return Collected(jobs, incomplete, multilabel)


# ---------------------------------------------------------------- measurements


@dataclass
class Measurement:
    """Jobs that differ by seed alone."""

    key: tuple
    identity: dict[str, Any]
    jobs: list[results.JobResult] = field(default_factory=list)
    label: str = ""  # the settings in which it differs from the other measurements

    @property
    def seeds(self) -> list[int]:
        return sorted({j.metrics.seed for j in self.jobs})

    def get(self, name: str):
        return self.identity.get(name)


def measurements(jobs: Sequence[results.JobResult]) -> list[Measurement]:
    """Group jobs into measurements (same identity, any seed) and label each by what differs."""
    groups: dict[tuple, Measurement] = {}
    seen: dict[tuple, tuple[tuple, dict, results.JobResult]] = {}
    for j in jobs:  # one job per (measurement, seed): a rerun of a seed is not another seed
        ident = identity(j)
        key = tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in ident.items()))
        if (key, j.metrics.seed) in seen:
            log.warning("%s repeats seed %d of %s; using the later job", j.path, j.metrics.seed, seen[(key, j.metrics.seed)][2].path)
        seen[(key, j.metrics.seed)] = (key, ident, j)
    for key, ident, j in seen.values():
        groups.setdefault(key, Measurement(key, ident)).jobs.append(j)
    out = list(groups.values())
    keys = sorted({k for g in out for k in g.identity})
    def varies(k: str) -> bool:
        if k.startswith("explainer."):  # an explainer's own parameter: does it differ between jobs of the same explainer?
            by_name: dict[str, set] = {}
            for g in out:
                by_name.setdefault(json.dumps(g.identity.get("explainer.name"), default=str), set()).add(json.dumps(g.identity.get(k), default=str))
            return any(len(v) > 1 for v in by_name.values())
        return len({json.dumps(g.identity.get(k), default=str) for g in out}) > 1

    varying = [k for k in keys if k not in SHOWN and varies(k)]
    for g in out:
        g.label = ", ".join(f"{k}={g.identity.get(k)}" for k in varying)
    return out


# ---------------------------------------------------------------- tables


def summary_frame(jobs: Sequence[results.JobResult]) -> pd.DataFrame:
    """One row per job (:data:`xbench.pipeline.results.SUMMARY_COLUMNS`)."""
    return pd.DataFrame([results.summary_row(j) for j in jobs])


def _fmt_pct(x):
    return f"{100 * x:.1f}%" if pd.notna(x) else "n/a"


def _explainer_aopc(job: results.JobResult) -> results.Estimate | None:
    m = job.explainer_scores()
    return None if m is None or "morf" not in m.orders else m.orders["morf"].aopc


def paper_table(groups: Sequence[Measurement]) -> pd.DataFrame:
    """Base model | Explainer | Perturbation | Setting | Seeds | Test Recall | Test F1 | AOPC | Images, one row per measurement.

    Several seeds: mean ± standard deviation over seeds (unit: seeds). One
    seed: the value, and for AOPC its bootstrap 95% CI over images.
    """
    rows = []
    for g in groups:
        rec = np.array([results.test_scores(j).recall for j in g.jobs])
        f1 = np.array([results.test_scores(j).f1 for j in g.jobs])
        est = [_explainer_aopc(j) for j in g.jobs]
        ao = np.array([e.mean if e else np.nan for e in est])
        if len(g.jobs) > 1:
            r, f = f"{_fmt_pct(rec.mean())} ± {100 * rec.std(ddof=1):.1f}", f"{_fmt_pct(f1.mean())} ± {100 * f1.std(ddof=1):.1f}"
            a = f"{np.nanmean(ao):.3f} ± {np.nanstd(ao, ddof=1):.3f}" if np.isfinite(ao).sum() > 1 else "n/a"
        else:
            r, f = _fmt_pct(rec[0]), _fmt_pct(f1[0])
            a = _fmt_est(est[0])
        sc = g.jobs[0].scoring
        rows.append({"Base model": g.get("model.backbone"), "Explainer": g.get("explainer.name") or "", "Perturbation": g.get("perturbation") or "",
                     "Setting": g.label, "Seeds": len(g.seeds), "Test Recall": r, "Test F1": f, "AOPC": a,
                     "Images scored": _images_scored(g.jobs[0]), "Subset": sc.subset if sc else ""})
    out = pd.DataFrame(rows)
    return out.drop(columns=["Setting"]) if len(out) and not out["Setting"].astype(bool).any() else out


def _images_scored(job: results.JobResult) -> int:
    """Images the explainer's figures count: its own (a reference map: those with its ground truth), else all scored."""
    sc = job.scoring
    if sc is None:
        return 0
    own = sc.methods.get(sc.explainer)
    return own.n_images if own is not None and own.n_images is not None else sc.n_scored


def _fmt_est(e: results.Estimate | None, spec: str = ".3f") -> str:
    """"mean [low, high]"; "mean [n too small]" below the minimum of units (:func:`xbench.metrics.bootstrap.format_interval`); "n/a" without data."""
    return "n/a" if e is None else format_interval(e.mean, e.ci95[0], e.ci95[1], e.n, e.unit, spec)


_LOCALISATION_COLUMNS = ("lesion_mass", "pointing_hit", "lesion_auroc", "lesion_iou", "lung_share", "marker_mass")


def _paired_localisation(job: results.JobResult, method: str, metric: str) -> dict | None:
    """metric(method) - metric(random), paired over the images where both are defined (unit: image), or None."""
    if job.curves is None:
        return None
    a, b = job.curves.per_image.get((metric, method)), job.curves.per_image.get((metric, "random"))
    return None if a is None or b is None else comparison.paired_images(a, b, seed=job.metrics.seed)  # it drops non-finite pairs


def _fmt_paired(r: dict | None) -> str:
    """A comparison's "diff [low, high]", "diff [n too small]" below the minimum of units, "n/a" without data."""
    if r is None:
        return "n/a"
    unit = r.get("unit", "image")
    return format_interval(r["diff"], r["ci_low"], r["ci_high"], r.get("n_seeds" if unit == "seed" else "n_images"), unit)


#: self_validation's deletion / insertion columns: the AUC, and in a "<method> - random" row the gain, signed so that positive = better than random.
PIXEL_AUC_HEADERS = {o: f"{o.capitalize()} AUC ({results._better(o)} is better; '- random' rows: "
                        f"{'method - random' if ORDERS[o].gain_sign > 0 else 'random - method'})" for o in PIXEL_ORDERS}


#: The column of an attribution method's axiom error (results.MethodScores.completeness_error).
COMPLETENESS_HEADER = "completeness error (mean abs(sum of attributions - logit change), logit units; IG, DeepLIFT: vs the baseline; LRP: conservation)"


def faithfulness_header(metric: str) -> str:
    """self_validation's column of a faithfulness metric: its direction, and what its '- random' rows hold."""
    better = "higher" if results.FAITHFULNESS_HIGHER_IS_BETTER[metric] else "lower"
    if not floored(metric):
        return f"{metric} ({better} is better; no '- random' rows: random is perfectly stable, no floor)"
    return f"{metric} ({better} is better; '- random' rows: positive = better than random)"


def self_validation(jobs: Sequence[results.JobResult]) -> pd.DataFrame:
    """Each job's explainer beside its controls: MoRF AOPC, deletion / insertion AUC, the faithfulness metrics (score.metrics) and localisation with CIs over images, and each method against random, paired by image.

    The "<method> - random" rows: MoRF AOPC and localisation as method -
    random; deletion AUC as random - method and insertion AUC as method -
    random (:data:`PIXEL_AUC_HEADERS` says so), so that a positive AUC gain is
    better than random for both.
    """
    rows = []
    for j in jobs:
        sc = j.scoring
        if sc is None:
            continue
        cols = [k for k in _LOCALISATION_COLUMNS if any(k in mm.localisation for mm in sc.methods.values())]
        pix = [o for o in PIXEL_ORDERS if any(o in mm.orders for mm in sc.methods.values())]
        faith = [k for k in results.FAITHFULNESS_HIGHER_IS_BETTER if any(k in mm.faithfulness for mm in sc.methods.values())]
        for name, m in sc.methods.items():
            morf = m.orders.get("morf")
            row = {"job": j.path.name, "model": j.metrics.model.backbone, "seed": j.metrics.seed, "method": name + (" (explainer)" if name == sc.explainer else ""),
                   "AOPC (MoRF)": _fmt_est(morf.aopc if morf else None)}
            row.update({PIXEL_AUC_HEADERS[o]: _fmt_est(m.orders[o].auc if o in m.orders else None) for o in pix})
            if any(mm.completeness_error is not None for mm in sc.methods.values()):
                e = m.completeness_error
                row[COMPLETENESS_HEADER] = _fmt_est(e, ".3g")  # errors span 1e-7 to 1
            row.update({faithfulness_header(k): _fmt_est(m.faithfulness.get(k)) for k in faith})
            rows.append({**row, **{k: _fmt_est(m.localisation.get(k)) for k in cols}})
        against = list(dict.fromkeys([*sc.gains_over_random, *(n for o in pix for n in sc.auc_gains_over_random.get(o, {})),
                                      *(n for k in faith for n in sc.faithfulness_gains_over_random.get(k, {}))]))
        for name in against:
            row = {"job": j.path.name, "model": j.metrics.model.backbone, "seed": j.metrics.seed,
                   "method": f"{name} - random (paired by image)", "AOPC (MoRF)": _fmt_est(sc.gains_over_random.get(name))}
            row.update({PIXEL_AUC_HEADERS[o]: _fmt_est(sc.auc_gains_over_random.get(o, {}).get(name)) for o in pix})
            row.update({faithfulness_header(k): _fmt_est(sc.faithfulness_gains_over_random.get(k, {}).get(name)) for k in faith})
            rows.append({**row, **{k: _fmt_paired(_paired_localisation(j, name, k)) for k in cols}})
    return pd.DataFrame(rows)


def pixel_auc_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Deletion and insertion AUC per job from ``summary.csv``'s columns (:data:`xbench.pipeline.results.PIXEL_AUC_COLUMNS`): empty when no job scored them.

    Cells: mean [95% bootstrap CI over images]. Gains over random are paired
    by image and signed so that positive = better than random (deletion:
    random - explainer; insertion: explainer - random).
    """
    names = [c.name for c in results.PIXEL_AUC_COLUMNS if not c.name.endswith(("_ci_low", "_ci_high"))]
    if frame.empty or not any(n in frame and frame[n].notna().any() for n in names):
        return pd.DataFrame()
    cell = lambda r, n: format_interval(r[n], r[n + "_ci_low"], r[n + "_ci_high"], r.get("images_scored"))
    rows = []
    for _, r in frame.iterrows():
        if not any(pd.notna(r[n]) for n in names):
            continue
        rows.append({"job": Path(str(r["job"])).name, "model": r["model"], "seed": r["seed"], "explainer": r["explainer"], "perturbation": r["perturbation"],
                     **{n: cell(r, n) for n in names}})
    return pd.DataFrame(rows)


def shortcut_table(jobs: Sequence[results.JobResult]) -> pd.DataFrame:
    """The self-test: jobs on phantoms with a shortcut class, clean vs shortcut-trained, tested with and without the marker.

    Figures with 95% bootstrap CIs over the scored images; marker figures
    exist only where the test images carry the marker.
    """
    rows = []
    for j in jobs:
        data = (j.metrics.config or {}).get("data") or {}
        cls = data.get("shortcut_class")
        if not cls or j.scoring is None:
            continue
        trained, tested = data.get("shortcut_fraction", 0.0), data.get("test_shortcut_fraction")
        tested = trained if tested is None else tested
        ex = j.explainer_scores()
        marker = j.scoring.methods.get("shortcut_marker")
        rows.append({
            "model": j.metrics.model.backbone, "seed": j.metrics.seed,
            "trained on": "shortcut" if trained > 0 else "clean", "test images": f"{cls} with marker" if tested > 0 else "no marker",
            "test recall": _fmt_pct(j.metrics.test.macro_avg.recall), f"recall {cls}": _fmt_pct(j.metrics.test.per_class[cls].recall),
            **{f"{j.scoring.explainer} {k}": _fmt_est(ex.localisation.get(k)) for k in ("marker_mass", "lesion_mass", "lung_share")},
            "shortcut_marker AOPC": _fmt_est(marker.orders["morf"].aopc if marker and "morf" in marker.orders and tested > 0 else None),
        })
    return pd.DataFrame(rows)


def sanity_table(jobs: Sequence[results.JobResult]) -> pd.DataFrame:
    """The model-randomisation check of each job: per map and mode, the verdict and the similarity at every randomised depth.

    Similarity: Spearman rank correlation of the absolute maps to the trained
    model's map of the same image, mean and 95% bootstrap CI over the checked
    images; baseline: the same between the trained model's maps of random
    image pairs (CI over pairs). For the configured explainer, the MoRF AOPC
    of the randomised model's maps (curves on the randomised model / on the
    trained model) beside the random control's.
    """
    rows = []
    for j in jobs:
        sa = j.metrics.sanity
        if sa is None:
            continue
        for c in sa.checks:
            row = {"job": j.path.name, "model": j.metrics.model.backbone, "seed": j.metrics.seed, "map": c.explainer, "mode": c.mode,
                   "images": c.n_images - c.n_left_out, "verdict": c.verdict,
                   "first depth below baseline": str(d) if (d := c.first_below_baseline.get("spearman_abs")) is not None else "never",
                   "baseline (random pairs)": _fmt_est(c.baseline["spearman_abs"])}
            row.update({f"{s.depth}. {s.name}": _fmt_est(s.similarity["spearman_abs"]) for s in c.steps})
            rows.append(row)
            if any(s.aopc_on_randomised is not None for s in c.steps):
                for what, label, floor in (
                        ("aopc_on_randomised", "AOPC of its maps, curves on the randomised model", "random control on the same randomised model: next row"),
                        ("random_aopc_on_randomised", "AOPC of the random control on the randomised model", ""),
                        ("aopc_on_trained", "AOPC of its maps, curves on the trained model", f"random control on the trained model: {_fmt_est(sa.random_aopc)}")):
                    rows.append({"job": j.path.name, "model": j.metrics.model.backbone, "seed": j.metrics.seed, "map": c.explainer, "mode": c.mode,
                                 "images": c.n_images, "verdict": label, "baseline (random pairs)": floor,
                                 **{f"{s.depth}. {s.name}": _fmt_est(getattr(s, what)) for s in c.steps}})
    return pd.DataFrame(rows)


def _per_image(job: results.JobResult, method: str, order: str = "morf") -> tuple[np.ndarray, np.ndarray] | None:
    got = job.curves.scored(method, order) if job.curves is not None else None
    return None if got is None else (got[0], aopc_per_image(got[1]))


def compare(a: Measurement, b: Measurement, method_a: str, method_b: str, n_resamples: int, seed: int) -> dict | None:
    """AOPC(a) - AOPC(b), respecting the design.

    Several seeds: the unit is the seed (each job's mean per-image AOPC),
    paired over the seeds both measurements have (:func:`comparison.over_seeds`).
    One seed each: the unit is the image, paired over the images both scored
    (:func:`comparison.paired_images`).
    """
    if len(a.seeds) > 1 or len(b.seeds) > 1:
        if a is b:  # two methods of the same jobs: each seed's means over the images BOTH methods count
            pairs = {j.metrics.seed: p for j in a.jobs if (p := _paired_aopc(j, j, method_a, method_b)) is not None and len(p[0])}
            return comparison.over_seeds({s: float(p[0].mean()) for s, p in pairs.items()}, {s: float(p[1].mean()) for s, p in pairs.items()})
        by_seed = lambda g, meth: {j.metrics.seed: float(v[1].mean()) for j in g.jobs if (v := _per_image(j, meth)) is not None and len(v[1])}
        return comparison.over_seeds(by_seed(a, method_a), by_seed(b, method_b))
    if a.seeds != b.seeds:
        return None  # different seeds: different splits and training, no pairing by image
    pair = _paired_aopc(a.jobs[0], b.jobs[0], method_a, method_b)
    if pair is None or len(pair[0]) < 2:
        return None
    return comparison.paired_images(*pair, n_resamples=n_resamples, seed=seed)


def _paired_aopc(ja: results.JobResult, jb: results.JobResult, method_a: str, method_b: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-image AOPCs of ``method_a`` in ``ja`` and ``method_b`` in ``jb``, aligned on the images both count, or None without curves."""
    pa, pb = _per_image(ja, method_a), _per_image(jb, method_b)
    if pa is None or pb is None:
        return None
    _, ia, ib = np.intersect1d(pa[0], pb[0], return_indices=True)
    return pa[1][ia], pb[1][ib]


def _differ_only_in(a: Measurement, b: Measurement, keys: Sequence[str]) -> bool:
    ks = set(a.identity) | set(b.identity)
    return all(a.identity.get(k) == b.identity.get(k) for k in ks if not any(k == p or k.startswith(p + ".") for p in keys))


def pairwise(groups: Sequence[Measurement], n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Model-vs-model and explainer-vs-explainer AOPC comparisons, Holm-corrected across the table.

    Pairs of measurements that differ only in the model and its training
    recipe (a backbone with its own ``conf/fit`` settings is still one model
    against another), or only in the explainer, are compared; within one job,
    the explainer is compared with each control on the same images.
    """
    rows = []
    for a, b in itertools.combinations(groups, 2):
        for what, keys in (("model", ("model", "train")), ("explainer", ("explainer",))):
            if a.identity.get(f"{what}.backbone" if what == "model" else "explainer.name") == b.identity.get(
                    f"{what}.backbone" if what == "model" else "explainer.name") or not _differ_only_in(a, b, keys):
                continue
            r = compare(a, b, a.get("explainer.name"), b.get("explainer.name"), n_resamples, seed)
            if r is not None:
                rows.append({"compares": what, "a": _name(a, what), "b": _name(b, what), "context": _context(a, what), **r})
    for g in groups:
        sc = g.jobs[0].scoring
        if sc is None:
            continue
        for control in (n for n in sc.methods if n != sc.explainer):
            r = compare(g, g, sc.explainer, control, n_resamples, seed)
            if r is not None:
                rows.append({"compares": "explainer vs control", "a": sc.explainer, "b": control, "context": _context(g, "explainer"), **r})
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["p_holm"] = comparison.holm(frame["p_value"].to_numpy())
    return frame


def _name(g: Measurement, what: str) -> str:
    return str(g.get("model.backbone") if what == "model" else g.get("explainer.name"))


def _context(g: Measurement, what: str) -> str:
    parts = [f"{g.get('explainer.name')}" if what == "model" else f"{g.get('model.backbone')}", str(g.get("perturbation"))]
    return " / ".join(parts + ([g.label] if g.label else []))


# ---------------------------------------------------------------- methods compared (CheXlocalize, Saporta et al. 2022)

#: The methods table's figures, in column order: localisation (per image in curves.npz), then MoRF AOPC, then the faithfulness metrics.
METHOD_FIGURES = ("lesion_iou", "pointing_hit", "lesion_mass", "lesion_auroc", "aopc_morf", *results.FAITHFULNESS_HIGHER_IS_BETTER)
#: Higher is better for every figure but these (the faithfulness metrics say their own direction).
_LOWER_IS_BETTER = {k for k, higher in results.FAITHFULNESS_HIGHER_IS_BETTER.items() if not higher}


def methods_table(jobs: Sequence[results.JobResult], rank_by: str | None = None, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Every explainer and control of the jobs, one row per (model, seed, method), each figure with its 95% CI over images, ranked.

    Jobs of one model and seed score the same test images (one split), so
    methods from different jobs are paired by image id. Rows are ranked by
    ``rank_by`` (default: ``lesion_iou`` where the data has lesions, else
    MoRF AOPC) in its better direction; ``vs next`` is the paired difference
    with the method ranked just below (bootstrap over the images both
    score, :func:`xbench.metrics.comparison.paired_images`), and ``p_holm``
    its p-value Holm-corrected across the table. The controls (random,
    oracle) are read from the first job that has them.
    """
    groups: dict = {}
    for j in jobs:
        if j.scoring is not None and j.curves is not None:
            # One label of a multi-label model is a table of its own: its image ids repeat in the other labels' jobs.
            groups.setdefault((j.metrics.model.backbone, j.metrics.seed, j.metrics.label), []).append(j)
    rows, tests = [], []
    for (backbone, s, label), js in groups.items():
        methods: dict[str, results.JobResult] = {}
        for j in js:
            for name in [j.scoring.explainer, *j.scoring.methods]:
                methods.setdefault(name, j)
        figures = [f for f in METHOD_FIGURES if any(per_image(j, n, f)[0] is not None for n, j in methods.items())]
        key = rank_by or ("lesion_iou" if "lesion_iou" in figures else "aopc_morf")
        if key not in figures:
            continue
        sign = -1.0 if key in _LOWER_IS_BETTER else 1.0
        mean = {n: (e.mean if (e := per_image(j, n, key)[0]) is not None and np.isfinite(e.mean) else -np.inf * sign) for n, j in methods.items()}
        order = sorted(methods, key=lambda n: -sign * mean[n])
        for rank, name in enumerate(order, 1):
            j = methods[name]
            row = {"model": backbone, "seed": s, **({"label": label} if label is not None else {}), "rank": rank,
                   "method": name + (" (control)" if name != j.scoring.explainer else ""),
                   **{f: _fmt_est(per_image(j, name, f)[0]) for f in figures}, "ranked by": key}
            if rank < len(order):
                below = order[rank]
                _, ia, pa = per_image(j, name, key)
                _, ib, pb = per_image(methods[below], below, key)
                if pa is not None and pb is not None:
                    common, xa, xb = np.intersect1d(ia, ib, return_indices=True)
                    r = comparison.paired_images(sign * pa[xa], sign * pb[xb], n_resamples=n_resamples, seed=seed)
                    row["vs next"] = f"{below}: {_fmt_paired(r)}"
                    tests.append((len(rows), r["p_value"]))
            rows.append(row)
    frame = pd.DataFrame(rows)
    if tests:
        adj = comparison.holm(np.array([p for _, p in tests]))
        frame["p_holm"] = np.nan
        for (i, _), p in zip(tests, adj):
            frame.loc[i, "p_holm"] = p
    return frame


def multilabel_table(parents: Sequence[results.JobResult]) -> pd.DataFrame:
    """One row per (multi-label job, label): the test AUROC, and precision / recall / F1 at the job's threshold, with the targets explained."""
    rows = []
    for j in parents:
        t, m = j.metrics.test, j.metrics
        n_targets = m.targets.n_targets if m.targets is not None else {}
        for name in t.class_names:
            c = t.per_class[name]
            rows.append({"job": j.path.name, "model": m.model.backbone, "seed": m.seed, "label": name, "auroc": t.auroc.get(name, np.nan),
                         f"precision@{t.threshold:g}": c.precision, f"recall@{t.threshold:g}": c.recall, f"f1@{t.threshold:g}": c.f1,
                         "positives": c.support, "targets": n_targets.get(name, 0),
                         "targets by": m.targets.rule if m.targets is not None else "not scored"})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- metric reliability

def _is_metric_key(k: str) -> bool:
    """Says how the metric is computed (``METRIC``: the perturbation and its parameters, region size, steps, orders)."""
    return _flags(k).get("metric", False)


def _is_variant_key(k: str) -> bool:
    """A metric key whose values make variants of their own (not ``METRIC_NOT_VARIANT``: those leave the MoRF curves unchanged)."""
    return _is_metric_key(k) and _flags(k).get("variant", True)


def _aligned(job: results.JobResult, method: str, order: str, ids: np.ndarray) -> np.ndarray | None:
    """Per-image AOPC (ABPC for order "abpc") of ``method`` on the images ``ids`` (in that order); NaN where the method does not score an image."""
    cur = job.curves
    if order == "abpc":
        m, l = cur.get(method, "morf"), cur.get(method, "lerf")
        per = None if m is None or l is None else abpc_per_image(m, l)
    else:
        c = cur.get(method, order)
        per = None if c is None else aopc_per_image(c)
    if per is None:
        return None
    per = np.where(cur.rows(method), per, np.nan)
    pos = {int(i): k for k, i in enumerate(np.asarray(cur.image_ids))}
    return np.array([per[pos[int(i)]] for i in ids])


def _random_abpc_rows(job: results.JobResult, label: str, n_resamples: int) -> list[dict]:
    """The random control's ABPC with its CI over images: a floor must not separate LeRF from MoRF (the CI must contain 0)."""
    cur = job.curves
    m, l = cur.get("random", "morf"), cur.get("random", "lerf")
    base = {"group": label, "computed": f"random control ABPC (LeRF - MoRF area), job {job.path.name}", "methods": "random", "n_variants": 1}
    per = abpc_per_image(m, l)
    lo, hi = bootstrap_ci(per, n_resamples=n_resamples, seed=job.metrics.seed) if len(per) >= 2 else (np.nan, np.nan)
    note = ("CI contains 0, as a floor's must" if lo <= 0 <= hi else
            "CI EXCLUDES 0: LeRF and MoRF of the random order differ here; a 95% CI misses 0 by chance in 1 job of 20, "
            "so rerun with more images (score.max_images) before calling the floor biased" if np.isfinite(lo) else "too few images for a CI")
    return [{**base, "value": float(per.mean()), "ci_low": lo, "ci_high": hi, "n_images": int(len(per)), "note": note}]


def metric_reliability(jobs: Sequence[results.JobResult], n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Reliability of the metric itself (Tomsett et al. 2020) over jobs that differ only in how the metric is computed.

    A *reliability group* is two or more scored jobs with the same identity
    once the metric's settings (fields marked ``METRIC``: perturbation and its
    parameters, region size, steps, orders) are left out, and the same seed
    (so the same model, split and scored images). Each job gives the
    variants MoRF and, where scored, LeRF and ABPC (area between LeRF and
    MoRF) of the same curves. Images are paired by id (``Curves.image_ids``);
    only the images every job scored, and only the methods every job scored,
    are used. Rows:

    - internal consistency of each method over the MoRF variants (every
      method has them): mean pairwise Spearman of per-image AOPC,
      Krippendorff's alpha (interval);
    - internal consistency of the explainer over all its variants (MoRF,
      LeRF, ABPC; controls are scored MoRF only), when it has LeRF curves.
      The orders are taken as they are (LeRF AOPC is not sign-flipped): a
      low value says the orders disagree about which images are easy;
    - inter-method reliability: mean Kendall tau-b of the ranking of the
      methods by mean AOPC, over the MoRF variants (the only ones every
      method has);
    - the random control's ABPC per job with its CI (it must contain 0), or a
      note that the random control is scored MoRF only.

    Every CI is a percentile bootstrap over the common images
    (:func:`xbench.metrics.reliability.reliability`, ``n_resamples``
    resamples).

    Returns:
        DataFrame with columns group, computed, methods, value, ci_low,
        ci_high, n_images, n_variants, note (empty when no group exists).
    """
    found, apart = _reliability_groups(jobs)
    rows: list[dict] = []
    for (rest, s), variants in found.items():
        rows += _group_rows(dict(rest), s, variants, apart, n_resamples, seed)
    cols = ["group", "computed", "methods", "value", "ci_low", "ci_high", "n_images", "n_variants", "note"]
    return pd.DataFrame(rows, columns=cols)


def _reliability_groups(jobs: Sequence[results.JobResult]) -> tuple[dict, list[str]]:
    """The reliability groups {(identity less the metric's settings, seed): {variant: (job, identity)}} of two or more
    variants, and the keys that tell apart groups sharing a label (explainer, model, seed)."""
    by_key: dict[tuple, dict[tuple, tuple[results.JobResult, dict]]] = {}
    for j in jobs:
        if j.scoring is None or j.curves is None:
            continue
        ident = identity(j)
        rest = tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in ident.items() if not _is_metric_key(k)))
        # score.orders is left out of the variant: two jobs that differ only in it have the same MoRF curves (the later job is kept)
        variant = tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in ident.items() if _is_variant_key(k)))
        by_key.setdefault((rest, j.metrics.seed), {})[variant] = (j, ident)  # a rerun of the same variant: the later job
    found = {k: v for k, v in by_key.items() if len(v) >= 2}
    # What else tells apart groups that share a label (explainer, model, seed): a key that varies only
    # between labels (an explainer's own parameters, a model's Grad-CAM layer) says nothing new.
    by_label: dict[tuple, list[dict]] = {}
    for rest, s in found:
        r = dict(rest)
        by_label.setdefault((r.get("explainer.name"), r.get("model.backbone"), s), []).append(r)
    apart = sorted({k for rs in by_label.values() if len(rs) > 1 for k in {k for r in rs for k in r}
                    if k not in ("model.backbone", "explainer.name") and len({r.get(k) for r in rs}) > 1})
    return found, apart


def _group_rows(rest: dict, s: int, variants: dict, apart: list[str], n_resamples: int, seed: int) -> list[dict]:
    """One reliability group's rows (see :func:`metric_reliability`); none when fewer than 2 common images or no common method."""
    from xbench.metrics import reliability as rel

    vjobs = [j for j, _ in variants.values()]
    idents = [ident for _, ident in variants.values()]
    varying = sorted({k for i in idents for k in i if _is_variant_key(k)
                      and len({json.dumps(x.get(k), default=str) for x in idents}) > 1})
    if "perturbation" in varying:  # the label already holds the perturbation's name and parameters
        varying = [k for k in varying if not k.startswith("perturbation.")]
    names = [", ".join(f"{k}={i.get(k)}" for k in varying) or j.path.name for i, j in zip(idents, vjobs)]
    sc0 = vjobs[0].scoring
    label = f"{sc0.explainer} on {vjobs[0].metrics.model.backbone}, seed {s}" + "".join(f", {k}={json.loads(rest[k])}" for k in apart if k in rest)
    ids = vjobs[0].curves.image_ids
    for j in vjobs[1:]:
        ids = np.intersect1d(ids, j.curves.image_ids)
    ids = np.sort(np.asarray(ids))
    methods = [m for m in sc0.methods if all(m in j.scoring.methods and j.curves.get(m, "morf") is not None for j in vjobs)]
    methods = [sc0.explainer] + [m for m in methods if m != sc0.explainer] if sc0.explainer in methods else methods
    if not methods or len(ids) < 2:
        return []
    morf = np.stack([np.stack([_aligned(j, m, "morf", ids) for m in methods]) for j in vjobs])  # (V, M, N)
    res = rel.reliability(morf, names, methods, n_resamples=n_resamples, seed=seed)
    common = {"group": label, "n_variants": len(vjobs)}
    rows = []
    for m in methods:
        pm = res["per_method"][m]
        for what, key in (("mean pairwise Spearman of per-image AOPC", "spearman"), ("Krippendorff's alpha (interval) of per-image AOPC", "alpha")):
            rows.append({**common, "computed": f"internal consistency over the MoRF variants: {what}", "methods": m,
                         "value": pm[key]["value"], "ci_low": pm[key]["ci95"][0], "ci_high": pm[key]["ci95"][1], "n_images": pm["n_images"],
                         "note": "the explainer" if m == sc0.explainer else "control or reference map"})
    tau = res["kendall_tau"]
    rows.append({**common, "computed": "inter-method reliability: mean Kendall tau-b of the method ranking (mean AOPC) between MoRF variants",
                 "methods": ", ".join(methods), "value": tau["value"], "ci_low": tau["ci95"][0], "ci_high": tau["ci95"][1], "n_images": int(len(ids)),
                 "note": "MoRF variants only: controls are scored MoRF only" + ("" if len(methods) >= 2 else "; fewer than 2 methods, no ranking")})
    if sc0.explainer in methods:
        rows += _explainer_order_rows(vjobs, names, sc0.explainer, ids, common, n_resamples, seed)
    return rows + _random_control_rows(vjobs, label, n_resamples)


def _explainer_order_rows(vjobs, names, ex: str, ids, common: dict, n_resamples: int, seed: int) -> list[dict]:
    """The explainer's consistency over all its variants (MoRF, LeRF, ABPC of every job), when LeRF exists."""
    from xbench.metrics import reliability as rel

    per, vn = [], []
    for j, nm in zip(vjobs, names):
        for order in ("morf", "lerf", "abpc"):
            v = _aligned(j, ex, order, ids)
            if v is not None:
                per.append(v)
                vn.append(f"{nm} {order.upper() if order != 'abpc' else 'ABPC'}")
    if len(per) <= len(vjobs):  # MoRF only: the orders are no variants
        return []
    allv = rel.reliability(np.stack(per)[:, None, :], vn, [ex], n_resamples=n_resamples, seed=seed)["per_method"][ex]
    return [{**common, "n_variants": len(per), "computed": f"internal consistency over MoRF, LeRF and ABPC variants: {what}",
             "methods": ex, "value": allv[key]["value"], "ci_low": allv[key]["ci95"][0], "ci_high": allv[key]["ci95"][1],
             "n_images": allv["n_images"], "note": "orders as computed (LeRF AOPC not sign-flipped)"}
            for what, key in (("mean pairwise Spearman of per-image values", "spearman"), ("Krippendorff's alpha (interval) of per-image values", "alpha"))]


def _random_control_rows(vjobs, label: str, n_resamples: int) -> list[dict]:
    """The random control's ABPC per job (its CI must contain 0), or a note that it is scored MoRF only."""
    with_lerf = [j for j in vjobs if j.curves.get("random", "morf") is not None and j.curves.get("random", "lerf") is not None]
    rows = [r for j in with_lerf for r in _random_abpc_rows(j, label, n_resamples)]
    if not with_lerf and any("random" in j.scoring.methods for j in vjobs):
        rows.append({"group": label, "computed": "random control ABPC (LeRF - MoRF area)", "methods": "random", "value": np.nan, "ci_low": np.nan,
                     "ci_high": np.nan, "n_images": 0, "n_variants": len(vjobs),
                     "note": "not available: the random control is scored MoRF only (controls are); explainer=random scores both orders"})
    return rows


# ---------------------------------------------------------------- plots


def _line_label(g: Measurement) -> str:
    return " / ".join(str(x) for x in (g.get("model.backbone"), g.get("explainer.name"), g.get("perturbation")) if x) + (f" ({g.label})" if g.label else "")


def aopc_by_step_bands(groups: Sequence[Measurement], n_resamples: int = 1000, seed: int = 0) -> dict[str, tuple]:
    """{label: (AOPC(K), low, high)} per measurement.

    One seed: percentile bootstrap band over images. Several: mean over
    seeds with a t-based 95% band over the seeds' AOPC(K) (unit: seeds).
    """
    out = {}
    for g in groups:
        got = [j.curves.scored(j.scoring.explainer, "morf") for j in g.jobs if j.scoring is not None and j.curves is not None]
        curves = [c for _, c in filter(None, got) if len(c)]
        if not curves:
            continue
        if len(curves) == 1:
            out[_line_label(g)] = bootstrap_band(curves[0], n_resamples=n_resamples, seed=seed)
        else:
            per_seed = np.stack([aopc_by_step(c) for c in curves])
            out[_line_label(g) + f" [{len(curves)} seeds]"] = comparison.t_band(per_seed)
    return out


def mean_curves(groups: Sequence[Measurement]) -> dict[str, np.ndarray]:
    """{"<measurement> <order>": (N, K+1) curves of the explainer, images of all its seeds stacked} for the mean-curve plot."""
    out = {}
    for g in groups:
        for order in ("morf", "lerf"):
            got = [j.curves.scored(j.scoring.explainer, order) for j in g.jobs if j.scoring is not None and j.curves is not None]
            cs = [c for _, c in filter(None, got)]
            if cs:
                out[f"{_line_label(g)} {order}"] = np.concatenate(cs)
    return out


# ---------------------------------------------------------------- text


def _is_ci_or_p(column: str) -> bool:
    """A column of CI bounds or p-values (NaN there below the minimum of units: printed as "n too small")."""
    return column.startswith("p_") or column in ("ci_low", "ci_high") or column.endswith(("_ci_low", "_ci_high"))


def _row_units(row: dict) -> tuple:
    """(n, unit) that a table row's CIs and p-values rest on, from its own columns (n_seeds / n_images / n / images_scored), or (None, unit)."""
    unit = row.get("unit") if isinstance(row.get("unit"), str) else "images"
    for k in (("n_seeds",) if unit.rstrip("s") == "seed" else ()) + ("n_images", "n", "images_scored"):
        if k in row and pd.notna(row[k]):
            return row[k], unit
    return None, unit


def mark_too_few(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with each CI bound or p-value of a row whose units are too few (1 <= n < the minimum,
    :func:`xbench.metrics.bootstrap.too_few_units`) replaced by "n too small" (those columns become object);
    the frame itself when there is none. For printing: the CSVs keep their numbers (NaN where the code
    withheld them; finite only in results written before the rule)."""
    cols = [c for c in frame.columns if isinstance(c, str) and _is_ci_or_p(c)]
    if frame.empty or not cols:
        return frame
    few = pd.Series([too_few_units(*_row_units(dict(zip(frame.columns, row)))) for row in frame.itertuples(index=False)], index=frame.index)
    out = frame
    for c in cols:
        hit = few & frame[c].apply(lambda v: isinstance(v, (float, np.floating)))
        if hit.any():
            out = out.copy() if out is frame else out
            out[c] = out[c].astype(object)
            out.loc[hit, c] = TOO_FEW_TEXT
    return out


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """The frame as a markdown table: floats with ``floatfmt``, p-values (``p_*``) with two significant digits, NaN as "n/a",
    a CI bound or p-value withheld for too few units as "n too small" (:func:`mark_too_few`)."""
    if frame.empty:
        return "_(none)_\n"
    frame = mark_too_few(frame)
    cols = list(frame.columns)
    fmt = lambda v, f=floatfmt: (format(v, f) if isinstance(v, (float, np.floating)) and np.isfinite(v) else ("n/a" if isinstance(v, (float, np.floating)) else str(v)))
    # p-values keep two significant digits: a floored 1/(R+1) = 0.0005 must not print as 0.000.
    fmts = [(lambda v: fmt(v, ".2g")) if c.startswith("p_") else fmt for c in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(f(v) for f, v in zip(fmts, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    esc = lambda s: str(s).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%").replace("_", "\\_").replace("#", "\\#").replace("±", "$\\pm$")
    fmt = lambda v: format(v, floatfmt) if isinstance(v, (float, np.floating)) else esc(v)
    lines = ["\\begin{tabular}{" + "l" * len(frame.columns) + "}", "\\hline", " & ".join(esc(c) for c in frame.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(fmt(v) for v in row) + " \\\\" for row in frame.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"
