"""The CAM family, batched: Grad-CAM and the methods that differ from it only in how A and its gradients make a map.

:func:`cam_maps` is the shared base (activations A and gradients at one
layer per batch, the backend's one gradient step, bilinear upsampling); each
method is a kernel (A, gradients) -> (N, h, w) in ``CAM_KERNELS``: Grad-CAM,
Grad-CAM++, Layer-CAM, HiResCAM, XGrad-CAM, Eigen-CAM (papers and formulas in
their docstrings).

Grad-CAM (Selvaraju et al., 2017):

For layer activations A (N, h, w, K) and the gradients of the target logit
y_c (before the softmax) with respect to them:

    alpha_k = mean_{i,j} d y_c / d A_ijk          (global-average-pooled gradients)
    map     = ReLU( sum_k alpha_k A_k )           (N, h, w), >= 0
    upsampled bilinearly (half-pixel centres) to the input's (H, W).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from xbench.data.pixels import to_unit_float
from xbench.explain.gradients import activations_and_gradients


def gradcam_from_gradients(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """(N, h, w, K) activations and gradients -> (N, h, w) float32 Grad-CAM maps (>= 0)."""
    alpha = ops.mean(ops.convert_to_tensor(grads, "float32"), axis=(1, 2), keepdims=True)
    cam = ops.relu(ops.sum(alpha * ops.convert_to_tensor(acts, "float32"), axis=-1))
    return np.asarray(ops.convert_to_numpy(cam), dtype=np.float32)


# The rest of the CAM family: each a kernel (N, h, w, K) activations A and gradients G = d y_c / d A -> (N, h, w) float32,
# in NumPy (float64 inside, float32 out), run by :func:`cam_maps` exactly as Grad-CAM is (same layer, batching, upsampling).


def _out(cam: np.ndarray) -> np.ndarray:
    return np.maximum(cam, 0).astype(np.float32)


def gradcampp_from_gradients(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, Eq. 19), as tf-keras-vis computes it, without the exp(S_c) factor.

    With the score exp(S_c), dY/dA = exp(S_c) G, and the paper's higher
    derivatives are exp(S_c) G^2 and exp(S_c) G^3 (Eq. 19). Then

        alpha_ijk = G_ijk^2 / (2 G_ijk^2 + sum_ab A_abk G_ijk^3)   (1 added to a zero denominator, where G = 0)
        alpha_ijk /= sum_ij alpha_ijk                               (tf-keras-vis's normalisation; 1 added to a zero sum)
        w_k = sum_ij alpha_ijk ReLU(exp(S_c) G_ijk),  map = ReLU(sum_k w_k A_k).

    exp(S_c) cancels in alpha and leaves one positive factor per image in
    w: it is dropped (set to 1), because exp of a raw logit of tens or
    hundreds overflows float32 and turns the map into NaN; the region order
    is unchanged. This is what ``explainer=gradcampp impl=tfkv`` computes
    (tf-keras-vis with the score S_c - stop_gradient(S_c), docs/architecture.md
    "tf-keras-vis CAMs"), and the test compares the two.
    """
    a, g = np.asarray(acts, np.float64), np.asarray(grads, np.float64)
    g2, g3 = g * g, g * g * g
    denom = 2.0 * g2 + g3 * a.sum(axis=(1, 2), keepdims=True)
    alpha = g2 / (denom + (g2 == 0))
    norm = alpha.sum(axis=(1, 2), keepdims=True)
    alpha = alpha / (norm + (norm == 0))
    w = (alpha * np.maximum(g, 0)).sum(axis=(1, 2), keepdims=True)
    return _out((w * a).sum(axis=-1))


