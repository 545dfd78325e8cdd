"""Reliability of the metric itself (Tomsett et al. 2020): kernels against slow references, and the report's grouping on hand-made jobs (no model)."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from xbench.metrics import reliability as rel
from xbench.pipeline import report
from xbench.pipeline import results as R

# ---------------------------------------------------------------- kernels


def _alpha_coincidence(ratings):
    """Krippendorff's alpha (interval) from the coincidence matrix, the textbook way (slow, obvious)."""
    x = np.asarray(ratings, float)
    values = sorted({v for v in x.ravel() if np.isfinite(v)})
    pos = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for u in range(x.shape[1]):
        col = [v for v in x[:, u] if np.isfinite(v)]
        m = len(col)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            o[pos[col[i]], pos[col[j]]] += 1 / (m - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    d2 = np.array([[(a - b) ** 2 for b in values] for a in values])
    observed = (o * d2).sum()
    expected = (np.outer(n_c, n_c) * d2).sum()
    return 1 - (n - 1) * observed / expected


def test_alpha_by_hand():
    # Units [1, 2], [2, 3], [3, 3], two coders. n = 6 pairable values.
    # D_o = 1/n sum_u 1/(m_u - 1) sum_{c != k} (c - k)^2 = (2 + 2 + 0) / 6 = 2/3.
    # D_e = 1/(n (n - 1)) sum over ordered pairs of all values [1, 2, 2, 3, 3, 3]
    #     = 2 (6 * 36 - 14^2) / 30 = 40 / 30 = 4/3.  alpha = 1 - (2/3) / (4/3) = 0.5.
    assert rel.krippendorff_alpha_interval(np.array([[1, 2, 3], [2, 3, 3]], float)) == pytest.approx(0.5)
    assert _alpha_coincidence(np.array([[1, 2, 3], [2, 3, 3]], float)) == pytest.approx(0.5)


def test_alpha_on_krippendorffs_example_with_missing_values():
    # Krippendorff's reliability-data example (3 coders, 15 units, missing values), as on Wikipedia's
    # "Krippendorff's alpha" page: alpha_interval = 0.811.
    nan = np.nan
    data = np.array([[nan, nan, nan, nan, nan, 3, 4, 1, 2, 1, 1, 3, 3, nan, 3],
                     [1, nan, 2, 1, 3, 3, 4, 3, nan, nan, nan, nan, nan, nan, nan],
                     [nan, nan, 2, 1, 3, 4, 4, nan, 2, 1, 1, 3, 3, nan, 4]])
    a = rel.krippendorff_alpha_interval(data)
    assert a == pytest.approx(0.811, abs=5e-4)
    assert a == pytest.approx(_alpha_coincidence(data), abs=1e-12)


def test_alpha_matches_the_coincidence_matrix_and_batches():
    rng = np.random.default_rng(0)
    batch = []
    for _ in range(20):
        x = np.round(rng.normal(size=(4, 12)) * 2) / 2  # ties
        x[rng.random(x.shape) < 0.2] = np.nan
        batch.append(x)
        assert rel.krippendorff_alpha_interval(x) == pytest.approx(_alpha_coincidence(x), abs=1e-10)
    np.testing.assert_allclose(rel.krippendorff_alpha_interval(np.stack(batch)), [_alpha_coincidence(x) for x in batch], atol=1e-10)
    assert rel.krippendorff_alpha_interval(np.ones((3, 5))) != rel.krippendorff_alpha_interval(np.ones((3, 5)))  # no variation: NaN
    same = rng.normal(size=10)
    assert rel.krippendorff_alpha_interval(np.stack([same, same, same])) == pytest.approx(1.0)
    scaled = np.stack([same, 2 * same + 1])  # same order, other values: interval alpha asks for equal values, Spearman for the order
    assert rel.mean_pairwise_spearman(scaled) == pytest.approx(1.0) and rel.krippendorff_alpha_interval(scaled) < 0.9


def test_spearman_and_tau_match_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 40))
    x[:, :8] = np.round(x[:, :8])  # ties
    pairs = list(itertools.combinations(range(5), 2))
    assert rel.mean_pairwise_spearman(x) == pytest.approx(np.mean([stats.spearmanr(x[a], x[b])[0] for a, b in pairs]), abs=1e-12)
    # batched (the bootstrap's path) equals one at a time
    xb = rng.normal(size=(7, 3, 15))
    np.testing.assert_allclose(rel.mean_pairwise_spearman(xb), [rel.mean_pairwise_spearman(b) for b in xb], atol=1e-12)
    # missing values: pairwise deletion
    y = x.copy()
    y[0, :5] = np.nan
    y[2, 30:] = np.nan
    ref = []
    for a, b in pairs:
        ok = np.isfinite(y[a]) & np.isfinite(y[b])
        ref.append(stats.spearmanr(y[a, ok], y[b, ok])[0])
    assert rel.mean_pairwise_spearman(y) == pytest.approx(np.mean(ref), abs=1e-12)
    s = rng.normal(size=(6, 4))
    s[1, 2] = s[1, 3]  # a tie: tau-b
    assert rel.kendall_tau_rankings(s) == pytest.approx(np.mean([stats.kendalltau(s[a], s[b])[0] for a, b in itertools.combinations(range(6), 2)]), abs=1e-12)
    assert rel.kendall_tau_rankings(np.array([[1.0, 2, 3], [1, 2, 3], [3, 2, 1]])) == pytest.approx((1 - 1 - 1) / 3)
    assert math.isnan(rel.kendall_tau_rankings(np.array([[1.0], [2.0]])))  # one method: no ranking


