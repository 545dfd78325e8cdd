"""Comparison statistics: hand-worked cases, and false-positive rates measured on simulated nulls."""

import numpy as np
import pytest
from scipy import stats

from xbench.metrics.aopc import aopc_by_step
from xbench.metrics.bootstrap import (
    MIN_SEEDS,
    MIN_UNITS,
    bootstrap_band,
    bootstrap_ci,
    bootstrap_diff,
)
from xbench.metrics.comparison import holm, over_seeds, paired_images

# The null of issue 11: two models of equal expected AOPC; a seed moves a model's AOPC by N(0, 0.02), an image by N(0, 0.08).
SEEDS, IMAGES, SEED_SD, IMAGE_SD, MU = 5, 300, 0.02, 0.08, 0.3


def _two_models_over_seeds(rng, trials):
    """(trials, 2 models, SEEDS, IMAGES) per-image AOPC under the null."""
    seed_effect = rng.normal(0, SEED_SD, (trials, 2, SEEDS, 1))
    return MU + seed_effect + rng.normal(0, IMAGE_SD, (trials, 2, SEEDS, IMAGES))


def test_over_seeds_keeps_its_false_positive_rate_where_pooling_images_over_seeds_does_not():
    rng = np.random.default_rng(11)
    trials = 1000
    y = _two_models_over_seeds(rng, trials)
    per_seed = y.mean(axis=3)  # (trials, 2, SEEDS): each job's AOPC
    p = np.array([over_seeds(dict(enumerate(t[0])), dict(enumerate(t[1])))["p_value"] for t in per_seed])
    fpr_seeds = (p < 0.05).mean()
    assert fpr_seeds <= 0.08, fpr_seeds  # measured 0.051 (1,000 trials)

    # Documented failure of the old approach: pool the 5 x 300 per-image values of each model and bootstrap them as
    # independent images. Its standard error (0.08 sqrt(2/1500) = 0.003) misses the seed term (0.02 sqrt(2/5) = 0.013).
    old_trials = 200
    p_old = np.array([bootstrap_diff(y[t, 0].ravel(), y[t, 1].ravel(), n_resamples=1000, seed=t)["p_value"] for t in range(old_trials)])
    fpr_old = (p_old < 0.05).mean()
    assert fpr_old > 0.4, fpr_old  # measured 0.71 (200 trials)


def test_over_seeds_has_nominal_coverage_under_the_null():
    rng = np.random.default_rng(12)
    per_seed = _two_models_over_seeds(rng, 400).mean(axis=3)
    r = [over_seeds(dict(enumerate(t[0])), dict(enumerate(t[1]))) for t in per_seed]
    covered = np.mean([x["ci_low"] <= 0 <= x["ci_high"] for x in r])
    assert 0.92 <= covered <= 0.98, covered
    # ... and CI and p agree: 0 outside the 95% CI <=> p < 0.05
    assert all((x["p_value"] < 0.05) == (not x["ci_low"] <= 0 <= x["ci_high"]) for x in r)


def test_paired_images_keeps_its_false_positive_rate_on_correlated_pairs():
    # One seed, 300 images; an image's difficulty (sd 0.07) moves both methods, each adds its own noise (sd 0.04).
    rng = np.random.default_rng(13)
    trials = 400
    shared = rng.normal(0, 0.07, (trials, IMAGES, 1))
    y = MU + shared + rng.normal(0, 0.04, (trials, IMAGES, 2))
    p = np.array([paired_images(y[t, :, 0], y[t, :, 1], n_resamples=1000, seed=t)["p_value"] for t in range(trials)])
    fpr = (p < 0.05).mean()
    assert fpr <= 0.08, fpr  # measured 0.043 (400 trials)
    # pairing is what gives the power: a true difference of 0.015 (SE of the paired mean 0.0033) is found nearly always,
    # (all 50 measured), while the unpaired bootstrap_diff, SE 0.0066, finds it in 38 of the 50
    q = [paired_images(y[t, :, 0] + 0.015, y[t, :, 1], n_resamples=1000, seed=t)["p_value"] for t in range(50)]
    assert np.mean(np.array(q) < 0.05) > 0.9


