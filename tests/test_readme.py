"""Every Python snippet of the README, run as written: each ```python block in a folder that holds the files the
snippets name (best.ckpt, best.onnx, a.jpg, b.jpg, tree.csv), with torchvision's ResNet-50 ImageNet file already
in the torch hub cache (the snippets' ``pretrained=True``; no download here). A snippet that stops working when
the API changes fails here, not in a reader's hands."""

import re
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from hrn.deploy.formats import export
from tests import fixtures
from tests.fixtures import ROOT

BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def test_the_readme_has_its_python_snippets():
    assert len(BLOCKS) >= 4  # onnxruntime, Grad-CAM, the Python API, a checkpoint's model


@pytest.fixture(scope="module")
def snippet_dir(tiny_run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(tiny_run.best, folder / "best.ckpt")
    export(folder / "best.ckpt", "onnx", folder / "best.onnx")
    for name, png in zip(
        ("a.jpg", "b.jpg"), fixtures.synthetic_image_files(folder / "png", [0, 7]), strict=True
    ):
        Image.open(png).convert("RGB").save(folder / name, quality=95)
    (folder / "tree.csv").write_text(
        "parent,child\nProcellariiformes,Diomedeidae\nDiomedeidae,Laysan Albatross\n"
    )
    # what torchvision would download for pretrained=True: a ResNet-50 state dict under its file name
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    cache = folder / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), cache / Path(weights.url).name)
    return folder


@pytest.mark.parametrize("number", range(len(BLOCKS)), ids=lambda i: f"block{i + 1}")
def test_the_snippet_runs_as_written(number, snippet_dir, monkeypatch):
    monkeypatch.chdir(snippet_dir)
    monkeypatch.setenv("TORCH_HOME", str(snippet_dir / "torch-home"))
    (snippet_dir / "cams.png").unlink(missing_ok=True)
    code = compile(BLOCKS[number], f"README.md, python block {number + 1}", "exec")
    namespace: dict = {"__name__": "__main__"}
    exec(code, namespace)  # noqa: S102 (the README's own code)
    if "save_figure(" in BLOCKS[number]:
        assert (snippet_dir / "cams.png").stat().st_size > 0
    if "session.run(" in BLOCKS[number]:
        assert len(namespace["path"]) == 2 and namespace["node"].shape == (2,)
