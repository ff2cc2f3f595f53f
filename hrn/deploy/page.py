"""The demo page of a trained model (``python -m hrn.demo``): an image in; the prediction at a threshold, the
top-down path with each level's top-k marginals, the leaf softmax and one Grad-CAM overlay per level out.

:class:`PageModel` does the work without any web framework (what the tests compare with ``hrn.predict``);
:func:`build_page` lays it out as a Gradio page (the ``demo`` extra, imported only there). The network runs once
per image: moving the threshold re-reads the kept marginals.

Element ids of the page: ``image`` (the input), ``threshold`` (the slider), ``prediction``, ``path``, ``leaf``,
``cams`` (a gallery, one overlay per level), ``model`` (the model's description), ``message`` (bad input).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps

from hrn.checkpoints import LoadedModel
from hrn.data.base import DataError
from hrn.data.files import ImageFiles
from hrn.deploy.inference import describe, infer, pick_device
from hrn.explain.cams import level_cams
from hrn.metrics.hierarchical import check_threshold
from hrn.tree import check_source

__all__ = ["Analysis", "PageModel", "build_page", "launch_settings", "path_text", "prediction_text"]

MAX_FILE_SIZE = "20mb"  # larger uploads are refused by the page before they reach the model
CAM_ALPHA = 0.45


@dataclass
class Analysis:
    """One image through the model: ``marginals`` (N,), ``route`` the top-down path (one global node index per
    level), ``leaf_probs`` (n_L,) the leaf softmax, ``overlays`` per level an (H, W, 3) uint8 Grad-CAM overlay with
    its caption, and the image's ``path``."""

    path: str
    marginals: torch.Tensor
    route: list[int]
    leaf_probs: torch.Tensor
    overlays: list[tuple[np.ndarray, str]]


SOURCE_WORDS = {
    "leaf": "the leaf softmax summed up the tree",
    "tree": "the tree marginals of the per-level outputs",
    "mix": "the mean of the tree marginals and the leaf softmax summed up the tree",
    "heads": "each level head's own output",
}


