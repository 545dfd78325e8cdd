"""ROAD's noisy linear imputation: the batched CG solver against the direct sparse solve and against hand-worked cases."""

import keras
import numpy as np
import pytest

from xbench import backend
from xbench.perturbation.imputation import (
    NEIGHBOURS,
    impute_batched,
    impute_exact,
    road_fill,
)

#: Backend-sensitive kernel tests: tests/test_jax_backend.py reruns them under JAX.
pytestmark = pytest.mark.jax_rerun


def _batched(x, removed, **kw):
    """impute_batched on a (B, H, W, C) batch and its (B, H, W) bool removed mask.

    Under JAX compiled, as the engine's device step runs it (the grey choice made here on the host, as the engine makes
    it: compiled, grey=None would trace both branches): an eager JAX solve compiles each op and the loop apart, ~3x one
    trace's cost (6 x 23 px: 3.4 s against 1.0 s). TensorFlow's eager loop is cheaper than a trace: eager there. The eager
    JAX solve stays checked by the grey test here and by the host steps of tests/test_perturbation.py.
    """
    m = removed[..., None].astype(np.float32)
    if keras.backend.backend() != "jax":
        return np.asarray(impute_batched(x, m, **kw))
    kw.setdefault("grey", bool(np.all(x == x[..., :1])))
    return np.asarray(backend.active().compile_function(lambda a, b: impute_batched(a, b, **kw))(x, m))


def test_the_weights_are_roads():
    w = {(dr, dc): wt for dr, dc, wt in NEIGHBOURS}
    assert len(w) == 8 and w[(0, 1)] == w[(-1, 0)] == 1 / 6 and w[(1, 1)] == w[(-1, 1)] == 1 / 12
    assert sum(w.values()) == pytest.approx(1.0)


def test_one_removed_pixel_is_the_weighted_mean_of_its_neighbours_by_hand():
    x = np.arange(25, dtype=np.float64).reshape(5, 5, 1) ** 1.5
    rm = np.zeros((5, 5), bool)
    rm[2, 2] = True
    mean = sum(wt * x[2 + dr, 2 + dc, 0] for dr, dc, wt in NEIGHBOURS)  # interior: the weights sum to 1
    corner = np.zeros((5, 5), bool)
    corner[0, 0] = True
    # A corner has three neighbours inside: (0,1) and (1,0) at 1/6, (1,1) at 1/12, normalised by 5/12.
    corner_mean = (x[0, 1, 0] / 6 + x[1, 0, 0] / 6 + x[1, 1, 0] / 12) / (5 / 12)
    for removed, want in [(rm, mean), (corner, corner_mean)]:
        exact = impute_exact(x, removed)
        assert exact[removed][0, 0] == pytest.approx(want, rel=1e-12)
        assert np.array_equal(exact[~removed], x[~removed])
        fast = _batched(x[None].astype(np.float32), removed[None])[0]
        assert fast[removed][0, 0] == pytest.approx(want, rel=1e-5)


def test_a_hole_in_a_linear_ramp_is_filled_with_the_ramp():
    # A linear function satisfies the symmetric mean-value equations exactly, so it is the unique solution.
    r, c = np.mgrid[0:12, 0:12]
    x = np.stack([0.02 * r + 0.03 * c, 0.5 - 0.01 * r, 0.04 * c], -1).astype(np.float64)
    rm = np.zeros((12, 12), bool)
    rm[3:9, 2:7] = True
    np.testing.assert_allclose(impute_exact(x, rm), x, atol=1e-12)
    np.testing.assert_allclose(_batched(x[None].astype(np.float32), rm[None])[0], x, atol=1e-5)


# The JAX rerun keeps one case of each kind (the same solver on other sizes: not_on_jax).
@pytest.mark.parametrize("size, kind", [(9, "pixels"), pytest.param(16, "regions", marks=pytest.mark.not_on_jax), (23, "regions"),
                                        pytest.param(31, "pixels", marks=pytest.mark.not_on_jax), (24, "border")])
