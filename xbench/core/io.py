"""The only module that writes files. Every write is atomic.

A file is written to a temporary name in the destination folder and moved into
place with :func:`os.replace`, so a reader (a report, a second job sharing a
cache entry) sees either the old file or the complete new one, never half a
file. Two writers racing for the same path both succeed; the last rename wins,
which is harmless because cache entries are keyed by their content.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing
import multiprocessing.context
import os
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from xbench.core import faults


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_path(path: Path, suffix: str = ".tmp") -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; results should get the permissions a plain open() would give.
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` on success.

    Use for writers that insist on a file name of their own (Keras, PIL). The
    temporary file is removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path, suffix)
    try:
        yield tmp
        faults.point(f"replace@{path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (NumPy scalars and arrays converted)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV without its index."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return write_text(path, buf.getvalue())


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], compress: bool = True) -> Path:
    """Write arrays to an ``.npz`` (read back with ``allow_pickle=False``).

    ``compress=False`` for checkpoints: weights barely compress and zlib
    would cost more than the epoch it protects.
    """
    path = Path(path)
    buf = io.BytesIO()
    save = np.savez_compressed if compress else np.savez
    save(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_bytes(path, buf.getvalue())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write one array as ``.npy`` (read back with ``allow_pickle=False``)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return write_bytes(path, buf.getvalue())


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 array, (H, W) grayscale or (H, W, 3) RGB, as PNG."""
    from PIL import Image

    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"write_png expects uint8, got {array.dtype}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_memmap(path: str | os.PathLike, shape: tuple[int, ...], dtype=np.uint8) -> Iterator[np.memmap]:
    """Yield a writable memmap at a temporary name; publish it at ``path`` on success.

    The array is filled by the caller inside the block, flushed, then renamed,
    so a half-filled cache file is never visible under its final name.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        try:
            yield arr
            arr.flush()
        finally:
            del arr


def save_keras_model(path: str | os.PathLike, model) -> Path:
    """Save a Keras model in the ``.keras`` format, atomically."""
    with atomic_path(path, suffix=".keras") as tmp:  # Keras insists on the suffix
        model.save(tmp)
    return Path(path)


def save_figure(path: str | os.PathLike, fig, **kwargs) -> Path:
    """Save a matplotlib figure atomically; the format follows the suffix."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    return write_bytes(path, buf.getvalue())


def ensure_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str | None = None, *, report_every: float = 30.0, timeout: float | None = None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Yields True if the lock was free at once, False if the caller had to wait
    for another process to release it. The kernel drops the lock when its
    holder dies, even by SIGKILL, so a killed job never blocks the next one,
    provided no child process shares the lock's open file: child processes
    of xbench are spawned, never forked while a lock is held
    (:func:`process_pool`). The holder writes its pid and command line into
    the file; a waiter logs what it waits for and on whom at once and every
    ``report_every`` seconds, so a wait is never silent.

    Args:
        path: the lock file.
        what: what the lock guards, for the wait message (default: the file name).
        timeout: give up waiting after this many seconds with :class:`TimeoutError` (None: wait as long as it takes).
    """
    import fcntl
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            free = False
        if not free:
            log = logging.getLogger(__name__)
            start, told = time.monotonic(), -report_every
            while True:
                waited = time.monotonic() - start
                if waited - told >= report_every:
                    log.warning("waiting for %s: locked by %s (%s); it is released when that process finishes or dies (waited %.0f s)",
                                what or path.name, lock_holder(path) or "another process", path, waited)
                    told = waited
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if timeout is not None and time.monotonic() - start >= timeout:
                        raise TimeoutError(f"{what or path.name} stayed locked by {lock_holder(path) or 'another process'} for {timeout:g} s") from None
                    time.sleep(0.05 if timeout is not None else 0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {_cmdline(os.getpid())}\n".encode(), 0)
        yield free
    finally:
        os.close(fd)  # closing releases the lock


def lock_holder(path: str | os.PathLike) -> str | None:
    """The "pid N: command line" the holder of lock file ``path`` wrote, or None."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return text or None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)[:200]


def process_pool(workers: int):
    """A ``ProcessPoolExecutor`` whose workers neither hold the parent's locks, nor re-run its script, nor outlive it (threads under a launcher with its own start method).

    Workers are spawned (a fresh interpreter, not a fork): a forked worker
    shares every open file of its parent, so a lock held by the parent at
    fork time would stay held for as long as the worker lives, and forked
    workers hold each other's pipe ends, so none notices its parent die.
    A spawned worker would also re-run the parent's ``__main__`` (a user's
    script without ``if __name__ == "__main__":`` re-entered the job in every
    worker, which then waited for the lock its parent held, for ever; a
    script fed on standard input broke the pool): xbench's workers start
    without it (:class:`_NoMainProcess`), so what they run must live in an
    importable module, never in ``__main__``.
    On Linux each worker also asks the kernel to kill it when its parent
    dies (``PR_SET_PDEATHSIG``), so a parent killed by SIGKILL (the OOM
    killer) leaves no orphan.
    """
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    if multiprocessing.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
        # Inside a launcher's worker (joblib's loky sets its own start method), a spawned child
        # would try to restore that method and fail: use threads, which hold no lock of their
        # own and cannot outlive the process.
        return ThreadPoolExecutor(max_workers=workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=_NoMainContext(),
                               initializer=die_with_parent, initargs=(os.getpid(),))


class _MainStandIn(types.ModuleType):
    """``__main__`` while a worker starts: no file and no spec, so the worker does not run it; any other name is the real one's."""

    def __init__(self, real: types.ModuleType):
        super().__init__("__main__")
        self._xbench_real = real

    def __getattr__(self, name: str):
        if name in ("__file__", "__spec__"):
            raise AttributeError(name)
        return getattr(self._xbench_real, name)


_hiding_main = threading.Lock()


class _NoMainProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that does not re-run the parent's ``__main__``.

    Spawn decides from ``sys.modules["__main__"]`` at start time
    (``multiprocessing.spawn.get_preparation_data``): with a module name in
    its ``__spec__`` the child re-imports that module
    (``_fixup_main_from_name``), with a ``__file__`` it runs that file
    (``_fixup_main_from_path``; ``<stdin>`` is no file, so the child dies),
    with neither it leaves ``__main__`` alone. For the few milliseconds of
    ``start`` the parent's ``__main__`` is a stand-in with neither, which
    hands every other name to the real one (a thread pickling a ``__main__``
    object meanwhile still finds it).
    """

    def start(self):
        with _hiding_main:
            real = sys.modules["__main__"]
            sys.modules["__main__"] = _MainStandIn(real)
            try:
                super().start()
            finally:
                sys.modules["__main__"] = real


class _NoMainContext(multiprocessing.context.SpawnContext):
    """The spawn start method with :class:`_NoMainProcess`."""

    Process = _NoMainProcess


def die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when ``parent`` dies (Linux); exit at once if it is gone already.

    Called first thing in every child xbench starts (pool workers, the tracking child).
    """
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def remove(path: str | os.PathLike) -> None:
    """Delete a file if it exists (a checkpoint superseded by a newer one)."""
    Path(path).unlink(missing_ok=True)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder and its contents if it exists (a finished job's checkpoint)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
