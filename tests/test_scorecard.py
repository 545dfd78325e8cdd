"""The scorecard (xbench.pipeline.scorecard) on hand-made job results: one row per method across the families, paired against the controls."""

import numpy as np
import pandas as pd
import pytest

from tests.references import report_job
from xbench.metrics import comparison
from xbench.metrics.aopc import aopc_per_image
from xbench.pipeline import results as R
from xbench.pipeline import scorecard as S

N = 24


def _jobs():
    """Two jobs of one model and seed (gradcam, saliency), each beside the random control and the oracle, with figures of three families."""
    rng = np.random.default_rng(5)
    ids = np.arange(N)
    iou = {"gradcam": rng.uniform(0.4, 0.6, N), "saliency": rng.uniform(0.2, 0.5, N), "random": rng.uniform(0.0, 0.1, N), "oracle": np.ones(N)}
    gini = {"gradcam": rng.uniform(0.5, 0.7, N), "saliency": rng.uniform(0.2, 0.4, N), "random": rng.uniform(0.1, 0.2, N), "oracle": rng.uniform(0.8, 0.9, N)}
    sens = {"gradcam": rng.uniform(0.1, 0.2, N), "saliency": rng.uniform(0.5, 0.9, N), "random": np.zeros(N), "oracle": np.zeros(N)}
    jobs = []
    for name in ("gradcam", "saliency"):
        job = report_job(name, 0, ids=ids)
        sc = job.scoring
        sc.explainer = name
        curve = job.curves.get("gradcam", "morf")
        sc.methods = {}
        for m in (name, "random", "oracle"):
            est = lambda v: R.Estimate(float(np.mean(v)), [float(np.min(v)), float(np.max(v))], N)
            c = (curve * (0.5 if m == "random" else 1.0)).astype(np.float32)
            job.curves.curves[(m, "morf")] = c
            sc.methods[m] = R.MethodScores({"morf": R.OrderScores(est(aopc_per_image(c)), [], {}, [])}, 0, 0, {},
                                           localisation={"lesion_iou": est(iou[m])},
                                           faithfulness={"sparseness": est(gini[m]), "max_sensitivity": est(sens[m])})
            for fig, v in (("lesion_iou", iou), ("sparseness", gini), ("max_sensitivity", sens)):
                job.curves.per_image[(fig, m)] = v[m].astype(np.float32)
        jobs.append(job)
    return jobs, iou, gini, sens


def test_every_method_gets_one_row_per_figure_paired_by_image_against_random_and_oracle():
    jobs, iou, gini, sens = _jobs()
    card = S.scorecard(jobs, n_resamples=1000)
    assert set(card["method"]) == {"gradcam", "saliency", "random", "oracle"}
    assert set(card.loc[card["role"] == "explainer", "method"]) == {"gradcam", "saliency"}
    assert list(dict.fromkeys(card["family"])) == ["faithfulness", "localisation", "robustness", "complexity"]  # FAMILY_ORDER
    assert len(card) == 4 * 4  # 4 methods x (aopc_morf, lesion_iou, max_sensitivity, sparseness)
    f32 = lambda v: v.astype(np.float32).astype(np.float64)
    row = card[(card["method"] == "saliency") & (card["figure"] == "lesion_iou")].iloc[0]
    assert row["mean"] == pytest.approx(iou["saliency"].mean()) and row["n"] == N
    want = comparison.paired_images(f32(iou["saliency"]), f32(iou["random"]), n_resamples=1000)
    assert (row["vs_random"], row["vs_random_ci_low"], row["p_vs_random"]) == pytest.approx((want["diff"], want["ci_low"], want["p_value"]))
    assert row["vs_oracle"] == pytest.approx(want := float((f32(iou["saliency"]) - 1.0).mean())) and want < 0  # short of the oracle
    # a lower-is-better figure is signed so that positive = better: complexity's sparseness is higher-better, sensitivity lower-better
    assert card[(card["method"] == "gradcam") & (card["figure"] == "sparseness")]["vs_random"].iloc[0] > 0
    # robustness has no floor: no pairing, a note instead
    rob = card[card["family"] == "robustness"]
    assert rob["vs_random"].isna().all() and rob["note"].str.contains("no floor").all()
    assert set(rob["better"]) == {"lower"}
    # Holm over every vs-random test of the table
    tested = card["p_vs_random"].notna()
    assert tested.sum() == 3 * 3  # gradcam, saliency, oracle x aopc, iou, sparseness
    assert card.loc[tested, "p_holm"].to_numpy() == pytest.approx(comparison.holm(card.loc[tested, "p_vs_random"].to_numpy()))
    assert card.loc[~tested, "p_holm"].isna().all()


def test_the_wide_table_and_the_plot_show_each_method_once():
    jobs, iou, *_ = _jobs()
    card = S.scorecard(jobs, n_resamples=1000)
    wide = S.wide(card)
    assert wide["method"].tolist().count("gradcam") == 1 and "random (control)" in wide["method"].tolist()
    assert [c.split(":")[0] for c in wide.columns[3:]] == sorted((c.split(":")[0] for c in wide.columns[3:]), key=S.FAMILY_ORDER.index)
    cell = wide.loc[wide["method"] == "gradcam", "localisation: lesion_iou (higher better)"].iloc[0]
    assert cell.startswith(f"{iou['gradcam'].mean():.3f} [") and cell.endswith("*")  # far above random on every image
    assert S.headline(card) == {"faithfulness": "aopc_morf", "localisation": "lesion_iou", "robustness": "max_sensitivity", "complexity": "sparseness"}
    from xbench.pipeline import plots

    fig = plots.scorecard_figure(card, S.headline(card))
    assert len(fig.axes) == 4 and [t.get_text() for t in fig.axes[0].get_yticklabels()][:2] == ["gradcam", "saliency"]


