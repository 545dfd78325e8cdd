"""A user's script that calls xbench at top level, without ``if __name__ == "__main__":``.

The phantom writer's spawned workers used to re-run the parent's ``__main__``:
a script file re-entered the job in every worker, which then waited for the
phantom-database lock its parent held, for ever; a script fed on standard
input broke the pool (``BrokenProcessPool``). Each script below appends its
pid to a file every time it runs, so a re-run is seen even if it does not hang.
The whole job run the same way (the reported case) is tests/faults/conftest.py's
``reference`` run.
"""

import textwrap

import pytest

from tests.helpers import python

#: Writes a phantom database with 2 workers through xbench-synth's entry, at top level.
SYNTH_SCRIPT = textwrap.dedent("""
    import os
    with open("runs.log", "a") as f:
        f.write(f"{os.getpid()}\\n")
    from xbench.apps.synth import main
    main(["--out", "db", "--n-per-class", "6", "--workers", "2"])
""")


def _ran_once(folder) -> None:
    assert len((folder / "runs.log").read_text().split()) == 1, "a worker re-ran the user's script"


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_an_unguarded_script_writes_phantoms_with_two_workers(tmp_path, how):
    from xbench.pipeline.sources.synthetic import SynthSpec, is_complete

    if how == "file":
        (tmp_path / "user_synth.py").write_text(SYNTH_SCRIPT)
        r = python(["user_synth.py"], cwd=tmp_path, cache=tmp_path / "cache", timeout=300)
    else:  # died with BrokenProcessPool: the workers looked for a file named <stdin>
        r = python(["-"], cwd=tmp_path, cache=tmp_path / "cache", input=SYNTH_SCRIPT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("db")
    _ran_once(tmp_path)
    assert is_complete(tmp_path / "db", SynthSpec(n_per_class=6))
    assert len(list((tmp_path / "db").rglob("images/*.png"))) == 4 * 6


def test_pool_workers_do_not_run_the_parents_main_and_the_parent_keeps_it():
    """The stand-in ``__main__`` lives only while a worker starts (under ``pytest``, whose ``__main__`` is a file, a worker ran it before)."""
    import sys

    from tests.helpers import main_file
    from xbench.core import io

    main = sys.modules["__main__"]
    with io.process_pool(2) as pool:
        assert list(pool.map(main_file, range(4))) == [None] * 4
    assert sys.modules["__main__"] is main
