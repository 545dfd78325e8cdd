"""Classifiers: keras.applications backbones with in-model preprocessing and the studies' heads."""

from xbench.core.lazy import exports

# Lazy (PEP 562): ``import xbench.models.<module>`` must not load Keras for
# the Keras-free ones, so that configs are checked before TensorFlow starts.
_WHERE = {
    "AdaptError": "xbench.models.adapt",
    "BACKBONES": "xbench.models.backbones",
    "BackboneOutput": "xbench.models.card",
    "BackboneSpec": "xbench.models.backbones",
    "ClassifierSpec": "xbench.models.spec",
    "HEADS": "xbench.core.names",
    "ModelFile": "xbench.models.model_file",
    "as_classifier": "xbench.models.adapt",
    "as_multilabel": "xbench.models.multilabel",
    "label_view": "xbench.models.multilabel",
    "build_classifier": "xbench.models.build",
    "head_model": "xbench.models.build",
    "model_card": "xbench.models.card",
    "Preprocess": "xbench.models.preprocess",
    "torch_classifier": "xbench.models.torch_module",
    "with_compute_dtype": "xbench.models.precision",
}
__getattr__, __all__ = exports(__name__, _WHERE)