def test_the_randomisation_verdict_and_the_reliability_flag_reach_their_rows():
    jobs, *_ = _jobs()
    step = R.SanityStepScores("logits", 1, ["dense"], {}, {}, {}, 0, 0)
    check = R.SanityScores("gradcam", "cascading", N, 0, 10, {}, [step], {}, "passes", {})
    jobs[0].metrics.sanity = R.Sanity(N, list(range(N)), [check], None, 1.0)
    rel = pd.DataFrame([{"group": "gradcam on vgg16, seed 0", "computed": "internal consistency over the MoRF variants: Krippendorff's alpha "
                         "(interval) of per-image AOPC", "methods": "gradcam", "value": 0.41, "ci_low": 0.2, "ci_high": 0.6, "n_images": N,
                         "n_variants": 3, "note": ""}])
    card = S.scorecard(jobs, rel, n_resamples=1000)
    verdict = card[card["figure"] == "mprt_verdict"]
    assert verdict["method"].tolist() == ["gradcam"] and verdict["note"].tolist() == ["cascading MPRT: passes"]
    flag = card[(card["method"] == "gradcam") & (card["figure"] == "aopc_morf")]["note"].iloc[0]
    assert flag.startswith("unreliable: alpha 0.41")
    assert (card[(card["method"] == "saliency") & (card["figure"] == "aopc_morf")]["note"] == "").all()


def test_variants_of_one_model_and_seed_are_kept_apart_and_paired_within():
    """Two perturbations of the same model and seed: two groups, each method paired with its own variant's control."""
    jobs, iou, *_ = _jobs()
    other, _, _, _ = _jobs()
    for j in other:  # the same jobs scored with another perturbation: every figure shifted
        j.metrics.scoring.perturbation = {"name": "blur", "sigma": 3.0}
        for (fig, m), v in list(j.curves.per_image.items()):
            j.curves.per_image[(fig, m)] = (v + 0.1).astype(np.float32)
        for m in j.scoring.methods.values():
            e = m.localisation["lesion_iou"]
            m.localisation["lesion_iou"] = R.Estimate(e.mean + 0.1, e.ci95, e.n)
    card = S.scorecard(jobs + other, n_resamples=1000)
    assert card["setting"].nunique() == 2 and all("perturbation=" in s for s in card["setting"])
    iou_rows = card[(card["method"] == "gradcam") & (card["figure"] == "lesion_iou")]
    assert sorted(iou_rows["mean"]) == pytest.approx(sorted([iou["gradcam"].mean(), iou["gradcam"].mean() + 0.1]))
    # paired within the variant: the shift cancels, so both variants give the same difference with random
    assert iou_rows["vs_random"].iloc[0] == pytest.approx(iou_rows["vs_random"].iloc[1], abs=1e-6)
    assert "setting" in S.wide(card).columns and "setting" not in S.wide(S.scorecard(jobs, n_resamples=1000)).columns


def test_the_oracle_is_no_reference_for_randomisation():
    """The oracle ignores the model: for the randomisation family it is a second floor, so no vs_oracle there."""
    jobs, *_ = _jobs()
    rng = np.random.default_rng(9)
    for j in jobs:
        for m in j.scoring.methods:
            v = np.ones(N) if m in ("random", "oracle") else rng.uniform(0.1, 0.4, N)  # random_logit: model-blind maps score 1
            j.curves.per_image[("random_logit", m)] = v.astype(np.float32)
            j.scoring.methods[m].faithfulness["random_logit"] = R.Estimate(float(v.mean()), [float(v.min()), float(v.max())], N)
    card = S.scorecard(jobs, n_resamples=1000)
    rl = card[(card["figure"] == "random_logit") & (card["method"] == "gradcam")].iloc[0]
    assert rl["family"] == "randomisation" and rl["vs_random"] > 0 and np.isnan(rl["vs_oracle"])
    assert card[(card["figure"] == "lesion_iou") & (card["method"] == "gradcam")]["vs_oracle"].notna().all()


def test_a_setting_that_follows_the_model_is_no_variant():
    """The Grad-CAM layer differs between VGG16 and DenseNet201 jobs: one variant per model, no setting column."""
    jobs, *_ = _jobs()
    dense, *_ = _jobs()
    for j in jobs:
        j.metrics.config["model"]["gradcam_layer"] = "block4_conv3"
    for j in dense:
        j.metrics.model.backbone = "densenet201"
        j.metrics.config["model"] = {"backbone": "densenet201", "gradcam_layer": "pool4_conv"}
    card = S.scorecard(jobs + dense, n_resamples=1000)
    assert set(card["model"]) == {"vgg16", "densenet201"} and (card["setting"] == "").all()
    assert "setting" not in S.wide(card).columns