def test_paired_images_by_hand():
    a = np.array([0.5, 0.4, np.nan, 0.9])
    b = np.array([0.3, 0.4, 0.1, 0.6])
    r = paired_images(a, b, n_resamples=1000, seed=0)
    assert r["n_images"] == 3 and r["diff"] == pytest.approx((0.2 + 0.0 + 0.3) / 3) and r["unit"] == "image"
    assert np.isnan(r["ci_low"]) and np.isnan(r["p_value"])  # 3 pairs: below MIN_UNITS, no CI and no p
    r = paired_images(a, b, n_resamples=1000, seed=0, min_n=2)  # the arithmetic, with the minimum lowered
    assert 0.0 <= r["ci_low"] <= r["diff"] <= r["ci_high"] <= 0.3 + 1e-12
    # every resample of all-positive differences is > 0: p is the floor 1/(R+1), not 0
    big = paired_images(np.full(50, 1.0) + np.linspace(0, 0.1, 50), np.zeros(50), n_resamples=1000)
    assert big["p_value"] == pytest.approx(1 / 1001)
    same = np.linspace(0, 1, MIN_UNITS)
    assert paired_images(same, same)["p_value"] == 1.0
    # the CI is the percentile bootstrap of the differences' mean
    rng = np.random.default_rng(1)
    x, z = rng.normal(size=200), rng.normal(size=200)
    r = paired_images(x, z, n_resamples=2000, seed=3)
    se = (x - z).std(ddof=1) / np.sqrt(200)
    assert r["ci_high"] - r["ci_low"] == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert r == paired_images(x, z, n_resamples=2000, seed=3)
    with pytest.raises(ValueError, match="same images"):
        paired_images(x, z[:10])
    with pytest.raises(ValueError, match="1,000"):
        paired_images(x, z, n_resamples=100)
    assert np.isnan(paired_images(x[:1], z[:1])["p_value"])


def test_over_seeds_by_hand_paired_welch_and_too_few():
    a = {0: 0.50, 1: 0.52, 2: 0.55, 7: 0.9}
    b = {0: 0.45, 1: 0.50, 2: 0.50, 9: 0.1}
    r = over_seeds(a, b)
    d = np.array([0.05, 0.02, 0.05])  # shared seeds 0, 1, 2
    assert r["test"] == "paired t" and r["n_seeds"] == 3 and r["unit"] == "seed"
    assert r["diff"] == pytest.approx(0.04)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.04 - half, 0.04 + half))
    assert r["p_value"] == pytest.approx(stats.ttest_rel([0.50, 0.52, 0.55], [0.45, 0.50, 0.50]).pvalue)
    # t = 0.04 / (0.017321 / sqrt 3) = 4.0: two-sided p with 2 df = 0.0572
    assert r["p_value"] == pytest.approx(0.0572, abs=5e-4)

    w = over_seeds({0: 1.0, 1: 2.0, 2: 3.0}, {5: 0.0, 6: 2.0})
    assert w["test"] == "welch t" and w["n_seeds_a"] == 3 and w["n_seeds_b"] == 2 and w["diff"] == pytest.approx(1.0)
    assert w["p_value"] == pytest.approx(stats.ttest_ind([1, 2, 3], [0, 2], equal_var=False).pvalue)
    sa, sb = 1.0 / 3, 2.0 / 2  # var / n
    df = (sa + sb) ** 2 / (sa**2 / 2 + sb**2 / 1)
    assert w["ci_high"] - w["diff"] == pytest.approx(stats.t.ppf(0.975, df) * np.sqrt(sa + sb))

    one = over_seeds({0: 0.5}, {0: 0.4, 1: 0.6})
    assert one["test"] == "none" and np.isnan(one["p_value"]) and one["diff"] == pytest.approx(0.0)
    assert np.isnan(over_seeds({}, {0: 1.0})["diff"])
    assert over_seeds({0: 1.0, 1: 2.0, 2: np.nan}, {0: 1.0, 1: 2.0, 2: 5.0})["n_seeds"] == 2  # NaN seeds are dropped
    # The same difference on every seed: no spread, so no t-test and no p-value (not p = 0).
    flat = over_seeds({0: 0.5, 1: 0.75, 2: 1.0}, {0: 0.25, 1: 0.5, 2: 0.75})
    assert flat["diff"] == pytest.approx(0.25) and np.isnan(flat["p_value"]) and flat["test"] == "paired t"
    assert np.isnan(over_seeds({0: 1.0, 1: 1.0}, {5: 0.0, 6: 0.0})["p_value"])
    rounded = over_seeds({0: 0.3, 1: 0.4, 2: 0.7}, {0: 0.2, 1: 0.3, 2: 0.6})  # 0.1 each, up to float rounding
    assert np.isnan(rounded["p_value"]) and np.isnan(rounded["ci_low"]) and rounded["diff"] == pytest.approx(0.1)