class PageModel:
    """A loaded model (:func:`hrn.load_checkpoint`: safe loading, calibration applied) for the page.

    Args:
        model: the loaded model.
        device: ``auto``, ``cpu`` or ``cuda``.
        top_k: how many nodes of each level (and leaves of the softmax) are listed.
        probabilities: the node probabilities shown and thresholded (:data:`hrn.tree.SOURCES`, as ``hrn.predict``).
    """

    def __init__(
        self, model: LoadedModel, device: str = "auto", top_k: int = 3, probabilities: str = "leaf"
    ) -> None:
        self.model = model
        self.source = check_source(probabilities)
        self.device = pick_device(device)
        self.net = model.net.to(self.device).eval()
        self.probabilities = model.probabilities().to(self.device)
        self.kept = model.probabilities()  # on the CPU, beside the kept marginals, for the threshold
        self.transform = model.transform()
        self.top_k = top_k

    def analyse(self, path: str | Path) -> Analysis:
        """Read an image file exactly as ``hrn.predict`` does, run the network once, and explain every level."""
        image = ImageFiles([Path(path)])(0)  # DataError (one line) for a file that does not decode
        batch = self.transform(image)[None].to(self.device)
        h = self.model.hierarchy
        marginals, routes, leaf_probs = infer(
            self.net, self.probabilities, batch, self.model.tree_scores, self.source
        )
        route, marginals, leaf_probs = routes[0].tolist(), marginals.cpu(), leaf_probs[0].cpu()
        cams = level_cams(
            self.net, batch, h, "predicted", "gsb", self.model.tree_scores, calibration=self.model.calibration,
            probabilities=self.source,
        )  # fmt: skip
        shown = (batch[0].float().cpu() * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
        jet = colormaps["jet"]
        overlays = []
        for lvl in range(h.num_levels):
            heat = jet(cams.cams[lvl][0])[..., :3]
            mixed = (1 - CAM_ALPHA) * shown + CAM_ALPHA * heat
            caption = f"level {lvl + 1}: {cams.nodes[lvl][0]} (p = {float(cams.probs[lvl][0]):.3f})"
            overlays.append(((mixed * 255).round().astype(np.uint8), caption))
        return Analysis(str(path), marginals[0], route, leaf_probs, overlays)

    def answer(self, analysis: Analysis, threshold: float) -> dict:
        """The prediction line of ``hrn.predict`` for the analysed image at ``threshold`` (no network run)."""
        threshold = check_threshold(threshold)
        marginals = analysis.marginals[None]
        route = torch.tensor([analysis.route])
        node = int(self.kept.confident_node(marginals, threshold, route)[0][0])
        return describe(
            Path(analysis.path), analysis.marginals, analysis.route, analysis.leaf_probs, self.model.hierarchy,
            self.top_k, node,
        )  # fmt: skip

    def summary(self) -> str:
        """The model in a few lines of Markdown: tree, network, dataset, calibration."""
        d = self.model.description
        trunk = d.net.get("trunk", "?")
        sizes = " → ".join(str(n) for n in d.tree.level_sizes)
        calibrated = "yes (temperatures fitted by hrn.calibrate)" if d.calibration else "no"
        return (
            f"**Model**: {d.net.get('_target_', 'network').rsplit('.', 1)[-1]} on trunk `{trunk}`, trained on "
            f"`{d.data.get('name', 'unknown')}` · **tree**: {d.tree.num_nodes} nodes, levels of {sizes} classes · "
            f"**calibrated**: {calibrated} · **probabilities**: {SOURCE_WORDS[self.source]} · test transform: "
            f"resize {d.resize}, crop {d.crop}"
        )


def path_chain(line: dict, upto: int | None = None) -> str:
    """'root › … › node' of a prediction line's path, down to level ``upto`` (all when None)."""
    steps = line["path_prediction"][:upto]
    return " › ".join(step["label"] for step in steps)


def prediction_text(line: dict, threshold: float) -> str:
    """The answer at the threshold, as the page shows it."""
    p = line["prediction"]
    if p is None:
        return f"**No answer at this threshold** ({threshold:.2f}): not even the level-1 node reaches it."
    return f"**{path_chain(line, p['level'])}** · level {p['level']} · p = {p['prob']:.3f} (threshold {threshold:.2f})"


def path_text(line: dict) -> str:
    """The top-down path with each level's top-k marginals, as a Markdown table."""
    rows = ["| level | path | p | top-k of the level |", "|---|---|---|---|"]
    for step in line["path_prediction"]:
        others = ", ".join(f"{e['label']} {e['prob']:.3f}" for e in line["top_k"][str(step["level"])])
        rows.append(f"| {step['level']} | {step['label']} | {step['prob']:.3f} | {others} |")
    return "\n".join(rows)


def _readable_decoding(gr, image) -> None:
    """Make ``image`` (a ``gr.Image``) answer a file that is no image with the page's one readable message rather
    than an 'Error' on every output: its own decoding, wrapped on the instance (a subclass of a Gradio component
    would make Gradio write a stub file into this package)."""
    decode = image.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except Exception as e:  # noqa: BLE001 (PIL's errors for what is no image vary)
            name = Path(getattr(payload, "orig_name", None) or getattr(payload, "path", "the file")).name
            raise gr.Error(
                f"Cannot read {name} as an image ({type(e).__name__}): upload a JPEG or PNG"
            ) from None

    image.preprocess = preprocess


def launch_settings() -> dict:
    """What ``Blocks.launch`` needs besides the address: the upload limit, no share link, and a theme on system
    fonts (the default one asks Google Fonts for its own; the page fetches nothing from outside)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    return {"max_file_size": MAX_FILE_SIZE, "share": False, "theme": theme, "show_error": False}


def build_page(page: PageModel, threshold: float = 0.0, examples: list[str] | None = None):
    """The Gradio page (``gradio.Blocks``) of ``page``; launch it with ``.launch(**launch_settings(), ...)``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no call home
    import gradio as gr

    check_threshold(threshold)

    def on_image(path, tau):
        if not path:
            return None, "Upload an image (JPEG, PNG, ...) to see its prediction.", "", {}, [], ""
        try:
            analysis = page.analyse(path)
        except DataError as e:
            return None, "", "", {}, [], f"**Cannot read this file**: {e}"
        line = page.answer(analysis, tau)
        leaf = {e["label"]: e["prob"] for e in line["leaf_softmax_top_k"]}
        return analysis, prediction_text(line, tau), path_text(line), leaf, analysis.overlays, ""

    def on_threshold(analysis, tau):
        if analysis is None:
            return "Upload an image (JPEG, PNG, ...) to see its prediction."
        return prediction_text(page.answer(analysis, tau), tau)

    with gr.Blocks(title="HRN: hierarchical prediction", analytics_enabled=False) as blocks:
        gr.Markdown("## Hierarchical prediction\n" + page.summary(), elem_id="model")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    type="filepath",
                    label="image",
                    elem_id="image",
                    sources=["upload", "clipboard"],
                    height=260,
                )
                _readable_decoding(gr, image)
                tau = gr.Slider(0.0, 1.0, value=threshold, step=0.01, label="threshold", elem_id="threshold")
                if examples:
                    gr.Examples(examples, inputs=image)
            with gr.Column(scale=2):
                message = gr.Markdown("", elem_id="message")
                prediction = gr.Markdown(
                    "Upload an image (JPEG, PNG, ...) to see its prediction.", elem_id="prediction"
                )
                path = gr.Markdown("", elem_id="path")
                leaf = gr.Label(label="leaf softmax (top-k)", elem_id="leaf")
        levels = page.model.hierarchy.num_levels
        cams = gr.Gallery(
            label="Grad-CAM per level", elem_id="cams", columns=levels, height=300, object_fit="contain"
        )
        image.change(on_image, [image, tau], [state, prediction, path, leaf, cams, message])
        tau.change(on_threshold, [state, tau], [prediction])
    return blocks
