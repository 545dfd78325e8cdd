"""Which activations one changed region reaches, layer by layer (pure NumPy).

Step k of a region order changes one p x p region of x(k - 1). Through a
convolution or pooling layer with kernel k, stride s and ``pad`` rows of
padding before the first (per axis), output o reads the input rows
[o*s - pad, o*s - pad + k); so a change confined to input rows [a, b) reaches
exactly the outputs

    lo = max(0, floor((a + pad - k) / s) + 1),   hi = min(n_out, ceil((b + pad) / s)),

(:func:`affected`), and recomputing outputs [lo, hi) needs input rows
[lo*s - pad, (hi - 1)*s - pad + k) (:func:`needed`), out-of-range rows being
padding. Pixel-wise layers keep the box; Add and Concatenate take the
bounding box of their inputs' boxes. This is the bookkeeping of incremental
view maintenance for CNN inference (Nakandala et al., 2019, "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations",
SIGMOD, the Krypton system), which xbench applies to perturbation curves.

For the compiled step every image of a batch must recompute a window of the
same size, whichever region it changed: :func:`window_tables` takes, per
layer, the largest box over all regions of the grid, and places it at each
region's box, shifted inside the tensor where the box touches its edge (a
few more outputs are recomputed there; they are recomputed exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from xbench.perturbation.regions import grid_shape


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a sliding-window layer: output o reads input [o*stride - pad, o*stride - pad + kernel)."""

    kernel: int
    stride: int
    pad: int  # padding before the first row / column (rows of zeros, or -inf for max pooling)
    n_in: int
    n_out: int

    @staticmethod
    def of(kernel: int, stride: int, padding: str, n_in: int, dilation: int = 1) -> "Axis":
        """Keras / TensorFlow ``valid`` or ``same`` padding (same: ceil(n / s) outputs, the smaller half of the padding before)."""
        k = (int(kernel) - 1) * int(dilation) + 1
        s = int(stride)
        if padding == "valid":
            return Axis(k, s, 0, n_in, (n_in - k) // s + 1)
        if padding == "same":
            n_out = math.ceil(n_in / s)
            total = max((n_out - 1) * s + k - n_in, 0)
            return Axis(k, s, total // 2, n_in, n_out)
        raise ValueError(f"padding {padding!r} has no window arithmetic here")

    @staticmethod
    def padding(before: int, after: int, n_in: int) -> "Axis":
        """ZeroPadding2D: a 1-wide window with ``before`` zeros in front."""
        return Axis(1, 1, int(before), n_in, n_in + int(before) + int(after))

    def affected(self, a: int, b: int) -> tuple[int, int]:
        """Outputs [lo, hi) whose window meets input rows [a, b); (0, 0) for an empty change."""
        if b <= a:
            return 0, 0
        lo = max(0, (a + self.pad - self.kernel) // self.stride + 1)
        hi = min(self.n_out, -(-(b + self.pad) // self.stride))
        return (lo, hi) if hi > lo else (0, 0)

    def needed(self, lo: int, hi: int) -> tuple[int, int]:
        """Input rows [a, b) that outputs [lo, hi) read (may run past [0, n_in): padding)."""
        return lo * self.stride - self.pad, (hi - 1) * self.stride - self.pad + self.kernel


@dataclass
class Node:
    """One layer of the graph, as far as windows go.

    kind: ``input`` (the image), ``pixel`` (position-wise: activation, batch
    norm, preprocessing), ``window`` (convolution, pooling, zero padding:
    ``axes`` = (rows, cols)), ``merge`` (Add, Concatenate: the union of the
    inputs' boxes).
    """

    kind: str
    inputs: list[int] = field(default_factory=list)
    axes: tuple[Axis, Axis] | None = None
    shape: tuple[int, int] = (0, 0)  # output rows, cols


def region_boxes(height: int, width: int, region_size: int) -> np.ndarray:
    """(L, 4) int64 [r0, r1, c0, c1) of each region of the grid, row-major (the last row / column may be smaller)."""
    rows, cols = grid_shape(height, width, region_size)
    r, c = np.divmod(np.arange(rows * cols), cols)
    p = region_size
    return np.stack([r * p, np.minimum((r + 1) * p, height), c * p, np.minimum((c + 1) * p, width)], 1).astype(np.int64)


def propagate(nodes: list[Node], box: tuple[int, int, int, int]) -> np.ndarray:
    """(len(nodes), 4) boxes [r0, r1, c0, c1) of each node's outputs that a change in input ``box`` can reach.

    ``nodes`` are in topological order, node 0 the input. An empty box is
    (0, 0, 0, 0).
    """
    out = np.zeros((len(nodes), 4), np.int64)
    out[0] = box
    for i, n in enumerate(nodes[1:], 1):
        ins = [out[j] for j in n.inputs]
        if n.kind == "window":
            src = ins[0]
            out[i] = (*n.axes[0].affected(src[0], src[1]), *n.axes[1].affected(src[2], src[3]))
        else:  # pixel, merge: the bounding box of the inputs' changes
            live = [b for b in ins if b[1] > b[0] and b[3] > b[2]]
            if live:
                a = np.stack(live)
                out[i] = (a[:, 0].min(), a[:, 1].max(), a[:, 2].min(), a[:, 3].max())
    return out


@dataclass
class Windows:
    """Per node: the window every step recomputes, for every region of a grid.

    size: (len(nodes), 2) rows, cols of the window (the largest box over the
    regions, at least 1); starts: (L, len(nodes), 2) its top-left per region,
    inside the tensor; full: (len(nodes),) the window is the whole tensor;
    boxes: (L, len(nodes), 4) the exact boxes the windows cover.
    """

    size: np.ndarray
    starts: np.ndarray
    full: np.ndarray
    boxes: np.ndarray  # (L, len(nodes), 4) the true boxes
    region_size: int = 0


#: A window covering more than this share of its tensor is computed in full: gathering, computing
#: and writing back a window costs more per output than the plain layer (measured, docs/performance.md).
FULL_ABOVE = 0.6


def window_tables(nodes: list[Node], height: int, width: int, region_size: int, full_above: float = FULL_ABOVE) -> Windows:
    """The fixed-size windows of every node for every region of the ``region_size`` grid over (height, width).

    A window of more than ``full_above`` of its tensor becomes the whole tensor.
    """
    regions = region_boxes(height, width, region_size)
    boxes = np.stack([propagate(nodes, tuple(b)) for b in regions])  # (L, nodes, 4)
    shape = np.array([n.shape for n in nodes], np.int64)  # (nodes, 2)
    ext = np.stack([boxes[..., 1] - boxes[..., 0], boxes[..., 3] - boxes[..., 2]], -1).max(0)  # (nodes, 2)
    size = np.clip(ext, 1, shape)
    lo = np.stack([boxes[..., 0], boxes[..., 2]], -1)  # (L, nodes, 2)
    starts = np.clip(lo, 0, (shape - size)[None])
    full = (size == shape).all(1) | (size.prod(1) > full_above * shape.prod(1))
    size = np.where(full[:, None], shape, size)
    starts = np.where(full[None, :, None], 0, starts)
    return Windows(size=size, starts=starts.astype(np.int32), full=full, boxes=boxes, region_size=int(region_size))
