"""Layer 4: end to end through the real Hydra config (compose API) and the real CLI (subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from hrn import Hierarchy
from hrn.app import CONF_DIR
from hrn.train import build_callbacks, train

ROOT = Path(__file__).resolve().parent.parent
TINY = [  # shrink the default synthetic run to seconds
    "dataset.train_per_leaf=4",
    "dataset.val_per_leaf=2",
    "dataset.test_per_leaf=3",
    "dataset.batch_size=16",
    "model.width=32",
    "model.dim=16",
    "callbacks.progress_bar.refresh_rate=0",
]
LEVEL_KEYS = {
    "test/acc_l1",
    "test/acc_l2",
    "test/acc_l3",
    "test/acc_leaf_sigmoid",
    "test/loss",
    "test/loss_tree",
    "test/loss_leaf_ce",
}


def make_cfg(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[f"run_dir={run_dir}", *TINY, *overrides])


def test_default_config_composes_with_all_groups(tmp_path):
    cfg = make_cfg(tmp_path)
    assert {"dataset", "model", "loss", "trainer", "callbacks", "logger", "seed", "relabel_ratio"} <= set(cfg)
    assert cfg.dataset._target_ == "hrn.data.synthetic.synthetic"
    assert cfg.model.trunk == "resnet18" and cfg.model.pretrained is False  # chosen by the dataset
    assert cfg.model.scheduler.T_max == cfg.trainer.max_epochs
    # the command line wins over what the dataset picks
    assert make_cfg(tmp_path, "model.trunk=resnet34").model.trunk == "resnet34"


def test_fast_dev_run_writes_metrics_json(tmp_path):
    metrics = train(make_cfg(tmp_path, "trainer.fast_dev_run=true"))
    assert LEVEL_KEYS <= set(metrics)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    assert all(isinstance(v, float) for v in on_disk.values())


def test_relabelled_run_keeps_checkpoints_logs_and_tree(tmp_path):
    metrics = train(make_cfg(tmp_path, "relabel_ratio=0.7", "trainer.max_epochs=2"))
    assert LEVEL_KEYS <= set(metrics)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts)
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    h = Hierarchy.from_dict(ckpt["hrn"]["tree"])
    assert h.level_sizes == [3, 6, 12]
    assert ckpt["hrn"]["net"]["trunk"] == "resnet18"
    assert ckpt["hrn"]["data"]["protocol"]["relabelled"] == 12 * 2  # 4 per leaf -> keep ceil(1.2) = 2


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hrn.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("relabel_ratio=1.0", "hrn: error: relabel_ratio=1.0 is outside [0, 1)"),
        ("relabel_ratio=-0.2", "hrn: error: relabel_ratio=-0.2 is outside [0, 1)"),
        (
            "model.trunk=vgg16",
            "hrn: error: unknown trunk 'vgg16'; valid trunks: resnet18, resnet34, resnet50",
        ),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, override, message):
    result = run_cli(override, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_progress_bar_callback_follows_the_trainer_switch(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    on = build_callbacks(make_cfg(tmp_path))
    off = build_callbacks(make_cfg(tmp_path, "trainer.enable_progress_bar=false"))
    assert any(isinstance(c, ProgressBar) for c in on)
    assert not any(isinstance(c, ProgressBar) for c in off)
    assert any(isinstance(c, ModelCheckpoint) for c in off)  # only the bar goes


def test_cli_without_progress_bar(tmp_path):
    """Lightning refuses a progress-bar callback with enable_progress_bar=False; the trainer's switch alone must do."""
    result = run_cli(
        "trainer.enable_progress_bar=false",
        "trainer.fast_dev_run=true",
        *TINY,
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "level    classes  accuracy" in result.stdout
    assert LEVEL_KEYS <= set(json.loads((tmp_path / "metrics.json").read_text()))


@pytest.mark.slow
def test_cli_max_epochs_and_relabel_overrides(tmp_path):
    result = run_cli(
        "relabel_ratio=0.7", "trainer.max_epochs=1", *TINY, f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "level    classes  accuracy" in result.stdout
    assert LEVEL_KEYS <= set(json.loads((tmp_path / "metrics.json").read_text()))


@pytest.mark.slow
def test_default_run_reaches_the_target_accuracy(tmp_path):
    """`make train`'s run: level 1 >= 0.95 and the leaf level >= 0.80 on the synthetic test split."""
    result = run_cli(f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    print({k: round(v, 4) for k, v in metrics.items()})
    assert metrics["test/acc_l1"] >= 0.95
    assert metrics["test/acc_l3"] >= 0.80