def test_holm_by_hand():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.4, np.nan]), [0.8, 0.8, np.nan])  # capped by the max; NaN not counted
    np.testing.assert_allclose(holm([0.9, 0.6]), [1.0, 1.0])
    rng = np.random.default_rng(0)
    p = rng.random(20)
    adj = holm(p)
    assert (adj >= p).all() and (adj <= 1).all()
    assert (np.diff(adj[np.argsort(p)]) >= 0).all()  # monotone in p
    assert holm(np.zeros(0)).shape == (0,) and holm(np.array([[0.01, 0.02]])).shape == (1, 2)


def test_bootstrap_band_is_the_bootstrap_of_aopc_by_step_over_images():
    rng = np.random.default_rng(4)
    curves = np.clip(1 - np.cumsum(rng.random((80, 6)) * 0.2, axis=1), 0, 1)
    curves[:, 0] = 1.0
    y, lo, hi = bootstrap_band(curves, n_resamples=1000, seed=2)
    np.testing.assert_allclose(y, aopc_by_step(curves))
    assert y.shape == lo.shape == hi.shape == (5,) and (lo <= y).all() and (y <= hi).all()
    # slow version: resample images explicitly, recompute AOPC(K) for each resample
    r2 = np.random.default_rng([2, 0xA0])
    boot = np.stack([aopc_by_step(curves[r2.integers(0, 80, 80)]) for _ in range(1000)])
    np.testing.assert_allclose(lo, np.quantile(boot, 0.025, axis=0), rtol=1e-10)
    np.testing.assert_allclose(hi, np.quantile(boot, 0.975, axis=0), rtol=1e-10)
    # at the last step the band is the bootstrap CI of per-image AOPC
    from xbench.metrics.aopc import aopc_per_image

    per = aopc_per_image(curves)
    se = per.std(ddof=1) / np.sqrt(80)
    assert hi[-1] - lo[-1] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert np.isnan(bootstrap_band(curves[:1])[1]).all()
    before = curves.copy()
    bootstrap_band(curves)
    np.testing.assert_array_equal(curves, before)


def test_bootstrap_ci_draws_are_unchanged_by_the_shared_resampler():
    # bootstrap_ci now uses resampled_means; its numbers must be the ones it gave before (same draws, same chunks)
    v = np.random.default_rng(0).normal(0.4, 0.1, 400)
    rng = np.random.default_rng([1, 0xB007])
    means = v[rng.integers(0, 400, size=(2000, 400))].mean(axis=1)
    assert bootstrap_ci(v, n_resamples=2000, seed=1) == tuple(float(q) for q in np.quantile(means, [0.025, 0.975]))