def layercam_from_gradients(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Layer-CAM (Jiang et al., IEEE TIP 2021, Eq. 6-7): map_ij = ReLU(sum_k ReLU(G_ijk) A_ijk), a weight per position."""
    a, g = np.asarray(acts, np.float64), np.asarray(grads, np.float64)
    return _out((np.maximum(g, 0) * a).sum(axis=-1))


def hirescam_from_gradients(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """HiResCAM (Draelos and Carin, 2020): map_ij = ReLU(sum_k G_ijk A_ijk), the gradients not averaged over positions.

    With global average pooling and one dense layer after ``A`` the gradient
    is the same at every position, and HiResCAM equals Grad-CAM (their
    Sec. 3). The ReLU is applied as for the rest of the family (and as
    pytorch-grad-cam does).
    """
    a, g = np.asarray(acts, np.float64), np.asarray(grads, np.float64)
    return _out((g * a).sum(axis=-1))


#: XGrad-CAM's guard against a channel whose activations sum to zero (pytorch-grad-cam's value).
XGRADCAM_EPS = 1e-7


def xgradcam_from_gradients(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """XGrad-CAM (Fu et al., BMVC 2020, Eq. 9): w_k = sum_ij (A_ijk / (sum_ab A_abk + eps)) G_ijk, map = ReLU(sum_k w_k A_k).

    ``eps`` = :data:`XGRADCAM_EPS` keeps an all-zero channel's weight at 0.
    """
    a, g = np.asarray(acts, np.float64), np.asarray(grads, np.float64)
    w = (a / (a.sum(axis=(1, 2), keepdims=True) + XGRADCAM_EPS) * g).sum(axis=(1, 2), keepdims=True)
    return _out((w * a).sum(axis=-1))


def eigencam_from_activations(acts: np.ndarray, grads: np.ndarray | None = None) -> np.ndarray:
    """Eigen-CAM (Muhammad and Yeasin, IJCNN 2020), as pytorch-grad-cam computes it; class-agnostic (``grads`` unused).

    Per image, the (h*w, K) activations are centred over positions
    (M = A - mean_positions A), v_1 is the first right-singular vector of M,
    and map = ReLU(M v_1) (h, w). A singular vector's sign is arbitrary (it
    flips between LAPACK builds and backends): it is fixed so that the
    projection M v_1 correlates positively with the mean activation over
    channels, mean_k A_ijk (the sign pytorch-grad-cam's images mostly show);
    where that correlation is exactly 0 the sign is LAPACK's.
    """
    a = np.asarray(acts, np.float64)
    n, h, w, k = a.shape
    out = np.zeros((n, h, w), np.float64)
    for i in range(n):
        m = a[i].reshape(h * w, k)
        m = m - m.mean(axis=0)
        if not np.any(m):
            continue  # a constant feature map: no direction, the map is 0
        v = np.linalg.svd(m, full_matrices=False)[2][0]
        p = m @ v
        mean = a[i].reshape(h * w, k).mean(axis=1)
        if np.dot(p, mean - mean.mean()) < 0:
            p = -p
        out[i] = p.reshape(h, w)
    return _out(out)


#: CAM name -> its kernel (activations, gradients) -> (N, h, w) maps.
CAM_KERNELS = {"gradcam": gradcam_from_gradients, "gradcampp": gradcampp_from_gradients, "layercam": layercam_from_gradients,
               "hirescam": hirescam_from_gradients, "xgradcam": xgradcam_from_gradients, "eigencam": eigencam_from_activations}


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (N, h, w) maps to (N, H, W) float32."""
    m = ops.convert_to_tensor(np.asarray(maps, np.float32)[..., None])
    out = ops.image.resize(m, size, interpolation="bilinear", antialias=False)
    return np.asarray(ops.convert_to_numpy(out)[..., 0], dtype=np.float32)


def default_layer(model: keras.Model) -> str:
    """The layer the model's card names (:mod:`xbench.models.card`), else the last conv layer."""
    from xbench.models.card import model_card

    name = model_card(model)["gradcam_layer"]
    if name:
        return name
    convs = conv_layer_names(model)
    if not convs:
        raise ValueError(f"model {model.name} has no 4-D feature map to explain")
    return convs[-1]


def conv_layer_names(model: keras.Model) -> list[str]:
    """Names of the convolution layers (Conv2D/DepthwiseConv2D), in graph order."""
    conv_types = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    return [l.name for l in model.layers if isinstance(l, conv_types)]


def gradcam(
    model: keras.Model,
    images: np.ndarray,
    *,
    targets: np.ndarray | None = None,
    layer: str | None = None,
    upsample: bool = True,
    batch_size: int = 32,
    return_targets: bool = False,
    progress: bool = False,
    logits_layer: str | None = None,
    output: str = "probs",
    preprocess=None,
):
    """Grad-CAM maps of a batch of images.

    Args:
        model: any Keras classifier :func:`xbench.models.as_classifier`
            reads (an xbench classifier as it is; another model is read, not
            modified, with ``logits_layer``, ``output`` and ``preprocess``).
        images: (N, H, W, 3) float in [0, 1] (uint8 is divided by 255).
        targets: (N,) class per image; default the predicted class.
        layer: a 4-D layer name; default the backbone's last conv feature map.
        upsample: resize to (H, W) (bilinear); else return (N, h, w).
        batch_size: images per forward/backward pass.
        return_targets: also return the (N,) targets used.
        progress: show a tqdm bar over batches.
        logits_layer, output, preprocess: see :func:`xbench.models.as_classifier`.

    Returns:
        (N, H, W) (or (N, h, w)) float32, non-negative.
    """
    return cam_maps(model, images, gradcam_from_gradients, targets=targets, layer=layer, upsample=upsample, batch_size=batch_size,
                    return_targets=return_targets, progress=progress, logits_layer=logits_layer, output=output, preprocess=preprocess,
                    desc="grad-cam")


def cam_maps(
    model: keras.Model,
    images: np.ndarray,
    kernel,
    *,
    targets: np.ndarray | None = None,
    layer: str | None = None,
    upsample: bool = True,
    batch_size: int = 32,
    return_targets: bool = False,
    progress: bool = False,
    logits_layer: str | None = None,
    output: str = "probs",
    preprocess=None,
    desc: str = "cam",
):
    """The CAM family's shared loop: per batch, activations A and gradients dy_c/dA at ``layer``, then ``kernel(A, grads)`` -> (n, h, w).

    Every CAM method (Grad-CAM, Grad-CAM++, Layer-CAM, HiResCAM, XGrad-CAM,
    Eigen-CAM) differs only in ``kernel``; reading the model, the default layer
    and target, batching and the bilinear upsampling are this function's.
    Arguments as :func:`gradcam`; returns (N, H, W) float32 (or (N, h, w)
    with ``upsample=False``), and the (N,) targets with ``return_targets``.
    """
    from xbench.models.adapt import adapted

    model = adapted(model, images, logits_layer=logits_layer, output=output, preprocess=preprocess)
    layer = layer or default_layer(model)
    maps, used = [], []
    images = np.asarray(images)
    from tqdm.auto import tqdm

    for s in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False, mininterval=1.0, disable=not progress):
        x = images[s : s + batch_size]
        x = to_unit_float(x)
        t = None if targets is None else np.asarray(targets)[s : s + batch_size]
        (a,), (g,), _, tt = activations_and_gradients(model, x, [layer], t)
        maps.append(kernel(a, g))
        used.append(tt)
    out = np.concatenate(maps) if maps else np.zeros((0,) + tuple(model.get_layer(layer).output.shape[1:3]), np.float32)
    if upsample and len(out):
        out = _upsample(out, images.shape[1:3])
    t_all = np.concatenate(used).astype(np.int64) if used else np.zeros(0, np.int64)
    return (out, t_all) if return_targets else out


