"""Controls and reference maps: the random floor is a uniform region order; oracle and marker maps."""

import numpy as np
import pytest
from scipy import stats

from xbench.explain import (
    CONTROLS,
    ExplainContext,
    Oracle,
    RandomControl,
    ShortcutMarker,
    mask_maps,
    random_maps,
)
from xbench.perturbation.regions import grid_shape, region_order, region_scores


def _morf_ranks(maps: np.ndarray, region_size: int) -> np.ndarray:
    """(N, L) the 0-based MoRF step at which each region is perturbed."""
    order = region_order(region_scores(maps, region_size), "morf")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), axis=1)
    return ranks


def _edge_rank_figures(ranks: np.ndarray, rows: int, cols: int) -> dict:
    """Mean MoRF rank of the edge regions (last row and last column) vs its null, and a chi-square on their ranks."""
    n, L = ranks.shape
    grid = np.arange(L).reshape(rows, cols)
    edge = np.union1d(grid[-1, :], grid[:, -1])
    E = len(edge)
    r = ranks[:, edge]
    # Null: each image's E edge ranks are E draws without replacement from 0..L-1.
    var_one = (L**2 - 1) / 12 / E * (L - E) / (L - 1)
    z = (r.mean() - (L - 1) / 2) / np.sqrt(var_one / n)
    bins = 5
    counts = np.bincount(r.ravel() * bins // L, minlength=bins)
    expected = np.bincount(np.arange(L) * bins // L, minlength=bins) / L * r.size
    chi2_p = stats.chisquare(counts, expected).pvalue
    corner = ranks[:, grid[-1, -1]]
    corner_p = stats.chisquare(np.bincount(corner * bins // L, minlength=bins), np.bincount(np.arange(L) * bins // L, minlength=bins) / L * n).pvalue
    return {"mean": r.mean(), "null_mean": (L - 1) / 2, "z": z, "chi2_p": chi2_p, "corner_mean": corner.mean(), "corner_p": corner_p}


@pytest.mark.parametrize("size, p", [(299, 34), (70, 16)])
def test_random_control_is_a_uniform_region_order_whatever_the_region_size(size, p):
    # 299 px / 34 px: a 9 x 9 grid whose last row/column is 27 px wide; 70 / 16: 5 x 5, last strip 6 px.
    n = 240
    rows, cols = grid_shape(size, size, p)
    ids = np.arange(1000, 1000 + n)
    maps = RandomControl()(None, np.zeros((n, size, size, 1), np.uint8), None, ExplainContext(ids, seed=7, region_size=p))
    ranks = _morf_ranks(maps, p)
    f = _edge_rank_figures(ranks, rows, cols)
    assert abs(f["z"]) < 4, f
    assert f["chi2_p"] > 1e-3 and f["corner_p"] > 1e-3, f
    # every image's ranks are a permutation, and the map's region sums ARE the permutation values (+1)
    assert (np.sort(ranks, axis=1) == np.arange(rows * cols)).all()
    sums = region_scores(maps, p)
    np.testing.assert_allclose(sums, np.rint(sums), atol=1e-3)
    assert sorted(np.rint(sums[0]).astype(int)) == list(range(1, rows * cols + 1))

    # The old control (per-pixel uniform noise, still the fallback without a grid) fails the same test:
    # the narrow edge regions sum to less and are perturbed last.
    old = random_maps(n, size, size, seed=7, image_ids=ids, region_size=None)
    g = _edge_rank_figures(_morf_ranks(old, p), rows, cols)
    assert g["z"] > 20 and g["chi2_p"] < 1e-10, g


def test_random_control_is_fixed_per_seed_and_image_id_and_not_by_batch():
    ctx = ExplainContext(np.array([4, 5, 6]), seed=1, region_size=4)
    r1 = RandomControl()(None, np.zeros((3, 10, 10, 3)), None, ctx)
    r2 = RandomControl()(None, np.zeros((2, 10, 10, 3)), None, ExplainContext(np.array([6, 4]), seed=1, region_size=4))
    np.testing.assert_array_equal(r1[[2, 0]], r2)
    r3 = RandomControl()(None, np.zeros((3, 10, 10, 3)), None, ExplainContext(np.array([4, 5, 6]), seed=2, region_size=4))
    assert not np.array_equal(r1, r3)
    # hand-worked: a 10 px image with 4 px regions is a 3 x 3 grid of areas 16, 16, 8 / 16, 16, 8 / 8, 8, 4
    perm = np.random.default_rng([1, 4, 0xC0]).permutation(9)
    area = np.array([16, 16, 8, 16, 16, 8, 8, 8, 4])
    assert r1[0, 9, 9] == pytest.approx((perm[8] + 1) / 4) and r1[0, 0, 0] == pytest.approx((perm[0] + 1) / 16)
    np.testing.assert_allclose(region_scores(r1[:1], 4)[0], perm + 1, rtol=1e-6)
    assert r1.dtype == np.float32 and (r1 > 0).all() and area.sum() == 100


def test_mask_maps_blur_within_the_mask_and_are_zero_outside():
    m = np.zeros((2, 21, 21), bool)
    m[0, 5:12, 5:12] = True
    maps = mask_maps(m, sigma=0.1)
    assert maps.dtype == np.float32 and maps.shape == m.shape
    assert (maps[~m] == 0).all() and (maps[m] > 0).all() and maps.max() <= 1
    assert maps[0].argmax() == np.ravel_multi_index((8, 8), (21, 21))  # peaks at the lesion's centre
    assert maps[0, 8, 8] > maps[0, 5, 8] > 0  # and falls towards its rim
    assert (maps[1] == 0).all()  # an empty mask (Normal) is an all-zero map
    np.testing.assert_array_equal(mask_maps(m, sigma=0), m.astype(np.float32))
    before = m.copy()
    mask_maps(m)
    np.testing.assert_array_equal(m, before)


def test_oracle_and_shortcut_marker_read_the_context_and_say_when_it_has_no_masks():
    images = np.zeros((2, 16, 16, 3), np.float32)
    les = np.zeros((2, 16, 16), bool)
    les[0, 2:6, 2:6] = True
    mark = np.zeros((2, 16, 16), bool)
    mark[1, 12:15, 12:15] = True
    ctx = ExplainContext(np.array([0, 1]), lesions=les, markers=mark)
    np.testing.assert_array_equal(Oracle(sigma=0.05)(None, images, None, ctx), mask_maps(les, sigma=0.05))
    np.testing.assert_array_equal(ShortcutMarker()(None, images, None, ctx), mask_maps(mark, sigma=0.02))
    with pytest.raises(ValueError, match="no lesion masks.*data=synthetic"):
        Oracle()(None, images, None, ExplainContext.default(2))
    with pytest.raises(ValueError, match="no marker masks"):
        ShortcutMarker()(None, images, None, ExplainContext(np.array([0, 1]), lesions=les))
    assert {"random", "center", "oracle", "shortcut_marker"} <= set(CONTROLS)
    assert CONTROLS["oracle"]().name == "oracle" and CONTROLS["shortcut_marker"]().name == "shortcut_marker"


@pytest.mark.parametrize("name, cls", [("oracle", Oracle), ("shortcut_marker", ShortcutMarker)])
def test_reference_maps_compose_from_their_config_and_reject_a_bad_value(name, cls):
    from hydra.utils import instantiate

    from tests.helpers import compose

    ex = instantiate(compose([f"explainer={name}", "explainer.sigma=0.05"]).explainer)
    assert isinstance(ex, cls) and ex.sigma == 0.05 and ex.name == name
    with pytest.raises(Exception, match="sigma"):
        compose([f"explainer={name}", "explainer.sigma=wide"])


def test_the_heatmap_cache_keys_the_scoring_grid(tmp_path):
    # The random control's map is an order of the grid's regions: a map made for
    # one region size must never be reused for another.
    from xbench.explain import ExplainContext, RandomControl
    from xbench.pipeline.store import CachedExplainer

    cached = CachedExplainer(RandomControl(), tmp_path, "model")
    images = np.zeros((3, 16, 16, 3), np.float32)
    at8 = cached(None, images, np.zeros(3, int), ExplainContext(np.arange(3), 0, 8))
    at4 = cached(None, images, np.zeros(3, int), ExplainContext(np.arange(3), 0, 4))
    again8 = cached(None, images, np.zeros(3, int), ExplainContext(np.arange(3), 0, 8))
    assert cached.hits == 1 and np.array_equal(at8, again8) and not np.array_equal(at4, at8)
    sums = at4.reshape(3, 4, 4, 4, 4).sum(axis=(2, 4)).reshape(3, 16)
    assert all(sorted(np.round(s).astype(int)) == list(range(1, 17)) for s in sums)  # a permutation of the 4-px regions


def test_scoring_with_no_image_to_score_writes_empty_results():
    import keras

    from xbench.explain import GradCAM, RandomControl
    from xbench.perturbation import GaussianNoise
    from xbench.pipeline.scoring import ScoreSettings, score_model

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(2, 3, name="conv")(inp)
    logits = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, keras.layers.Softmax(name="probs")(logits))
    labels = np.array([0, 1, 0])
    res = score_model(model, np.zeros((3, 16, 16, 3), np.uint8), np.arange(3), labels, 1 - labels, ["a", "b"], GradCAM(), [RandomControl()],
                      GaussianNoise(0.1), ScoreSettings(region_size=4, bootstrap=1000), seed=0)  # every prediction wrong: nothing to score
    assert res.metrics.n_scored == 0 and res.curves.get("gradcam", "morf").shape == (0, 17)
    assert res.metrics.methods["gradcam"].orders["morf"].aopc.n == 0


def test_the_random_controls_localisation_floor_is_chance_even_on_a_partial_grid():
    # On 18 px with 4-px regions the last strip is 2 px wide: the region-order map
    # would put every maximum there (pointing game 0). Localisation uses per-pixel noise.
    import keras

    from xbench.explain import GradCAM, RandomControl
    from xbench.perturbation import GaussianNoise
    from xbench.pipeline.scoring import GroundTruth, ScoreSettings, score_model

    inp = keras.Input((18, 18, 3))
    x = keras.layers.Conv2D(2, 3, name="conv")(inp)
    logits = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, keras.layers.Softmax(name="probs")(logits))
    n = 60
    lesions = np.zeros((n, 18, 18), bool)
    lesions[:, 5:14, 5:14] = True  # 81 of 324 pixels: area share 0.25
    truth = GroundTruth(lesions=lesions, lesions_ok=np.ones(n, bool))
    labels = np.zeros(n, int)
    res = score_model(model, np.zeros((n, 18, 18, 3), np.uint8), np.arange(n), labels, labels, ["a", "b"], GradCAM(), [RandomControl()],
                      GaussianNoise(0.1), ScoreSettings(region_size=4, orders=["morf"], max_steps=1, bootstrap=1000), seed=0, truth=truth)
    loc = res.metrics.methods["random"].localisation
    assert abs(loc["lesion_mass"].mean - 0.25) < 0.02
    assert 0.1 < loc["pointing_hit"].mean < 0.6  # chance: the maximum lands in or near the lesion about a third of the time
    assert abs(loc["lesion_auroc"].mean - 0.5) < 0.05