def test_t_band_by_hand():
    from scipy import stats

    from xbench.metrics.comparison import t_band

    v = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    mean, lo, hi = t_band(v)
    np.testing.assert_allclose(mean, [2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * np.array([1.0, np.sqrt(3.0)]) / np.sqrt(3)
    np.testing.assert_allclose(lo, mean - half)
    np.testing.assert_allclose(hi, mean + half)
    with pytest.raises(ValueError):
        t_band(v[:1])


def test_no_ci_or_p_below_the_minimum_of_units_and_both_at_it():
    """Issue 27: below MIN_UNITS images (docs/tools/bootstrap_coverage.py) every image-bootstrap CI and p is NaN, at it finite."""
    from xbench.metrics.comparison import t_band
    from xbench.metrics.similarity import versus_pairs

    rng = np.random.default_rng(5)
    x, z = rng.normal(0.5, 0.1, MIN_UNITS), rng.normal(0.3, 0.1, MIN_UNITS)
    few, enough = MIN_UNITS - 1, MIN_UNITS
    assert np.isnan(bootstrap_ci(x[:few])).all() and np.isfinite(bootstrap_ci(x[:enough])).all()
    r = paired_images(x[:few], z[:few])
    assert np.isnan([r["ci_low"], r["ci_high"], r["p_value"]]).all() and np.isfinite(r["diff"]) and r["n_images"] == few
    r = paired_images(x[:enough], z[:enough])
    assert np.isfinite([r["ci_low"], r["ci_high"], r["p_value"]]).all()
    # non-finite pairs do not count: MIN_UNITS values with one NaN are too few
    assert np.isnan(paired_images(np.r_[x[:few], np.nan], z[:enough])["p_value"])
    assert np.isnan(bootstrap_diff(x[:few], z)["p_value"]) and np.isfinite(bootstrap_diff(x, z)["p_value"])
    curves = np.clip(1 - np.cumsum(rng.random((enough, 4)) * 0.2, axis=1), 0, 1)
    assert np.isnan(bootstrap_band(curves[:few])[1]).all() and np.isfinite(bootstrap_band(curves)[1]).all()
    # the sanity check's test against random pairs (images are the unit)
    sims = rng.uniform(0, 1, (2, enough))
    pairs = np.array([(i, (i + 1) % enough) for i in range(enough)])
    t = versus_pairs(sims, pairs, rng.uniform(0, 1, enough), n_resamples=1000)
    assert np.isfinite(t["diff_ci"]).all() and np.isfinite(t["p_below"]).all() and np.isfinite(t["baseline_ci"]).all()
    sims[1, 0] = np.nan  # step 1 has one image too few; step 0 keeps them all
    t = versus_pairs(sims, pairs, rng.uniform(0, 1, enough), n_resamples=1000)
    assert np.isfinite(t["p_below"][0]) and np.isnan(t["p_below"][1]) and np.isnan(t["diff_ci"][1]).all() and np.isfinite(t["diff"][1])
    t = versus_pairs(sims[:, :few], pairs[:few - 1], rng.uniform(0, 1, few - 1), n_resamples=1000)
    assert np.isnan(t["p_below"]).all() and np.isnan(t["baseline_ci"]).all()
    # seeds: a t interval from MIN_SEEDS seeds on (exact under normality), none below
    assert MIN_SEEDS == 2
    s = over_seeds({0: 0.5, 1: 0.7}, {0: 0.4, 1: 0.5})
    assert np.isfinite(s["p_value"]) and np.isfinite(s["ci_low"])
    assert np.isnan(over_seeds({0: 0.5}, {0: 0.4})["p_value"])
    assert np.isfinite(t_band(np.array([[1.0, 2.0], [2.0, 4.0]]))[1]).all()


def test_the_coverage_tool_measures_the_code_and_its_rule(capsys):
    """docs/tools/bootstrap_coverage.py checks itself against bootstrap_ci and paired_images; a small run prints its tables."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bootstrap_coverage", Path(__file__).resolve().parents[1] / "docs" / "tools" / "bootstrap_coverage.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.check_against_code(1000)
    assert tool.main(["--sims", "100", "--resamples", "1000", "--max-n", "4"]) == 0
    out = capsys.readouterr().out
    assert "| 2 | " in out and "t interval over n seeds" in out
