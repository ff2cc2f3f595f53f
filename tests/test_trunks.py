"""Trunks: timm models (ConvNets and ViTs) as HRN's and the compared methods' trunk, their weights and errors, the
small-image stem of the ResNets and the warning for a 1x1 map; then whole runs on timm trunks, through the
commands that work from a checkpoint alone."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from hrn import HRN, load_checkpoint
from hrn.cli.config import CONF_DIR
from hrn.data.synthetic import synthetic_hierarchy
from hrn.deploy.formats import export, read_metadata
from hrn.explain.cams import level_cams
from hrn.nets import CHMCNN, HMCLMLP, HMCNF, ChangNet, ModelError, build_trunk
from hrn.nets.timm_trunk import TimmTrunk
from hrn.train import train
from tests import fixtures
from tests.fixtures import TINY, run_command

CONVNET, VIT = "timm:convnext_atto", "timm:vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def tree():
    return synthetic_hierarchy()


@pytest.mark.parametrize(
    ("name", "size", "channels", "reduction", "side"),
    [
        (CONVNET, 64, 320, 32, 2),
        ("timm:efficientnet_b0", 64, 1280, 32, 2),  # forward_features ends in the 1280-channel head conv
        (VIT, 32, 192, 16, 2),
        (VIT, 64, 192, 16, 4),
    ],
)
def test_timm_trunks_give_an_nchw_map_with_timms_channels(name, size, channels, reduction, side):
    trunk = build_trunk(name, image_size=size)
    assert isinstance(trunk.module, TimmTrunk) and trunk.module.intermediates == (name == VIT)
    assert (trunk.channels, trunk.reduction, trunk.map_side(size)) == (channels, reduction, side)
    model = trunk.module.model
    if name == VIT:  # the last block's map: C from timm's feature_info
        assert trunk.channels == model.feature_info[-1]["num_chs"]
    else:  # forward_features' map: C is timm's num_features (EfficientNet's feature_info ends at 320, before it)
        assert trunk.channels == model.num_features
    with torch.no_grad():
        assert trunk.module(torch.randn(2, 3, size, size)).shape == (2, channels, side, side)


@pytest.mark.parametrize("cls", [HRN, CHMCNN, HMCNF, ChangNet, HMCLMLP])
def test_every_network_takes_a_timm_trunk_and_its_lr_scale(tree, cls):
    kwargs = {"dim": 8} if cls in (HRN, ChangNet) else {}
    net = cls(tree, trunk=VIT, image_size=32, trunk_lr_scale=0.25, **kwargs)
    out = net(torch.randn(2, 3, 32, 32))
    assert [t.shape for t in out.level_probs] == [(2, n) for n in tree.level_sizes]
    trunk_group, heads = net.param_groups()
    assert trunk_group["lr_scale"] == 0.25 and heads["lr_scale"] == 1.0
    assert sum(p.numel() for p in trunk_group["params"]) == sum(p.numel() for p in net.trunk.parameters())
    if cls is HRN:  # the GSB width defaults to C / 2
        assert net.gsbs[0][0].out_channels == 192 // 2


def test_weights_files_load_offline_and_other_architectures_are_one_line(tmp_path):
    torch.manual_seed(1)
    ref = timm.create_model("convnext_atto", num_classes=10)  # with a classifier: its keys are ignored
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "atto.safetensors")
    torch.save(ref.state_dict(), tmp_path / "atto.pth")
    for path in (tmp_path / "atto.safetensors", tmp_path / "atto.pth"):
        trunk = build_trunk(CONVNET, weights=path, image_size=64)
        torch.testing.assert_close(trunk.module.model.stem[0].weight, ref.stem[0].weight)
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), tmp_path / "other.pth")
    with pytest.raises(
        ModelError, match=r"model.weights=.*other.pth: not a state dict of timm's convnext_atto"
    ):
        build_trunk(CONVNET, weights=tmp_path / "other.pth", image_size=64)
    with pytest.raises(ModelError, match="model.weights=.*missing.pth: file not found"):
        build_trunk(CONVNET, weights=tmp_path / "missing.pth")


def test_unknown_names_missing_feature_maps_and_failed_downloads_are_one_line(monkeypatch):
    with pytest.raises(
        ModelError, match=r"timm has no model 'convnext_atoo' \(did you mean timm:convnext_atto"
    ):
        build_trunk("timm:convnext_atoo")

    class Pooled(nn.Module):  # features without a map, and no forward_intermediates
        num_features = 8

        def forward_features(self, x):
            return x.mean((2, 3)).repeat(1, 3)[:, :8]

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: Pooled())
    with pytest.raises(ModelError, match=r"gives no feature map .* use a ConvNet .* or a ViT-style model"):
        build_trunk("timm:convnext_atto")

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("no network")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ModelError, match=r"download failed.*model.weights=.*or model.pretrained=false"):
        build_trunk(CONVNET, pretrained=True)


def test_small_stem_keeps_a_map_at_32_px_and_a_1x1_map_is_warned_about(tree, caplog):
    for stride, side in ((1, 4), (2, 2)):
        trunk = build_trunk("resnet18", stem="small", stem_stride=stride)
        assert trunk.map_side(32) == side and trunk.module[0].kernel_size == (3, 3)
        with torch.no_grad():
            assert trunk.module(torch.randn(2, 3, 32, 32)).shape == (2, 512, side, side)
    with caplog.at_level(logging.WARNING, logger="hrn.nets.hrn"):
        HRN(tree, trunk="resnet18", width=16, dim=8, image_size=32, stem="small", stem_stride=2)
        assert not caplog.records
        HRN(tree, trunk="resnet18", width=16, dim=8, image_size=32)
    (record,) = caplog.records
    assert (
        "at 32 px leaves a 1x1 feature map" in record.getMessage()
        and "model.stem=small" in record.getMessage()
    )
    with pytest.raises(ModelError, match="model.stem='tiny': use one of standard, small"):
        build_trunk("resnet18", stem="tiny")
    caplog.clear()  # a recipe's small stem (the synthetic dataset's) leaves a timm trunk's own stem alone
    with caplog.at_level(logging.INFO, logger="hrn.nets.trunks"):
        assert build_trunk(CONVNET, stem="small", image_size=64).map_side(64) == 2
    assert "model.stem=small is for ResNet trunks; timm:convnext_atto keeps its own stem" in caplog.text


def test_vit_grad_cam_takes_the_last_block_with_the_token_reshape(tree):
    torch.manual_seed(0)
    net = HRN(tree, trunk=VIT, width=16, dim=8, image_size=64).eval()
    ((layer, reshape),) = set(net.feature_layers("trunk"))
    assert layer is net.trunk.model.blocks[-1] and reshape is not None
    images = torch.randn(2, 3, 64, 64)
    tokens = net.trunk.model.blocks[-1](torch.zeros(1, 1 + 16, 192))
    assert reshape(tokens).shape == (1, 192, 4, 4)
    cams = level_cams(net, images, tree, layer="trunk")
    # the same maps from the trunk's own output, already (B, C, h, w): the block's patch tokens are the map
    net._cam_layer = [(net.trunk, None)]
    same = level_cams(net, images, tree, layer="trunk")
    for a, b in zip(cams.cams, same.cams, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------ whole runs, from checkpoints
@pytest.fixture(scope="module", params=[CONVNET, VIT])
def timm_run(request, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"run_dir={run}", *TINY, f"model.trunk={request.param}", "trainer.max_epochs=1"],
        )
    metrics = train(cfg)
    return request.param, run / "checkpoints" / "last.ckpt", metrics


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    return fixtures.synthetic_image_files(tmp_path_factory.mktemp("images"), [0, 7], seed=2)


@pytest.mark.slow
def test_a_timm_run_trains_and_its_checkpoint_describes_the_trunk(timm_run):
    name, ckpt, metrics = timm_run
    assert {"test/acc_l1", "test/acc_l3", "test/ap_micro"} <= set(metrics)
    model = load_checkpoint(ckpt)  # rebuilt from the description alone: no download, no config
    assert model.description.net["trunk"] == name and model.description.net["image_size"] == 32
    assert "pretrained" not in model.description.net and isinstance(model.net.trunk, TimmTrunk)


@pytest.mark.slow
def test_predict_export_and_gradcam_work_from_a_timm_checkpoint(timm_run, image_files, tmp_path):
    name, ckpt, _ = timm_run
    images = f"images=[{','.join(map(str, image_files))}]"
    predicted = run_command("predict", f"ckpt_path={ckpt}", images, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(lines) == 2 and all(len(r["path_prediction"]) == 3 for r in lines)
    for fmt, suffix in (("torchscript", "pt"), ("onnx", "onnx")):
        summary = export(ckpt, fmt, tmp_path / f"m.{suffix}")
        assert summary["check"]["paths_equal"] and read_metadata(tmp_path / f"m.{suffix}")["level_sizes"] == [
            3,
            6,
            12,
        ]
    cams = run_command(
        "gradcam", f"ckpt_path={ckpt}", images, f"out={tmp_path / 'cams.png'}", "layer=trunk", cwd=tmp_path
    )
    assert cams.returncode == 0, cams.stderr[-2000:]
    assert Image.open(tmp_path / "cams.png").size == (4 * 200, 2 * 200)
