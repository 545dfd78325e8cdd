"""Read job folders and build the comparison tables and plots (pipeline layer).

Reads only what jobs wrote (``metrics.json``, ``curves.npz``); never the live
config. A folder with ``.hydra/`` but no readable ``metrics.json`` is an
incomplete or failed job: listed, skipped.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from xbench.metrics.aopc import aopc_per_image
from xbench.metrics.bootstrap import bootstrap_diff

log = logging.getLogger(__name__)


@dataclass
class Job:
    path: Path
    metrics: dict
    curves: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Collected:
    jobs: list[Job]
    incomplete: list[tuple[str, str]]  # (folder, why)


def find_job_dirs(folders: Sequence[str | Path]) -> list[Path]:
    """Every folder at or under ``folders`` that looks like a job (metrics.json or .hydra/)."""
    found = set()
    for f in folders:
        f = Path(f)
        if not f.exists():
            raise FileNotFoundError(f"'{f}' does not exist; give job folders (outputs/runs/..., outputs/multirun/...)")
        for marker in list(f.rglob("metrics.json")) + list(f.rglob(".hydra")):
            d = marker.parent
            if d.name != "models" and "decoded" not in d.parts:
                found.add(d)
    return sorted(found, key=lambda p: (str(p.parent), int(p.name) if p.name.isdigit() else 0, p.name))


def collect(folders: Sequence[str | Path]) -> Collected:
    jobs, incomplete = [], []
    for d in find_job_dirs(folders):
        mpath = d / "metrics.json"
        if not mpath.is_file():
            incomplete.append((str(d), "no metrics.json (the job failed or is still running)"))
            continue
        try:
            metrics = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            incomplete.append((str(d), f"unreadable metrics.json ({exc})"))
            continue
        if "test" not in metrics:
            incomplete.append((str(d), "metrics.json has no test results"))
            continue
        curves = {}
        if "scoring" in metrics:
            try:
                with np.load(d / "curves.npz", allow_pickle=False) as z:
                    curves = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:
                incomplete.append((str(d), f"scored but curves.npz is unreadable ({exc})"))
                continue
        elif (metrics.get("config") or {}).get("score", {}).get("enabled"):
            incomplete.append((str(d), "scoring did not finish (classification results only)"))
        jobs.append(Job(d, metrics, curves))
    return Collected(jobs, incomplete)


def _perturbation_label(p: dict | None) -> str:
    if not p:
        return ""
    params = ",".join(f"{k}={v}" for k, v in p.items() if k not in ("name",))
    return f"{p.get('name', '?')}({params})"


def summary_frame(jobs: Sequence[Job]) -> pd.DataFrame:
    """One row per job."""
    rows = []
    for j in jobs:
        m = j.metrics
        t = m["test"]
        sc = m.get("scoring") or {}
        ex = sc.get("explainer")
        em = (sc.get("methods") or {}).get(ex, {})
        morf = (em.get("orders") or {}).get("morf", {}).get("aopc", {})
        row = {
            "job": str(j.path),
            "model": m["model"]["backbone"],
            "seed": m.get("seed"),
            "explainer": ex or "",
            "perturbation": _perturbation_label(sc.get("perturbation")),
            "order": "morf" if morf else "",
            "test_accuracy": t["accuracy"],
            "test_macro_recall": t["macro_avg"]["recall"],
            "test_macro_f1": t["macro_avg"]["f1"],
            **{f"recall/{c}": v["recall"] for c, v in t["per_class"].items()},
            "aopc": morf.get("mean", np.nan),
            "aopc_ci_low": (morf.get("ci95") or [np.nan, np.nan])[0],
            "aopc_ci_high": (morf.get("ci95") or [np.nan, np.nan])[1],
            "abpc": (em.get("abpc") or {}).get("mean", np.nan),
            "aopc_gain_over_random": (sc.get("aopc_gain_over_random") or {}).get("mean", np.nan),
            "gain_ci_low": ((sc.get("aopc_gain_over_random") or {}).get("ci95") or [np.nan, np.nan])[0],
            "gain_ci_high": ((sc.get("aopc_gain_over_random") or {}).get("ci95") or [np.nan, np.nan])[1],
            "lung_share": (em.get("lung_share") or {}).get("mean", np.nan),
            "images_scored": sc.get("n_scored", 0),
            "images_correct": sc.get("n_correct", np.nan),
            "images_test": t["n"],
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt_pct(x):
    return f"{100 * x:.1f}%" if pd.notna(x) else "n/a"


def paper_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Base model | Test Recall | Test F1 | AOPC, aggregated over seeds.

    Several seeds: mean ± standard deviation over seeds. One seed: the value,
    and for AOPC its bootstrap 95% CI over images.
    """
    out = []
    keys = ["model", "explainer", "perturbation"]
    for key, g in frame.groupby(keys, sort=False, dropna=False):
        n = len(g)
        if n > 1:
            rec = f"{_fmt_pct(g.test_macro_recall.mean())} ± {100 * g.test_macro_recall.std(ddof=1):.1f}"
            f1 = f"{_fmt_pct(g.test_macro_f1.mean())} ± {100 * g.test_macro_f1.std(ddof=1):.1f}"
            ao = f"{g.aopc.mean():.3f} ± {g.aopc.std(ddof=1):.3f}"
        else:
            r = g.iloc[0]
            rec, f1 = _fmt_pct(r.test_macro_recall), _fmt_pct(r.test_macro_f1)
            ao = f"{r.aopc:.3f} [{r.aopc_ci_low:.3f}, {r.aopc_ci_high:.3f}]" if pd.notna(r.aopc) else "n/a"
        out.append({"Base model": key[0], "Explainer": key[1], "Perturbation": key[2], "Seeds": n, "Test Recall": rec, "Test F1": f1, "AOPC": ao})
    return pd.DataFrame(out)


