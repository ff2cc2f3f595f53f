"""Explanations: per-level Grad-CAM heatmaps of a trained network (:mod:`~hrn.explain.cams`)."""

from hrn.explain.cams import LevelCAMs, gradcam, level_cams, load_images, plot_cams, save_figure

__all__ = ["LevelCAMs", "gradcam", "level_cams", "load_images", "plot_cams", "save_figure"]
