"""Holds a SLURM job at an xbench fault point, so that a test can cancel or requeue it there (on PYTHONPATH only in those tests).

``XBENCH_TEST_HOLD="<array task>=<point>:<n>,..."``: the job of that array task,
the n-th time it passes ``<point>`` (:func:`xbench.core.faults.point`: after an
epoch's checkpoint or a chunk of curves is on disk), writes
``$XBENCH_TEST_HOLD_DIR/<task>.held`` and sleeps until SLURM ends it. Once the
file exists the job is never held again, so a requeued job runs through.
(``XBENCH_FAULT`` kills the process itself: SLURM would see a failed job, not
one cancelled or requeued from outside.)
"""

import os

_spec = dict(item.split("=", 1) for item in os.environ.get("XBENCH_TEST_HOLD", "").split(",") if "=" in item)
_task = os.environ.get("SLURM_ARRAY_TASK_ID")

if _task in _spec:
    import time
    from collections import Counter
    from pathlib import Path

    import xbench.core.faults as _faults

    _where, _, _n = _spec[_task].rpartition(":")
    _marker = Path(os.environ["XBENCH_TEST_HOLD_DIR"]) / f"{_task}.held"
    _hits = Counter()
    _point = _faults.point

    def point(name: str) -> None:
        _point(name)
        _hits[name] += 1
        if name == _where and _hits[name] == int(_n) and not _marker.exists():
            _marker.write_text(str(os.getpid()))
            while True:  # until SLURM's SIGKILL (submitit ignores SIGTERM)
                time.sleep(1)

    _faults.point = point
