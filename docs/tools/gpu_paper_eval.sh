#!/usr/bin/env bash
# The paper's AOPC evaluation on one GPU (issue 30); docs/performance.md, "On a GPU: the paper's evaluation".
#
#   bash docs/tools/gpu_paper_eval.sh OUT [--tiny] [--no-install] [--block-tensorflow] [driver options...]
#
# Run from anywhere; it works in the repository that holds it. On the GPU machine (Python 3.12, JAX with
# CUDA, no TensorFlow, no network) it installs the wheels in .whl/ (docs/tools/gpu_wheels.sh fetches them)
# into /tmp/site, then runs docs/tools/gpu_paper_eval.py on Keras's JAX backend. Writes
# OUT/gpu_paper_eval.json and OUT/gpu_paper_eval.log, nothing else (its scratch, the default benchmark's
# runs and cache, goes to a temporary folder, removed at the end; --work DIR keeps it).
#   --tiny              64 px, 8-px regions, 3 images, VGG16, the smoke overlay: minutes on a CPU
#                       (--tiny --models vgg16,densenet201 checks DenseNet201 too: 25 min on a busy 2-core CPU)
#   --no-install        use the Python packages already importable (a CPU machine with xbench's environment)
#   --block-tensorflow  make tensorflow, tf_keras_vis and tensorboard unimportable, as on the GPU machine
# Other options go to the driver (--models, --dtypes, --budget, --batch-size, --no-default-benchmark).
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    sed -n '2,14p' "$0"
    exit 2
fi
args="$*"
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
install=1 block_tf=0 tiny=0 budget= prev= pass=()
for a in "$@"; do
    [[ $prev == --budget ]] && budget=${a%.*}
    prev=$a
    case $a in
        --no-install) install=0 ;;
        --block-tensorflow) block_tf=1 ;;
        --tiny) tiny=1; pass+=("$a") ;;
        *) pass+=("$a") ;;
    esac
done
cd "$(dirname "$0")/../.."
root=$PWD
log=$out/gpu_paper_eval.log
: >"$log"
exec > >(tee -a "$log") 2>&1
echo "$(date -u +%FT%TZ) gpu_paper_eval.sh $args  (repository $root, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"

export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=3 XBENCH_GPU_EVAL_T0=$(date +%s.%N) XBENCH_GPU_EVAL_CMD="bash docs/tools/gpu_paper_eval.sh $args"
PY=${PYTHON:-python3}
if [[ $install == 1 ]]; then
    shopt -s nullglob
    wheels=(.whl/*.whl)
    if [[ ${#wheels[@]} == 0 ]]; then
        echo "no wheels in $root/.whl: run docs/tools/gpu_wheels.sh on a machine with a network, and carry .whl" >&2
        exit 2
    fi
    t=$SECONDS
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
    export PYTHONPATH=/tmp/site:$root${PYTHONPATH:+:$PYTHONPATH}
    echo "installed ${#wheels[@]} wheels into /tmp/site in $((SECONDS - t)) s"
else
    export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ $block_tf == 1 ]]; then
    # A path finder that does not see TensorFlow: find_spec answers None, as where it is not installed.
    nt=$(mktemp -d)
    cat >"$nt/sitecustomize.py" <<'EOF'
import sys
from importlib.machinery import PathFinder

_BLOCKED = {"tensorflow", "tf_keras_vis", "tensorboard", "tf_keras"}


class _WithoutTensorFlow(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in _BLOCKED else super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(PathFinder)] = _WithoutTensorFlow
EOF
    export PYTHONPATH=$nt:$PYTHONPATH
    "$PY" -c "import importlib.util as u; assert u.find_spec('tensorflow') is None" && echo "tensorflow blocked"
fi
# xbench.conf is the top-level conf/ (pyproject's package-dir); a checkout links it, a copy may not have the link.
[[ -e xbench/conf ]] || ln -s ../conf xbench/conf
"$PY" -c "import sys, keras, hydra; print('python', sys.version.split()[0], '| keras', keras.__version__, keras.backend.backend(), '| hydra', hydra.__version__)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# The driver keeps to its own budget (430 s; --tiny 600 s); this is the backstop.
[[ $tiny == 1 ]] && limit=900 || limit=540
[[ -n $budget ]] && limit=$((budget + 90))
rc=0
timeout -k 10 "$limit" "$PY" -u docs/tools/gpu_paper_eval.py "$out" "${pass[@]}" || rc=$?
echo "$(date -u +%FT%TZ) gpu_paper_eval.sh: exit status $rc; $out/gpu_paper_eval.json"
exit "$rc"
