"""The scorecard: for each model and method, one row across the metric families (pipeline layer, no I/O).

Families (Quantus's grouping, Hedström et al. 2023): faithfulness (the
curves: MoRF AOPC, ABPC, deletion and insertion AUC, and the faithfulness
metrics of ``score.metrics``), localisation (against the lesion masks),
robustness, complexity and randomisation (the metrics of those families in
``score.metrics``, :data:`xbench.metrics.registry.FAMILIES`, and the
model-randomisation check's verdict). Every figure is the mean over the
scored images of one job with its 95% bootstrap CI over those images, and
where a floor exists it is paired image by image against the random control
and against the oracle (the blurred lesion mask):

- ``vs_random``: method - random, signed so that positive = better, with its
  paired-bootstrap CI and two-sided p (:func:`xbench.metrics.comparison.paired_images`);
  ``p_holm``: that p Holm-corrected across the whole scorecard.
- ``vs_oracle``: method - oracle, signed the same way (negative: short of
  what a right map scores), on the images the oracle is scored on; only in
  the families where the oracle is a reference (:data:`ORACLE_REFERENCE`:
  not randomisation, where the model-blind oracle scores as random does).

The robustness family has no floor in either control: a map that does not
read the image (the random control is drawn per image id, the oracle is the
lesion mask) is perfectly stable, so pairing against them would rank a
model-blind map first; its rows say so instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from xbench.metrics import comparison
from xbench.metrics.aopc import abpc_per_image, aopc_per_image
from xbench.metrics.bootstrap import format_interval
from xbench.metrics.insertion_deletion import auc_per_image
from xbench.metrics.registry import FAMILIES, METRICS, UNFLOORED_FAMILIES
from xbench.pipeline import results
from xbench.pipeline.identity import variant, variant_labels

#: The families in the scorecard's column order.
FAMILY_ORDER = ("faithfulness", "localisation", "robustness", "complexity", "randomisation")
#: Families in which the random control is a floor (all but :data:`xbench.metrics.registry.UNFLOORED_FAMILIES`: robustness).
FLOORED = frozenset(FAMILY_ORDER) - UNFLOORED_FAMILIES
#: Families in which the oracle (the blurred lesion mask) is what a right map scores. Not randomisation: the oracle
#: ignores the model and the class, so there it scores as the random control does (a second floor, not a ceiling).
ORACLE_REFERENCE = frozenset({"faithfulness", "localisation", "complexity"})
#: The controls a method is paired against (the oracle only where the data has lesion masks).
RANDOM, ORACLE = "random", "oracle"
#: Krippendorff (2004): alpha below 0.667 supports no conclusion, not even a tentative one.
UNRELIABLE_ALPHA = 0.667


@dataclass(frozen=True)
class Figure:
    """One scorecard figure: its name, family and direction."""

    name: str
    family: str
    higher_is_better: bool = True


#: The figures of the curves and the localisation metrics (those of score.metrics come from the registry).
_CURVE_FIGURES = (Figure("aopc_morf", "faithfulness"), Figure("abpc", "faithfulness"),
                  Figure("deletion_auc", "faithfulness", higher_is_better=False), Figure("insertion_auc", "faithfulness"))
_LOCALISATION_FIGURES = tuple(Figure(n, "localisation") for n in ("lesion_iou", "pointing_hit", "lesion_mass", "lesion_auroc", "lung_share"))
#: Every figure a scorecard may hold, family by family.
FIGURES: tuple[Figure, ...] = tuple(sorted(
    _CURVE_FIGURES + _LOCALISATION_FIGURES + tuple(Figure(n, FAMILIES[n], cls.higher_is_better) for n, cls in METRICS.items()),
    key=lambda f: FAMILY_ORDER.index(f.family)))


def per_image(job: results.JobResult, method: str, figure: str) -> tuple[results.Estimate | None, np.ndarray | None, np.ndarray | None]:
    """(estimate, (M,) image ids, (M,) per-image values, NaN where undefined) of ``figure`` for ``method`` in ``job``; Nones when not scored."""
    sc, cur = job.scoring, job.curves
    m = None if sc is None else sc.methods.get(method)
    if m is None or cur is None:
        return None, None, None
    ids = np.asarray(cur.image_ids)
    rows = cur.rows(method)
    if figure in ("aopc_morf", "abpc"):
        morf = cur.get(method, "morf")
        if figure == "aopc_morf":
            per = None if morf is None else aopc_per_image(morf)
            est = m.orders["morf"].aopc if "morf" in m.orders else None
        else:
            lerf = cur.get(method, "lerf")
            per = None if morf is None or lerf is None else abpc_per_image(morf, lerf)
            est = m.abpc
        return est, ids, (None if per is None else np.where(rows, per, np.nan))
    if figure in ("deletion_auc", "insertion_auc"):
        order = figure.removesuffix("_auc")
        c, scores = cur.get(method, order), m.orders.get(order)
        if c is None or scores is None or scores.fractions is None:
            return None, None, None
        return scores.auc, ids, np.where(rows, auc_per_image(c, np.asarray(scores.fractions)), np.nan)
    per = cur.per_image.get((figure, method))
    est = m.localisation.get(figure) or m.faithfulness.get(figure)
    return est, ids, (None if per is None else np.asarray(per, np.float64))


def _paired(job_a, a: str, job_b, b: str, figure: Figure, n_resamples: int, seed: int) -> dict | None:
    """``a`` - ``b`` on ``figure``, signed so that positive = better, paired by image id; None when either lacks it."""
    _, ia, pa = per_image(job_a, a, figure.name)
    _, ib, pb = per_image(job_b, b, figure.name)
    if pa is None or pb is None:
        return None
    _, xa, xb = np.intersect1d(ia, ib, return_indices=True)
    sign = 1.0 if figure.higher_is_better else -1.0
    return comparison.paired_images(sign * pa[xa], sign * pb[xb], n_resamples=n_resamples, seed=seed)


def _sanity_verdicts(jobs: Sequence[results.JobResult]) -> dict[tuple, str]:
    """{(model, seed, map): "mode: verdict; ..."} from the jobs' model-randomisation checks."""
    out: dict[tuple, list[str]] = {}
    for j in jobs:
        if j.metrics.sanity is not None:
            for c in j.metrics.sanity.checks:
                out.setdefault((j.metrics.model.backbone, j.metrics.seed, c.explainer), []).append(f"{c.mode} MPRT: {c.verdict}")
    return {k: "; ".join(dict.fromkeys(v)) for k, v in out.items()}


