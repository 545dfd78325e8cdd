"""Maps made elsewhere (``explainer=file``): heatmaps read from an ``.npz`` file, checked, resized to the image, scored like any explainer.

Two layouts of the file (``np.savez``), told apart by their keys:

- **one array per image**, keyed by the image's relative path as the data source
  names it (the ``path`` column of a job's ``split.csv``; for ``data=folder``,
  the path under ``data.root``, e.g. ``"pneumonia/img_001.png"``):
  ``np.savez("maps.npz", **{path: map_2d, ...})``;
- **one stack**: ``maps`` (N, h, w) with ``paths`` (N,) strings beside it, row i
  the map of ``paths[i]``: ``np.savez("maps.npz", maps=stack, paths=np.array(paths))``.

Paths are compared as POSIX paths (``\\`` read as ``/``, a leading ``./``
dropped). Every map must be 2-D, real-valued and finite in float32; a map
whose size is not the image's is resized to it by ``resize``:
``"bilinear"`` (default) is :func:`xbench.explain.cam.upsample`, the resize
Grad-CAM's maps go through (``keras.ops.image.resize``, bilinear with
half-pixel centres, no antialiasing; the same rule stretches a non-square map,
as the images themselves were stretched when decoded), ``"none"`` refuses
such a map. The file is read and checked when the explainer is made (at
config time for a job), its SHA-256 is part of the heatmap cache key.

Which map goes with which image: a job binds the explainer to its images'
relative paths (:meth:`FileMaps.for_images`, by image id: the rows of the
decoded split) and checks every scored image has a map before any map is
scored. Unbound (a bare call from Python), image id i is the file's i-th map
(the order the arrays were saved in, or the rows of ``maps``).

Such maps cannot be recomputed, so the metrics that recompute explanations
(robustness, randomisation) and the model-randomisation check do not apply to
them (refused at config time, :func:`xbench.apps.config.validate`).
"""

from __future__ import annotations

import copy
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional, Sequence

import numpy as np

from xbench.core.errors import DataError
from xbench.explain.context import ExplainContext

#: ``resize=``: how a map of another size than the image is brought to it.
RESIZE_RULES = ("bilinear", "none")
#: Where the README says how to write the file.
_HOW = "see the README, 'Score maps made with another tool'"
_FORMATS = ("np.savez(path, **{relative path: 2-D map}) or np.savez(path, maps=(N, h, w) array, "
            "paths=np.array(relative paths))")


def relative_key(path) -> str:
    """A relative image path as the maps file and the data source are compared: POSIX separators, no leading ``./``."""
    p = str(path).replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def _check_map(m: np.ndarray, what: str, file: Path) -> np.ndarray:
    """The float32 map ``m`` (one image's), or a one-line ValueError ``path: ...`` naming ``what`` and the file."""
    if m.ndim != 2:
        raise ValueError(f"path: the map of {what} in '{file}' has shape {m.shape}, not (height, width); save one 2-D map per image "
                         "(reduce channels first, e.g. m.sum(axis=-1) or m.squeeze())")
    if 0 in m.shape:
        raise ValueError(f"path: the map of {what} in '{file}' is empty ({m.shape}); save a map with at least one pixel")
    if m.dtype.kind not in "biuf":
        raise ValueError(f"path: the map of {what} in '{file}' holds {m.dtype} values, not real numbers; save float maps")
    with np.errstate(over="ignore", invalid="ignore"):
        out = m.astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"path: the map of {what} in '{file}' holds NaN or infinite values (or values beyond float32's range); "
                         "fix them (e.g. np.nan_to_num) or rescale the map")
    return out


