"""``xbench-synth``: write a synthetic phantom database in the radiography layout."""

from __future__ import annotations

import argparse
import logging
import sys

from xbench.phantoms import RADIOGRAPHY_CLASSES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xbench-synth", description="Write chest phantoms in the COVID-19 Radiography Database layout.")
    p.add_argument("--out", required=True, help="database folder to write (created)")
    p.add_argument("--n-per-class", type=int, default=200, help="images per class (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", type=float, default=0.3, help="lesion contrast knob in [0, 1]; 0 = clearly visible")
    p.add_argument("--shortcut-class", default="", choices=("",) + RADIOGRAPHY_CLASSES, help="class whose images may carry a marker outside the lungs")
    p.add_argument("--shortcut-fraction", type=float, default=0.0, help="fraction of that class's images with the marker")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    a = p.parse_args(argv)
    if a.n_per_class < 1:
        p.error("--n-per-class must be >= 1")
    if not 0 <= a.difficulty <= 1:
        p.error("--difficulty must lie in [0, 1]")
    if not 0 <= a.shortcut_fraction <= 1:
        p.error("--shortcut-fraction must lie in [0, 1]")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from xbench.synth import SynthSpec, write_database

    spec = SynthSpec(n_per_class=a.n_per_class, seed=a.seed, difficulty=a.difficulty, shortcut_class=a.shortcut_class, shortcut_fraction=a.shortcut_fraction)
    root = write_database(a.out, spec, workers=a.workers)
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
