"""A trained classifier from a file (``model=file``): what it is, read without Keras, and how it loads.

:class:`ModelFile` is the ``model`` group's schema when the user brings a
model: xbench trains nothing and reads the model with
:func:`xbench.models.adapt.as_classifier`. :meth:`ModelFile.describe` reads
the saved config (the JSON inside a ``.keras`` zip, or the ``model_config``
attribute of a legacy ``.h5``) without importing Keras, so the entry point
checks the input size and the number of classes against the data before
TensorFlow starts.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from xbench.core.names import LOGITS, OUTPUTS, PREPROCESS_NAMES, PROBS
from xbench.models.backbones import IMAGENET, is_no_weights

SUFFIXES = (".keras", ".h5", ".hdf5")
#: A PyTorch state dict (``torch.save(model.state_dict(), path)``), read with ``torch.load(weights_only=True)``.
TORCH_SUFFIXES = (".pt", ".pth")
#: torch.export archives: refused (torch.export.load falls back to an unrestricted pickle for what its safe reader refuses).
EXPORT_SUFFIXES = (".pt2",)
#: What a torch module cannot be explained or scored by (:meth:`ModelFile.check_torch_job`): methods that walk or rewrite the Keras layers.
TORCH_UNSUPPORTED_EXPLAINERS = ("lrp", "deeplift", "guided_backprop", "guided_gradcam")
TORCH_UNSUPPORTED_METRICS = ("emprt", "smprt")
PREPROCESS_HINT = "none ([0, 1] pixels), scale255 (0-255 pixels), caffe, torch, tf, or a keras.applications module name (vgg16, densenet, mobilenet_v2, efficientnet, ...)"


@dataclass
class FileInfo:
    """What a saved model's config says: input (H, W, C) (None where not fixed) and output units (None if unknown)."""

    input_shape: tuple | None
    outputs: int | None
    name: str | None
    n_outputs: int = 1  # output tensors of a functional model


