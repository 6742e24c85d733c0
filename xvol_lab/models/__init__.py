"""ResNet backbones and classifiers whose stages use any operator of `xvol_lab.ops`, built from specs."""

from xvol_lab.models.backbone import Backbone, build_backbone
from xvol_lab.models.classifier import Classifier, build_classifier
from xvol_lab.models.spec import PRESETS, BackboneSpec, StageSpec

__all__ = ["PRESETS", "Backbone", "BackboneSpec", "Classifier", "StageSpec", "build_backbone",
           "build_classifier"]
