"""Compare the job folders of two sweeps (python docs/tools/compare_jobs.py BASE_SWEEP NEW_SWEEP): every array of every .npz bit for bit, split.csv byte for byte, metrics.json field by field (less wall times, paths, cache hits, version, platform, plots and the resolved config). Exit 1 when a job differs."""
import json, sys, pathlib, numpy as np
VOLATILE = ("timings", "seconds", "_s", "path", "dir", "cache", "hit", "wall", "created", "xbench_version", "platform", "plots", "config")
def walk(a, b, where, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if any(v in k for v in VOLATILE): continue
            if k not in a or k not in b: out.append(f"{where}.{k}: only in {'new' if k in b else 'base'}"); continue
            walk(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)): walk(x, y, f"{where}[{i}]", out)
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b)):
        out.append(f"{where}: {a!r} != {b!r}")
base, new = map(pathlib.Path, sys.argv[1:3])
bad = 0
for jb in sorted(p for p in base.iterdir() if p.is_dir()):
    jn = new / jb.name
    out = []
    walk(json.loads((jb / "metrics.json").read_text()), json.loads((jn / "metrics.json").read_text()), "metrics", out)
    for f in sorted(jb.glob("*.npz")):
        A, B = np.load(f), np.load(jn / f.name)
        if sorted(A.files) != sorted(B.files): out.append(f"{f.name}: keys differ")
        for k in A.files:
            if k in B.files and not (A[k].dtype == B[k].dtype and A[k].shape == B[k].shape and A[k].tobytes() == B[k].tobytes()):
                out.append(f"{f.name}[{k}] differs")
    for f in ("split.csv",):
        if (jb / f).exists() and (jb / f).read_bytes() != (jn / f).read_bytes(): out.append(f"{f} differs")
    n_arrays = sum(len(np.load(f).files) for f in jb.glob("*.npz"))
    print(f"{jb.name}: {'IDENTICAL' if not out else 'DIFFERENT'} ({n_arrays} arrays in {len(list(jb.glob('*.npz')))} npz files, metrics.json, split.csv)")
    for o in out[:15]: print("   ", o)
    bad += bool(out)
sys.exit(1 if bad else 0)
