"""tests/helpers.pad_heap (the test processes' heap padding): after it, glibc keeps freed memory at the top of the heap instead of returning it at once."""

import ctypes
import sys
import textwrap

import pytest

from tests.helpers import REPO, TOP_PAD_BYTES, env, pad_heap

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                           reason="glibc >= 2.33 (mallinfo2) only")

#: Allocates 256 blocks of 64 KiB (16 MiB, under glibc's mmap threshold: on the heap), frees them, prints the main
#: arena's size and its releasable top (MiB) after the frees.
_CHILD = textwrap.dedent("""
    import ctypes, sys
    libc = ctypes.CDLL(None)
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Info
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
    if sys.argv[1] == "pad":
        from tests.helpers import pad_heap
        assert pad_heap()
    blocks = [libc.malloc(64 << 10) for _ in range(256)]
    for b in reversed(blocks):
        libc.free(b)
    info = libc.mallinfo2()
    print(info.arena >> 20, info.keepcost >> 20)
""")


def _after_frees(mode: str) -> tuple[int, int]:
    import subprocess

    child_env = env()
    child_env.pop("GLIBC_TUNABLES", None)  # glibc's defaults (tests/conftest.py pads children)
    r = subprocess.run([sys.executable, "-c", _CHILD, mode], cwd=REPO, env=child_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    arena, keep = map(int, r.stdout.split())
    return arena, keep


@glibc
def test_a_padded_heap_keeps_what_was_freed_and_a_default_one_returns_it():
    arena, keep = _after_frees("default")
    assert arena < 8 and keep < 8  # glibc trimmed the 16 MiB back: the case the padding is for
    arena, keep = _after_frees("pad")
    pad_mib = TOP_PAD_BYTES >> 20
    assert arena >= pad_mib and keep >= pad_mib  # the freed 16 MiB stay mapped, up to the pad, for the next allocations


@glibc
def test_it_says_whether_it_took_effect():
    assert pad_heap() is True  # this process is padded already (tests/conftest.py): setting it again is harmless
    assert pad_heap(TOP_PAD_BYTES) is True