_upsample = upsample


#: Layers that map a feature map to one of the same shape pixel by pixel; a block output followed by one is represented by it.
_ELEMENTWISE = ("BatchNormalization", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Dropout", "SpatialDropout2D", "Identity", "LayerNormalization")


def block_output_names(model: keras.Model, last: str | None = None) -> list[str]:
    """Names of the model's block outputs up to ``last`` (default: its Grad-CAM layer), in graph order; ``last`` is the final entry.

    A block output is a layer with a 4-D output that EVERY path from the
    input to the output passes through (a cut vertex of the layer graph: no
    skip connection jumps over it), at or after the first convolution,
    except zero-padding layers; a run of such layers joined by shape-keeping
    element-wise layers (batch norm, activation) counts once, as its last
    layer (the convolution before a BN, the sum before a ReLU are not
    listed). For the keras.applications backbones this gives:

    - VGG: every ``blockN_convM`` and ``blockN_pool`` (a chain);
    - ResNet: ``convN_blockM_out`` (and the stem's ``conv1_relu``, ``pool1_pool``);
    - DenseNet: ``convN_blockM_concat``, the transitions' ``poolN_relu``,
      ``poolN_conv``, ``poolN_pool`` (a chain), the final ``relu``;
    - InceptionV3: ``mixedN``;
    - MobileNetV2: ``block_N_add`` where a block has a residual, and the
      layers of the blocks without one, ``out_relu`` last.

    Inside a residual or dense block (the 32-channel growth convolutions of
    DenseNet, the pre-BN convolutions of ResNet) nothing is listed.
    """
    layers = model.layers
    where = {id(l): i for i, l in enumerate(layers)}
    parents = [sorted({where[id(p.operation)] for node in l._inbound_nodes for p in node.parent_nodes if id(p.operation) in where}) for l in layers]
    # positions in a topological order (Kahn's algorithm, ties kept in model.layers order)
    children = [[] for _ in layers]
    for w, ps in enumerate(parents):
        for u in ps:
            children[u].append(w)
    indeg = [len(ps) for ps in parents]
    import heapq

    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    topo = []
    while ready:
        u = heapq.heappop(ready)
        topo.append(u)
        for w in children[u]:
            indeg[w] -= 1
            if indeg[w] == 0:
                heapq.heappush(ready, w)
    pos = np.empty(len(layers), np.int64)
    pos[topo] = np.arange(len(topo))
    # v is a cut vertex iff no edge (u -> w) has pos(u) < pos(v) < pos(w)
    jump = np.zeros(len(layers) + 1, np.int64)
    for w, ps in enumerate(parents):
        for u in ps:
            jump[pos[u] + 1] += 1
            jump[pos[w]] -= 1
    cut_at = np.cumsum(jump)[: len(layers)] == 0  # indexed by position
    ordered = [layers[i] for i in topo]
    last = last or default_layer(model)
    end = int(pos[where[id(model.get_layer(last))]])
    conv_types = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    first_conv = next((p for p, l in enumerate(ordered) if isinstance(l, conv_types)), end)
    shape = lambda l: tuple(l.output.shape) if hasattr(l, "output") and not isinstance(l.output, (list, tuple)) else None
    names = []
    for p in range(first_conv, end):
        l, nxt = ordered[p], ordered[p + 1]
        if not cut_at[p] or shape(l) is None or len(shape(l)) != 4 or isinstance(l, keras.layers.ZeroPadding2D):
            continue
        if cut_at[p + 1] and type(nxt).__name__ in _ELEMENTWISE and shape(nxt) == shape(l):
            continue  # represented by the element-wise layer after it
        names.append(l.name)
    return names + [last]


def gradcam_last_n(model: keras.Model, images: np.ndarray, n: int = 3, *, targets=None, upsample: bool = True) -> dict[str, np.ndarray]:
    """Grad-CAM at each of the last ``n`` block outputs (the pediatric study's app): {layer: maps}, in graph order.

    The layers are :func:`block_output_names` (feature maps that feed the
    next block, ending at the model's Grad-CAM layer), not the last ``n``
    Conv2D layers, which for DenseNet are 32-channel growth convolutions and
    for ResNet convolutions before their batch norm.
    """
    from xbench.models.adapt import adapted

    model = adapted(model, images)
    names = block_output_names(model)[-n:]
    x = np.asarray(images, np.float32)
    acts, grads, _, _ = activations_and_gradients(model, x, names, targets)
    out = {}
    for name, a, g in zip(names, acts, grads):
        m = gradcam_from_gradients(a, g)
        out[name] = _upsample(m, x.shape[1:3]) if upsample else m
    return out
