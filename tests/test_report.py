"""The report's pooling and pairing rules on hand-made job results (no model)."""

from pathlib import Path

import numpy as np
import pytest

from tests.references import report_job
from xbench.metrics.bootstrap import MIN_SEEDS, MIN_UNITS, TOO_FEW_TEXT
from xbench.pipeline import report
from xbench.pipeline import results as R
from xbench.pipeline.identity import _flatten, identity


def test_a_rerun_of_a_seed_is_not_a_second_seed():
    groups = report.measurements([report_job("a", 0, drop=0.5), report_job("b", 0, drop=0.2)])
    assert len(groups) == 1 and len(groups[0].jobs) == 1 and groups[0].jobs[0].path == Path("b")
    row = report.paper_table(groups).iloc[0]
    assert row["Seeds"] == 1 and "±" not in row["AOPC"]


def test_models_are_paired_by_image_only_within_one_seed():
    same = report.measurements([report_job("v", 0, "vgg16"), report_job("d", 0, "densenet201", ids=(2, 3, 4, 5), drop=0.2)])
    r = report.compare(same[0], same[1], "gradcam", "gradcam", n_resamples=1000, seed=0)
    assert r["n_images"] == 2 and r["unit"] == "image" and r["diff"] < 0  # images 2 and 3, paired
    other = report.measurements([report_job("v", 0, "vgg16"), report_job("d", 1, "densenet201")])
    assert report.compare(other[0], other[1], "gradcam", "gradcam", n_resamples=1000, seed=0) is None
    seeds = report.measurements([report_job(f"v{s}", s, "vgg16") for s in (0, 1, 2)] + [report_job(f"d{s}", s, "densenet201", drop=0.2 + 0.01 * s) for s in (0, 1, 2)])
    r = report.compare(seeds[0], seeds[1], "gradcam", "gradcam", n_resamples=1000, seed=0)
    assert r["unit"] == "seed" and r["test"] == "paired t" and r["n_seeds"] == 3


def test_results_files_are_read_strictly(tmp_path):
    import json

    import pytest

    job = report_job(tmp_path, 0)
    R.write_metrics(tmp_path, job.metrics)
    assert R.read_metrics(tmp_path) == job.metrics  # round trip
    raw = json.loads((tmp_path / R.METRICS_FILE).read_text())
    for mutate, message in [
        (lambda d: d["scoring"].pop("methods"), "missing field 'scoring.methods'"),
        (lambda d: d["scoring"].__setitem__("gains_over_randm", {}), "unknown field 'scoring.gains_over_randm'"),
        (lambda d: d["test"]["macro_avg"].__setitem__("recall", "high"), "test.macro_avg.recall: expected a number"),
        (lambda d: d.__setitem__("format_version", 1), "format_version is 1"),
    ]:
        bad = json.loads(json.dumps(raw))
        mutate(bad)
        (tmp_path / R.METRICS_FILE).write_text(json.dumps(bad))
        with pytest.raises(R.ResultsFormatError, match=message.replace("(", r"\(")):
            R.read_metrics(tmp_path)


