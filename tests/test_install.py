"""Installing and launching: the SLURM launcher config, a submitit sweep on this machine, and the wheel installed
into a fresh virtual environment and run outside the checkout."""

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from hydra.utils import get_class

from hrn.cli.config import CONF_DIR
from tests.fixtures import LEVEL_KEYS, ROOT, TINY

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
TABLE_HEADER = "level    classes  accuracy"


def multirun_config(*overrides: str):
    """The train config as ``python -m hrn.train -m ...`` composes it, the ``hydra`` node included."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return loader.load_configuration("train", overrides=list(overrides), run_mode=RunMode.MULTIRUN)


def test_slurm_launcher_builds_on_the_plugin_config():
    cfg = multirun_config("hydra/launcher=slurm", "seed=0,1")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == SLURM_LAUNCHER
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"  # the plugin is installed and importable
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, 1)  # one GPU per run
    assert launcher.timeout_min > 0 and launcher.cpus_per_task > 0 and launcher.mem_gb > 0
    assert launcher.partition is None and launcher.max_num_timeout == 0
    assert (
        launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"
    )  # the job logs stay beside the runs
    # the plugin's own config, unchanged, and a command-line setting on top of ours
    assert multirun_config("hydra/launcher=submitit_slurm").hydra.launcher._target_ == SLURM_LAUNCHER
    tuned = multirun_config(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=60"
    )
    assert (tuned.hydra.launcher.partition, tuned.hydra.launcher.timeout_min) == ("gpu", 60)


@pytest.mark.slow
def test_two_job_sweep_through_submitit_local(tmp_path):
    """The submitit launcher as on SLURM, with the local executor: each run a separate job with its own outputs."""
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hrn.train",
            "-m",
            "hydra/launcher=submitit_local",
            "seed=0,1",
            "trainer.fast_dev_run=true",
            "trainer.enable_progress_bar=false",
            *TINY,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert LEVEL_KEYS <= set(json.loads((sweep / job / "metrics.json").read_text()))
        assert f"seed={job}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
    logs = [p.read_text() for p in (sweep / ".submitit").glob("*/*_log.out")]
    assert sum(TABLE_HEADER in log for log in logs) == 2  # each job printed its table in its own log


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_outside_the_checkout(tmp_path):
    # build from a copy of what the wheel is made of: no build/ or *.egg-info left in the checkout, and no stale
    # build/lib leaking into the wheel
    src = tmp_path / "src"
    for folder in ("hrn", "conf"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            src,
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path / "dist",
        ]
    )
    (wheel,) = (tmp_path / "dist").glob("hrn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "hrn/conf/train.yaml",
        "hrn/conf/hydra/launcher/slurm.yaml",
        "hrn/conf/logger/tensorboard.yaml",
    } <= names
    assert any(n.startswith("hrn/trees/") for n in names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # torch, Lightning, Hydra, ... are not reinstalled: a .pth line puts this environment's site-packages on the
    # new one's path, after its own. Python does not run the .pth files found there, so this environment's
    # editable hrn stays out of sight and `import hrn` can only find the wheel's.
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # no PYTHONPATH from the caller: a checkout on it would pass for an installed hrn, to pip and to Python
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
        env=env,
    )

    elsewhere = tmp_path / "elsewhere"  # a working directory with no hrn/ or conf/ in it
    elsewhere.mkdir()
    where = run([python, "-c", "import hrn; print(hrn.__file__)"], cwd=elsewhere, env=env).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where

    # it trains outside the checkout, from the shipped configs under a user's own config folder: a dataset built
    # on the shipped synthetic config
    (tmp_path / "myconf" / "dataset").mkdir(parents=True)
    (tmp_path / "myconf" / "dataset" / "mysynth.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - synthetic\n  - _self_\n"
        "dataset:\n  train_per_leaf: 4\n  val_per_leaf: 2\n  test_per_leaf: 3\n  batch_size: 12\n"
    )
    result = run(
        [
            python,
            "-m",
            "hrn.train",
            "--config-dir",
            tmp_path / "myconf",
            "dataset=mysynth",
            "trainer.fast_dev_run=true",
            "trainer.enable_progress_bar=false",
            "model.width=32",
            "model.dim=16",
            f"hydra.run.dir={tmp_path / 'mine'}",
        ],
        cwd=elsewhere,
        env=env,
    )
    assert TABLE_HEADER in result.stdout
    metrics = json.loads((tmp_path / "mine" / "metrics.json").read_text())
    assert LEVEL_KEYS <= set(metrics)
    assert metrics["test/num_samples"] == 12  # fast_dev_run tests one batch: the user's batch_size

    # the packaged launcher config finds the plugin's (registered in Hydra's config store, not in our folder)
    launcher = run(
        [python, "-m", "hrn.train", "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher"],
        cwd=elsewhere,
        env=env,
    ).stdout
    assert f"_target_: {SLURM_LAUNCHER}" in launcher and "gpus_per_node: 1" in launcher