@dataclass
class ModelFile:
    """A trained Keras classifier loaded from ``path`` (the ``model`` group's ``file`` option).

    Attributes:
        path: a ``.keras`` file (loaded with ``safe_mode=True``) or a legacy ``.h5``.
        preprocess: how the model's inputs were scaled, applied inside the
            model on xbench's [0, 1] images (see
            :func:`xbench.models.adapt.preprocess_layer`).
        logits_layer: the layer that outputs the logits (default: found from
            the softmax / sigmoid output layer).
        output: "probs" (softmax or one-unit sigmoid output) or "logits";
            default probs for a Keras file, logits (the only choice) for a
            torch module.
        gradcam_layer: the layer Grad-CAM explains (default: the last feature
            map); for a torch module, a submodule path (``features.28``;
            default the last ``Conv2d``).
        imports: Python modules imported before loading, so custom layers
            they register (``@keras.saving.register_keras_serializable``) are found.
        torch_module: a PyTorch classifier's class (or a function returning
            the module) as ``package.module:Name``; ``path`` is then its state
            dict (``.pt`` / ``.pth``), loaded with ``torch.load(weights_only=True)``
            under ``KERAS_BACKEND=torch`` (:mod:`xbench.models.torch_module`).
        torch_kwargs: keyword arguments for ``torch_module`` (``num_classes: 4``).
        weights: set by the ``setup`` group for backbones xbench trains; a
            model file brings its own weights, so only "none"/"imagenet" (the
            setups' values) are accepted here.
    """

    path: Optional[str] = None
    preprocess: str = "none"
    logits_layer: Optional[str] = None
    output: Optional[str] = None
    gradcam_layer: Optional[str] = None
    imports: List[str] = field(default_factory=list)
    weights: Optional[str] = None
    torch_module: Optional[str] = None
    torch_kwargs: Dict[str, Any] = field(default_factory=dict)

    backbone = None  # no keras.applications backbone is built (configs that read model.backbone see null)

    def __post_init__(self):
        if self.path in (None, ""):
            raise ValueError("path: not set; point it at the trained classifier (model.path=/path/to/model.keras)")
        suffix = Path(str(self.path)).suffix.lower()
        if suffix in EXPORT_SUFFIXES:
            raise ValueError(f"path: '{self.path}' is a torch.export archive, which xbench does not load (torch.export.load can fall back to an "
                             "unrestricted pickle); save torch.save(model.state_dict(), 'weights.pt') and name its class with model.torch_module=package.module:Class")
        if self.is_torch:
            self._check_torch(suffix)
        elif suffix not in SUFFIXES:
            raise ValueError(f"path: '{self.path}' is not a Keras model file; give a .keras file (model.save('m.keras')) or a legacy .h5 "
                             "(a PyTorch state dict: .pt or .pth with model.torch_module=package.module:Class)")
        if self.output is None:
            self.output = LOGITS if self.is_torch else PROBS
        if self.preprocess not in PREPROCESS_NAMES:
            raise ValueError(f"preprocess: unknown preprocessing {self.preprocess!r}; choose {PREPROCESS_HINT}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output: must be one of {list(OUTPUTS)}, got {self.output!r}")
        if not (is_no_weights(self.weights) or self.weights == IMAGENET):
            raise ValueError(f"weights: a model file brings its own weights; drop model.weights={self.weights}")

    @property
    def is_torch(self) -> bool:
        """A PyTorch state dict with its architecture (``torch_module``), not a Keras file."""
        return self.torch_module not in (None, "") or Path(str(self.path)).suffix.lower() in TORCH_SUFFIXES

    def _check_torch(self, suffix: str) -> None:
        """One line for each thing a torch model file cannot be given, before anything is loaded."""
        from xbench.backend import configured_backend

        if self.torch_module in (None, ""):
            raise ValueError(f"torch_module: '{self.path}' is a PyTorch state dict, which needs its architecture; "
                             "name the class with model.torch_module=package.module:Class")
        if suffix not in TORCH_SUFFIXES:
            raise ValueError(f"path: model.torch_module reads a state dict saved with torch.save(model.state_dict(), 'weights.pt'); '{self.path}' is not .pt or .pth")
        module, sep, name = str(self.torch_module).partition(":")
        if not sep or not module or not name.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
            raise ValueError(f"torch_module: {self.torch_module!r} is not an import path; write package.module:Class (e.g. mypkg.nets:Net)")
        if self.output not in (None, LOGITS):
            raise ValueError(f"output: a torch module is read through its forward's output, its logits; drop model.output={self.output}")
        if self.logits_layer not in (None, ""):
            raise ValueError("logits_layer: a torch module's output is its logits; drop model.logits_layer")
        if importlib.util.find_spec("torch") is None:
            raise ValueError("torch_module: PyTorch is not installed; pip install torch==2.13.0 (or pip install 'xbench[torch]')")
        if configured_backend() != "torch":
            raise ValueError(f"torch_module: a PyTorch model runs under the torch Keras backend, not {configured_backend()}; "
                             "run with KERAS_BACKEND=torch")

    def check_torch_job(self, explainer: str, *, sanity: bool, method: str, dtype: str, metrics=()) -> None:
        """ValueError in one line for what a job cannot do with a torch module, before it starts (nothing for a Keras file).

        A torch module is one Keras layer: the methods that walk, rewrite,
        copy or re-initialise the model's Keras layers do not see inside it.
        """
        if not self.is_torch:
            return
        if explainer in TORCH_UNSUPPORTED_EXPLAINERS:
            raise ValueError(f"explainer={explainer}: it walks or rewrites the model's Keras layers, and a torch module is one layer; "
                             "use gradcam, a CAM variant, a gradient method (saliency, integrated_gradients, ...), occlusion or rise")
        if sanity:
            raise ValueError("sanity.enabled: the randomisation check re-initialises Keras layers, and a torch module is one layer; drop it for a torch model")
        blocked = [m for m in metrics if m in TORCH_UNSUPPORTED_METRICS]
        if blocked:
            raise ValueError(f"score.metrics: {', '.join(blocked)} re-initialise the model's Keras layers, and a torch module is one layer; drop them")
        if method == "incremental":
            raise ValueError("score.method=incremental: the incremental runner recomputes Keras layers window by window, and a torch module is one layer; use auto or full")
        if dtype != "float32":
            raise ValueError(f"score.dtype={dtype}: a torch module runs in its own float32; drop score.dtype")

    @property
    def file(self) -> Path:
        return Path(str(self.path)).expanduser()

    def check_file(self) -> None:
        """Raise FileNotFoundError-like ValueError if the file is missing (a stat call)."""
        if not self.file.is_file():
            raise ValueError(f"path: model file '{self.file}' does not exist; check model.path")

    def describe(self) -> FileInfo:
        """Input shape and output units from the saved config, without Keras (ValueError: unreadable file)."""
        self.check_file()
        if self.is_torch:  # a state dict says nothing of the input size; the class count is checked once loaded
            return FileInfo(None, None, self.torch_module.rpartition(":")[2])
        try:
            config = _read_config(self.file)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"path: '{self.file}' is not a readable Keras model file ({exc}); save it with model.save('model.keras')") from None
        name = config.get("config", {}).get("name") if isinstance(config.get("config"), dict) else None
        return FileInfo(_input_shape(config), _output_units(config), name, max(1, len(_output_names(config))))

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def load(self, *, class_names=None, image_size: int | None = None, multilabel: bool = False):
        """The model read as an xbench classifier (:func:`xbench.models.adapt.as_classifier`; with ``multilabel``, for multi-label data,
        :func:`xbench.models.multilabel.as_multilabel`); one-line errors as :class:`xbench.core.errors.ConfigError`."""
        from xbench.core.errors import ConfigError

        for module in self.imports:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigError(f"model.imports: cannot import {module!r} ({exc}); install it or fix the name") from None
        if self.is_torch:
            return self._load_torch(class_names, image_size)
        model = load_keras_file(self.file)
        from xbench.models.adapt import AdaptError, read_model

        try:
            return read_model(model, multilabel=multilabel, logits_layer=self.logits_layer, output=self.output, preprocess=self.preprocess,
                              gradcam_layer=self.gradcam_layer, class_names=class_names, image_size=image_size)
        except AdaptError as exc:
            raise ConfigError(f"model.path: {exc}".replace("logits_layer=", "model.logits_layer=").replace("gradcam_layer=", "model.gradcam_layer=")
                              .replace("output=", "model.output=").replace("image_size=", "data.image_size=")) from None


    def _load_torch(self, class_names, image_size):
        """The state dict in an instance of ``torch_module``, wrapped by :func:`xbench.models.torch_module.torch_classifier`."""
        from xbench.core.errors import ConfigError
        from xbench.models.adapt import AdaptError
        from xbench.models.torch_module import require_torch_backend, torch_classifier

        try:
            require_torch_backend("model.torch_module")
        except AdaptError as exc:
            raise ConfigError(str(exc)) from None
        from xbench.backend import torch as torch_backend

        where, _, name = str(self.torch_module).partition(":")
        try:
            factory = getattr(importlib.import_module(where), name)
        except ImportError as exc:
            raise ConfigError(f"model.torch_module: cannot import {where!r} ({exc}); install the package that defines the network or fix the path") from None
        except AttributeError:
            raise ConfigError(f"model.torch_module: module {where!r} has no {name!r}; give package.module:Class") from None
        try:
            module = factory(**self.torch_kwargs)
        except Exception as exc:
            raise ConfigError(f"model.torch_module: {self.torch_module}(**model.torch_kwargs) failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        if not torch_backend.is_module(module):
            raise ConfigError(f"model.torch_module: {self.torch_module} gave a {type(module).__name__}, not a torch.nn.Module")
        try:
            torch_backend.load_weights(module, torch_backend.load_state_dict(self.file))
        except ValueError as exc:
            raise ConfigError(f"model.path: {exc}") from None
        if image_size is None:
            raise ConfigError("data.image_size: a torch module does not fix its input size; set data.image_size")
        try:
            return torch_classifier(module, image_size=image_size, preprocess=self.preprocess, gradcam_layer=self.gradcam_layer, class_names=class_names)
        except AdaptError as exc:
            msg = str(exc)
            raise ConfigError(f"model.{msg}" if msg.startswith("gradcam_layer=") else f"model.torch_module: {msg}") from None


def load_keras_file(path: Path):
    """``keras.saving.load_model(path, safe_mode=True, compile=False)`` with one-line errors naming what is missing."""
    import keras

    import xbench.models.adapt  # noqa: F401  (registers xbench's layers, for a model xbench saved)
    import xbench.models.card  # noqa: F401
    import xbench.models.multilabel  # noqa: F401
    import xbench.models.preprocess  # noqa: F401
    from xbench.core.errors import ConfigError

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (TypeError, ValueError) as exc:
        msg = " ".join(str(exc).split())
        if "Could not locate" in msg or "Unknown layer" in msg or "custom_objects" in msg:
            name = _quoted_after(msg, ("Could not locate class", "Could not locate function", "Unknown layer:"))
            raise ConfigError(f"model.path: '{path}' uses a custom object {name or ''} Keras cannot find; put the module that registers it "
                              "(@keras.saving.register_keras_serializable) in model.imports=[my_package.layers]".replace("  ", " ")) from None
        if "Lambda" in msg and "safe_mode" in msg:
            raise ConfigError(f"model.path: '{path}' contains a Lambda layer, which xbench does not load (safe_mode=True runs no pickled code); "
                              "replace it with a registered layer and save again") from None
        raise ConfigError(f"model.path: cannot load '{path}': {msg[:300]}") from None
    except OSError as exc:
        raise ConfigError(f"model.path: cannot read '{path}' ({exc}); check the file") from None


def _quoted_after(msg: str, markers) -> str | None:
    for m in markers:
        i = msg.find(m)
        if i >= 0:
            rest = msg[i + len(m) :].strip()
            for q in ("'", '"'):
                if rest.startswith(q):
                    return q + rest[1:].split(q)[0] + q
            return rest.split()[0].strip(".,") if rest else None
    return None


def _read_config(path: Path) -> dict:
    if path.suffix.lower() == ".keras":
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("config.json"))
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs["model_config"]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def _layers(config: dict) -> list[dict]:
    inner = config.get("config", {})
    return inner.get("layers", []) if isinstance(inner, dict) else []


