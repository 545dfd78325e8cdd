"""``xbench-report <folder>...``: compare jobs (single runs, multiruns, or several).

Writes into ``--out`` (default: ``<first folder>/report``): ``summary.csv``
(one row per job), ``summary.md`` (the paper's table per measurement, the
self-validation table, pairwise comparisons, all jobs, incomplete jobs),
``pairwise.csv``, ``reliability.csv`` (when jobs vary only how the metric is computed), ``methods.csv`` (every method ranked), ``scorecard.csv`` (every method across the metric families), and plots: ``aopc_by_step``, ``mean_curves``, ``aopc_vs_recall``, ``scorecard``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("xbench.pipeline.report")


def build_report(folders, out: Path, fmt: str = "png", latex: bool = False, n_resamples: int = 2000) -> dict:
    """Read the jobs under ``folders`` and write the report into ``out``; returns what was written."""
    import matplotlib.pyplot as plt

    from xbench.core import io
    from xbench.pipeline import plots, results, scorecard
    from xbench.pipeline import report as R

    col = R.collect(folders)
    io.ensure_dir(out)
    frame = R.summary_frame(col.jobs)
    io.write_csv(out / results.SUMMARY_CSV, frame)
    groups = R.measurements(col.jobs)
    table = R.paper_table(groups)
    pw = R.pairwise(groups, n_resamples=n_resamples)
    io.write_csv(out / results.PAIRWISE_CSV, pw)
    reliab = R.metric_reliability(col.jobs, n_resamples=n_resamples)
    methods = R.methods_table(col.jobs, n_resamples=n_resamples)
    card = scorecard.scorecard(col.jobs, reliab, n_resamples=n_resamples)
    io.write_text(out / results.SUMMARY_MD, summary_markdown(col, folders, frame, groups, table, pw, reliab, methods, card))
    written = [results.SUMMARY_CSV, results.SUMMARY_MD, results.PAIRWISE_CSV]
    if len(card):
        io.write_csv(out / results.SCORECARD_CSV, card)
        written.append(results.SCORECARD_CSV)
    if len(methods):
        io.write_csv(out / results.METHODS_CSV, methods)
        written.append(results.METHODS_CSV)
    if len(reliab):
        io.write_csv(out / results.RELIABILITY_CSV, reliab)
        written.append(results.RELIABILITY_CSV)
    if latex:
        io.write_text(out / results.SUMMARY_TEX, R.to_latex(table))
        written.append(results.SUMMARY_TEX)
    figs = {}
    bands = R.aopc_by_step_bands(groups)
    if bands:
        figs[results.AOPC_BY_STEP] = plots.aopc_by_step_figure(bands)
        figs[results.MEAN_CURVES] = plots.mean_curves_figure(R.mean_curves(groups))
    scored = frame[frame["aopc"].notna()] if len(frame) else frame
    if len(scored):
        figs[results.AOPC_VS_RECALL] = plots.aopc_vs_recall_figure(scored)
    if len(card):
        figs[results.SCORECARD_PLOT] = plots.scorecard_figure(card, scorecard.headline(card))
    for name, fig in figs.items():
        io.save_figure(out / f"{name}.{fmt}", fig, dpi=120)
        plt.close(fig)
        written.append(f"{name}.{fmt}")
    return {"out": str(out), "jobs": len(col.jobs), "incomplete": col.incomplete, "written": written}


def summary_markdown(col, folders, frame, groups, table, pw, reliab=None, methods=None, card=None) -> str:
    """The text of ``summary.md``: each table with a sentence on what it pools and resamples.

    ``reliab``: :func:`xbench.pipeline.report.metric_reliability` of the jobs (computed here when None); ``card``:
    :func:`xbench.pipeline.scorecard.scorecard` (likewise).
    """
    from xbench.pipeline import report as R
    from xbench.pipeline import scorecard

    if reliab is None:
        reliab = R.metric_reliability(col.jobs)
    subsets = sorted({j.scoring.subset for j in col.jobs if j.scoring is not None})
    which = {"correct": "correctly classified", "all": "all"}
    md = ["# xbench report", "", f"{len(col.jobs)} job(s) read from: " + ", ".join(str(f) for f in folders), ""]
    md += ["## The paper's table", "",
           f"AOPC of the explainer's MoRF curves over the scored ({' / '.join(which.get(s, s) for s in subsets) or 'no'}) test images. One row per "
           "measurement: jobs are pooled only when they differ by seed alone, and Seeds counts distinct seeds. Several seeds: mean ± standard "
           "deviation over seeds; one seed: the value and its bootstrap 95% CI over images.", "", R.to_markdown(table)]
    if col.multilabel:
        md += ["## Multi-label models: the test split per label", "",
               "Each label of a multi-label model is a measurement of its own (the `score.label` setting in the tables below): its targets are "
               "the (image, label) pairs of `score.labels`, explained as the label being present, its curves track that label's sigmoid. "
               "AUROC is over every test image; precision, recall and F1 at the job's label threshold.", "",
               R.to_markdown(R.multilabel_table(col.multilabel))]
    md += ["## Self-validation", "",
           "Each explainer beside the controls on the same images: the random control is the floor (a uniformly random region order; for deletion "
           "and insertion a uniformly random pixel order); "
           "`oracle` (the blurred lesion mask) shows what a right explanation scores and `shortcut_marker` what a cheating one does. "
           "Localisation figures use the images that have the mask (lesion: not Normal). 95% CIs are bootstrap over images.", "",
           R.to_markdown(R.self_validation(col.jobs))]
    if methods is None:
        methods = R.methods_table(col.jobs)
    if len(methods) and methods.groupby(["model", "seed"]).size().max() > 2:
        md += ["## Methods compared", "",
               "Every explainer and control of the jobs of one model and seed (the same test images), ranked by the figure named in "
               "'ranked by' in its better direction (CheXlocalize, Saporta et al. 2022: localisation first where the data has lesions). Cells: "
               "mean and 95% bootstrap CI over images (localisation: images with a lesion; lesion_iou after Otsu's threshold, pointing_hit the "
               "hit rate of the map's maximum). 'vs next': the paired difference with the method ranked just below on the ranking figure, signed "
               "so that positive = better, bootstrap over the images both score; p_holm: its p-value Holm-corrected across this table.", "",
               R.to_markdown(methods)]
    if card is None:
        card = scorecard.scorecard(col.jobs, reliab)
    if len(card):
        md += ["## Scorecard", "",
               "For each model, seed and method, one row across the metric families (faithfulness, localisation, robustness, complexity, "
               "randomisation; only the figures the jobs scored). Cells: mean and 95% bootstrap CI over the scored images; '*' where the "
               "method beats the random control image by image (paired bootstrap, Holm-corrected across the scorecard, p < 0.05). "
               "scorecard.csv holds every figure's paired difference with the random control and with the oracle (signed so that positive = "
               "better), the p-values and the reliability flag; robustness has no floor (a map that ignores the image is perfectly stable). "
               "The randomisation cell of the check is its verdict (passes / fails / inconclusive).", "",
               R.to_markdown(scorecard.wide(card))]
    pixel = R.pixel_auc_table(frame)
    if len(pixel):
        md += ["## Deletion and insertion (pixel curves)", "",
               "Petsiuk et al. (2018): pixels ranked by the map, most relevant first (ties by row-major index), changed a step at a time "
               "(score.pixel_steps steps; default: as many as regions). Deletion replaces them by the job's perturbation (lower AUC is better); "
               "insertion puts the original pixels back into a Gaussian-blurred image (score.insertion_blur px; higher AUC is better). AUC: "
               "trapezoid rule over the fraction of pixels changed, mean over images with its bootstrap 95% CI over images. The random "
               "control ranks pixels in a uniformly random order. Gains over random are paired by image and signed so that positive = "
               "better than random (deletion: random - explainer; insertion: explainer - random).", "", R.to_markdown(pixel)]
    shortcut = R.shortcut_table(col.jobs)
    if len(shortcut):
        md += ["## Shortcut self-test", "",
               "A model trained with a marker on the shortcut class must be caught: Grad-CAM mass on the marker, the shortcut_marker "
               "reference map's AOPC, less lesion mass, and recall falling on images without the marker. 95% CIs over images.", "",
               R.to_markdown(shortcut)]
    sanity = R.sanity_table(col.jobs)
    if len(sanity):
        md += ["## Sanity check: model-parameter randomisation", "",
               "The trained model's layers re-initialised from the top (logits, head, then the backbone's blocks), cascading or one group at a "
               "time, and each map recomputed. Cells: Spearman correlation of the absolute map with the trained model's map of the same image, "
               "mean and 95% bootstrap CI over images. A map that explains the model must fall below the baseline (the same measure between "
               "maps of random image pairs; its CI bootstraps images, re-forming the pairs): 'passes' when some depth is below it (one-sided "
               "image-bootstrap test of the difference, Holm-corrected over the depths, 0.05), 'fails' when at every depth the difference's CI "
               "lies at or above 0 (a map that ignores the model, like center or edge, stays at 1). Images whose trained-model map is constant "
               "rank nothing and are left out (images counts the rest). AOPC rows: the randomised model's maps scored on the randomised and "
               "on the trained model, each beside the random control on that model.", "", R.to_markdown(sanity)]
    md += ["## Pairwise comparisons (AOPC, MoRF)", "",
           "diff = AOPC(a) - AOPC(b). unit = seeds: paired t-test over the seeds both share (Welch's test when they share none); "
           "unit = images: paired bootstrap over the images both scored, p floored at 1/(R+1). p_holm: Holm-corrected across this table.", "",
           R.to_markdown(pw)]
    if len(reliab):
        md += ["## Metric reliability", "",
               "Jobs that differ only in how the metric is computed (perturbation and its parameters, region size, steps), with the same "
               "model, data and seed, are variants of one metric, and so are the MoRF, LeRF and ABPC of the same curves (Tomsett et al. 2020). "
               "Internal consistency: mean pairwise Spearman and Krippendorff's alpha (interval) of the per-image values across the variants; "
               "inter-method reliability: mean Kendall tau-b of the methods' ranking by mean AOPC between variants (MoRF variants only: "
               "controls are scored MoRF only). Images are paired by id (only those every variant scored); every 95% CI is a percentile "
               "bootstrap that resamples these images (the same resampled images for every variant and method). The random control's ABPC "
               "CI must contain 0.", "", R.to_markdown(reliab)]
    full_cols = ["model", "seed", "explainer", "perturbation", "test_accuracy", "test_macro_recall", "test_macro_f1", "aopc", "aopc_ci_low", "aopc_ci_high",
                 "abpc", "aopc_random", "aopc_gain_over_random", "gain_ci_low", "gain_ci_high", "lung_share", "lesion_mass", "lesion_mass_random",
                 "marker_mass", "images_scored", "images_correct", "images_test"]
    full_cols += [c for c in ("deletion_auc", "deletion_auc_random", "deletion_auc_gain_over_random", "insertion_auc", "insertion_auc_random",
                              "insertion_auc_gain_over_random") if c in frame and frame[c].notna().any()]
    md += ["## All jobs", "", R.to_markdown(frame[[c for c in full_cols if c in frame]] if len(frame) else frame)]
    if col.incomplete:
        md += ["## Incomplete or failed jobs (skipped)", ""] + [f"- `{d}`: {why}" for d, why in col.incomplete] + [""]
    return "\n".join(md)


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
