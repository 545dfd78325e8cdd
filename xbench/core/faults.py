"""Fault injection for the robustness suite (``tests/faults``).

``XBENCH_FAULT="<point>:<n>"`` kills the process with SIGKILL the n-th time
it passes ``<point>``: nothing is flushed, no ``finally`` runs, exactly as
when a cluster pre-empts a job or the OOM killer strikes. Points:

- ``train_epoch``: after an epoch's checkpoint is on disk;
- ``score_chunk``: after a chunk of perturbation curves is on disk;
- ``replace@<file name>``: inside an atomic write, after the temporary file
  is complete and before it is renamed onto ``<file name>``.

Unset (the normal case) the check is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_hits: Counter = Counter()


def point(name: str) -> None:
    """Count a pass through ``name``; SIGKILL this process if ``XBENCH_FAULT`` says so."""
    spec = os.environ.get("XBENCH_FAULT")
    if not spec:
        return
    where, _, n = spec.rpartition(":")
    if where != name:
        return
    _hits[name] += 1
    if _hits[name] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
