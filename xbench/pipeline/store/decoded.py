"""Decoded-image cache: decode once, memory-map afterwards.

Images are decoded to (N, S, S, 3) uint8 and stored as one ``.npy`` file per
(file list, file sizes and modification times, S), so a second run on the same
data decodes nothing and reads pages on demand: the 5,380-image database at
299 px is a 1.4 GB file that is mapped, not loaded. Entries are published
atomically (see :mod:`xbench.core.io`), so concurrent jobs cannot see half an entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from xbench.core import io
from xbench.core.errors import DataError
from xbench.data.decode import CorruptImage, decode_image, decode_mask

log = logging.getLogger(__name__)
_VERSION = 1


@dataclass
class Decoded:
    """Decoded pixels of a file list.

    Attributes:
        array: (N, S, S, 3) uint8 (images) or (N, S, S) uint8 0/1 (masks), a
            read-only memmap; row i belongs to ``paths[i]`` (zeros where the
            file did not decode).
        ok: (M,) int64 indices of the files that decoded.
        skipped: (path, reason) for each file that did not.
    """

    array: np.ndarray
    ok: np.ndarray
    skipped: list[tuple[str, str]]
    key: str = ""  # fingerprint of the file list (paths, sizes, mtimes) and size


def _fingerprint(paths: Sequence[Path], size: int, kind: str) -> str:
    h = hashlib.sha256(f"{_VERSION}|{kind}|{size}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"|{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _decode_into(out, paths, size, decoder: Callable, desc: str, workers: int) -> dict[int, str]:
    reasons: dict[int, str] = {}

    def one(i):
        try:
            out[i] = decoder(paths[i], size)
        except CorruptImage as exc:
            reasons[i] = str(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(tqdm(pool.map(one, range(len(paths))), total=len(paths), desc=desc, unit="img", leave=False, mininterval=1.0))
    return reasons


def _read_entry(arr_path: Path, meta_path: Path, shape: tuple) -> tuple[np.ndarray, list] | None:
    """(memmapped array, skipped list) of a cache entry, or None if it is absent or damaged."""
    if not (arr_path.is_file() and meta_path.is_file()):
        return None
    try:
        skipped = [tuple(s) for s in json.loads(meta_path.read_text())["skipped"]]
        array = np.load(arr_path, mmap_mode="r", allow_pickle=False)
        if array.shape != shape or array.dtype != np.uint8:
            raise ValueError(f"holds {array.dtype} {array.shape}, expected uint8 {shape}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("decoded cache entry %s is damaged (%s); decoding again", arr_path.name, exc)
        return None
    return array, skipped


def _decode_entry(paths, size, masks, arr_path, meta_path, shape, kind, workers) -> tuple[np.ndarray, list]:
    decoder = (lambda p, s: decode_mask(p, s).astype(np.uint8)) if masks else decode_image
    # Rows are written straight into the memmap: host memory stays at a
    # few images per thread, whatever N is. Undecodable rows stay zero.
    with io.atomic_memmap(arr_path, (len(paths),) + shape) as mm:
        reasons = _decode_into(mm, paths, size, decoder, f"decoding {kind}s", workers or os.cpu_count() or 1)
    skipped = [(str(paths[i]), reasons[i]) for i in sorted(reasons)]
    io.write_json(meta_path, {"files": len(paths), "size": size, "kind": kind, "skipped": skipped})
    log.info("decoded %d %ss into %s (%d skipped)", len(paths) - len(skipped), kind, arr_path.name, len(skipped))
    return np.load(arr_path, mmap_mode="r", allow_pickle=False), skipped


def load_decoded(
    paths: Sequence[Path],
    size: int,
    cache_dir: str | Path,
    *,
    masks: bool = False,
    on_corrupt: str = "skip",
    workers: int | None = None,
) -> Decoded:
    """Decode ``paths`` at ``size`` x ``size``, from the cache when possible.

    Args:
        paths: image (or mask) files.
        size: output side length in pixels.
        cache_dir: folder holding cache entries (created on demand).
        masks: decode as binary masks, (M, S, S) uint8 in {0, 1}.
        on_corrupt: "skip" drops undecodable files and lists them; "error"
            raises :class:`DataError` naming the first one.
    """
    if on_corrupt not in ("skip", "error"):
        raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    paths = [Path(p) for p in paths]
    kind = "mask" if masks else "image"
    key = _fingerprint(paths, size, kind)
    folder = Path(cache_dir) / "decoded"
    arr_path, meta_path = folder / f"{kind}-{key}.npy", folder / f"{kind}-{key}.json"
    shape = (size, size) if masks else (size, size, 3)
    entry = _read_entry(arr_path, meta_path, (len(paths),) + shape)
    if entry is None:
        # One job decodes while others needing the same entry wait, then read it.
        with io.file_lock(folder / f".{kind}-{key}.lock", f"the decoded {kind} cache {key} (another job is decoding it)"):
            entry = _read_entry(arr_path, meta_path, (len(paths),) + shape)
            if entry is None:
                entry = _decode_entry(paths, size, masks, arr_path, meta_path, shape, kind, workers)
    else:
        log.info("decoded %ss: cache hit %s (%d files)", kind, arr_path.name, len(paths))
    array, skipped = entry
    bad = {s[0] for s in skipped}
    ok = np.asarray([i for i, p in enumerate(paths) if str(p) not in bad], dtype=np.int64)
    if skipped and on_corrupt == "error":
        raise DataError(
            f"{len(skipped)} {kind} file(s) cannot be decoded, first: {skipped[0][1]}; "
            "remove or replace them, or set data.on_corrupt=skip"
        )
    for path, reason in skipped:
        log.warning("skipped undecodable %s: %s", kind, reason)
    return Decoded(array=array, ok=ok, skipped=list(skipped), key=key)
