"""Helpers shared by test modules (a plain module: no test imports another test module).

- :func:`python` / :func:`xbench`: run Python or ``python -m xbench`` in a subprocess,
  with a private cache and no fault injected (the one way tests start xbench from outside).
- :func:`compose`: the shipped config, composed with overrides by Hydra's compose API.
- :func:`once_per_run`: a session fixture's folder made once for the whole run, shared by the xdist workers.

Reference implementations and small models are in :mod:`tests.references`.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def once_per_run(tmp_path_factory, name: str, make) -> tuple[Path, bool]:
    """``make(folder)`` once per test run, whichever xdist worker asks first: (folder, whether this process made it).

    Each xdist worker has its own session, so a session fixture would run once
    per worker; the workers share the parent of their base temporary folders,
    and a lock there makes the others wait for the first and reuse its folder
    (``.done`` marks a finished one: a ``make`` that failed is retried). A
    fixture that uses this must treat the folder as read-only.
    """
    from xbench.core.io import file_lock, remove_tree

    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: a plain session folder
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder, True
    root = tmp_path_factory.getbasetemp().parent
    folder = root / name
    with file_lock(root / f"{name}.lock", f"the test fixture {name!r}"):
        if (folder / ".done").exists():
            return folder, False
        if folder.exists():
            remove_tree(folder)
        folder.mkdir()
        make(folder)
        (folder / ".done").touch()
    return folder, True


#: Bytes glibc keeps at the top of a test process's heap (``M_TOP_PAD``; glibc's default is 128 KiB): see :func:`pad_heap`.
TOP_PAD_BYTES = 64 << 20


def pad_heap(pad_bytes: int = TOP_PAD_BYTES) -> bool:
    """Ask glibc to keep ``pad_bytes`` of freed memory at the top of this process's heap; True where it did (glibc), else a no-op.

    With glibc's defaults the heap is trimmed back as soon as 128 KiB are free
    at its top, so each step of a small job faulted in again the pages of the
    tensors the step before had freed: the fault tests' job took 2.7-2.9
    million page faults and 30-33 CPU seconds, padded 0.83-0.86 million and
    24.6-25.2, with bit-identical arrays (docs/performance.md, "Heap padding").
    The suite only: setting it fixes glibc's mmap threshold at 128 KiB, and the
    default benchmark at 299 px, whose tensors are megabytes, was 9% slower
    padded (553 s against 509 s), so xbench itself does not set it.
    tests/conftest.py pads the test processes, and their children through
    ``GLIBC_TUNABLES`` (:data:`GLIBC_PAD`).
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(-2, int(pad_bytes)) == 1  # -2: M_TOP_PAD (glibc's malloc.h)


#: The same for a child from its start (glibc reads it before ``main``): tests/conftest.py puts it in the environment.
GLIBC_PAD = f"glibc.malloc.top_pad={TOP_PAD_BYTES}"


def env(cache: str | os.PathLike | None = None, **extra: str) -> dict:
    """This process's environment, with ``XBENCH_CACHE=cache`` (when given), quiet TensorFlow, no fault, plus ``extra``."""
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    e.pop("XBENCH_FAULT", None)
    if cache is not None:
        e["XBENCH_CACHE"] = str(cache)
    e.update(extra)
    return e


#: XLA:CPU's flag for the suite's compile-bound JAX children: LLVM at -O0. Their programs are tiny and each compiled
#: once, so XLA's compile time, not the run, is their cost: the JAX rerun took 223 s at the default level and 163 s at
#: -O0 (2-core AMD EPYC, cold compilation caches, `pytest -n 0`), with the same tests passing. It changes the machine
#: code, not the computation: results agree to float32 rounding, which every cross-backend tolerance allows. Children
#: that train or score many forward passes keep XLA's default level, as jobs and the GPU script run: they were not
#: reliably faster at -O0 (docs/performance.md, "Compile time and smaller stand-ins").
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0"


