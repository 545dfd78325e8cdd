"""Keep the numeric backend's native start-up messages off the console.

TensorFlow's C++ runtime writes lines such as "oneDNN custom operations are
on ...", "Could not find cuda drivers ..." and "failed call to cuInit ..."
straight to file descriptor 2 when it is imported and when it first looks for
devices. Which lines appear depends on the CPU, the drivers and the
TensorFlow build, and several ignore ``TF_CPP_MIN_LOG_LEVEL`` (they are
printed before absl's logging starts). They are not xbench's messages, so a
job moves descriptor 2 to a temporary file while the backend starts
(:func:`start_backend`) and hands the captured lines to the job's log file
only: the console shows xbench's own output and nothing that depends on the
machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Redirect file descriptor 2 to a temporary file for the block; yields the list the captured lines are put in on exit.

    Python's own ``sys.stderr`` writes during the block are captured too
    (flushed first), so keep the block to the backend's start-up.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(l for l in tmp.read().decode(errors="replace").splitlines() if l.strip())


def start_backend() -> list[str]:
    """Import Keras and its backend and initialise the devices, with the native messages kept off the console.

    Returns the captured lines and writes them, as INFO records marked
    "backend start-up", to the root logger's file handlers only (the run
    folder's ``run.log``). If the start-up raises, the lines are also written
    to the console: then they are the backend's own account of what went
    wrong. (A native abort during the import leaves no Python to do either.)
    A second call in the same process captures nothing new (the imports are done).
    """
    lines: list[str] = []
    try:
        with native_stderr_captured() as lines:
            from xbench import backend

            backend.active().start(_retracing_to_log_files)  # imports Keras and the backend, probes the devices
    except BaseException:
        sys.stderr.write("".join(f"{line}\n" for line in lines))
        raise
    finally:
        for line in lines:
            to_log_files(log.makeRecord(log.name, logging.INFO, __file__, 0, "backend start-up: %s", (line,), None))
    return lines


def _retracing_to_log_files(record: logging.LogRecord) -> bool:
    """Send TensorFlow's "triggered tf.function retracing" warning to run.log only.

    xbench compiles one forward (and one gradient) function per model, on
    purpose; a sweep, or the randomisation check, builds many models, and
    TensorFlow counts their traces together and warns on the console about a
    cost that is expected and paid once per model.
    """
    if "triggered tf.function retracing" in record.getMessage():
        to_log_files(record)
        return False
    return True


def to_log_files(record: logging.LogRecord) -> None:
    """Hand ``record`` to the root logger's file handlers only (the run folder's ``run.log``), not to the console."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
