"""Classifiers: keras.applications backbones with in-model preprocessing and the studies' heads."""

from xbench.models.backbones import BACKBONES, BackboneSpec
from xbench.models.build import build_classifier, head_model
from xbench.models.preprocess import Preprocess

__all__ = ["BACKBONES", "BackboneSpec", "Preprocess", "build_classifier", "head_model"]