def jax_env(cache: str | os.PathLike | None = None, *, fast_compile: bool = True, xla_flags: str = "", **extra: str) -> dict:
    """A child's environment under JAX (see :func:`env`): with ``fast_compile`` :data:`FAST_COMPILE_XLA_FLAGS`, plus
    ``xla_flags``; with ``cache``, ``XBENCH_CACHE=cache`` and JAX's persistent compilation cache beside it.

    The persistent cache: the JAX tests build the same small models with the
    same shapes test after test; XLA then compiles identical programs again,
    which the cache (keyed by the program and the flags) serves instead: the
    rerun's tests took 82 s without it and 47 s with it on a sample of two
    modules (2 cores). A hit returns the executable the same compiler made for
    the same program, so it changes no result.
    """
    flags = f"{FAST_COMPILE_XLA_FLAGS if fast_compile else ''} {xla_flags}".strip()
    e = env(cache, KERAS_BACKEND="jax", **({"XLA_FLAGS": flags} if flags else {}), **extra)
    if cache is not None:
        e.update(JAX_COMPILATION_CACHE_DIR=str(Path(cache) / "jax-compilation"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return e


def python(args, *, cwd=None, cache=None, extra_env=None, input: str | None = None, timeout: float = 900,
           check: bool = False) -> subprocess.CompletedProcess:
    """``python *args`` in a subprocess (text output captured); with ``check`` a non-zero exit fails the test with the end of stderr."""
    r = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env(cache, **(extra_env or {})), input=input,
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def xbench(args, *, cwd=None, cache=None, extra_env=None, timeout: float = 900, check: bool = False) -> subprocess.CompletedProcess:
    """``python -m xbench *args`` in a subprocess (see :func:`python`)."""
    return python(["-m", "xbench", *args], cwd=cwd, cache=cache, extra_env=extra_env, timeout=timeout, check=check)


def main_file(_=None) -> str | None:
    """The ``__file__`` of this process's ``__main__`` (run in a pool worker: ``None`` unless it re-ran its parent's script)."""
    return getattr(sys.modules["__main__"], "__file__", None)


def compose(overrides=()):
    """Compose the real config (conf/ as shipped) with overrides."""
    from hydra import compose as _compose
    from hydra import initialize_config_module

    from xbench.apps.config import register

    register()
    with initialize_config_module(config_module="xbench.conf", version_base="1.3"):
        return _compose(config_name="config", overrides=list(overrides))


def refusal(args, cache: str | os.PathLike) -> tuple[int, str]:
    """xbench's command-line entry (:func:`xbench.apps.run.main`) in this process on ``args``, expected to refuse.

    Returns (exit code, stderr). The refusals come from the preflight, before any
    job starts, so running them here costs no interpreter start; ``cache`` is the
    job cache the command line would use (to see nothing was written there).
    One real subprocess (tests/test_app.py) checks the same entry from outside.
    """
    import contextlib
    import io

    import pytest

    from xbench.apps.run import main

    err, argv, before = io.StringIO(), sys.argv, os.environ.get("XBENCH_CACHE")
    sys.argv, os.environ["XBENCH_CACHE"] = ["xbench", *map(str, args)], str(cache)
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
            main()
    finally:
        sys.argv = argv
        if before is None:
            os.environ.pop("XBENCH_CACHE", None)
        else:
            os.environ["XBENCH_CACHE"] = before
    return stop.value.code, err.getvalue()


def numpy_drawing(monkeypatch, module_name: str, **random):
    """Replace ``np`` in Quantus's module ``module_name`` by NumPy whose ``np.random`` functions ``random`` (name -> function) are given."""

    class NumpyWith(types.ModuleType):
        def __getattr__(self, name):
            return getattr(np, name)

    fake = NumpyWith("numpy")
    fake.random = types.SimpleNamespace(**random)
    module = importlib.import_module(module_name)
    assert module.np is np
    monkeypatch.setattr(module, "np", fake)
