"""The torch backend: a ``torch.nn.Module`` classifier read by xbench under ``KERAS_BACKEND=torch``, model=file with a state dict, and the
backend-sensitive tests rerun under torch.

This process runs TensorFlow (tests/conftest.py); everything on torch runs in
a child process with ``KERAS_BACKEND=torch`` (a process's Keras backend is
fixed when Keras is imported). The torch module is built in the test
(:func:`tests.references.torch_net`): nothing is downloaded.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import refusal

pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0, the CPU build): the torch backend is not tested")
pytestmark = [pytest.mark.slow, pytest.mark.heavy]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: What test_the_backend_sensitive_tests_pass_on_torch reruns, and how many tests that is.
TORCH_RERUN_MARKS = "torch_rerun and not tensorflow"
TORCH_RERUN_COUNT = 8


def _torch_env(cache: Path, **extra) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "torch", "XBENCH_CACHE": str(cache), **extra}
    env.pop("XBENCH_FAULT", None)
    return env


def _run_torch(script: str, tmp_path: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=_torch_env(tmp_path / "cache"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_a_torch_module_gives_grad_cam_saliency_and_curves_equal_to_direct_computations(tmp_path):
    # One child: Grad-CAM against torch.autograd on the module itself, saliency likewise, the engine's curves
    # against the slow per-step loop, and the one-line refusals of ModelFile.load on torch files.
    out = tmp_path / "out.json"
    script = f"""
        import json, sys, numpy as np, torch
        from xbench.core.errors import ConfigError
        from xbench.explain import build, gradcam
        from xbench.explain.context import ExplainContext
        from xbench.models import ModelFile, model_card, torch_classifier
        from xbench.perturbation import GaussianNoise, perturbation_curves
        from tests.references import slow_curves, torch_net

        net = torch_net(num_classes=4, seed=0)
        model = torch_classifier(net, image_size=24, preprocess="torch", gradcam_layer="features.2", class_names=list("abcd"))
        x = np.random.default_rng(0).random((5, 24, 24, 3)).astype(np.float32)
        ids = np.arange(5)
        res = {{"layers": [l.name for l in model.layers], "card": model_card(model)}}

        # Grad-CAM by hand on the module: its conv's output A (features.2, cloned before the in-place ReLU), d logit_t / d A
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        xt = ((torch.as_tensor(x) - mean) / std).permute(0, 3, 1, 2)
        a = net.features[:3](xt)
        z = net.head(net.features[3:](a.clone()).mean((2, 3)))
        for name, t in (("pred", z.argmax(1)), ("given", torch.tensor([3, 2, 1, 0, 3]))):
            (g,) = torch.autograd.grad(z.gather(1, t[:, None]).sum(), a, retain_graph=True)
            want = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach().numpy()
            got = gradcam(model, x, targets=None if name == "pred" else t.numpy(), upsample=False)
            res["cam_" + name] = [float(np.abs(got - want).max()), float(np.abs(want).max())]
        # saliency: max over channels of |d logit_t / d x|, x the [0, 1] image (the normalisation differentiated too)
        t = z.argmax(1)
        v = torch.as_tensor(x).requires_grad_(True)
        zz = net(((v - mean) / std).permute(0, 3, 1, 2))
        (gx,) = torch.autograd.grad(zz.gather(1, t[:, None]).sum(), v)
        want = gx.abs().amax(-1).numpy()
        got = build("saliency")(model, x, t.numpy(), ExplainContext(image_ids=ids, seed=0, region_size=8))
        res["saliency"] = [float(np.abs(got - want).max()), float(np.abs(want).max())]
        # the engine's curves against one region at a time in NumPy (no gradients needed: inference mode)
        maps = gradcam(model, x)
        with torch.no_grad():
            for o in ("morf", "lerf"):
                fast = perturbation_curves(model, x, maps, region_size=8, order=o, perturbation=GaussianNoise(0.1), seed=5, image_ids=ids)
                slow = slow_curves(model, x, maps, 8, o, GaussianNoise(0.1), 5, ids)
                res["curves_" + o] = [float(np.abs(fast - slow).max()), float(np.ptp(fast))]

        # a one-logit module on one channel: the grey image in, softmax [1 - sigmoid(z), sigmoid(z)] out, Grad-CAM at the last Conv2d
        n1 = torch_net(num_classes=1, channels=1)
        m1 = torch_classifier(n1, image_size=24)
        z1 = n1(torch.as_tensor(x.mean(-1, keepdims=True)).permute(0, 3, 1, 2)).detach().numpy()[:, 0]
        res["binary"] = [float(np.abs(np.asarray(m1.predict(x, verbose=0)) - np.stack([1 / (1 + np.exp(z1)), 1 / (1 + np.exp(-z1))], 1)).max()),
                         [l.name for l in m1.layers]]

        # refusals, one line each
        torch.save(net.state_dict(), "net.pt")
        torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), "whole.pt")  # a whole module, pickled
        torch.save(torch_net(num_classes=3).state_dict(), "three.pt")
        def refused(**kw):
            try:
                ModelFile(**{{"path": "net.pt", "torch_module": "tests.references:torch_net", **kw}}).load(class_names=list("abcd"), image_size=24)
            except ConfigError as exc:
                return str(exc)
            return None
        res["refusals"] = {{
            "pickle": refused(path="whole.pt"),
            "import": refused(torch_module="no_such_pkg.nets:Net"),
            "name": refused(torch_module="tests.references:NoSuchNet"),
            "weights": refused(path="three.pt"),
            "layer": refused(gradcam_layer="head"),
            "missing_layer": refused(gradcam_layer="features.9"),
        }}
        res["loaded_equal"] = float(np.abs(np.asarray(ModelFile(path="net.pt", torch_module="tests.references:torch_net", preprocess="torch").load(
            class_names=list("abcd"), image_size=24).predict(x, verbose=0)) - np.asarray(model.predict(x, verbose=0))).max())
        json.dump(res, open({str(out)!r}, "w"))
    """
    _run_torch(script.replace('"net.pt"', repr(str(tmp_path / "net.pt"))).replace('"whole.pt"', repr(str(tmp_path / "whole.pt")))
               .replace('"three.pt"', repr(str(tmp_path / "three.pt"))), tmp_path)
    res = json.loads(out.read_text())
    assert res["layers"] == ["image", "preprocess", "torch_module", "features.2", "features", "logits", "probs"]
    assert res["card"]["gradcam_layer"] == "features.2" and res["card"]["backbone"] == "TinyTorchNet" and res["card"]["class_names"] == list("abcd")
    for key in ("cam_pred", "cam_given", "saliency"):
        diff, size = res[key]
        assert size > 1e-3, key  # the maps are not all zero, so equality means something
        assert diff <= 1e-5 * max(1.0, size), (key, diff)
    for key in ("curves_morf", "curves_lerf"):
        diff, spread = res[key]
        assert spread > 0.05 and diff <= 1e-5, (key, res[key])
    assert res["loaded_equal"] == 0.0  # the state dict through model=file is the module itself
    assert res["binary"][0] < 1e-6 and res["binary"][1] == ["image", "grey", "torch_module", "features.2", "features", "logits", "probs"]
    print("torch module vs direct torch.autograd / slow loop:", {k: res[k] for k in ("cam_pred", "cam_given", "saliency", "curves_morf", "curves_lerf")})
    r = res["refusals"]
    assert all(m is not None and "\n" not in m for m in r.values()), r
    assert r["pickle"].startswith("model.path:") and "weights_only=True" in r["pickle"] and "state_dict()" in r["pickle"]
    assert r["import"].startswith("model.torch_module: cannot import 'no_such_pkg.nets'")
    assert r["name"] == "model.torch_module: module 'tests.references' has no 'NoSuchNet'; give package.module:Class"
    assert r["weights"].startswith("model.path: the state dict does not fit TinyTorchNet (size mismatch for head.weight")
    assert r["layer"].startswith("model.gradcam_layer='head' outputs shape (4,) per image")
    assert r["missing_layer"].startswith("model.gradcam_layer='features.9': TinyTorchNet has no submodule 'features.9'")


def test_torch_files_are_refused_in_one_line_before_anything_starts(tmp_path, phantom_db):
    from xbench.models.model_file import ModelFile

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not read: the refusals come first")
    base = ["model=file", f"model.path={weights}", "data=synthetic", f"data.root={phantom_db}", "data.image_size=32"]
    # this process runs TensorFlow: a torch module is refused before any work, and says how to run it
    code, err = refusal(base + ["model.torch_module=tests.references:torch_net"], tmp_path / "cache")
    assert code != 0 and err.strip().splitlines()[-1] == ("xbench: error: model.torch_module: a PyTorch model runs under the torch Keras backend, "
                                                          "not tensorflow; run with KERAS_BACKEND=torch")
    cases = {
        "no architecture": ({"path": str(weights)}, "torch_module: 'ALL' is a PyTorch state dict, which needs its architecture"),
        "not an import path": ({"path": str(weights), "torch_module": "mynets.Net"}, "torch_module: 'mynets.Net' is not an import path"),
        "export archive": ({"path": str(tmp_path / "m.pt2")}, "path: 'ALL' is a torch.export archive, which xbench does not load"),
        "probs": ({"path": str(weights), "torch_module": "a.b:C", "output": "probs"}, "output: a torch module is read through its forward's output"),
        "logits layer": ({"path": str(weights), "torch_module": "a.b:C", "logits_layer": "fc"}, "logits_layer: a torch module's output is its logits"),
        "keras file": ({"path": str(tmp_path / "m.keras"), "torch_module": "a.b:C"}, "path: model.torch_module reads a state dict"),
    }
    for what, (kw, start) in cases.items():
        with pytest.raises(ValueError) as e:
            ModelFile(**kw)
        assert str(e.value).startswith(start.replace("ALL", kw["path"])), (what, str(e.value))
    assert ModelFile(path=str(tmp_path / "m.keras")).output == "probs"  # a Keras file's default is unchanged
    # what a job cannot do with a torch module (checked in apps.run's preflight, before the model loads)
    mf = ModelFile.__new__(ModelFile)
    mf.path, mf.torch_module = str(weights), "a.b:C"
    ok = {"sanity": False, "method": "auto", "dtype": "float32"}
    mf.check_torch_job("gradcam", **ok)
    for name, kw, start in (("lrp", ok, "explainer=lrp: it walks or rewrites"), ("guided_backprop", ok, "explainer=guided_backprop: it walks"),
                            ("gradcam", {**ok, "sanity": True}, "sanity.enabled: the randomisation check"),
                            ("gradcam", {**ok, "method": "incremental"}, "score.method=incremental"),
                            ("gradcam", {**ok, "dtype": "bfloat16"}, "score.dtype=bfloat16"),
                            ("gradcam", {**ok, "metrics": ["emprt", "sparseness"]}, "score.metrics: emprt re-initialise")):
        with pytest.raises(ValueError, match=re.escape(start)):
            mf.check_torch_job(name, **kw)


def _block(marker: str) -> str:
    m = re.search(rf"<!-- {marker}:[^>]*-->\s*```\w+\n(.*?)```", README.read_text(), re.S)
    assert m, f"README has no block marked {marker}"
    return m.group(1)


def test_readme_pytorch_models_runs_verbatim_and_the_cli_equals_the_python_api(tmp_path, phantom_db):
    from xbench.pipeline.results import read_job

    for cdir in sorted(p for p in phantom_db.iterdir() if p.is_dir()):  # my_xrays/<class>/: two phantoms per class
        dst = tmp_path / "my_xrays" / cdir.name.replace(" ", "_")
        dst.mkdir(parents=True)
        for f in sorted((cdir / "images").glob("*.png"))[:2]:
            (dst / f.name).write_bytes(f.read_bytes())
    (tmp_path / "mynets.py").write_text(_block("torch-net"))  # the README's architecture, as a user's file
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("readme_mynets", tmp_path / "mynets.py")
    mynets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mynets)
    torch.manual_seed(2)
    net = mynets.ChestNet(num_classes=4)
    with torch.no_grad():
        net.classifier.weight.mul_(30)  # trained-looking: logits far enough apart for the curves to move
    torch.save(net.state_dict(), tmp_path / "chestnet.pt")
    env = _torch_env(tmp_path / "cache", PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("KERAS_BACKEND")  # the README's block sets it
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", _block("torch-commands")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted((tmp_path / "outputs" / "runs").glob("*/*/metrics.json"))
    assert len(runs) == 1
    job = read_job(runs[0].parent)
    m = job.metrics
    assert m.keras_backend == "torch" and m.training is None and m.model.file.endswith("chestnet.pt") and m.model.gradcam_layer == "features.2"
    assert not (runs[0].parent / "model.keras").exists()  # a torch module is not saved as a Keras file
    assert m.scoring.n_scored >= 1
    # the same images, model and settings through the Python API (the README's Python block's functions)
    check = f"""
        import json, numpy as np, pandas as pd, torch
        from mynets import ChestNet
        from xbench.data.decode import decode_image
        from xbench.explain import gradcam
        from xbench.models import torch_classifier
        from xbench.perturbation import GaussianNoise, perturbation_curves
        from xbench.pipeline.results import read_job
        job = read_job({str(runs[0].parent)!r})
        split = pd.read_csv({str(runs[0].parent / 'split.csv')!r})
        images = np.stack([decode_image({str(tmp_path / 'my_xrays')!r} + "/" + p, 224) for p in split["path"]]).astype(np.float32) / 255.0
        net = ChestNet(num_classes=4)
        net.load_state_dict(torch.load("chestnet.pt", weights_only=True))
        model = torch_classifier(net, image_size=224, preprocess="torch", gradcam_layer="features.2")
        c, sc = job.curves, job.metrics.scoring
        sub = images[c.image_ids]
        maps = gradcam(model, sub, targets=c.targets)
        morf = perturbation_curves(model, sub, maps, targets=c.targets, region_size=sc.region_size, order="morf", perturbation=GaussianNoise(0.1),
                                   seed=job.metrics.seed, image_ids=c.image_ids)
        print(json.dumps([float(np.abs(morf - c.curves[("gradcam", "morf")]).max()), float(np.ptp(morf))]))
        exec(compile({_block("torch-python")!r}, "README torch-python", "exec"), {{}})  # the README's Python block, verbatim, in the same child
    """
    lines = _run_torch(check, tmp_path, cwd=tmp_path).stdout.strip().splitlines()
    diff, spread = json.loads(lines[-2])
    assert spread > 0.01 and diff <= 1e-5, (diff, spread)
    aopc = float(lines[-1])  # what the README's block prints
    assert np.isfinite(aopc) and -1 <= aopc <= 1


def test_the_backend_sensitive_tests_pass_on_torch(tmp_path):
    """A lean subset of the backend-sensitive tests again, under torch: the engine against the slow per-step loop (regions, pixels, ROAD),
    Grad-CAM and the default target, input gradients, occlusion and RISE on the device, the incremental runner, a Keras model read as a
    classifier. Chosen by the ``torch_rerun`` marker (the JAX rerun's whole set takes minutes under eager torch); counted, so it cannot
    shrink unseen. Inference runs with autograd off, as xbench's own compiled steps do (the slow reference loops call the model directly);
    the backend's gradient functions turn it on for themselves."""
    env = _torch_env(Path(os.environ.get("XBENCH_CACHE", str(tmp_path))) / "torch-kernels")
    here = Path(__file__).resolve().parent
    modules = sorted(str(f.relative_to(ROOT)) for f in here.glob("test_*.py") if "pytest.mark.torch_rerun" in f.read_text() and f.name != Path(__file__).name)
    runner = "import sys, torch; torch.set_grad_enabled(False); import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", runner, "-q", "-p", "no:cacheprovider", "-n", "0", *modules, "-m", TORCH_RERUN_MARKS],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    summary = r.stdout.strip().splitlines()[-1]
    passed = re.search(r"\b(\d+) passed\b", summary)
    assert passed and "skipped" not in summary and "failed" not in summary and "error" not in summary, r.stdout[-3000:]
    assert int(passed.group(1)) == TORCH_RERUN_COUNT, f"{passed.group(1)} tests ran under torch, {TORCH_RERUN_COUNT} expected: update TORCH_RERUN_COUNT only on purpose"
