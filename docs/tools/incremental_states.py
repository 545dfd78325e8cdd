"""Stored activations after 6 incremental steps vs a full forward pass of x(6), layer by layer: VGG16 at 299 px (docs/performance.md)."""
import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'
import numpy as np, keras
from keras import ops
from xbench.models import build_classifier
from xbench.perturbation.incremental import runner
from xbench.perturbation.regions import region_order, region_scores, rank_maps
from xbench.perturbation.perturbations import GaussianNoise, image_rng
S=299; P=34
m = build_classifier('vgg16', 4, S, weights='none', seed=0)
rng = np.random.default_rng(0)
X = rng.random((1, S, S, 3), dtype=np.float32); H = rng.random((1, S, S), dtype=np.float32)
run = runner(m, S, S, P)
order = region_order(region_scores(H, P), 'morf')
g = GaussianNoise(0.1)(X[0], image_rng(0, 0))[None].astype(np.float32)
rk = rank_maps(order, S, S, P)
st, _ = run.first(ops.convert_to_tensor(X))
K=6
for k in range(1, K+1):
    st, _ = run.step(st, ops.convert_to_tensor(X), ops.convert_to_tensor(g), ops.convert_to_tensor(rk), ops.convert_to_tensor(order[:, k-1].astype(np.int32)), ops.convert_to_tensor(np.int32(k)))
xk = np.where((rk < K)[..., None], g, X)
names = [l.name if l else 'image' for l, s in zip(run.p.layers, run.p.stored) if s]
probe = keras.Model(m.inputs[0], [m.get_layer(n).output for n in names[1:]])
ref = [xk] + [np.asarray(v) for v in probe(xk)]
for n, a, b in zip(names, st, ref):
    a = np.asarray(a); d = np.abs(a - b); print(f"{n:14s} max abs {d.max():.3g}  max rel {d.max()/np.abs(b).max():.3g}  frac>1e-3rel {(d > 1e-3*np.abs(b).max()).mean():.2g}")
