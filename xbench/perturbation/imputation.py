"""Noisy linear imputation: ROAD's in-distribution removal (kernels).

Rong, Leemann, Borisov, Kasneci and Kasneci (2022), "A Consistent and
Efficient Evaluation Strategy for Attribution Methods" (ROAD, "RemOve And
Debias"), section 4: a removed pixel takes the weighted mean of its eight
neighbours, the direct ones weighted 1/6 and the diagonal ones 1/12. Where
a neighbour is itself removed, its value is unknown too, so the removed
pixels of an image solve one sparse linear system per channel:

    for every removed pixel p:   sum_{q in N(p)} w_pq (v_p - v_q) = 0,

with N(p) the neighbours inside the image (the weights of those outside are
dropped, not renormalised: the mean is over the neighbours that exist) and
v_q the known value where q is kept. Then the paper adds N(0, noise^2) to
every imputed value (noise = 0.01 on [0, 1] images in its code), so the
model cannot read the removal pattern off the smoothness of the fill.

The system is symmetric positive definite whenever each connected set of
removed pixels touches a kept one, which on a connected grid holds unless
every pixel is removed. With nothing kept there is no data to impute from;
both solvers here return 0 (the minimum-norm solution of the singular
system, and what conjugate gradients started from 0 gives), so a fully
removed image is black plus noise.

Two solvers of the same system:

- :func:`impute_exact`: SciPy's sparse direct solve, one image at a time
  (the reference, as ROAD's own code does it).
- :func:`impute_batched`: preconditioned conjugate gradients in
  ``keras.ops`` on a whole batch of (image, mask) pairs at once (one channel
  when every image of the batch is grey, its channels equal: an X-ray copied
  to RGB), every system in the batch iterated together until each has
  relative residual ``||r|| <= tol * ||b||`` or ``max_iter`` is reached. The
  preconditioner is two-level additive: Jacobi (the neighbour-weight sums)
  plus a coarse solve on square aggregates of the removed pixels, at most 12
  along a side (:func:`_coarse_correction`); on 72-px MoRF masks of 10-95%
  of the image it needs 35 iterations where Jacobi alone needed 202. The matrix is never built: A v is two masked 3x3
  depthwise convolutions, so it compiles into the engine's forward step on
  any Keras backend. It solves for the departure from each image's mean kept
  value (float32 rounding then scales with contrast, not brightness).

How far the batched solve lands from the exact one (default ``tol`` 1e-6):
bounded by the tests at 1e-4 on images up to 31 px, any mask; 2.0e-6 on the
72-px MoRF masks above. With Jacobi alone (before the coarse solve) it was
measured on the masks of a deletion curve's last steps (the kept pixels one
compact blob, the hardest systems a curve meets) at 3.6e-5 (64 px), 9.1e-5
(128 px) and 1.9e-4 (299 px, 1,243 iterations), and at 2.3e-4 with three
kept pixels at 128 px. That floor is float32's: with ``tol`` 1e-7 or 1e-8 the solver's
running residual meets the target while the true one stays near 2.6e-5 of
||b||, so a tighter ``tol`` costs iterations and buys nothing. It is 50
times below ROAD's own noise (0.01).
"""

from __future__ import annotations

import numpy as np

#: (row offset, column offset, weight) of the eight neighbours (ROAD, section 4).
NEIGHBOURS = tuple((dr, dc, (1 / 12 if dr and dc else 1 / 6)) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc)


def _kernel(channels: int) -> np.ndarray:
    """(3, 3, C, 1) float32 depthwise kernel of the neighbour weights (centre 0)."""
    k = np.zeros((3, 3), np.float32)
    for dr, dc, w in NEIGHBOURS:
        k[1 + dr, 1 + dc] = w
    return np.repeat(k[:, :, None, None], channels, axis=2)


