"""Deployment: a trained network and its tree as one exportable module (:mod:`~hrn.deploy.predictor`), the export
formats (:mod:`~hrn.deploy.formats`) and classifying image files (:mod:`~hrn.deploy.inference`)."""

from hrn.deploy.predictor import INPUT_NAME, OUTPUT_NAMES, Predictor

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "Predictor"]
