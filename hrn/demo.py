"""``python -m hrn.demo ckpt_path=PATH|FOLDER [host=127.0.0.1] [port=7860] [threshold=0.0] [probabilities=leaf|tree|mix|heads] [device=auto]``: a page
to look at a model's predictions (:mod:`hrn.deploy.page`): upload an image, read the prediction at a threshold
and move the threshold, see the path with each level's top-k and one Grad-CAM overlay per level. Needs the
``demo`` extra (``pip install 'hrn[demo]'``). The model loads (safely, calibration applied) before any server
starts: a bad ``ckpt_path`` is one line, exit 2."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hrn.checkpoints import load_checkpoint
from hrn.cli.build import checkpoint_data
from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.data.base import DataError
from hrn.deploy.inference import check_batch_settings
from hrn.errors import HRNError
from hrn.metrics.hierarchical import check_threshold
from hrn.tree import check_source

__all__ = ["DemoError", "main", "serve"]

log = logging.getLogger(__name__)


class DemoError(HRNError):
    """A demo setting that cannot work (the extra not installed, a port in use)."""


def example_images(cfg: DictConfig, model, count: int) -> list[str]:
    """Up to ``count`` image files of the model's test split, one per class as far as they go, when its dataset is
    on this machine (the built-in synthetic one has no files: none)."""
    if count <= 0:
        return []
    try:
        test = checkpoint_data(cfg, model).test
    except (DataError, HRNError, OSError) as e:
        log.info("no example images: %s", e)
        return []
    picked, seen = [], set()
    for path, target in zip(test.paths, test.targets, strict=True):
        if target not in seen and Path(path).is_file():
            picked.append(str(path))
            seen.add(target)
        if len(picked) == count:
            break
    return picked


def serve(cfg: DictConfig):
    """Load the model, build the page and launch it on ``cfg.host``:``cfg.port`` in a thread of its own; prints the
    URL and returns ``(blocks, url)`` (``blocks.close()`` stops it; the command waits on ``blocks.block_thread()``)."""
    check_threshold(cfg.threshold)
    check_batch_settings(int(cfg.top_k), 1)
    check_source(str(cfg.probabilities))
    model = load_checkpoint(cfg.ckpt_path, bool(cfg.trust_checkpoint))
    try:
        import gradio  # noqa: F401  (the extra: checked here, before any work)

        from hrn.deploy.page import PageModel, build_page, launch_settings
    except ImportError as e:
        raise DemoError(f"hrn.demo needs the package {e.name}: pip install 'hrn[demo]'") from None
    page = PageModel(model, str(cfg.device), int(cfg.top_k), str(cfg.probabilities))
    blocks = build_page(page, float(cfg.threshold), example_images(cfg, model, int(cfg.examples)))
    try:
        blocks.launch(
            server_name=str(cfg.host), server_port=int(cfg.port), prevent_thread_lock=True, quiet=True,
            inbrowser=False, **launch_settings(),
        )  # fmt: skip
    except OSError as e:  # the port is taken
        raise DemoError(
            f"port={cfg.port}: cannot serve on {cfg.host} ({e}); pick another, e.g. port=7861"
        ) from None
    url = blocks.local_url
    print(f"hrn.demo: {url}  (Ctrl+C stops it)", flush=True)
    return blocks, url


@hydra.main(config_path=CONF_DIR, config_name="demo", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    blocks, _ = serve(cfg)
    blocks.block_thread()  # until Ctrl+C


if __name__ == "__main__":
    run_command(main, "demo", __doc__)
