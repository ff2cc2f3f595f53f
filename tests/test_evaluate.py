"""Layer 4: `hrn.evaluate` and `hrn.predict` end to end on a checkpoint trained here on synthetic data."""

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from hrn import HRN, Hierarchy, TreeProbabilities
from hrn.checkpoints import CheckpointError, load_checkpoint
from hrn.cli.config import CONF_DIR
from hrn.data.synthetic import make_images, synthetic_hierarchy
from hrn.evaluate import evaluate
from hrn.predict import predict
from tests import fixtures
from tests.fixtures import greedy_path, run_command

TEST_SIZE = 12 * 3  # TINY: 3 test images per leaf


@pytest.fixture(scope="module")
def trained(tiny_run) -> tuple[Path, dict]:
    return tiny_run.best, tiny_run.metrics


def eval_cfg(run_dir: Path, ckpt: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[
                f"run_dir={run_dir}",
                f"ckpt_path={ckpt}",
                "trainer.enable_progress_bar=false",
                *overrides,
            ],
        )


def test_evaluate_writes_everything_and_counts_every_image(trained, tmp_path):
    ckpt, train_metrics = trained
    metrics = evaluate(eval_cfg(tmp_path, ckpt, "dataset.batch_size=5"))  # 5 does not divide 36
    assert metrics["test/num_samples"] == TEST_SIZE
    keys = {
        "test/acc_l1",
        "test/acc_l2",
        "test/acc_l3",
        "test/acc_leaf_sigmoid",
        "test/ap_micro",
        "test/full_path_acc",
        "test/consistency",
        "test/mistake_severity",
        "test/num_samples",
        "test/acc_l1_marginal",
        "test/acc_l2_marginal",
        "test/acc_l3_marginal",
    }
    assert keys <= set(metrics)
    # the same checkpoint, the same numbers as the test at the end of training
    for key in ("test/acc_l1", "test/acc_l3", "test/ap_micro"):
        assert metrics[key] == pytest.approx(train_metrics[key], abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    npz = np.load(tmp_path / "predictions.npz")
    assert npz["scores"].shape == (TEST_SIZE, 21) and npz["targets"].shape == (TEST_SIZE, 21)
    assert (npz["targets"].sum(1) == 3).all()  # leaf + 2 ancestors
    assert len(npz["paths"]) == TEST_SIZE and npz["paths"][0].startswith("synthetic/test/")
    rows = list(csv.DictReader((tmp_path / "per_class.csv").open()))
    assert len(rows) == 21 and rows[0]["node"] == "hbar" and int(rows[0]["support"]) == 12
    for lvl in (1, 2, 3):
        with Image.open(tmp_path / f"confusion_l{lvl}.png") as im:
            assert im.size[0] > 100


def test_evaluate_val_split(trained, tmp_path):
    metrics = evaluate(eval_cfg(tmp_path, trained[0], "split=val"))
    assert metrics["val/num_samples"] == 12 * 2 and "val/ap_micro" in metrics


def test_evaluate_on_another_tree_is_one_line(trained, tmp_path):
    root = fixtures.write_folder(tmp_path / "folder")
    cfg = eval_cfg(tmp_path, trained[0], "dataset=folder", f"dataset.root={root}", "dataset.num_workers=0")
    with pytest.raises(
        Exception, match=r"tree \(levels \[2, 3, 5\]\) differs from the checkpoint's \(levels \[3, 6"
    ):
        evaluate(cfg)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not an HRN checkpoint"):
        load_checkpoint(tmp_path / "foreign.ckpt")


def test_truncated_checkpoint(trained, tmp_path):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(trained[0].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot read the checkpoint .* truncated"):
        load_checkpoint(cut)


def test_load_checkpoint_gives_the_plain_network_without_hydra_or_lightning(trained):
    code = (
        "import sys, hrn\n"
        "m = hrn.load_checkpoint(sys.argv[1])\n"
        "print(type(m.net).__name__, m.net.training, m.tree_scores, m.resize, m.crop, len(m.hierarchy.names))\n"
        "print(sorted(k for k in ('hydra', 'omegaconf', 'lightning', 'pytorch_lightning') if k in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(trained[0])], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["HRN False sigmoid 32 32 21", "[]"]


@pytest.mark.parametrize("loss", ["composite", "leaf_ce"])
def test_a_checkpoint_of_the_earlier_layout_loads(tmp_path, loss):
    """What hrn.train wrote before the package's layout of 0.2: hrn.model.HRN, the builder's settings and
    channels_last beside the network's, no tree_scores (the loss says it)."""
    h = synthetic_hierarchy()
    net = HRN(h, trunk="resnet18", width=16, dim=8).eval()
    target = {"composite": "hrn.losses.CompositeLoss", "leaf_ce": "hrn.losses.LeafCELoss"}[loss]
    meta = {
        "tree": h.to_dict(),
        "net": {
            "_target_": "hrn.model.HRN",
            "trunk": "resnet18",
            "pretrained": False,
            "weights": None,
            "width": 16,
            "dim": 8,
            "gsb": True,
            "combine": "sum",
            "relu": True,
            "trunk_lr_scale": 0.1,
            "channels_last": False,
        },  # fmt: skip
        "loss": {"_target_": target},
        "data": {"name": "synthetic", "resize": 32, "crop": 32, "padding": 2},
    }
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hrn": meta, "epoch": 0}, tmp_path / "old.ckpt")
    model = load_checkpoint(tmp_path / "old.ckpt")
    assert type(model.net) is HRN and model.tree_scores == ("sigmoid" if loss == "composite" else "leaf")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.net(images).scores(), net(images).scores(), rtol=0, atol=0)
    meta["net"]["_target_"] = "os.system"  # a checkpoint names only the package's own networks
    torch.save({"state_dict": state, "hrn": meta}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="network 'os.system' is not one of the package's"):
        load_checkpoint(tmp_path / "foreign.ckpt")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    leaves = torch.tensor([0, 5, 11])
    for i, image in enumerate(make_images(leaves, 32, torch.Generator().manual_seed(9))):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"img{i}.png")
    return folder


def test_predict_paths_are_valid_and_from_the_checkpoint_alone(trained, images):
    results = list(predict(str(trained[0]), [str(images / "img0.png"), str(images / "img2.png")], top_k=3))
    assert [Path(r["path"]).name for r in results] == ["img0.png", "img2.png"]
    h = load_checkpoint(trained[0]).hierarchy
    for r in results:
        path = r["path_prediction"]
        assert [p["level"] for p in path] == [1, 2, 3]
        for parent, child in itertools.pairwise(path):  # a valid root-to-leaf path
            assert h.parent_of(h.index(child["label"])) == h.index(parent["label"])
            assert parent["prob"] >= child["prob"]  # marginals shrink down the tree
        assert set(r["top_k"]) == {"1", "2", "3"} and len(r["top_k"]["1"]) == 3
        assert len(r["leaf_softmax_top_k"]) == 3
        assert r["leaf_softmax_top_k"][0]["prob"] >= r["leaf_softmax_top_k"][1]["prob"]


def test_top_down_path_follows_children():
    h = Hierarchy.from_edges([("a", "b"), ("a", "c"), ("x", "y"), ("b", "d"), ("c", "e"), ("y", "z")])
    m = torch.tensor([0.6, 0.4, 0.2, 0.35, 0.4, 0.2, 0.3, 0.39])  # a x | b c y | d e z
    path = TreeProbabilities(h).top_down_path(m[None])[0].tolist()
    assert [h.names[i] for i in path] == ["a", "c", "e"] == [h.names[i] for i in greedy_path(m, h)]  # not y


def run(module: str, *args: str, cwd: Path):
    return run_command(module.removeprefix("hrn."), *args, cwd=cwd)


def test_predict_cli_folder_glob_and_errors(trained, images, tmp_path):
    ok = run("hrn.predict", f"ckpt_path={trained[0]}", f"images={images}", "top_k=2", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["path_prediction"] for line in lines)
    globbed = run("hrn.predict", f"ckpt_path={trained[0]}", f"images='{images}/img[01].png'", cwd=tmp_path)
    assert len(globbed.stdout.strip().splitlines()) == 2, globbed.stderr[-2000:]

    missing = run("hrn.predict", f"ckpt_path={trained[0]}", f"images=[{images}/nope.png]", cwd=tmp_path)
    assert (
        missing.returncode == 2
        and missing.stderr.strip().splitlines()[-1]
        == f"hrn: error: images: {images}/nope.png: image not found"
    )
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    broken = run("hrn.predict", f"ckpt_path={trained[0]}", f"images=[{bad}]", cwd=tmp_path)
    assert broken.returncode == 2 and f"hrn: error: {bad}: cannot decode the image" in broken.stderr
    no_ckpt = run("hrn.predict", f"ckpt_path={tmp_path}/none.ckpt", f"images=[{bad}]", cwd=tmp_path)
    assert (
        no_ckpt.stderr.strip().splitlines()[-1]
        == f"hrn: error: ckpt_path={tmp_path}/none.ckpt: checkpoint not found"
    )
    assert "Traceback" not in missing.stderr + broken.stderr + no_ckpt.stderr


def test_evaluate_cli(trained, tmp_path):
    result = run("hrn.evaluate", f"ckpt_path={trained[0]}", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ap_micro" in result.stdout and (tmp_path / "predictions.npz").is_file()
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"epoch": 1}, foreign)
    bad = run("hrn.evaluate", f"ckpt_path={foreign}", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert bad.returncode == 2 and "not an HRN checkpoint" in bad.stderr.strip().splitlines()[-1]


def test_predict_skips_an_undecodable_image_when_asked(trained, images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    files = f"images=[{images}/img0.png,{bad},{images}/img2.png]"
    skip = run(
        "hrn.predict", f"ckpt_path={trained[0]}", files, "on_bad_image=skip", "batch_size=2", cwd=tmp_path
    )
    assert skip.returncode == 0, skip.stderr[-2000:]
    assert [json.loads(line)["path"] for line in skip.stdout.splitlines()] == [
        f"{images}/img0.png",
        f"{images}/img2.png",
    ]
    assert str(bad) in skip.stderr
    stop = run("hrn.predict", f"ckpt_path={trained[0]}", files, cwd=tmp_path)
    assert stop.returncode == 2 and stop.stdout == ""
    assert (
        stop.stderr.strip().splitlines()[-1].endswith("or pass on_bad_image=skip to predict the other files")
    )


@pytest.mark.parametrize(
    ("command", "args", "line"),
    [
        ("predict", ["batch_size=0"], "hrn: error: batch_size=0: must be a whole number, at least 1 (images per"),
        ("predict", ["batch_size=-1"], "hrn: error: batch_size=-1: must be a whole number, at least 1 (images per"),
        ("predict", ["top_k=0"], "hrn: error: top_k=0: must be a whole number, at least 1"),
        ("predict", ["on_bad_image=ignore"], "hrn: error: on_bad_image='ignore': expected 'error' or 'skip'"),
        ("evaluate", ["dataset.batch_size=0"], "hrn: error: dataset.batch_size=0: must be a whole number, at least 1"),
        ("train", ["dataset.batch_size=0"], "hrn: error: dataset.batch_size=0: must be a whole number, at least 1"),
        ("train", ["trainer.precision=bf17"], "hrn: error: trainer: Lightning's Trainer refuses the settings: "),
        ("train", ["+trainer.foo=1"], "hrn: error: trainer.foo: not an argument of Lightning's Trainer"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line(trained, images, tmp_path, command, args, line):
    where = {
        "predict": [f"ckpt_path={trained[0]}", f"images={images}"],
        "evaluate": [f"ckpt_path={trained[0]}", f"hydra.run.dir={tmp_path / 'run'}"],
        "train": ["trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path / 'run'}"],
    }[command]
    result = run(f"hrn.{command}", *where, *args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [x for x in result.stderr.splitlines() if x.startswith("hrn: error:")]
    assert len(errors) == 1 and errors[0].startswith(line), result.stderr[-2000:]
    assert result.stdout == "" and not (tmp_path / "run").exists()  # a refused run leaves no folder


def test_a_missing_config_dir_is_one_line(tmp_path):
    result = run("hrn.train", "--config-dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("hrn: error: --config-dir") and str(tmp_path / "nope") in line, line
