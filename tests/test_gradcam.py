"""Per-level Grad-CAM (`hrn.gradcam`): the library on a small trained checkpoint, then the CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hrn import HRN, TreeProbabilities
from hrn.checkpoints import CheckpointError, load_checkpoint
from hrn.data.base import DataError
from hrn.data.synthetic import make_images, synthetic_hierarchy
from hrn.explain.cams import DPI, PANEL_INCHES, CAMError, gradcam, level_cams, load_images
from tests.fixtures import LEARNT_SIZE, greedy_path, run_command

# The shared learnt run (tests/fixtures.py LEARNT): 64 px with the standard stem, so 2 x 2 feature maps
SIZE = LEARNT_SIZE


@pytest.fixture(scope="module")
def trained(learnt_run) -> Path:
    return learnt_run.best


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    leaves = torch.tensor([0, 5, 11])  # hbar-red-hstripes, vbar-yellow-vstripes, square-cyan-vstripes
    paths = []
    for i, image in enumerate(make_images(leaves, SIZE, torch.Generator().manual_seed(9))):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def loaded(trained, images):
    module = load_checkpoint(trained)
    meta = module.description
    batch = load_images(images, meta.resize, meta.crop)
    return module, batch


@pytest.mark.parametrize("layer", ["gsb", "trunk"])
def test_heatmaps_have_the_image_size_and_vary(loaded, layer):
    module, batch = loaded
    result = level_cams(module.net, batch, module.hierarchy, layer=layer, tree_scores=module.tree_scores)
    assert result.num_levels == 3 and len(result) == 3
    for cams in result.cams:
        assert cams.shape == (3, SIZE, SIZE) and cams.dtype == np.float32
        assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
        # Not constant. Grad-CAM keeps only positive evidence (a ReLU), so a map is flat (all 0) where the class has
        # none anywhere in the image: possible for one image of a barely trained network, not for most.
        assert (cams.reshape(3, -1).std(1) > 1e-3).sum() >= 2
        assert cams.max() == pytest.approx(1, abs=1e-3)  # scaled to [0, 1]
    assert module.net.training is False
    assert all(p.grad is None for p in module.net.parameters())  # no gradients left behind


@pytest.mark.parametrize("layer", ["gsb", "trunk"])
def test_coarse_and_leaf_targets_give_different_maps(loaded, layer):
    module, batch = loaded
    result = level_cams(module.net, batch, module.hierarchy, layer=layer)
    coarse, leaf = result.cams[0], result.cams[-1]
    assert np.abs(coarse - leaf).mean() > 0.01


def test_predicted_path_and_probabilities_are_the_tree_marginals(loaded):
    module, batch = loaded
    h = module.hierarchy
    result = level_cams(module.net, batch, h)
    with torch.no_grad():
        marginals = TreeProbabilities(module.hierarchy).marginals(
            module.net(batch).scores(module.tree_scores)
        )
    for i in range(len(batch)):
        path = [h.index(result.nodes[lvl][i]) for lvl in range(3)]
        assert path == greedy_path(marginals[i], h)
        assert h.parent_of(path[1]) == path[0] and h.parent_of(path[2]) == path[1]
        assert path[0] == int(marginals[i, :3].argmax())  # the most probable level-1 node
        probs = [float(result.probs[lvl][i]) for lvl in range(3)]
        assert probs == pytest.approx(marginals[i, path].tolist(), abs=1e-6)


def test_named_target_sets_the_path_through_it(loaded):
    module, batch = loaded
    h = module.hierarchy
    family = level_cams(module.net, batch, h, targets="vbar-blue")
    assert family.nodes[0] == ["vbar"] * 3 and family.nodes[1] == ["vbar-blue"] * 3
    assert {h.parent_of(h.index(n)) for n in family.nodes[2]} == {h.index("vbar-blue")}
    leaf = level_cams(module.net, batch, h, targets=["square-cyan-hstripes", "predicted", "hbar"])
    assert [leaf.nodes[lvl][0] for lvl in range(3)] == ["square", "square-cyan", "square-cyan-hstripes"]
    assert leaf.nodes[0][2] == "hbar"
    # a different class of the same level explains another map
    other = level_cams(module.net, batch, h, targets="square-cyan", layer="trunk")
    first = level_cams(module.net, batch, h, targets="hbar-red", layer="trunk")
    assert np.abs(other.cams[1] - first.cams[1]).mean() > 0.01


def test_unknown_target_layer_and_files_are_one_line(loaded, trained, images, tmp_path):
    module, batch = loaded
    with pytest.raises(
        CAMError, match=r"^target='hbar-rod': not a node of the tree.*did you mean 'hbar-red'"
    ):
        level_cams(module.net, batch, module.hierarchy, targets="hbar-rod")
    with pytest.raises(CAMError, match="layer='fc'"):
        level_cams(module.net, batch, module.hierarchy, layer="fc")
    with pytest.raises(DataError, match="image not found"):
        gradcam(trained, [str(images[0]), str(tmp_path / "nope.png")], out=tmp_path / "x.png")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        gradcam(tmp_path / "none.ckpt", [str(images[0])], out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_batches_give_the_same_maps_and_low_resolution_loads(loaded, images):
    module, batch = loaded
    whole = level_cams(module.net, batch, module.hierarchy)
    parts = level_cams(module.net, batch, module.hierarchy, batch_size=2)
    assert parts.nodes == whole.nodes
    for a, b in zip(whole.cams, parts.cams, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    low = load_images(images, SIZE, SIZE, scale=0.25)
    assert low.shape == batch.shape and not torch.allclose(low, batch)


def test_untrained_frozen_net_without_gsbs_under_no_grad():
    h = synthetic_hierarchy()
    net = HRN(h, trunk="resnet18", width=16, dim=8, gsb=False).requires_grad_(False)
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        result = level_cams(net, images, h, layer="gsb")  # no GSBs: falls back to the trunk's last block
    assert [c.shape for c in result.cams] == [(2, SIZE, SIZE)] * 3
    assert all(np.isfinite(c).all() for c in result.cams)


def run(*args: str, cwd: Path):
    return run_command("gradcam", *args, cwd=cwd)


def test_cli_writes_the_grid_png(trained, images, tmp_path):
    out = tmp_path / "sub" / "cams.png"
    ok = run(f"ckpt_path={trained}", f"images=[{images[0]},{images[2]}]", f"out={out}", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    with Image.open(out) as im:
        levels, rows = 3, 2
        assert im.size == (round((levels + 1) * PANEL_INCHES * DPI), round(rows * PANEL_INCHES * DPI))
    assert [p.name for p in out.parent.iterdir()] == ["cams.png"]  # no temporary file left behind
    assert not (tmp_path / ".hydra").exists() and not (tmp_path / "outputs").exists()


def test_cli_unknown_target_is_one_line(trained, images, tmp_path):
    bad = run(f"ckpt_path={trained}", f"images={images[0].parent}", "target=nope", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "hrn: error: target='nope': not a node of the tree; use target=predicted or a node name (e.g. 'hbar')"
    ]
    assert not (tmp_path / "cams.png").exists()
