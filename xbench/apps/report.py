"""``xbench-report <folder>...``: compare jobs (single runs, multiruns, or several).

Writes into ``--out`` (default: ``<first folder>/report``): ``summary.csv``,
``summary.md`` (the paper's table, the full table, pairwise model comparison,
incomplete jobs), ``pairwise.csv``, and plots: ``aopc_by_step``,
``mean_curves``, ``aopc_vs_recall``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("xbench.report")


def build_report(folders, out: Path, fmt: str = "png", latex: bool = False, n_resamples: int = 2000) -> dict:
    """Read the jobs under ``folders`` and write the report into ``out``; returns what was written."""
    import matplotlib.pyplot as plt

    from xbench import io, plots
    from xbench.report import aopc_by_step_bands, collect, pairwise, paper_table, summary_frame, to_latex, to_markdown

    col = collect(folders)
    io.ensure_dir(out)
    frame = summary_frame(col.jobs)
    io.write_csv(out / "summary.csv", frame)
    table = paper_table(frame) if len(frame) else frame
    pw = pairwise(col.jobs, n_resamples=n_resamples) if col.jobs else frame.iloc[0:0]
    io.write_csv(out / "pairwise.csv", pw)
    md = ["# xbench report", "", f"{len(col.jobs)} job(s) read from: " + ", ".join(str(f) for f in folders), ""]
    md += ["## The paper's table", "", "AOPC of the explainer's MoRF curves over the scored (correctly classified) test images;",
           "several seeds: mean ± standard deviation over seeds; one seed: the value and its bootstrap 95% CI over images.", "",
           to_markdown(table)]
    full_cols = ["model", "seed", "explainer", "perturbation", "test_accuracy", "test_macro_recall", "test_macro_f1", "aopc", "aopc_ci_low",
                 "aopc_ci_high", "abpc", "aopc_gain_over_random", "lung_share", "images_scored", "images_correct", "images_test"]
    md += ["## All jobs", "", to_markdown(frame[[c for c in full_cols if c in frame]] if len(frame) else frame)]
    md += ["## Pairwise comparison of models (AOPC, MoRF)", "", "diff = AOPC(a) - AOPC(b), per-image AOPC pooled over seeds; percentile bootstrap CI and two-sided p-value.", "",
           to_markdown(pw)]
    if col.incomplete:
        md += ["## Incomplete or failed jobs (skipped)", ""] + [f"- `{d}`: {why}" for d, why in col.incomplete] + [""]
    io.write_text(out / "summary.md", "\n".join(md))
    written = ["summary.csv", "summary.md", "pairwise.csv"]
    if latex:
        io.write_text(out / "summary.tex", to_latex(table))
        written.append("summary.tex")
    bands = aopc_by_step_bands(col.jobs)
    figs = {}
    if bands:
        figs["aopc_by_step"] = plots.aopc_by_step_figure(bands)
        mean = {}
        for j in col.jobs:
            sc = j.metrics.get("scoring")
            if not sc:
                continue
            for order in ("morf", "lerf"):
                c = j.curves.get(f"{sc['explainer']}/{order}")
                if c is not None:
                    mean.setdefault(f"{j.metrics['model']['backbone']} {order}", []).append(c)
        figs["mean_curves"] = plots.mean_curves_figure({k: v[0] if len(v) == 1 else _stack(v) for k, v in mean.items()})
    scored = frame[frame["aopc"].notna()] if len(frame) else frame
    if len(scored):
        figs["aopc_vs_recall"] = plots.aopc_vs_recall_figure(scored)
    for name, fig in figs.items():
        io.save_figure(out / f"{name}.{fmt}", fig, dpi=120)
        plt.close(fig)
        written.append(f"{name}.{fmt}")
    return {"out": str(out), "jobs": len(col.jobs), "incomplete": col.incomplete, "written": written}


def _stack(curves):
    import numpy as np

    width = min(c.shape[1] for c in curves)
    return np.concatenate([c[:, :width] for c in curves])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="xbench-report", description="Summarise xbench job folders: tables, pairwise tests, plots.")
    p.add_argument("folders", nargs="+", help="job folders, multirun folders, or parents of them")
    p.add_argument("--out", help="report folder (default: <first folder>/report)")
    p.add_argument("--format", default="png", choices=("png", "svg", "pdf"), help="plot format")
    p.add_argument("--latex", action="store_true", help="also write summary.tex")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for the pairwise test (>= 1000)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.resamples < 1000:
        p.error("--resamples must be >= 1000")
    out = Path(a.out) if a.out else Path(a.folders[0]) / "report"
    try:
        res = build_report(a.folders, out, a.format, a.latex, a.resamples)
    except FileNotFoundError as exc:
        print(f"xbench-report: error: {exc}", file=sys.stderr)
        return 2
    for d, why in res["incomplete"]:
        log.warning("skipped %s: %s", d, why)
    print(f"{res['jobs']} job(s), {len(res['incomplete'])} skipped; wrote {', '.join(res['written'])} to {res['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