def test_reliability_with_cis():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(3, 60)) + np.array([[2.0], [1.0], [0.0]])  # 3 methods, clearly ordered
    same = np.stack([base] * 3)  # 3 variants, identical per-image values
    out = rel.reliability(same, ["a", "b", "c"], ["g", "c", "r"], n_resamples=1000, seed=0)
    for m in ("g", "c", "r"):
        assert out["per_method"][m]["spearman"]["value"] == pytest.approx(1.0)
        assert out["per_method"][m]["alpha"]["value"] == pytest.approx(1.0)
        assert out["per_method"][m]["alpha"]["ci95"] == pytest.approx([1.0, 1.0])
    assert out["kendall_tau"]["value"] == pytest.approx(1.0) and out["kendall_tau"]["ci95"] == pytest.approx([1.0, 1.0])
    noise = rng.normal(size=(3, 3, 300))
    out = rel.reliability(noise, ["a", "b", "c"], ["g", "c", "r"], n_resamples=1000, seed=0)
    for m in ("g", "c", "r"):
        pm = out["per_method"][m]
        assert abs(pm["alpha"]["value"]) < 0.1 and abs(pm["spearman"]["value"]) < 0.1
        assert pm["alpha"]["ci95"][0] < 0 < pm["alpha"]["ci95"][1]
        assert pm["alpha"]["ci95"][0] < pm["alpha"]["value"] < pm["alpha"]["ci95"][1]
    again = rel.reliability(noise, ["a", "b", "c"], ["g", "c", "r"], n_resamples=1000, seed=0)
    assert again == out  # seeded
    with pytest.raises(ValueError, match="1,000"):
        rel.reliability(noise, ["a", "b", "c"], ["g", "c", "r"], n_resamples=100)


# ---------------------------------------------------------------- the report

K = 4  # steps


def _curves(aopc):
    """(N, K + 1) curves whose per-image AOPC is ``aopc``: f(0) = 1, f(k) = 1 - d for k >= 1, AOPC = K d / (K + 1)."""
    d = np.asarray(aopc, float) * (K + 1) / K
    return np.hstack([np.ones((len(d), 1)), np.tile((1 - d)[:, None], (1, K))]).astype(np.float64)


def _job(path, seed, perturbation, per_image, ids, backbone="vgg16", explainer="gradcam", lerf=None, region_size=4):
    """A fake scored job: ``per_image`` {method: (N,) MoRF AOPC}; ``lerf`` {method: (N,) LeRF AOPC}."""
    ids = np.asarray(ids)
    labels = np.zeros(len(ids), int)
    est = lambda v: R.Estimate(float(np.mean(v)), [float(np.min(v)), float(np.max(v))], len(ids))
    cs = R.ClassScores(1.0, 1.0, 1.0, 1)
    test = R.TestReport(["a", "b"], len(ids), {"a": cs, "b": cs}, 1.0, cs, cs, [[1, 0], [0, 1]])
    curves = R.Curves(ids, labels, labels, labels)
    methods = {}
    for name, v in per_image.items():
        curves.curves[(name, "morf")] = _curves(v)
        orders = {"morf": R.OrderScores(est(v), [], {}, [])}
        if lerf and name in lerf:
            curves.curves[(name, "lerf")] = _curves(lerf[name])
            orders["lerf"] = R.OrderScores(est(lerf[name]), [], {}, [])
        methods[name] = R.MethodScores(orders, 0, 0, {})
    orders = ["morf", "lerf"] if lerf else ["morf"]
    scoring = R.Scoring(explainer, len(ids), len(ids), len(ids), "correct", "predicted", region_size, [2, 2], 4, K, dict(perturbation), orders,
                        methods, False, {}, 0.0)
    data = R.DataSummary("synthetic", "/r", 8, ["a", "b"], ["b"], len(ids), {}, {}, 0, [], False, 0, [])
    config = {"model": {"backbone": backbone}, "seed": seed, "explainer": {"name": explainer}, "perturbation": dict(perturbation),
              "score": {"region_size": region_size, "orders": orders, "controls": ["random", "center"]}}
    metrics = R.JobMetrics("0", "tensorflow", "3", "x", seed, data, R.ModelSummary(backbone, None, 1, 1), R.TrainingSummary({}, 0, 0.0, 0, False, {}),
                           test, {}, config, scoring)
    return R.JobResult(Path(path), metrics, curves)