def per_image_aopc(jobs: Sequence[Job], order: str = "morf") -> dict[tuple, np.ndarray]:
    """{(model, explainer, perturbation): per-image AOPC pooled over the jobs (seeds)}."""
    pooled: dict[tuple, list] = {}
    for j in jobs:
        sc = j.metrics.get("scoring")
        if not sc:
            continue
        c = j.curves.get(f"{sc['explainer']}/{order}")
        if c is None:
            continue
        key = (j.metrics["model"]["backbone"], sc["explainer"], _perturbation_label(sc.get("perturbation")))
        pooled.setdefault(key, []).append(aopc_per_image(c))
    return {k: np.concatenate(v) for k, v in pooled.items()}


def pairwise(jobs: Sequence[Job], n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """AOPC differences between models (same explainer and perturbation): bootstrap CI and p-value."""
    per = per_image_aopc(jobs)
    rows = []
    groups: dict[tuple, list] = {}
    for (model, ex, pert), v in per.items():
        groups.setdefault((ex, pert), []).append((model, v))
    for (ex, pert), items in groups.items():
        for (ma, a), (mb, b) in itertools.combinations(items, 2):
            if len(a) < 2 or len(b) < 2:
                continue
            r = bootstrap_diff(a, b, n_resamples=n_resamples, seed=seed)
            rows.append({"model_a": ma, "model_b": mb, "explainer": ex, "perturbation": pert, "aopc_a": float(a.mean()), "aopc_b": float(b.mean()),
                         "diff": r["diff"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_value": r["p_value"], "n_a": len(a), "n_b": len(b)})
    return pd.DataFrame(rows)


def aopc_by_step_bands(jobs: Sequence[Job], n_resamples: int = 1000, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{label: (AOPC(K), CI low, CI high)} per (model, explainer, perturbation), seeds pooled."""
    pooled: dict[str, list] = {}
    for j in jobs:
        sc = j.metrics.get("scoring")
        c = j.curves.get(f"{sc['explainer']}/morf") if sc else None
        if c is None or not len(c):
            continue
        label = f"{j.metrics['model']['backbone']} / {sc['explainer']} / {_perturbation_label(sc.get('perturbation'))}"
        pooled.setdefault(label, []).append(np.asarray(c, np.float64))
    out = {}
    rng = np.random.default_rng([seed, 0xA0])
    for label, cs in pooled.items():
        c = np.concatenate(cs) if len({x.shape[1] for x in cs}) == 1 else cs[0]
        drops = c[:, :1] - c[:, 1:]  # (N, K)
        steps = np.arange(2, c.shape[1] + 1)
        y = np.cumsum(drops.mean(0)) / steps
        idx = rng.integers(0, len(c), size=(n_resamples, len(c)))
        boot = np.cumsum(drops[idx].mean(1), axis=1) / steps  # (R, K)
        lo, hi = np.quantile(boot, [0.025, 0.975], axis=0)
        out[label] = (y, lo, hi)
    return out


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    if frame.empty:
        return "_(none)_\n"
    cols = list(frame.columns)
    fmt = lambda v: (format(v, floatfmt) if isinstance(v, (float, np.floating)) and np.isfinite(v) else ("n/a" if isinstance(v, (float, np.floating)) else str(v)))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    esc = lambda s: str(s).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%").replace("_", "\\_").replace("#", "\\#").replace("±", "$\\pm$")
    fmt = lambda v: format(v, floatfmt) if isinstance(v, (float, np.floating)) else esc(v)
    lines = ["\\begin{tabular}{" + "l" * len(frame.columns) + "}", "\\hline", " & ".join(esc(c) for c in frame.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(fmt(v) for v in row) + " \\\\" for row in frame.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"