def test_batched_cg_equals_the_direct_sparse_solve(size, kind):
    rng = np.random.default_rng(size)
    n = 6
    x = rng.random((n, size, size, 3)).astype(np.float32)
    if kind == "pixels":
        rm = rng.random((n, size, size)) < np.linspace(0.05, 0.95, n)[:, None, None]
    elif kind == "regions":
        reg = max(2, size // 5)
        g = rng.random((n, size // reg + 1, size // reg + 1)) < np.linspace(0.1, 0.9, n)[:, None, None]
        rm = np.stack([np.kron(gi, np.ones((reg, reg), bool))[:size, :size] for gi in g])
    else:  # everything but one corner pixel, one edge column, a single kept pixel in the middle
        rm = np.ones((n, size, size), bool)
        rm[0, 0, 0] = rm[1, :, -1] = rm[2, size // 2, size // 2] = False
        rm[3:] = rng.random((n - 3, size, size)) < 0.99
    fast = _batched(x, rm)
    for i in range(n):
        np.testing.assert_allclose(fast[i], impute_exact(x[i], rm[i]), atol=1e-4, err_msg=f"image {i}")
        assert np.array_equal(fast[i][~rm[i]], x[i][~rm[i]])


def test_a_grey_batch_is_solved_on_one_channel_with_the_same_values():
    # X-rays copied to RGB: the one-channel solve must give each channel what the three-channel one gives, and the exact solution
    rng = np.random.default_rng(3)
    grey = np.repeat(rng.random((4, 20, 20, 1)), 3, axis=-1).astype(np.float32)
    rm = rng.random((4, 20, 20)) < np.array([0.1, 0.5, 0.9, 0.99])[:, None, None]
    eager = lambda x: np.asarray(impute_batched(x, rm[..., None].astype(np.float32)))  # noqa: E731  (the solver's own grey test, on the host)
    fast = eager(grey)
    colour = grey.copy()
    colour[0, 0, 0, 1] += 0.5  # one coloured pixel in the batch: every channel solved
    slow = eager(colour)
    for i in range(4):
        np.testing.assert_allclose(fast[i], impute_exact(grey[i], rm[i]), atol=1e-4)
        assert np.array_equal(fast[i][..., 0], fast[i][..., 2])
    np.testing.assert_allclose(fast[1:], slow[1:], atol=2e-5)


def test_nothing_kept_gives_zero_and_nothing_removed_gives_the_image():
    x = np.random.default_rng(0).random((2, 7, 7, 3)).astype(np.float32)
    rm = np.zeros((2, 7, 7), bool)
    rm[1] = True
    out = _batched(x, rm)
    np.testing.assert_array_equal(out[0], x[0])
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(impute_exact(x[1], rm[1]), 0.0)


def test_road_fill_adds_the_noise_only_where_removed_and_clips():
    rng = np.random.default_rng(1)
    x = rng.random((1, 10, 10, 3)).astype(np.float32)
    rm = np.zeros((1, 10, 10, 1), np.float32)
    rm[0, 2:6, 3:8] = 1
    noise = rng.normal(0, 0.3, x.shape).astype(np.float32)
    out = np.asarray(road_fill(x, rm, noise))
    plain = _batched(x, rm[..., 0] > 0)
    np.testing.assert_allclose(out, np.clip(plain + rm * noise, 0, 1), atol=1e-6)
    assert np.array_equal(out[rm[..., 0] == 0], x[rm[..., 0] == 0])
    assert out.min() >= 0 and out.max() <= 1


def test_the_solver_reports_how_far_it_went():
    x = np.random.default_rng(2).random((2, 20, 20, 3)).astype(np.float32)
    rm = np.zeros((2, 20, 20, 1), np.float32)
    rm[:, 4:16, 4:16] = 1
    _, (it, rel) = impute_batched(x, rm, tol=1e-5, return_info=True)
    assert 1 <= int(it) < 4 * 40 and np.asarray(rel).shape == (2,) and np.all(np.asarray(rel) <= 1e-5)
    _, (it1, rel1) = impute_batched(x, rm, tol=1e-5, max_iter=3, return_info=True)
    assert int(it1) == 3 and np.all(np.asarray(rel1) > 1e-5)  # stopped by the bound, and says so