def impute_exact(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The noiseless imputation by a sparse direct solve (the reference).

    Args:
        image: (H, W, C) float image (any range; the kept pixels' values).
        removed: (H, W) bool, True where the pixel is removed.

    Returns:
        (H, W, C) float64: the kept pixels unchanged, the removed ones the
        solution of the system in the module docstring (0 where nothing is kept).
    """
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    x = np.asarray(image, np.float64)
    rm = np.asarray(removed, bool)
    h, w, c = x.shape
    out = x.copy()
    unknown = np.flatnonzero(rm.ravel())
    if len(unknown) == 0:
        return out
    if len(unknown) == h * w:
        out[:] = 0.0
        return out
    var = np.full(h * w, -1, np.int64)
    var[unknown] = np.arange(len(unknown))
    r0, c0 = np.divmod(unknown, w)
    rows, cols, vals = [], [], []
    diag = np.zeros(len(unknown))
    b = np.zeros((len(unknown), c))
    flat = x.reshape(h * w, c)
    for dr, dc, wt in NEIGHBOURS:
        r, cc = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < h) & (cc >= 0) & (cc < w)
        eq = np.flatnonzero(inside)
        q = r[inside] * w + cc[inside]
        diag[eq] += wt
        gone = rm.ravel()[q]
        rows.append(eq[gone])
        cols.append(var[q[gone]])
        vals.append(np.full(int(gone.sum()), -wt))
        b[eq[~gone]] += wt * flat[q[~gone]]
    rows.append(np.arange(len(unknown)))
    cols.append(np.arange(len(unknown)))
    vals.append(diag)
    A = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(unknown),) * 2)
    sol = spsolve(A, b)
    out.reshape(h * w, c)[unknown] = sol.reshape(len(unknown), c)
    return out


def impute_batched(x, removed, *, tol: float = 1e-6, max_iter: int | None = None, return_info: bool = False, grey: bool | None = None):
    """The noiseless imputation of a batch by preconditioned conjugate gradients (``keras.ops``).

    Args:
        x: (B, H, W, C) float32 images (kept values; removed ones are ignored).
        removed: (B, H, W, 1) float32, 1 where the pixel is removed, else 0.
        tol: stop when every system's residual norm is at most ``tol`` times
            its right-hand side's (per image and channel).
        max_iter: an upper bound on iterations (default ``4 * (H + W)``:
            twice the 1,243 the hardest 299-px deletion step measured needed).
        return_info: also return (iterations run, (B,) relative residual of
            each pair: the worst of its channels; above ``tol`` only where
            ``max_iter`` stopped it).
        grey: every image's channels are equal (solve one channel), or not
            (solve all); None: find out, in Python when ``x`` holds values,
            else inside the graph (``keras.ops.cond``, which compiles both).

    Returns:
        (B, H, W, C) float32: ``x`` where kept, the imputed values where removed
        (and the info tuple if asked). Traceable: runs inside ``tf.function``
        and ``jax.jit`` (the loop is ``keras.ops.while_loop``).
    """
    from keras import ops

    x = ops.convert_to_tensor(x, "float32")
    m = ops.convert_to_tensor(removed, "float32")
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    iters = int(max_iter) if max_iter is not None else 4 * (int(h) + int(w))
    # Grey images (an X-ray copied to RGB: every channel equal) have one system, not three: when the whole batch is
    # grey, solve the first channel and copy it (a third of the work; the same numbers, channel by channel).
    same = ops.all(ops.equal(x, x[..., :1]))
    if grey is None:
        try:
            grey = bool(ops.convert_to_numpy(same))  # values at hand: decide here, one branch compiled
        except Exception:  # noqa: BLE001  (a traced tensor has no value: decide in the graph)
            grey = None

    def one():
        u, (i, rel) = _cg(x[..., :1], m, tol, iters)
        return ops.repeat(u, int(c), axis=-1), i, rel

    def every():
        u, (i, rel) = _cg(x, m, tol, iters)
        return u, i, rel

    if int(c) == 1 or grey is False:
        u, i, rel = every()
    elif grey:
        u, i, rel = one()
    else:
        u, i, rel = ops.cond(same, one, every)
    out, info = u, (i, rel)
    return (out, info) if return_info else out


#: Most aggregates along a side of the two-level preconditioner's coarse grid (:func:`_coarse_correction`).
COARSE_CELLS = 12


def aggregate_size(height: int, width: int) -> int:
    """Side in pixels of the coarse grid's square aggregates: at most :data:`COARSE_CELLS` of them along a side, at least 2 px."""
    return max(2, -(-max(height, width) // COARSE_CELLS))


def _shift_masks(height: int, width: int, a: int) -> dict:
    """{(offset, block offset): (H, W) float32}: 1 where pixel p + offset lies in the aggregate block-offset from p's (static)."""
    rows, cols = np.arange(height), np.arange(width)
    out = {}
    for dr, dc, _ in NEIGHBOURS:
        br = (rows + dr) // a - rows // a
        bc = (cols + dc) // a - cols // a
        for Dr in (-1, 0, 1):
            for Dc in (-1, 0, 1):
                q = np.outer(br == Dr, bc == Dc).astype(np.float32)
                if q.any():
                    out[(dr, dc), (Dr, Dc)] = q
    return out


def _coarse_correction(m, diag, a: int):
    """The coarse half of a two-level additive preconditioner: v -> P (P^T A P)^{-1} P^T v, P the removed pixels' aggregates (keras.ops).

    P has one column per a x a aggregate of pixels, 1 on its removed pixels;
    A_c = P^T A P is assembled from the neighbour weights (for each neighbour
    offset, the removed pairs that straddle two aggregates, counted per block
    offset), not by applying A. Empty aggregates get 1 on the diagonal, and
    the whole matrix 1e-6 of its mean diagonal (a fully removed image's
    system is singular; its right-hand side is 0). With the Jacobi half the
    preconditioner is symmetric positive definite, so CG stays CG; the
    iterations stop growing with the hole's size like Jacobi's alone
    (Nicolaides 1987, deflation by piecewise-constant aggregates).
    """
    from keras import ops

    B, H, W = ops.shape(m)[0], m.shape[1], m.shape[2]
    Hc, Wc = -(-H // a), -(-W // a)
    nc = Hc * Wc

    def restrict(v):  # (B, H, W, C) -> (B, nc, C): sums over each aggregate
        C = v.shape[-1]
        v = ops.pad(v, ((0, 0), (0, Hc * a - H), (0, Wc * a - W), (0, 0)))
        return ops.reshape(ops.sum(ops.reshape(v, (-1, Hc, a, Wc, a, C)), axis=(2, 4)), (-1, nc, C))

    def prolong(y):  # (B, nc, C) -> (B, H, W, C) on the removed pixels
        C = y.shape[-1]
        up = ops.broadcast_to(ops.reshape(y, (-1, Hc, 1, Wc, 1, C)), (B, Hc, a, Wc, a, C))
        return m * ops.reshape(up, (-1, Hc * a, Wc * a, C))[:, :H, :W]

    mp = ops.pad(m, ((0, 0), (1, 1), (1, 1), (0, 0)))
    counts = restrict(m)[..., 0]  # (B, nc)
    Ac = _diag_embed(restrict(m * diag[..., :1])[..., 0] + ops.cast(counts == 0, "float32"))
    for ((dr, dc), (Dr, Dc)), q in _shift_masks(H, W, a).items():
        w = dict(((r, c), wt) for r, c, wt in NEIGHBOURS)[(dr, dc)]
        pairs = m * mp[:, 1 + dr : 1 + dr + H, 1 + dc : 1 + dc + W] * ops.convert_to_tensor(q[None, :, :, None])
        v = restrict(pairs)[..., 0]  # (B, nc): removed pairs from aggregate I into I + (Dr, Dc)
        Ac = Ac - w * v[:, :, None] * ops.convert_to_tensor(_shift_matrix(Hc, Wc, Dr, Dc)[None])
    eps = 1e-6 * ops.mean(ops.diagonal(Ac, axis1=1, axis2=2), axis=1, keepdims=True)
    Ainv = ops.inv(Ac + eps[:, :, None] * ops.eye(nc)[None])
    return lambda v: prolong(ops.matmul(Ainv, restrict(v)))


def _diag_embed(v):
    from keras import ops

    return v[:, :, None] * ops.eye(v.shape[-1])[None]


def _shift_matrix(Hc: int, Wc: int, Dr: int, Dc: int) -> np.ndarray:
    """(nc, nc) float32: 1 at (I, J) where aggregate J is aggregate I moved by (Dr, Dc) on the Hc x Wc grid."""
    S = np.zeros((Hc * Wc, Hc * Wc), np.float32)
    for r in range(Hc):
        for c in range(Wc):
            if 0 <= r + Dr < Hc and 0 <= c + Dc < Wc:
                S[r * Wc + c, (r + Dr) * Wc + c + Dc] = 1.0
    return S


def _cg(x, m, tol: float, iters: int):
    """(filled (B, H, W, C), (iterations, (B,) worst relative residual)): :func:`impute_batched` on C channels at once."""
    from keras import ops

    c = x.shape[3]
    kernel = ops.convert_to_tensor(_kernel(int(c)))

    def nb(v):  # sum of the in-image neighbours' weighted values (zero padding drops the outside ones)
        return ops.depthwise_conv(v, kernel, strides=1, padding="same")

    keep = 1.0 - m
    diag = nb(ops.ones_like(x[:1]))  # (1, H, W, C): the in-image neighbour weights of each pixel
    inv_diag = 1.0 / diag
    coarse = _coarse_correction(m, diag, aggregate_size(int(x.shape[1]), int(x.shape[2])))

    def precondition(r):  # two-level additive: Jacobi plus the aggregates' coarse solve
        return inv_diag * r + coarse(r)

    def apply(v):  # A v for v zero outside the removed pixels (every p CG makes is), 0 outside them
        return m * (diag * v - nb(v))

    def dot(a, b):
        return ops.sum(a * b, axis=(1, 2), keepdims=True)  # (B, 1, 1, C): one per system

    # Solve for the departure from each system's mean kept value (0 where
    # nothing is kept): the system is linear and a constant solves it, so
    # this changes nothing in exact arithmetic, but float32 rounding then
    # scales with the image's contrast, not its brightness (one kept pixel
    # is filled exactly instead of 1e-4 off).
    kept_n = ops.sum(keep, axis=(1, 2), keepdims=True)
    mean_kept = ops.sum(keep * x, axis=(1, 2), keepdims=True) / ops.maximum(kept_n, 1.0)
    b = m * nb(keep * (x - mean_kept))
    u = ops.zeros_like(x)
    r = b
    z = precondition(r)
    p = z
    rz = dot(r, z)
    bnorm = ops.sqrt(dot(b, b))
    limit = tol * bnorm

    rnorm = ops.sqrt(dot(r, r))

    def cond(i, u, r, p, rz, rnorm):
        return ops.logical_and(i < iters, ops.max(rnorm - limit) > 0)

    def body(i, u, r, p, rz, rnorm):
        # A converged system stops moving (alpha 0 from then on, so its u and r
        # stay put and its p no longer matters): iterating on its rounding noise
        # while the rest of the batch finished moved a one-kept-pixel image by 2e-4.
        active = rnorm > limit
        ap = apply(p)
        pap = dot(p, ap)
        alpha = ops.where(ops.logical_and(active, pap > 0), rz / ops.where(pap > 0, pap, 1.0), 0.0)
        u = u + alpha * p
        # The updated residual, not b - A u (one convolution fewer a step); its
        # gap to the true residual is what the tests bound against the direct
        # solve (module docstring).
        r = r - alpha * ap
        z = precondition(r)
        rz_new = dot(r, z)
        beta = ops.where(rz > 0, rz_new / ops.where(rz > 0, rz, 1.0), 0.0)
        return i + 1, u, r, z + beta * p, rz_new, ops.sqrt(dot(r, r))

    i, u, r, _, _, _ = ops.while_loop(cond, body, (ops.convert_to_tensor(0, "int32"), u, r, p, rz, rnorm))
    out = ops.where(m > 0, u + mean_kept, x)
    rel = ops.max(ops.sqrt(dot(r, r)) / ops.maximum(bnorm, 1e-30), axis=(1, 2, 3))
    return out, (i, rel)


def road_fill(x, removed, noise, *, tol: float = 1e-6, max_iter: int | None = None, clip: bool = True, return_residual: bool = False,
              grey: bool | None = None):
    """ROAD's removal: imputed values plus the fixed noise where removed, ``x`` elsewhere (``keras.ops``).

    Args:
        x: (B, H, W, 3) float32 originals in [0, 1].
        removed: (B, H, W, 1) float32 or bool, 1 where removed.
        noise: (B, H, W, 3) float32 noise, added only to imputed pixels.
        clip: clip the result to [0, 1].
        return_residual: also return the (B,) relative residuals
            (:func:`impute_batched`), so a caller can say when ``max_iter`` cut
            a solve short.
        grey: passed to :func:`impute_batched`.
    """
    from keras import ops

    m = ops.cast(removed, "float32")
    filled, (_, rel) = impute_batched(x, m, tol=tol, max_iter=max_iter, return_info=True, grey=grey)
    filled = filled + m * ops.convert_to_tensor(noise, "float32")
    out = ops.clip(filled, 0.0, 1.0) if clip else filled
    return (out, rel) if return_residual else out
