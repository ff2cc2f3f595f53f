"""The logger configs (csv, tensorboard, mlflow, wandb): they compose alone and together, write under the run
directory, and a missing library is one line before any work."""

import sys

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from hrn.cli.build import MissingPackageError, build_loggers
from hrn.train import train
from tests.fixtures import make_cfg, run_command

ONE_EPOCH = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


def test_every_logger_config_composes_under_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(tmp_path, "logger=[csv,tensorboard,mlflow,wandb]")
    assert set(cfg.logger) == {"csv", "tensorboard", "mlflow", "wandb"}
    assert cfg.logger.tensorboard.save_dir == str(tmp_path)
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"  # a local store inside the run
    assert cfg.logger.wandb.save_dir == str(tmp_path)
    assert cfg.logger.wandb.mode == "offline"  # no network or login needed by default


def test_wandb_and_mlflow_follow_their_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    cfg = make_cfg(tmp_path, "logger=[mlflow,wandb]")
    assert cfg.logger.wandb.mode == "disabled"
    assert cfg.logger.mlflow.tracking_uri == "http://127.0.0.1:5000"


def test_csv_and_tensorboard_together(tmp_path):
    loggers = build_loggers(make_cfg(tmp_path, "logger=[csv,tensorboard]"))
    assert sorted(type(lg).__name__ for lg in loggers) == ["CSVLogger", "TensorBoardLogger"]
    assert all(isinstance(lg, CSVLogger | TensorBoardLogger) for lg in loggers)


def test_no_logger(tmp_path):
    assert build_loggers(make_cfg(tmp_path, "~logger")) == []


@pytest.mark.parametrize(
    ("logger", "modules"),
    [("tensorboard", ["tensorboard", "tensorboardX"]), ("wandb", ["wandb"]), ("mlflow", ["mlflow"])],
)
def test_missing_logger_library_is_one_line(tmp_path, monkeypatch, logger, modules):
    for name in modules:  # None in sys.modules: Python's own way of saying "this module cannot be imported"
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingPackageError) as e:
        build_loggers(make_cfg(tmp_path, f"logger=[csv,{logger}]"))
    assert str(e.value).startswith(f"logger={logger} needs the '{logger}' package: pip install {logger}")
    assert "\n" not in str(e.value)


def test_cli_missing_logger_library_exits_2_before_training(tmp_path, monkeypatch):
    # the CLI with wandb made unimportable, whether or not it is installed here
    monkeypatch.setitem(sys.modules, "wandb", None)
    result = run_command("train", "logger=wandb", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("hrn: error: logger=wandb needs the 'wandb' package: pip install wandb")
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_tensorboard_writes_the_run_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(make_cfg(tmp_path, "logger=[csv,tensorboard]", *ONE_EPOCH))
    events = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    tags = set()
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"val/loss", "test/acc_l1", "test/acc_l3"} <= tags
    assert (tmp_path / "csv" / "metrics.csv").is_file()  # the CSV logger beside it
