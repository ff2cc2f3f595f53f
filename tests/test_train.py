"""Layer 4: end to end through the real Hydra config (compose API) and the real CLI (subprocess)."""

import json
from pathlib import Path

import pytest
import torch

from hrn import Hierarchy
from hrn.cli.build import SettingError, apply_matmul_precision, build_callbacks, resolve_matmul_precision
from hrn.train import train
from tests.fixtures import LEVEL_KEYS, TINY, CompileCounts, make_cfg, run_command


def test_default_config_composes_with_all_groups(tmp_path):
    cfg = make_cfg(tmp_path)
    assert {"dataset", "model", "loss", "trainer", "callbacks", "logger", "seed", "relabel_ratio"} <= set(cfg)
    assert cfg.dataset._target_ == "hrn.data.synthetic.synthetic"
    assert cfg.model.trunk == "resnet18" and cfg.model.pretrained is False  # chosen by the dataset
    assert cfg.scheduler.T_max == cfg.trainer.max_epochs
    # the command line wins over what the dataset picks
    assert make_cfg(tmp_path, "model.trunk=resnet34").model.trunk == "resnet34"


@pytest.mark.parametrize("loss", ["composite", "tree"])
def test_loss_formulation_key_reaches_the_tree_loss(tmp_path, loss):
    from hydra.utils import instantiate

    h = Hierarchy.from_edges([("a", "b"), ("b", "c")])
    assert instantiate(make_cfg(tmp_path, f"loss={loss}").loss, hierarchy=h).tree.formulation == "auto"
    cfg = make_cfg(tmp_path, f"loss={loss}", "loss.formulation=dense")
    assert instantiate(cfg.loss, hierarchy=h).tree.formulation == "dense"


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
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    h = Hierarchy.from_dict(ckpt["hrn"]["tree"])
    assert h.level_sizes == [3, 6, 12]
    assert ckpt["hrn"]["net"]["trunk"] == "resnet18"
    assert ckpt["hrn"]["data"]["protocol"]["relabelled"] == 12 * 2  # 4 per leaf -> keep ceil(1.2) = 2


def test_matmul_precision_auto_is_high_on_tensor_core_gpus_only():
    assert resolve_matmul_precision("auto", (8, 0)) == "high"  # A100
    assert resolve_matmul_precision("auto", (9, 0)) == "high"  # H100
    assert resolve_matmul_precision("auto", (7, 5)) is None  # T4: no TF32
    assert resolve_matmul_precision("auto", None) is None  # not on CUDA
    assert [resolve_matmul_precision(p, None) for p in ("highest", "high", "medium")] == [
        "highest",
        "high",
        "medium",
    ]
    with pytest.raises(
        SettingError, match=r"matmul_precision='fast' is not one of auto, highest, high, medium"
    ):
        resolve_matmul_precision("fast", (9, 0))


@pytest.mark.parametrize(
    ("overrides", "gpu", "expected"),
    [
        ([], (8, 6), "high"),  # auto on an Ampere GPU
        (["trainer.accelerator=cpu"], (8, 6), None),  # a GPU is there but the run trains on the CPU
        ([], None, None),  # no GPU
        (["matmul_precision=medium"], None, "medium"),
    ],
)
def test_matmul_precision_key_is_applied_once_and_logged(
    tmp_path, monkeypatch, caplog, overrides, gpu, expected
):
    """The config key reaches torch (faked: a GPU of the given compute capability, and a recorder in place of
    torch.set_float32_matmul_precision, so the process's real setting stays untouched)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu)
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    with caplog.at_level("INFO", logger="hrn.cli.build"):
        apply_matmul_precision(make_cfg(tmp_path, *overrides))
    assert calls == ([expected] if expected else [])
    (line,) = [r.getMessage() for r in caplog.records if "matmul precision" in r.getMessage()]
    assert line.startswith("float32 matmul precision: ")
    assert ("CUDA compute capability 8.6" in line) == (gpu is not None and not overrides)


@pytest.mark.slow
def test_compiled_run_compiles_two_graphs_whatever_the_epochs_and_partial_batches(tmp_path, compiled_graphs):
    """compile=true over 3 epochs, batch 20: train 48 = 20+20+8, val 24 = 20+4, test 36 = 20+16, so every
    stage ends with a partial batch. One evaluation graph (validation and test share it) and one training graph
    are compiled in the first epoch, and nothing after, not even for the test."""
    CompileCounts.graphs, CompileCounts.counts = compiled_graphs, []
    cfg = make_cfg(
        tmp_path,
        "compile=true",
        "dataset.batch_size=20",
        "trainer.max_epochs=3",
        "+callbacks.compiles._target_=tests.fixtures.CompileCounts",
    )
    metrics = train(cfg)
    print(f"compiled graphs after each epoch: {CompileCounts.counts}, after the test: {len(compiled_graphs)}")
    assert CompileCounts.counts == [2, 2, 2]
    assert compiled_graphs == [False, True]  # the sanity-check validation comes first
    assert metrics["test/num_samples"] == 36


def run_cli(*args: str, cwd: Path):
    return run_command("train", *args, cwd=cwd)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("relabel_ratio=1.0", "hrn: error: relabel_ratio=1.0 is outside [0, 1)"),
        ("relabel_ratio=-0.2", "hrn: error: relabel_ratio=-0.2 is outside [0, 1)"),
        (
            "model.trunk=vgg16",
            "hrn: error: unknown trunk 'vgg16'; valid trunks: resnet18, resnet34, resnet50",
        ),
        ("matmul_precision=fast", "hrn: error: matmul_precision='fast' is not one of auto, highest, high"),
        ("loss.formulation=fast", "hrn: error: formulation must be one of auto, subtree, dense, got 'fast'"),
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
def test_default_run_reaches_the_target_accuracy(default_run):
    """`make train`'s run: level 1 >= 0.95 and the leaf level >= 0.80 on the synthetic test split."""
    metrics = json.loads((default_run.folder / "metrics.json").read_text())
    print({k: round(v, 4) for k, v in metrics.items()})
    assert metrics["test/acc_l1"] >= 0.95
    assert metrics["test/acc_l3"] >= 0.80
    assert "level    classes  accuracy" in default_run.stdout