def test_a_reference_map_is_read_only_on_the_images_with_its_ground_truth(tmp_path):
    """oracle as the configured explainer: images without a lesion (Normal) are in curves.npz but in none of its figures."""
    job = report_job("o", 0, ids=(0, 1, 2, 3))
    curves = job.curves
    oracle = curves.get("gradcam", "morf").copy()
    oracle[2:] = np.linspace(50.0, 0.0, oracle.shape[1])  # rows 2, 3 (no lesion): a steep fall that would move every figure if read
    curves.curves = {("oracle", "morf"): oracle, ("random", "morf"): curves.get("gradcam", "morf")}
    curves.per_image[(R.SCORED, "oracle")] = np.array([1, 1, 0, 0], np.float32)
    job.metrics.scoring.explainer = "oracle"
    back = R.Curves.from_arrays(curves.to_arrays())  # the marker survives curves.npz
    assert back.rows("oracle").tolist() == [True, True, False, False] and back.rows("random").all()
    ids, kept = back.scored("oracle", "morf")
    assert ids.tolist() == [0, 1] and (kept < 2).all()
    g = report.measurements([job])[0]
    r = report.compare(g, g, "oracle", "random", n_resamples=1000, seed=0)
    assert r["n_images"] == 2 and abs(r["diff"]) < 1e-9  # rows 0, 1 of both: equal curves
    (band, lo, hi), = report.aopc_by_step_bands([g]).values()
    assert np.abs(band).max() < 1  # rows 0, 1 fall by at most 0.5; rows 2, 3 would give AOPC(K) in the tens
    assert all((c < 2).all() for c in report.mean_curves([g]).values())
    # Several seeds: each seed's explainer and control means are over the images both count.
    seeds = []
    for s in (0, 1, 2):
        j = report_job(f"o{s}", s)
        c = j.curves.get("gradcam", "morf")
        j.curves.curves = {("oracle", "morf"): np.vstack([c[:2], np.tile(np.linspace(50.0, 0.0, c.shape[1]), (2, 1))]).astype(np.float32),
                           ("gradcam", "morf"): c}
        j.curves.per_image[(R.SCORED, "oracle")] = np.array([1, 1, 0, 0], np.float32)
        seeds.append(j)
    gs = report.measurements(seeds)[0]
    r = report.compare(gs, gs, "gradcam", "oracle", n_resamples=1000, seed=0)
    assert r["unit"] == "seed" and r["n_seeds"] == 3 and abs(r["diff"]) < 1e-9  # equal on rows 0, 1


def test_self_validation_pairs_localisation_with_random_by_image():
    job = report_job("v", 0, ids=(0, 1, 2, 3))
    job.curves.curves[("random", "morf")] = job.curves.get("gradcam", "morf")
    job.metrics.scoring.gains_over_random = {"gradcam": R.Estimate(0.0, [0.0, 0.0], 4)}
    job.metrics.scoring.methods["gradcam"].localisation = {"lesion_mass": R.Estimate(0.3, [0.2, 0.4], 3)}
    job.curves.per_image[("lesion_mass", "gradcam")] = np.array([0.3, 0.5, np.nan, 0.1], np.float32)
    job.curves.per_image[("lesion_mass", "random")] = np.array([0.1, 0.2, 0.9, 0.05], np.float32)
    frame = report.self_validation([job])
    row = frame[frame["method"] == "gradcam - random (paired by image)"].iloc[0]
    diff = float(row["lesion_mass"].split()[0])
    assert diff == pytest.approx(np.mean([0.2, 0.3, 0.05]), abs=1e-3)  # image 2 (NaN for gradcam) left out of both


def test_metrics_written_before_the_pixel_orders_still_load(tmp_path):
    import json

    job = report_job(tmp_path, 0)
    R.write_metrics(tmp_path, job.metrics)
    raw = json.loads((tmp_path / R.METRICS_FILE).read_text())
    for key in ("pixel_steps", "pixels_per_step", "insertion_blur", "auc_gains_over_random"):
        raw["scoring"].pop(key)
    for order in raw["scoring"]["methods"]["gradcam"]["orders"].values():
        for key in ("auc", "auc_per_class", "fractions"):
            order.pop(key)
    (tmp_path / R.METRICS_FILE).write_text(json.dumps(raw))
    back = R.read_metrics(tmp_path)
    assert back == job.metrics and back.scoring.auc_gains_over_random == {} and back.scoring.methods["gradcam"].orders["morf"].auc is None
    row = R.summary_row(R.JobResult(tmp_path, back, job.curves))
    assert R.is_nan(row["deletion_auc"]) and R.is_nan(row["insertion_auc_gain_over_random"])
    assert report.pixel_auc_table(report.summary_frame([R.JobResult(tmp_path, back, job.curves)])).empty


# ---------------------------------------------------------------- what a setting means for a measurement (field metadata)

