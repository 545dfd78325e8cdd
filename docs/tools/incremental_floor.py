"""The float32 floor of incremental vs full curves: VGG16 at 299 px, 34-px regions, MoRF, 8 images (docs/performance.md)."""
# Float32 noise floor: full engine at two batch sizes vs incremental, VGG16 299 px, 34-px regions, MoRF, 8 images (the bench's inputs).
import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'
import numpy as np
from xbench.models import build_classifier
from xbench.pipeline.speed import _unsaturate
from xbench.perturbation.engine import perturbation_curves
from xbench.perturbation.incremental import runner
from xbench.perturbation.windows import window_tables
S=299; P=34; n=8
m = build_classifier('vgg16', 4, S, weights='none', seed=0)
rng = np.random.default_rng(0)
X = rng.random((n, S, S, 3), dtype=np.float32); H = rng.random((n, S, S), dtype=np.float32)
_unsaturate(m, X[:16])
run = runner(m, S, S, P)
# exact boxes (the count) vs fixed windows
shape = np.array([nd.shape for nd in run.p.nodes], float)
bx = run.win.boxes
area = ((bx[...,1]-bx[...,0])*(bx[...,3]-bx[...,2])).mean(0)/shape.prod(1)
exact = float((run.p.flops*area).sum() + run.p.tail_flops)/1e9
print('exact-box step GFLOP', exact, 'forward', float(run.p.flops.sum()+run.p.tail_flops)/1e9)
a = perturbation_curves(m, X, H, region_size=P, method='full', batch_size=22)
b = perturbation_curves(m, X, H, region_size=P, method='full', batch_size=7)
c = perturbation_curves(m, X, H, region_size=P, method='incremental')
print('full B22 vs B7', np.abs(a-b).max(), 'incremental vs full B22', np.abs(c-a).max(), 'vs B7', np.abs(c-b).max(), 'std', a.std())
