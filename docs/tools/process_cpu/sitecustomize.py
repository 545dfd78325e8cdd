"""Records each Python process's CPU at exit, for a profile of the test suite (docs/performance.md, "Where the suite's time goes").

    XPROF_LOG=/tmp/procs.jsonl PYTHONPATH=$PWD/docs/tools/process_cpu python -m pytest -q --durations=0
    python docs/tools/process_cpu_report.py /tmp/procs.jsonl

Every Python process that inherits PYTHONPATH (an absolute path: children start
in other folders) imports this at start and, at a
normal exit, appends one JSON line: its argv, the test that started it
(``PYTEST_CURRENT_TEST``, inherited from the pytest worker), the xdist worker,
its wall time, its own CPU (all threads, user + system) and its waited-for
children's, and whether it imported TensorFlow, JAX, torch. Processes killed
by a signal, children that replace PYTHONPATH (the GPU script's
TensorFlow blocker) and SLURM's jobs write nothing.
"""

import atexit
import json
import os
import resource
import sys
import time

_T0 = time.time()
_LOG = os.environ.get("XPROF_LOG")


def _record():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    rec = {"pid": os.getpid(), "argv": sys.argv[:6], "test": os.environ.get("PYTEST_CURRENT_TEST", ""),
           "worker": os.environ.get("PYTEST_XDIST_WORKER", ""), "wall": time.time() - _T0,
           "cpu": own.ru_utime + own.ru_stime, "sys": own.ru_stime, "child_cpu": kids.ru_utime + kids.ru_stime,
           **{name: name in sys.modules for name in ("tensorflow", "jax", "torch")}}
    with open(_LOG, "a") as f:  # one short line per process: appends of this size do not interleave
        f.write(json.dumps(rec) + "\n")


if _LOG:
    atexit.register(_record)
