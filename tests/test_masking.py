"""The mask-program engine (xbench.perturbation.programs) and the perturbation explainers on it (Occlusion, RISE, Score-CAM).

Each map is checked against an obviously correct loop: one image, one mask, one model call at a time, the
mask built in NumPy. Backend-free (rerun under JAX) but for the comparison with tf-keras-vis.
"""

import numpy as np
import pytest

from tests.references import tiny_model
from xbench.explain import build
from xbench.explain.masking import occlusion, rise, scorecam, strongest_channels
from xbench.perturbation.programs import (
    PixelSets,
    RiseMasks,
    align_corners_matrix,
    half_pixel_mirror_matrix,
    run_program,
    window_starts,
)

pytestmark = pytest.mark.jax_rerun

S = 20


@pytest.fixture(scope="module")
def model():
    return tiny_model(S, S, c=3)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((3, S, S, 3)).astype(np.float32)


def _p(model, z):
    return np.asarray(model(z[None].astype(np.float32)))[0].astype(np.float64)


def test_window_starts_reach_every_edge_and_equal_the_region_grid_when_stride_is_the_patch():
    assert window_starts(20, 6, 4).tolist() == [0, 4, 8, 12, 16]  # the last window [16, 22) is cut at 20
    assert window_starts(20, 5, 5).tolist() == [0, 5, 10, 15]
    assert window_starts(20, 6, 6).tolist() == [0, 6, 12, 18]  # ceil(20 / 6) = 4 cells, as regions.grid_shape
    assert window_starts(7, 7, 3).tolist() == [0]
    with pytest.raises(ValueError, match="patch_size: must lie in"):
        window_starts(7, 8, 1)
    with pytest.raises(ValueError, match="stride: must lie in"):  # a step past the patch would leave pixels no window covers
        window_starts(8, 3, 4)


def test_interpolation_matrices_match_their_definitions():
    # corners aligned (SciPy zoom order=1): output o reads input o (n_in - 1) / (n_out - 1)
    U = align_corners_matrix(3, 5)
    np.testing.assert_allclose(U @ np.array([0.0, 1.0, 4.0]), [0, 0.5, 1, 2.5, 4])
    # half-pixel, mirrored (scikit-image resize order=1 mode=reflect): 2 -> 4 reads u = -0.25, 0.25, 0.75, 1.25 -> mirrored 0.25, 0.25, 0.75, 0.75
    V = half_pixel_mirror_matrix(2, 4)
    np.testing.assert_allclose(V @ np.array([0.0, 1.0]), [0.25, 0.25, 0.75, 0.75])
    np.testing.assert_allclose(half_pixel_mirror_matrix(4, 8).sum(1), 1)


@pytest.mark.parametrize("patch,stride", [pytest.param(6, 4, marks=pytest.mark.torch_rerun), (5, 5), (7, 3), (20, 1)])
def test_occlusion_equals_a_per_window_loop(model, images, patch, stride):
    maps, t = occlusion(model, images, patch_size=patch, stride=stride, baseline=0.3, batch_size=7, return_targets=True)
    for i, x in enumerate(images):
        total, count = np.zeros((S, S)), np.zeros((S, S))
        p0 = _p(model, x)
        assert t[i] == p0.argmax()
        for a in window_starts(S, patch, stride):
            for b in window_starts(S, patch, stride):
                z = x.copy()
                z[a : a + patch, b : b + patch] = 0.3
                total[a : a + patch, b : b + patch] += p0[t[i]] - _p(model, z)[t[i]]
                count[a : a + patch, b : b + patch] += 1
        np.testing.assert_allclose(maps[i], total / count, atol=1e-6)
    assert np.abs(maps).max() > 1e-3  # the loop is not trivially zero


def test_occlusion_does_not_depend_on_the_batch_and_follows_given_targets(model, images):
    a = occlusion(model, images, patch_size=6, stride=4, targets=[2, 0, 1], batch_size=5)
    b = occlusion(model, images, patch_size=6, stride=4, targets=[2, 0, 1], batch_size=64)
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = occlusion(model, images[1:2], patch_size=6, stride=4, targets=[0])
    np.testing.assert_allclose(a[1], c[0], atol=1e-6)


@pytest.mark.torch_rerun
def test_rise_equals_the_formula_with_the_same_masks_by_hand(model, images):
    ids = np.array([5, 9, 11])
    maps, t = rise(model, images, masks=40, grid=4, keep_prob=0.5, seed=3, image_ids=ids, batch_size=16, return_targets=True)
    program = RiseMasks(S, S, 40, 4, 0.5, 3, ids, np.zeros(3))
    for i, x in enumerate(images):
        acc = np.zeros((S, S))
        for m in range(40):
            # the mask by its definition: the grid upsampled to 5 cells of ceil(20 / 4) = 5 px, then cut at the shift
            M = program.mask(i, m, S, S)
            assert M.min() >= -1e-6 and M.max() <= 1 + 1e-6
            acc += _p(model, x * M[..., None])[t[i]] * M
        np.testing.assert_allclose(maps[i], acc / (40 * 0.5), atol=1e-6)
    # a kept cell stays (near) whole: the mask mean is the keep rate of its grid, up to the cut and the edge
    assert abs(program.draws(0)[0].mean() - 0.5) < 0.15


