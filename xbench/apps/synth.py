"""``xbench-synth``: write a synthetic phantom database in the radiography layout.

Its defaults and rules are :class:`xbench.pipeline.sources.synthetic.SynthSpec`'s (the default
benchmark's phantoms), so a database written with no options is the one
``data=synthetic`` uses.
"""

from __future__ import annotations

import argparse
import logging
import sys

from xbench.data.phantoms import RADIOGRAPHY_CLASSES
from xbench.pipeline.sources.synthetic import SynthSpec

#: Command-line flag -> SynthSpec field.
_FLAGS = {"--n-per-class": "n_per_class", "--seed": "seed", "--difficulty": "difficulty",
          "--shortcut-class": "shortcut_class", "--shortcut-fraction": "shortcut_fraction"}


def parser() -> argparse.ArgumentParser:
    d = SynthSpec()
    p = argparse.ArgumentParser(prog="xbench-synth", description="Write chest phantoms in the COVID-19 Radiography Database layout.")
    p.add_argument("--out", required=True, help="database folder to write (created)")
    p.add_argument("--n-per-class", type=int, default=d.n_per_class, help=f"images per class (default {d.n_per_class})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"database seed (default {d.seed})")
    p.add_argument("--difficulty", type=float, default=d.difficulty, help=f"lesion contrast knob in [0, 1]; 0 = clearly visible (default {d.difficulty})")
    p.add_argument("--shortcut-class", default=d.shortcut_class,
                   help=f"class whose images may carry a marker outside the lungs: one of {', '.join(RADIOGRAPHY_CLASSES)} (default: none)")
    p.add_argument("--shortcut-fraction", type=float, default=d.shortcut_fraction, help=f"fraction of that class's images with the marker (default {d.shortcut_fraction})")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    try:
        spec = SynthSpec(**{field: getattr(a, flag[2:].replace("-", "_")) for flag, field in _FLAGS.items()})
    except ValueError as exc:  # "<field>: ..." from the spec -> "--<flag> ..."
        field, _, msg = str(exc).partition(": ")
        flag = next((f for f, name in _FLAGS.items() if name == field), field)
        p.error(f"{flag} {msg}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from xbench.pipeline.sources.synthetic import write_database

    root = write_database(a.out, spec, workers=a.workers)
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