def _reliability(frame: pd.DataFrame | None) -> dict[tuple, str]:
    """{(model, seed, method): flag} for MoRF AOPC from the report's metric-reliability table (Krippendorff's alpha over variants)."""
    out = {}
    if frame is None or not len(frame):
        return out
    alpha = frame[frame["computed"].str.contains("MoRF variants: Krippendorff", regex=False)]
    for _, r in alpha.iterrows():
        label = str(r["group"])  # "<explainer> on <backbone>, seed <s>[, ...]"
        try:
            explainer, rest = label.split(" on ", 1)
            backbone, s = rest.split(", seed ")
            s = int(s.split(",")[0])
        except (IndexError, ValueError):
            continue
        # Only the group's own explainer: a control is in every explainer's group, and its flags would overwrite each other.
        if r["methods"] == explainer and np.isfinite(r["value"]):
            word = "unreliable" if r["value"] < UNRELIABLE_ALPHA else "reliable"
            out[(backbone, s, r["methods"])] = f"{word}: alpha {r['value']:.2f} over {int(r['n_variants'])} variants"
    return out


def scorecard(jobs: Sequence[results.JobResult], reliability: pd.DataFrame | None = None, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The scorecard, long: one row per (model, seed, method, figure), families in :data:`FAMILY_ORDER`.

    Jobs of one model, seed and variant (every setting but the explainer:
    perturbation, grid, metric parameters, ...) score the same test images the
    same way: their methods are pooled (each from the first job that has it)
    and paired by image id, never across variants; ``setting`` names what sets
    a variant apart where the jobs hold several. ``reliability``: :func:`xbench.pipeline.report.metric_reliability`
    of the same jobs, for the flag (none without it). Columns: model, seed, method, role (explainer / control),
    family, figure, better (higher / lower), mean, ci_low, ci_high, n (images
    with a value), vs_random, vs_random_ci_low, vs_random_ci_high, p_vs_random,
    p_holm (Holm across every vs-random test of the table), vs_oracle,
    vs_oracle_ci_low, vs_oracle_ci_high, note (the reliability flag of MoRF
    AOPC where the jobs hold metric variants; why a robustness figure has no
    floor; a randomisation metric's verdict against its baseline; the
    model-randomisation check's verdict, in a row of its own: ``mprt_verdict``).
    """
    groups: dict[tuple, list[results.JobResult]] = {}
    for j in jobs:  # one group per model, seed and variant (every setting but the explainer): only they score alike
        if j.scoring is not None and j.curves is not None:
            groups.setdefault((j.metrics.model.backbone, j.metrics.seed, variant(j)), []).append(j)
    setting = {}  # what sets a variant apart from the others of its model and seed (a setting that follows the model is no variant)
    for ms in dict.fromkeys(k[:2] for k in groups):
        for var, label in variant_labels([k[2] for k in groups if k[:2] == ms]).items():
            setting[(*ms, var)] = label
    verdicts = _sanity_verdicts(jobs)
    reliable = _reliability(reliability)
    rows = []
    for (backbone, s, var), js in groups.items():
        owner: dict[str, results.JobResult] = {}
        for j in js:
            for name in [j.scoring.explainer, *j.scoring.methods]:
                if name in j.scoring.methods:
                    owner.setdefault(name, j)
        explainers = {j.scoring.explainer for j in js}
        for name, j in owner.items():
            base = {"model": backbone, "seed": s, "setting": setting[(backbone, s, var)], "method": name, "role": "explainer" if name in explainers else "control"}
            for f in FIGURES:
                est = per_image(j, name, f.name)[0]
                if est is None:
                    continue
                row = {**base, "family": f.family, "figure": f.name, "better": "higher" if f.higher_is_better else "lower",
                       "mean": est.mean, "ci_low": est.ci95[0], "ci_high": est.ci95[1], "n": est.n, "note": ""}
                if f.family in FLOORED:
                    for ctrl, key in ((RANDOM, "vs_random"), (ORACLE, "vs_oracle")):
                        if ctrl == ORACLE and f.family not in ORACLE_REFERENCE:
                            continue
                        if ctrl != name and ctrl in owner and (r := _paired(j, name, owner[ctrl], ctrl, f, n_resamples, seed)) is not None:
                            row.update({key: r["diff"], f"{key}_ci_low": r["ci_low"], f"{key}_ci_high": r["ci_high"]})
                            if ctrl == RANDOM:
                                row["p_vs_random"] = r["p_value"]
                else:
                    row["note"] = "no floor: a map that ignores the image is perfectly stable"
                if (v := j.scoring.methods[name].randomisation_verdicts.get(f.name)) is not None:
                    row["note"] = f"verdict: {v.verdict} ({v.test} against {v.baseline:.3g}, Holm p {v.p_holm:.3g}, {v.n} images)"
                if f.name == "aopc_morf" and (flag := reliable.get((backbone, s, name))):
                    row["note"] = flag
                rows.append(row)
            if (v := verdicts.get((backbone, s, name))) is not None:
                rows.append({**base, "family": "randomisation", "figure": "mprt_verdict", "better": "", "mean": math.nan, "ci_low": math.nan,
                             "ci_high": math.nan, "n": 0, "note": v})
    cols = ["model", "seed", "setting", "method", "role", "family", "figure", "better", "mean", "ci_low", "ci_high", "n", "vs_random", "vs_random_ci_low",
            "vs_random_ci_high", "p_vs_random", "p_holm", "vs_oracle", "vs_oracle_ci_low", "vs_oracle_ci_high", "note"]
    frame = pd.DataFrame(rows).reindex(columns=cols)
    if len(frame):
        frame["family"] = pd.Categorical(frame["family"], FAMILY_ORDER, ordered=True)
        frame = frame.sort_values(["model", "seed", "setting", "family", "figure", "role", "method"], kind="stable").reset_index(drop=True)
        frame["family"] = frame["family"].astype(str)
        tested = frame["p_vs_random"].notna().to_numpy()
        if tested.any():
            frame.loc[tested, "p_holm"] = comparison.holm(frame.loc[tested, "p_vs_random"].to_numpy())
    return frame


def headline(frame: pd.DataFrame) -> dict[str, str]:
    """{family: the first figure of :data:`FIGURES` the scorecard holds for it}: what the plot shows per family."""
    have = set(frame["figure"]) if len(frame) else set()
    out = {}
    for f in FIGURES:
        if f.name in have and f.family not in out:
            out[f.family] = f.name
    return out


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """The scorecard as ``summary.md`` shows it: one row per (model, seed, method), one column per figure ("family: figure"),
    each cell mean [95% CI]; a figure better than random (Holm p < 0.05) is marked ``*``; the randomisation check's verdict as text."""
    if not len(frame):
        return pd.DataFrame()
    out: dict[tuple, dict] = {}
    columns: list[str] = []
    for _, r in frame.iterrows():
        key = (r["model"], r["seed"], r["setting"], r["method"] + (" (control)" if r["role"] == "control" else ""))
        col = f"{r['family']}: {r['figure']}" + ("" if not r["better"] else f" ({r['better']} better)")
        if col not in columns:
            columns.append(col)
        if r["figure"] == "mprt_verdict":
            cell = r["note"]
        else:
            cell = format_interval(r["mean"], r["ci_low"], r["ci_high"], int(r["n"]))
            if np.isfinite(r["p_holm"]) and r["p_holm"] < 0.05 and r["vs_random"] > 0:
                cell += " *"
            if str(r["note"]).startswith("verdict: "):  # a randomisation metric: its verdict against its baseline
                cell += f" ({r['note'].split()[1]})"
        out.setdefault(key, {"model": key[0], "seed": key[1], "setting": key[2], "method": key[3]})[col] = cell
    ordered = sorted(columns, key=lambda c: FAMILY_ORDER.index(c.split(":")[0]))
    frame = pd.DataFrame(list(out.values())).reindex(columns=["model", "seed", "setting", "method", *ordered]).fillna("n/a")
    return frame if (frame["setting"] != "").any() else frame.drop(columns="setting")