def read_maps_file(file: str | Path) -> tuple[list[str], dict[str, np.ndarray], str]:
    """(the relative paths in file order, {relative path: (h, w) float32 map}, the file's SHA-256), every map checked.

    Raises a one-line ValueError ``"path: ..."`` (the ``explainer.path`` setting of a job) naming the file and what to do:
    a file that is missing or not an .npz, neither layout, a map not 2-D, empty or not finite, a duplicated path.
    """
    file = Path(file).expanduser()
    if not file.is_file():
        raise ValueError(f"path: maps file '{file}' does not exist; write it with {_FORMATS} ({_HOW})")
    try:
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        z = np.load(file, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"path: '{file}' is not a readable .npz file ({' '.join(str(exc).split())[:200]}); write it with {_FORMATS}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"path: '{file}' holds one array, not an .npz of maps with the images' paths; write it with {_FORMATS}")
    with z:
        keys = list(z.files)
        try:
            if "maps" in keys or "paths" in keys:
                names, maps = _stacked(z, keys, file)
            else:
                if not keys:
                    raise ValueError(f"path: '{file}' holds no arrays; write it with {_FORMATS}")
                names = [relative_key(k) for k in keys]
                maps = {n: _check_map(z[k], repr(k), file) for n, k in zip(names, keys)}
        except ValueError as exc:
            if str(exc).startswith("path: "):
                raise
            # np.load refuses pickled objects (allow_pickle=False), e.g. a map or path list saved as an object array
            raise ValueError(f"path: '{file}' holds Python objects (an object array), which xbench does not unpickle; save numeric maps "
                             "and string paths (np.array(paths, dtype=str))") from None
    dup = _first_duplicate(names)
    if dup is not None:
        raise ValueError(f"path: '{file}' holds two maps for the image '{dup}'; keep one map per image")
    return names, maps, digest.hexdigest()


def _stacked(z, keys: list[str], file: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The ``maps`` + ``paths`` layout."""
    if not ("maps" in keys and "paths" in keys):
        have, lack = ("maps", "paths") if "maps" in keys else ("paths", "maps")
        raise ValueError(f"path: '{file}' holds '{have}' but no '{lack}'; save both, np.savez(path, maps=(N, h, w) array, "
                         "paths=np.array(relative paths)), or one array per image keyed by its relative path")
    extra = sorted(set(keys) - {"maps", "paths"})
    if extra:
        raise ValueError(f"path: '{file}' holds 'maps' and 'paths' and also {extra}; keep only those two (or one array per image, keyed by path)")
    maps, paths = z["maps"], z["paths"]
    if paths.ndim != 1 or paths.dtype.kind not in "US":
        raise ValueError(f"path: 'paths' in '{file}' is a {paths.dtype} array of shape {paths.shape}, not (N,) strings; "
                         "save np.array(relative paths, dtype=str)")
    names = [relative_key(p.decode() if isinstance(p, bytes) else p) for p in paths.tolist()]
    if maps.ndim != 3:
        raise ValueError(f"path: 'maps' in '{file}' has shape {maps.shape}, not (N, height, width); save one 2-D map per image "
                         "(reduce channels first, e.g. maps.sum(axis=-1))")
    if len(maps) != len(names):
        raise ValueError(f"path: '{file}' holds {len(maps)} maps but {len(names)} paths; save one path per map, in the same order")
    return names, {n: _check_map(maps[i], repr(n), file) for i, n in enumerate(names)}


def _first_duplicate(names: Sequence[str]) -> str | None:
    seen = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


@dataclass
class FileMaps:
    """Heatmaps made elsewhere, read from the ``.npz`` file ``path`` (module docstring: the two layouts, the checks, the resize rule).

    ``name``: what reports call these maps. ``resize``: ``bilinear`` (a map of another size is resized to the image by
    :func:`xbench.explain.cam.upsample`, Grad-CAM's resize) or ``none`` (such a
    map is refused). The maps are whatever the other tool computed: for the
    class you chose there (xbench's curves follow ``score.target``, the
    predicted class by default).
    """

    path: Optional[str] = None  # required: explainer.path=maps.npz
    resize: str = "bilinear"
    name: str = "file_maps"  # what reports call the maps (e.g. explainer.name=pytorch_gradcam)
    #: Its maps cannot be recomputed on other inputs or another model (robustness, randomisation, the sanity check).
    fixed_maps: ClassVar[bool] = True

    def __post_init__(self):
        if self.path in (None, ""):
            raise ValueError(f"path: not set; point it at the maps file (explainer.path=maps.npz), written with {_FORMATS}")
        if not self.name or self.name == "file":  # heatmaps.npz is written by np.savez(file, **{method: maps})
            raise ValueError(f"name: {self.name!r} cannot name the maps in a job's files; choose another (e.g. name=pytorch_gradcam)")
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize: must be one of {list(RESIZE_RULES)} (bilinear: Grad-CAM's resize to the image; none: a map of "
                             f"another size is refused), got {self.resize!r}")
        self._names, self._maps, self._sha256 = read_maps_file(self.file)
        self._paths: list[str] | None = None  # image id -> relative path, once bound (for_images)

    @property
    def file(self) -> Path:
        return Path(str(self.path)).expanduser()

    @property
    def maps_revision(self) -> str:
        """The file's SHA-256: part of the heatmap cache key, so a rewritten file at the same path is read again."""
        return self._sha256

    @property
    def paths(self) -> list[str]:
        """The relative paths the file has maps for, in file order."""
        return list(self._names)

    def for_images(self, paths: Sequence[str], ids: Sequence[int] | None = None, size: tuple[int, int] | None = None) -> "FileMaps":
        """A copy that reads image id i's map under ``paths[i]`` (the relative paths of the images, by image id).

        ``ids``: the images that will be explained; each must have a map (DataError naming the first missing one).
        ``size``: the images' (height, width); with ``resize="none"`` every map of ``ids`` must have it. Both checked now,
        before any map is scored.
        """
        bound = copy.copy(self)
        bound._paths = [relative_key(p) for p in paths]
        if ids is not None:
            bound._keys(np.asarray(ids, np.int64))
            if size is not None and self.resize == "none":
                for key in bound._keys(np.asarray(ids, np.int64)):
                    bound._check_size(key, tuple(size))
        return bound

    def read(self, paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
        """(N, H, W) float32: the maps of the images ``paths`` (relative paths), checked and resized to ``size`` = (H, W)."""
        bound = self.for_images(paths)
        return bound._stack(bound._keys(np.arange(len(paths))), tuple(size))

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        shape = tuple(images.shape) if hasattr(images, "shape") else np.asarray(images).shape
        context = context if context is not None else ExplainContext.default(shape[0])
        return self._stack(self._keys(np.asarray(context.image_ids, np.int64)), shape[1:3])

    def _keys(self, ids: np.ndarray) -> list[str]:
        """The file's keys of image ids ``ids``; DataError naming the first image without a map (and how many lack one)."""
        if self._paths is None:  # unbound: image id i is the file's i-th map
            bad = [int(i) for i in ids if not 0 <= int(i) < len(self._names)]
            if bad:
                raise DataError(f"maps file '{self.file}' holds {len(self._names)} maps and has none for image id {bad[0]}; "
                                "bind the images' relative paths first (explainer.for_images(paths)) or save a map per image")
            return [self._names[int(i)] for i in ids]
        bad = [int(i) for i in ids if not 0 <= int(i) < len(self._paths)]
        if bad:
            raise DataError(f"image id {bad[0]} is not one of the {len(self._paths)} images whose paths the maps file '{self.file}' was bound to")
        keys = [self._paths[int(i)] for i in ids]
        missing = [k for k in keys if k not in self._maps]
        if missing:
            example = f"; the file has e.g. '{self._names[0]}'" if self._names else ""
            more = f" (and {len(missing) - 1} more of the {len(keys)} scored)" if len(missing) > 1 else ""
            raise DataError(f"maps file '{self.file}' has no map for the image '{missing[0]}'{more}; add one, keyed by the image's path "
                            f"relative to the data root as split.csv names it{example}")
        return keys

    def _check_size(self, key: str, size: tuple[int, int]) -> None:
        got = self._maps[key].shape
        if got != size:
            raise DataError(f"maps file '{self.file}': the map of '{key}' is {got[0]}x{got[1]}, the image {size[0]}x{size[1]}; "
                            "save maps at the image size, or let xbench resize them (resize=bilinear)")

    def _stack(self, keys: list[str], size: tuple[int, int]) -> np.ndarray:
        """(N, H, W) float32 maps of ``keys``, each resized to ``size`` by the rule ``resize``."""
        size = (int(size[0]), int(size[1]))
        out = np.empty((len(keys), *size), np.float32)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, k in enumerate(keys):
            by_shape.setdefault(self._maps[k].shape, []).append(i)
        for shape, rows in by_shape.items():
            stack = np.stack([self._maps[keys[i]] for i in rows])
            if shape != size:
                if self.resize == "none":
                    self._check_size(keys[rows[0]], size)
                from xbench.explain.cam import upsample

                stack = upsample(stack, size)
            out[rows] = stack
        return out