def _input_shape(config: dict) -> tuple | None:
    build = config.get("build_config") or {}
    shape = build.get("input_shape")
    if shape is None:
        for layer in _layers(config):
            if layer.get("class_name") == "InputLayer":
                c = layer.get("config", {})
                shape = c.get("batch_shape") or c.get("batch_input_shape")
                break
    if isinstance(shape, dict):  # several inputs
        return None
    if not isinstance(shape, (list, tuple)) or len(shape) != 4 or isinstance(shape[0], (list, dict)):
        return None
    return tuple(shape[1:])


def _output_names(config: dict) -> list:
    outs = config.get("config", {}).get("output_layers") if isinstance(config.get("config"), dict) else None
    if not outs:
        return []
    if isinstance(outs, dict):  # a dict of outputs
        outs = list(outs.values())
    if isinstance(outs[0], str):  # a single [name, node, tensor] triple
        outs = [outs]
    return [o[0] for o in outs if isinstance(o, (list, tuple)) and o]


def _inbound_names(layer: dict) -> list[str]:
    """The layers feeding ``layer`` in a saved functional config (Keras 3's ``keras_history`` and Keras 2's nested lists)."""
    names = []

    def walk(v):
        if isinstance(v, dict):
            hist = v.get("config", {}).get("keras_history") if isinstance(v.get("config"), dict) else None
            if hist:
                names.append(hist[0])
            for w in v.values():
                walk(w)
        elif isinstance(v, (list, tuple)):
            if len(v) >= 3 and isinstance(v[0], str) and isinstance(v[1], int):  # Keras 2: [name, node, tensor, kwargs]
                names.append(v[0])
            else:
                for w in v:
                    walk(w)

    walk(layer.get("inbound_nodes", []))
    return list(dict.fromkeys(names))


def _output_units(config: dict) -> int | None:
    """Units of the Dense nearest the output (through Softmax / Activation / Dropout layers that keep the width), or None if unknown."""
    layers = _layers(config)
    if not layers:
        return None
    by_name = {l.get("config", {}).get("name", l.get("name")): l for l in layers}
    outs = _output_names(config)
    sequential = config.get("class_name") == "Sequential"
    layer, index = (by_name.get(outs[-1]) if outs else None), len(layers) - 1
    if layer is None:
        layer = layers[-1]
    for _ in range(len(layers)):
        c = layer.get("config", {})
        if "units" in c:
            return int(c["units"])
        if layer.get("class_name") in ("Functional", "Sequential", "Model"):
            return _output_units(layer)
        if layer.get("class_name") not in ("Softmax", "Activation", "Dropout", "Identity", "ReLU", "LeakyReLU", "Rescaling"):
            return None
        if sequential:
            index -= 1
            if index < 0:
                return None
            layer = layers[index]
        else:
            feeding = _inbound_names(layer)
            if len(feeding) != 1 or feeding[0] not in by_name:
                return None
            layer = by_name[feeding[0]]
    return None