def test_rise_masks_are_functions_of_seed_and_image_id_only(model, images):
    a = rise(model, images, masks=24, grid=3, seed=1, image_ids=[7, 8, 9], batch_size=10)
    b = rise(model, images[::-1], masks=24, grid=3, seed=1, image_ids=[9, 8, 7], batch_size=64)[::-1]
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = rise(model, images, masks=24, grid=3, seed=2, image_ids=[7, 8, 9])
    assert np.abs(a - c).max() > 1e-4


def _rise_mask_by_definition(grid: np.ndarray, shift, S: int) -> np.ndarray:
    """The s x s grid resized to (s + 1) cell px by scikit-image's rule (half-pixel centres, mirrored edges, bilinear), one pixel at a time, then cut."""
    s = grid.shape[0]
    cell = -(-S // s)
    n = (s + 1) * cell

    def source(o):  # input coordinate of output o, mirrored about the end samples into [0, s - 1]
        u = (o + 0.5) * s / n - 0.5
        while u < 0 or u > s - 1:
            u = -u if u < 0 else 2 * (s - 1) - u
        return u

    up = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            u, v = source(a), source(b)
            i0, j0 = min(int(u), s - 1), min(int(v), s - 1)
            i1, j1 = min(i0 + 1, s - 1), min(j0 + 1, s - 1)
            fu, fv = u - i0, v - j0
            up[a, b] = ((1 - fu) * (1 - fv) * grid[i0, j0] + (1 - fu) * fv * grid[i0, j1] + fu * (1 - fv) * grid[i1, j0] + fu * fv * grid[i1, j1])
    dy, dx = shift
    assert 0 <= dy < cell and 0 <= dx < cell
    return up[dy : dy + S, dx : dx + S]


def test_rise_masks_are_the_papers_upsampled_shifted_grids(images):
    program = RiseMasks(S, S, 6, 4, 0.5, 3, np.arange(3), np.zeros(3))
    for i in range(2):
        grids, shifts = program.draws(i)
        for m in range(6):
            np.testing.assert_allclose(program.mask(i, m, S, S), _rise_mask_by_definition(grids[m], shifts[m], S), atol=1e-6)


def test_the_reduction_never_mixes_images_in_a_batch(model, images):
    # 5 images x 3 masks in batches of 8: the first batch spans 3 images, the last one holds a padding pair; each image's sums are its own
    x = np.concatenate([images, images[:2] * 0.5])
    t = np.array([0, 2, 1, 1, 0])
    program = RiseMasks(S, S, 3, 3, 0.5, 0, np.arange(5), t)
    _, sums = run_program(model, x, program, batch_size=8)
    for i in range(5):
        ref = sum(_p(model, x[i] * program.mask(i, m, S, S)[..., None])[t[i]] * program.mask(i, m, S, S) for m in range(3))
        np.testing.assert_allclose(sums[i], ref, atol=1e-5)


@pytest.mark.tensorflow
@pytest.mark.parametrize("max_n", [None, 2])
def test_scorecam_equals_tf_keras_vis(model, images, max_n):
    from xbench.explain.tfkv import tfkv_maps

    t = np.array([0, 2, 1])
    ours = scorecam(model, images, targets=t, max_n=max_n, batch_size=5)
    # tf-keras-vis chooses Faster Score-CAM's channels over its batch: one image per batch is the per-image choice
    ref = tfkv_maps(model, images, t, "scorecam", max_n=max_n, batch_size=1)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert np.abs(ref).max() > 1e-3


def test_scorecam_equals_its_formula(model, images):
    import keras

    from xbench.explain.cam import default_layer

    layer = default_layer(model)
    A = np.asarray(keras.Model(model.input, model.get_layer(layer).output)(images), np.float64)
    maps, t = scorecam(model, images, return_targets=True)
    Uh = align_corners_matrix(A.shape[1], S)
    for i, x in enumerate(images):
        w = []
        for k in range(A.shape[-1]):
            up = Uh @ A[i, :, :, k] @ Uh.T
            M = (up - up.min()) / (up.max() - up.min() + 1e-7)
            w.append(_p(model, x * M[..., None])[t[i]])
        cam = np.maximum(np.tensordot(A[i], np.array(w), axes=([2], [0])), 0)
        np.testing.assert_allclose(maps[i], Uh @ cam @ Uh.T, rtol=1e-5, atol=1e-6)


def test_strongest_channels_pick_the_largest_spatial_spread():
    acts = np.zeros((1, 2, 2, 4), np.float32)
    acts[0, 0, 0] = [1, 5, 0, 3]  # std grows with the value at one corner
    assert strongest_channels(acts, 2).tolist() == [[1, 3]]


def test_pixel_sets_replace_exactly_their_pixels(model, images):
    # set j of image i: pixels {j, j + 7, ...} of the flat image (some padded with -1): passes equal NumPy's replacement
    sets = np.full((3, 5), -1, np.int32)
    for j in range(3):
        sets[j, : 3 + j] = np.arange(3 + j) * 7 + j
    program = PixelSets(lambda i: sets, 3, 5, reference_of=lambda x, i: np.full_like(x, 0.25))
    probs = run_program(model, images, program, batch_size=4)
    for i, x in enumerate(images):
        np.testing.assert_allclose(probs[i, 0], _p(model, x), atol=1e-6)
        for j in range(3):
            z = x.reshape(-1, 3).copy()
            z[sets[j][sets[j] >= 0]] = 0.25
            np.testing.assert_allclose(probs[i, j + 1], _p(model, z.reshape(x.shape)), atol=1e-6)


def test_the_explainers_are_built_by_name_and_check_their_fields(model, images):
    maps = build("occlusion", patch_size=10, stride=10)(model, images, np.array([0, 1, 2]), None)
    assert maps.shape == images.shape[:3]
    with pytest.raises(ValueError, match="keep_prob"):
        build("rise", keep_prob=1.5)
    with pytest.raises(ValueError, match="stride"):
        build("occlusion", stride=0)
    with pytest.raises(ValueError, match="stride: must lie in"):
        build("occlusion", patch_size=4, stride=5)
    with pytest.raises(ValueError, match=r"targets must be classes in \[0, 3\)"):
        occlusion(model, images, targets=[0, -1, 2])
    with pytest.raises(ValueError, match="needs a Keras model|need a Keras model"):
        rise(lambda z: np.ones((len(z), 3)) / 3, images, targets=[0, 1, 2])
    with pytest.raises(ValueError, match="max_n"):
        build("scorecam", max_n=0)


@pytest.mark.parametrize("backbone", ["tiny", pytest.param("vgg16", marks=pytest.mark.not_on_jax)])  # JAX: the tiny net takes the same path
def test_incremental_occlusion_equals_the_full_recompute(backbone, images):
    import xbench.perturbation.incremental as inc
    from xbench.models import build_classifier
    from xbench.models.backbones import NO_WEIGHTS

    if backbone == "tiny":
        net, x, patch = tiny_model(S, S, c=3), images, 5
    else:
        from xbench.pipeline.speed import _unsaturate

        net, patch = build_classifier("vgg16", 3, 32, weights=NO_WEIGHTS, seed=2), 8
        x = np.random.default_rng(5).random((2, 32, 32, 3)).astype(np.float32)
        _unsaturate(net, x)  # an untrained VGG16's softmax is saturated: recentre its logits so that occluding moves it
    full = occlusion(net, x, patch_size=patch, stride=patch, method="full")
    calls = []
    real = inc.occlusion_probs
    inc.occlusion_probs = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        fast = occlusion(net, x, patch_size=patch, stride=patch, method="incremental", batch_size=2)
    finally:
        inc.occlusion_probs = real
    assert calls  # the incremental runner really ran
    # A window's convolutions sum in another order than the whole image's. Measured on VGG16: TensorFlow ~1e-7 on
    # AVX-512 CPUs and 1.9e-5 on an AVX2 EPYC, XLA (JAX) ~1.1e-5; a wrong window moves the map by its own scale (> 1e-4).
    np.testing.assert_allclose(fast, full, rtol=0, atol=5e-5)
    assert np.abs(full).max() > 1e-4
    with pytest.raises(ValueError, match="incremental occlusion needs stride = patch_size"):
        occlusion(net, x, patch_size=patch, stride=patch - 1, method="incremental")


def _rise_peak_bytes(model, images, masks: int) -> int:
    """Peak host bytes (tracemalloc: NumPy buffers included) of RISE on ``images`` with ``masks`` masks."""
    import tracemalloc

    rise(model, images[:1], masks=8, grid=4, batch_size=64)  # compiled before tracing
    tracemalloc.start()
    try:
        rise(model, images, masks=masks, grid=4, batch_size=64)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.not_on_jax  # the host side is the same code on every backend
def test_rise_host_memory_does_not_grow_with_the_masks_or_the_images():
    # The masks are built and summed on the device: the host holds the images, the (N, M, C) scores, a few images' grids
    # (M x 4 x 4 numbers) and the (N, H, W) sums, never an H x W mask per mask.
    size = 48
    net = tiny_model(size, size, c=3)
    x = np.random.default_rng(0).random((8, size, size, 3)).astype(np.float32)
    one_mask_set = size * size * 4  # bytes of one float32 mask
    few, many = _rise_peak_bytes(net, x[:2], 200), _rise_peak_bytes(net, x[:2], 3000)
    assert (many - few) / 2800 < 0.1 * one_mask_set, f"{(many - few) / 2800:.0f} bytes per extra mask"
    small, large = _rise_peak_bytes(net, x[:2], 500), _rise_peak_bytes(net, x[:8], 500)
    assert (large - small) / 6 < 0.1 * 500 * one_mask_set, f"{(large - small) / 6:.0f} bytes per extra image"
