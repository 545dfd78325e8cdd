#!/usr/bin/env bash
# Fetch into .whl/ the wheels the GPU machine's image lacks, for docs/tools/gpu_paper_eval.sh.
#
# The image (the device tool's KINDS.md, nvidia-h200) has Python 3.12, JAX with CUDA,
# NumPy, SciPy, pandas, matplotlib, tqdm, Pillow, h5py, absl-py, rich (with markdown-it-py,
# mdurl, pygments), ml-dtypes, packaging, PyYAML and typing-extensions, and no network.
# What xbench on the JAX backend needs beyond that:
#   keras        -> namex, optree (its other requirements are in the image)
#   hydra-core   -> omegaconf, antlr4-python3-runtime 4.9.* (PyYAML, packaging: in the image)
# antlr4-python3-runtime 4.9.3 is published as a source archive only, so it is built
# here into a pure-Python wheel. Run from the repository root; .whl/ is in .git/info/exclude.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python3}
mkdir -p .whl
rm -f .whl/*.whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
    keras==3.15.1 namex==0.1.0 optree==0.20.0 hydra-core==1.3.8 omegaconf==2.3.1
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl antlr4-python3-runtime==4.9.3 2>/dev/null \
    || "$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -l .whl
du -ch .whl/*.whl | tail -1