PERTURBATIONS = [{"name": "gaussian", "sigma": 0.1, "clip": True}, {"name": "mean"}, {"name": "blur", "sigma": 4.0}]


def _sweep(values, ids=None, lerf=None, **kw):
    """One job per perturbation: ``values[v]`` {method: (N,)} is variant v's per-image MoRF AOPC."""
    n = len(next(iter(values[0].values())))
    ids = [np.arange(n)] * len(values) if ids is None else ids
    return [_job(f"j{v}", 0, PERTURBATIONS[v], values[v], ids[v], lerf=None if lerf is None else lerf[v], **kw) for v in range(len(values))]


def _rows(frame, computed, method):
    return frame[frame["computed"].str.contains(computed, regex=False) & (frame["methods"] == method)]


def test_identical_variants_are_perfectly_consistent_and_images_pair_by_id():
    rng = np.random.default_rng(0)
    u = rng.random(40)
    vals = {"gradcam": 0.3 + 0.1 * u, "random": 0.05 + 0.1 * rng.random(40), "center": 0.15 + 0.1 * u[::-1]}
    jobs = _sweep([vals, vals, vals])
    # variant 3 scored its images in another order and one more image (id 99): pairing is by id, on the common images
    perm = rng.permutation(40)
    jobs[2] = _job("j2", 0, PERTURBATIONS[2], {k: np.append(v[perm], 0.9) for k, v in vals.items()}, np.append(perm, 99))
    frame = report.metric_reliability(jobs, n_resamples=1000)
    assert set(frame["group"]) == {"gradcam on vgg16, seed 0"}
    for m in ("gradcam", "random", "center"):
        for what in ("Spearman", "alpha"):
            r = _rows(frame, f"MoRF variants: {'mean pairwise Spearman' if what == 'Spearman' else 'Krippendorff'}", m).iloc[0]
            assert r["value"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(1.0) and r["n_images"] == 40 and r["n_variants"] == 3
    tau = frame[frame["computed"].str.startswith("inter-method")].iloc[0]
    assert tau["value"] == pytest.approx(1.0) and tau["methods"] == "gradcam, random, center" and "MoRF variants only" in tau["note"]
    assert (frame["methods"] == "random").any() and "scored MoRF only" in frame[frame["computed"].str.startswith("random control")].iloc[0]["note"]
    # a reference map scored on some images only (its ground truth): only its rows are read
    for j in jobs:
        ids = np.asarray(j.curves.image_ids)
        scored = ids % 2 == 0
        v = np.where(scored, 0.5 + 0.1 * np.append(u, 0.0)[np.minimum(ids, 40)], rng.random(len(ids)))  # noise elsewhere: read, it would break the agreement
        j.curves.curves[("oracle", "morf")] = _curves(v)
        j.curves.per_image[(R.SCORED, "oracle")] = scored.astype(np.float32)
        j.metrics.scoring.methods["oracle"] = j.metrics.scoring.methods["center"]
    frame = report.metric_reliability(jobs, n_resamples=1000)
    for what in ("mean pairwise Spearman", "Krippendorff"):
        r = _rows(frame, f"MoRF variants: {what}", "oracle").iloc[0]
        assert r["n_images"] == 20 and r["value"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(1.0)
    assert frame[frame["computed"].str.startswith("inter-method")].iloc[0]["value"] == pytest.approx(1.0)


def test_independent_variants_have_alpha_near_zero_and_a_swapped_ranking_lowers_tau():
    rng = np.random.default_rng(1)
    n = 300
    vals = [{"gradcam": 0.4 + 0.1 * rng.random(n), "center": 0.2 + 0.1 * rng.random(n), "random": 0.1 * rng.random(n)} for _ in range(3)]
    vals[2]["random"] = vals[2]["random"] + 0.3  # mean 0.35: variant 3 ranks random above center: tau = (1 + 1/3 + 1/3) / 3
    frame = report.metric_reliability(_sweep(vals), n_resamples=1000)
    r = _rows(frame, "MoRF variants: Krippendorff", "gradcam").iloc[0]
    assert abs(r["value"]) < 0.1 and r["ci_low"] < 0 < r["ci_high"]
    assert abs(_rows(frame, "MoRF variants: mean pairwise Spearman", "gradcam").iloc[0]["value"]) < 0.1
    tau = frame[frame["computed"].str.startswith("inter-method")].iloc[0]
    assert tau["value"] == pytest.approx(5 / 9)


def test_only_jobs_that_differ_in_the_metric_alone_are_grouped():
    rng = np.random.default_rng(2)
    vals = {"gradcam": 0.3 + 0.1 * rng.random(20), "random": 0.1 * rng.random(20), "center": 0.2 * rng.random(20)}
    jobs = _sweep([vals, vals])
    others = [_job("dn", 0, PERTURBATIONS[2], vals, np.arange(20), backbone="densenet201"),  # another model
              _job("s1", 1, PERTURBATIONS[2], vals, np.arange(20)),  # another seed: another split and model
              _job("gc", 0, PERTURBATIONS[2], vals, np.arange(20), explainer="gradcampp")]  # another explainer
    frame = report.metric_reliability(jobs + others, n_resamples=1000)
    assert set(frame["group"]) == {"gradcam on vgg16, seed 0"} and set(frame["n_variants"].dropna()) == {2}
    # two groups that differ elsewhere (here the data's image size) are told apart in their labels
    small = _sweep([vals, vals])
    for j in small:
        j.metrics.config["data"] = {"image_size": 16}
    labels = set(report.metric_reliability(jobs + small, n_resamples=1000)["group"])
    assert len(labels) == 2 and any("data.image_size=16" in g for g in labels)
    assert report.metric_reliability(others, n_resamples=1000).empty
    # a region-size variant is a variant too
    frame = report.metric_reliability([_job("r4", 0, PERTURBATIONS[0], vals, np.arange(20), region_size=4),
                                       _job("r8", 0, PERTURBATIONS[0], vals, np.arange(20), region_size=8)], n_resamples=1000)
    assert len(frame) and set(frame["n_variants"].dropna()) == {2}


def test_orders_are_variants_of_the_explainer_and_the_random_floor_is_checked():
    rng = np.random.default_rng(3)
    u = rng.random(30)
    vals = {"gradcam": 0.3 + 0.1 * u, "random": 0.1 * rng.random(30)}
    lerf = {"gradcam": 0.05 + 0.02 * u}
    frame = report.metric_reliability(_sweep([vals, vals], lerf=[lerf, lerf]), n_resamples=1000)
    r = _rows(frame, "MoRF, LeRF and ABPC variants: mean pairwise Spearman", "gradcam").iloc[0]
    assert r["n_variants"] == 6 and r["value"] == pytest.approx(1.0)  # all affine in u, increasing
    # explainer=random scores both orders: its ABPC must have a CI around 0
    fair = {"random": 0.1 * rng.random(30)}
    jobs = _sweep([fair, fair], lerf=[fair, fair], explainer="random")
    frame = report.metric_reliability(jobs, n_resamples=1000)
    ab = frame[frame["computed"].str.startswith("random control ABPC")]
    assert len(ab) == 2 and all("contains 0" in n for n in ab["note"])
    biased = {"random": fair["random"] * 0.2}  # LeRF falls less than MoRF: ABPC > 0
    frame = report.metric_reliability(_sweep([fair, fair], lerf=[biased, biased], explainer="random"), n_resamples=1000)
    ab = frame[frame["computed"].str.startswith("random control ABPC")]
    assert all("EXCLUDES 0" in n for n in ab["note"]) and (ab["ci_low"] > 0).all()


def test_summary_md_has_the_section_only_for_a_metric_sweep(tmp_path):
    from xbench.apps.report import build_report

    rng = np.random.default_rng(4)
    vals = {"gradcam": 0.3 + 0.1 * rng.random(12), "random": 0.1 * rng.random(12), "center": 0.2 * rng.random(12)}
    for j in _sweep([vals, vals, vals]):
        d = tmp_path / "sweep" / j.path.name
        R.write_metrics(d, j.metrics)
        R.write_curves(d, j.curves)
    res = build_report([tmp_path / "sweep"], tmp_path / "out", n_resamples=1000)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "## Metric reliability" in md and "resamples these images" in md and "reliability.csv" in res["written"]
    one = tmp_path / "one" / "j0"
    j = _sweep([vals])[0]
    R.write_metrics(one, j.metrics)
    R.write_curves(one, j.curves)
    build_report([tmp_path / "one"], tmp_path / "out1", n_resamples=1000)
    assert "## Metric reliability" not in (tmp_path / "out1" / "summary.md").read_text()
