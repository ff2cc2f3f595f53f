"""Layer 4: the experiment configs compose, the per-ratio settings apply, and a Hydra multirun works."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hrn.cli.config import CONF_DIR, apply_ratio_settings
from tests.fixtures import TINY, run_command

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["run_dir=/tmp/unused", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = make_cfg(f"experiment={name}")
    assert cfg.model._target_ and cfg.loss._target_ and cfg.dataset._target_


@pytest.mark.parametrize("dataset", ["cub", "aircraft", "cars"])
def test_paper_configs_hold_the_paper_settings(dataset):
    cfg = make_cfg(f"experiment=paper_{dataset}", "relabel_ratio=0.5")
    assert cfg.dataset._target_ == f"hrn.data.{dataset}.{dataset}"
    assert (cfg.dataset.resize, cfg.dataset.crop, cfg.dataset.padding, cfg.dataset.batch_size) == (
        550,
        448,
        8,
        8,
    )
    assert cfg.dataset.val_fraction == 0  # the authors select on test, and the config says so
    assert cfg.model.trunk == "resnet50" and cfg.model.pretrained is True and cfg.model.width is None
    assert cfg.optimizer.lr == 0.002 and cfg.model.trunk_lr_scale == 0.1
    assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 5e-4
    assert cfg.scheduler._target_.endswith("CosineAnnealingLR")
    assert cfg.loss._target_ == "hrn.losses.CompositeLoss"
    same = apply_ratio_settings(cfg)
    assert same.optimizer.lr == 0.002  # nothing special at 0.5


@pytest.mark.parametrize("dataset", ["cub", "aircraft", "cars"])
def test_paper_special_case_at_ratio_0_9(dataset):
    cfg = apply_ratio_settings(make_cfg(f"experiment=paper_{dataset}", "relabel_ratio=0.9"))
    assert cfg.optimizer.lr == 1e-4 and cfg.model.trunk_lr_scale == 1.0  # one lr for every layer
    assert OmegaConf.to_container(cfg.scheduler) == {
        "_target_": "torch.optim.lr_scheduler.StepLR",
        "_partial_": True,
        "step_size": 60,
        "gamma": 0.1,
    }
    assert cfg.trainer.max_epochs == 100 and cfg.dataset.batch_size == 8


def test_study_sweeps_combine_with_a_paper_setting():
    cfg = make_cfg("experiment=[paper_cub,ablation_gsb]")
    assert cfg.hydra.sweeper.params["model.gsb"] == "true,false"
    assert cfg.dataset._target_ == "hrn.data.cub.cub"


def tiny_sweep(tmp_path: Path, ratios: str):
    """``hrn.train -m`` of two fast_dev_run jobs over ``relabel_ratio=ratios``, into ``tmp_path/sweep``."""
    sweep = tmp_path / "sweep"
    result = run_command(
        "train", "-m", "trainer.fast_dev_run=true", f"relabel_ratio={ratios}", *TINY, f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )  # fmt: skip
    return result, sweep


@pytest.mark.slow
def test_multirun_of_two_tiny_runs(tmp_path):
    result, sweep = tiny_sweep(tmp_path, "0,0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in runs] == ["0", "1"]
    for run in runs:
        assert "test/acc_l1" in json.loads((run / "metrics.json").read_text())
    assert "relabel_ratio=0.5" in (runs[1] / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize("loss", ["composite", "tree", "leaf_ce", "per_level_ce", "coarse_constraint"])
def test_each_loss_trains_through_the_real_config(tmp_path, loss):
    from hrn.train import train

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"run_dir={tmp_path}",
                *TINY,
                f"loss={loss}",
                "relabel_ratio=0.5",
                "trainer.fast_dev_run=true",
            ],
        )
    metrics = train(cfg)
    assert all(v == v for v in metrics.values())  # no NaN
    assert metrics["test/num_samples"] == 16  # fast_dev_run tests one batch of 16


@pytest.mark.slow
def test_a_failing_job_does_not_end_the_sweep_and_the_report_lists_it(tmp_path):
    """Job 0 is refused (relabel_ratio=1.5), job 1 runs; the sweep says which failed and exits 1. hrn.report then
    counts one finished and one rejected run, and a folder whose Hydra files are broken does not stop it."""
    result, sweep = tiny_sweep(tmp_path, "1.5,0.5")
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("hrn: error:")]
    assert errors[0].startswith("hrn: error: job 0 (") and "relabel_ratio=1.5 is outside [0, 1)" in errors[0]
    assert errors[1] == "hrn: error: 1 job(s) of the sweep failed:" and "Traceback" not in result.stderr
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert failed["kind"] == "rejected" and "relabel_ratio=1.5" in failed["overrides"]
    assert "test/acc_l1" in json.loads((sweep / "1" / "metrics.json").read_text())
    assert not (sweep / "1" / "failed.json").exists()

    broken = sweep / "9" / ".hydra"
    broken.mkdir(parents=True)
    (broken / "overrides.yaml").write_text("- relabel_ratio=abc\n- [unclosed\n")
    report = run_command("report", str(sweep), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    results = (tmp_path / "report" / "results.md").read_text()
    assert "3 runs" in results and "1 rejected" in results and "1 unreadable" in results