#: The path lists the field metadata replaced (report.NOT_IDENTITY, METRIC_KEYS, NOT_VARIANT before issue 24): the groupings must stay these.
_OLD_NOT_IDENTITY = ("seed", "cache_dir", "plots", "score.bootstrap", "score.chunk_images", "score.batch_size", "score.memory_budget_mb",
                     "score.save_heatmaps", "score.controls", "score.enabled", "sanity", "tracking")
_OLD_METRIC = ("perturbation", "score.region_size", "score.steps", "score.max_steps", "score.orders", "score.pixel_steps", "score.insertion_blur",
               "score.metrics", "score.metric_params")  # the last two: the faithfulness metrics (issue 26), which leave the curves alone
_OLD_NOT_VARIANT = ("score.orders", "score.pixel_steps", "score.insertion_blur", "score.metrics", "score.metric_params")


def _under(key, paths):
    return any(key == p or key.startswith(p + ".") for p in paths)


def _composed(overrides):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import xbench.apps.run  # noqa: F401  (registers the schemas)

    with initialize_config_module(config_module="xbench.conf", version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


@pytest.mark.parametrize("overrides", [[], ["+experiment=sanity", "tracking=mlflow", "score.orders=[morf,lerf,deletion,insertion]"],
                                       ["perturbation=gaussian", "score.region_size=8", "score.max_steps=3"],
                                       ["model=file", "model.path=m.keras", "data=folder", "data.root=/tmp/x"]])
def test_identity_and_metric_keys_of_a_composed_config_are_declared_by_field_metadata(overrides):
    config = _composed(overrides)
    job = report_job("j", 0)
    job.metrics.config = config
    ident = identity(job)
    keys = set(_flatten(config)) | set(ident)
    assert {k for k in keys if k not in ident} == {k for k in keys if _under(k, _OLD_NOT_IDENTITY)}
    assert {k for k in ident if report._is_metric_key(k)} == {k for k in ident if _under(k, _OLD_METRIC)} != set()
    assert {k for k in ident if report._is_variant_key(k)} == {k for k in ident if _under(k, _OLD_METRIC) and not _under(k, _OLD_NOT_VARIANT)}
    assert {"score.chunk_images", "seed", "cache_dir", "sanity.enabled"} & set(ident) == set() and "score.subset" in ident


def test_a_setting_without_metadata_is_part_of_the_identity_and_metadata_moves_with_a_renamed_field():
    import dataclasses

    from xbench.apps.config import XbenchConfig
    from xbench.pipeline import settings

    # The entry point's schema only redeclares defaults: its fields (and their order, which metrics.json keeps) are JobConfig's.
    assert [f.name for f in dataclasses.fields(XbenchConfig)] == [f.name for f in dataclasses.fields(settings.JobConfig)]
    job = report_job("j", 0)
    job.metrics.config = {"score": {"chunk_images": 4, "planted_knob": 3}, "seed": 1, "perturbation": {"name": "constant"}}
    ident = identity(job)
    assert ident["score.planted_knob"] == 3 and "score.chunk_images" not in ident and "seed" not in ident

    @dataclasses.dataclass
    class Renamed:  # score.chunk_images renamed to images_per_chunk, its field metadata with it
        images_per_chunk: int = dataclasses.field(default=16, metadata=settings.NOT_IDENTITY)
        knob: int = 0

    @dataclasses.dataclass
    class Root:
        score: Renamed = dataclasses.field(default_factory=Renamed)

    assert settings.setting_flags("score.images_per_chunk", Root) == {"identity": False} and settings.setting_flags("score.knob", Root) == {}


def test_the_methods_table_ranks_every_method_of_a_model_and_tests_each_against_the_next():
    from xbench.metrics import comparison

    rng = np.random.default_rng(3)
    n = MIN_UNITS  # enough images for CIs and p-values (below it the table says "n too small")
    ids = np.arange(n)
    iou = {"gradcam": rng.uniform(0.4, 0.6, n), "occlusion": rng.uniform(0.1, 0.3, n), "random": rng.uniform(0.0, 0.1, n)}
    drop = {"gradcam": rng.uniform(0.0, 0.2, n), "occlusion": rng.uniform(0.3, 0.5, n), "random": rng.uniform(0.6, 0.8, n)}  # lower is better
    jobs = []
    for name in ("occlusion", "gradcam"):  # the jobs of one model and seed, each an explainer beside the random control
        job = report_job(name, 0, ids=ids)
        sc = job.scoring
        sc.explainer = name
        sc.methods = {}
        for m in (name, "random"):
            e = R.Estimate(float(iou[m].mean()), [0.0, 1.0], n)
            sc.methods[m] = R.MethodScores({}, 0, 0, {}, localisation={"lesion_iou": e},
                                           faithfulness={"average_drop": R.Estimate(float(drop[m].mean()), [0.0, 1.0], n)})
            job.curves.per_image[("lesion_iou", m)] = iou[m].astype(np.float32)
            job.curves.per_image[("average_drop", m)] = drop[m].astype(np.float32)
        jobs.append(job)
    t = report.methods_table(jobs, n_resamples=1000)
    assert t["method"].tolist() == ["gradcam", "occlusion", "random (control)"] and t["rank"].tolist() == [1, 2, 3]
    assert set(t["ranked by"]) == {"lesion_iou"}
    f32 = lambda m: iou[m].astype(np.float32).astype(np.float64)
    first, second = (comparison.paired_images(f32(a), f32(b), n_resamples=1000) for a, b in (("gradcam", "occlusion"), ("occlusion", "random")))
    assert t["vs next"][0].startswith(f"occlusion: {first['diff']:.3f} [") and t["vs next"][1].startswith(f"random: {second['diff']:.3f} [")
    assert t["p_holm"].iloc[:2].tolist() == pytest.approx(comparison.holm([first["p_value"], second["p_value"]]).tolist())
    assert np.isnan(t["p_holm"].iloc[2])  # the last method has nothing below it
    # a lower-is-better figure ranks ascending, and its differences are signed so that positive = better
    t = report.methods_table(jobs, rank_by="average_drop", n_resamples=1000)
    assert t["method"].tolist() == ["gradcam", "occlusion", "random (control)"]
    assert float(t["vs next"][0].split(": ")[1].split(" ")[0]) > 0


def test_a_ci_or_p_over_too_few_units_prints_n_too_small_and_no_data_prints_n_a():
    """Issue 27: the formatting helpers and the markdown tables withhold a CI or p-value below the minimum of units."""
    assert report._fmt_est(R.Estimate(0.5, [0.4, 0.6], MIN_UNITS)) == "0.500 [0.400, 0.600]"
    assert report._fmt_est(R.Estimate(0.5, [np.nan, np.nan], MIN_UNITS - 1)) == f"0.500 [{TOO_FEW_TEXT}]"
    # results written before the rule carry a CI over 2 images: it is not printed either
    assert report._fmt_est(R.Estimate(0.5, [0.4, 0.6], 2)) == f"0.500 [{TOO_FEW_TEXT}]"
    assert report._fmt_est(None) == report._fmt_est(R.Estimate(np.nan, [np.nan, np.nan], 0)) == "n/a"
    assert report._fmt_est(R.Estimate(1e-5, [np.nan, np.nan], 3), ".3g") == f"1e-05 [{TOO_FEW_TEXT}]"
    # seeds: a t interval from MIN_SEEDS on
    assert report._fmt_est(R.Estimate(0.5, [0.1, 0.9], MIN_SEEDS, "seeds")) == "0.500 [0.100, 0.900]"
    paired = {"diff": 0.2, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n_images": 3, "unit": "image"}
    assert report._fmt_paired(paired) == f"0.200 [{TOO_FEW_TEXT}]" and report._fmt_paired(None) == "n/a"
    assert report._fmt_paired({**paired, "diff": np.nan, "n_images": 0}) == "n/a"
    import pandas as pd

    frame = pd.DataFrame([{"a": "x", "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "p_holm": np.nan, "n_images": 3, "unit": "image"},
                          {"a": "y", "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "p_holm": np.nan, "n_images": 0, "unit": "image"},
                          {"a": "z", "ci_low": 0.1, "ci_high": 0.3, "p_value": 0.01, "p_holm": 0.02, "n_images": MIN_UNITS, "unit": "image"},
                          {"a": "s", "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "p_holm": np.nan, "n_seeds": 1, "unit": "seed"}])
    lines = report.to_markdown(frame).splitlines()[2:]
    assert lines[0].count(TOO_FEW_TEXT) == 4 and lines[3].count(TOO_FEW_TEXT) == 4
    assert TOO_FEW_TEXT not in lines[1] and lines[1].count("n/a") == 5  # four CI / p columns and its empty n_seeds
    assert TOO_FEW_TEXT not in lines[2] and "0.100" in lines[2] and "0.01" in lines[2]
    assert report.mark_too_few(frame.iloc[2:3]) is frame.iloc[2:3] or TOO_FEW_TEXT not in report.to_markdown(frame.iloc[2:3])


def test_the_report_of_a_tiny_job_says_n_too_small_instead_of_a_ci(tmp_path):
    """A job of 4 scored images (the smoke experiment scores 2): no CI and no p-value in summary.md, "n too small" in their place."""
    from xbench.apps.report import build_report
    from xbench.metrics.aopc import aopc_per_image

    for name, ids, backbone in (("tiny", np.arange(4), "vgg16"), ("enough", np.arange(MIN_UNITS), "densenet201")):
        job = report_job(tmp_path / "jobs" / name, 0, backbone, ids=ids)
        rnd = np.flipud(job.curves.get("gradcam", "morf")).copy()
        job.curves.curves[("random", "morf")] = rnd
        sc = job.metrics.scoring
        sc.methods["random"] = R.MethodScores({"morf": R.OrderScores(R.Estimate(float(aopc_per_image(rnd).mean()), [0.0, 1.0], len(ids)), [], {}, [])}, 0, 0, {})
        if len(ids) < MIN_UNITS:  # what the scorer now writes: no CI below the minimum
            for m in sc.methods.values():
                m.orders["morf"].aopc.ci95 = [float("nan"), float("nan")]
        R.write_metrics(job.path, job.metrics)
        R.write_curves(job.path, job.curves)
    build_report([tmp_path / "jobs"], tmp_path / "report", n_resamples=1000)
    md = (tmp_path / "report" / R.SUMMARY_MD).read_text()
    table = md.split("## The paper's table")[1].split("##")[0]
    tiny = next(line for line in table.splitlines() if "| 4 |" in line)
    assert TOO_FEW_TEXT in tiny and "[" + TOO_FEW_TEXT + "]" in tiny
    enough = next(line for line in table.splitlines() if f"| {MIN_UNITS} |" in line)
    assert TOO_FEW_TEXT not in enough
    pairwise = md.split("## Pairwise comparisons")[1].split("##")[0]
    control = [line for line in pairwise.splitlines() if "explainer vs control" in line]
    assert len(control) == 2
    small, big = sorted(control, key=lambda line: TOO_FEW_TEXT not in line)
    assert small.count(TOO_FEW_TEXT) == 4 and "| 4 |" in small  # ci_low, ci_high, p_value, p_holm
    assert TOO_FEW_TEXT not in big
    import pandas as pd

    pw = pd.read_csv(tmp_path / "report" / R.PAIRWISE_CSV)
    assert pw.loc[pw["n_images"] == 4, ["ci_low", "ci_high", "p_value", "p_holm"]].isna().all().all()
    assert pw.loc[pw["n_images"] == MIN_UNITS, ["ci_low", "ci_high", "p_value", "p_holm"]].notna().all().all()
