"""Reliability: atomic checkpoints, the non-finite guard, resume after SIGKILL, determinism."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, TensorDataset

from hrn import HRN, CompositeLoss, Hierarchy
from hrn.checkpoints import CheckpointError, read_checkpoint
from hrn.cli.config import CONF_DIR
from hrn.losses import LossTerms
from hrn.train import train
from hrn.training import AtomicCheckpointIO, HRNModule, NonFiniteError
from hrn.training import module as module_under_test
from tests import fixtures
from tests.fixtures import TINY, run_command


@pytest.fixture
def tree() -> Hierarchy:
    return Hierarchy.from_edges(
        [("a", "b"), ("a", "c"), ("b", "d"), ("b", "e"), ("c", "f"), ("x", "y"), ("y", "z")]
    )


def test_atomic_checkpoint_io_never_leaves_a_half_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    good = path.read_bytes()

    def killed(*args, **kwargs):  # the process dies between writing the temporary file and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == good  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


class PoisonedLoss(CompositeLoss):
    """The composite loss, with one term replaced by NaN from a given call on."""

    def __init__(self, h, from_call: int, term: str) -> None:
        super().__init__(h)
        self.calls, self.from_call, self.term = 0, from_call, term

    def forward(self, output, targets):
        terms = super().forward(output, targets)
        self.calls += 1
        if self.calls < self.from_call:
            return terms
        poisoned = dict(terms.terms)
        poisoned[self.term] = poisoned[self.term] * float("nan")
        return LossTerms(sum(poisoned.values()), poisoned)


def _fit(h, loss, tmp_path, steps=5, precision=None):
    """A few training steps of a small HRN on random images; ``precision``: a Lightning precision plugin (the
    16-bit runs with a GradScaler). Returns the module and the trainer."""
    # small: float16 convolutions run slowly on a CPU, and no test here needs a bigger network
    net = HRN(h, trunk="resnet18", width=8, dim=8)
    module = HRNModule(net, loss, h, functools.partial(torch.optim.SGD, lr=0.01))
    data = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.tensor([5, 6, 7, 8] * 2)), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
        plugins=[AtomicCheckpointIO(), *([precision] if precision else [])],
    )
    trainer.fit(module, data)
    return module, trainer


def test_nan_loss_stops_with_step_and_term_after_saving_the_last_good_state(tree, tmp_path):
    with pytest.raises(NonFiniteError, match=r"^step 2: the loss term 'leaf_ce' is not finite") as e:
        _fit(tree, PoisonedLoss(tree, from_call=3, term="leaf_ce"), tmp_path)
    assert "\n" not in str(e.value)
    saved = tmp_path / "checkpoints" / "last-good-step2.ckpt"  # beside the run's other checkpoints
    assert saved.is_file() and str(saved) in str(e.value)
    state = torch.load(saved, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


class InfGradLoss(CompositeLoss):
    """A finite loss value whose gradient is NaN (sqrt at 0), from the second call on."""

    def __init__(self, h) -> None:
        super().__init__(h)
        self.calls = 0

    def forward(self, output, targets):
        terms = super().forward(output, targets)
        self.calls += 1
        if self.calls >= 2:
            bad = (output.leaf_logits * 0).sqrt().sum()  # value 0, gradient NaN
            return LossTerms(terms.total + bad, terms.terms)
        return terms


def test_non_finite_gradient_stops_before_the_update(tree, tmp_path):
    with pytest.raises(NonFiniteError, match=r"^step 1: a gradient is not finite"):
        _fit(tree, InfGradLoss(tree), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last-good-step1.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_resume_from_truncated_or_foreign_checkpoint_is_one_line(tmp_path):
    cut = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {}, "hrn": {}}, cut)
    cut.write_bytes(cut.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="cannot read the checkpoint .* truncated"):
        read_checkpoint(cut)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={tmp_path}", *TINY, f"ckpt_path={cut}"])
    with pytest.raises(CheckpointError, match=f"ckpt_path={cut}: cannot read"):
        train(cfg)


# ---------------------------------------------------------------- determinism and resume

RUN = [
    *TINY,
    "dataset.train_per_leaf=16",  # 12 steps an epoch: time enough to be killed 0.5 s into the second
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "seed=7",
    "relabel_ratio=0.5",
    "relabel.order=random",
]


def _train_killable(run_dir: Path, *extra: str) -> subprocess.Popen:
    """The run in a process of its own: the one thing a test cannot do in-process is SIGKILL it."""
    return subprocess.Popen(
        [sys.executable, "-m", "hrn.train", *RUN, f"hydra.run.dir={run_dir}", *extra],
        cwd=run_dir.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _train(run_dir: Path, *extra: str):
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_command("train", *RUN, f"hydra.run.dir={run_dir}", *extra, cwd=run_dir.parent)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> Path:
    """The deterministic run, trained once without interruption: what a second run and a killed-and-resumed run
    must equal bit for bit."""
    run = tmp_path_factory.mktemp("unbroken") / "run"
    result = _train(run)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_unbroken_run(unbroken, tmp_path):
    """A second deterministic run, in a process of its own, is killed in its second epoch and resumed from its last
    checkpoint: its metrics equal the unbroken run's bit for bit. So two runs of the same settings agree exactly
    (the first epoch of each, started apart) and a resume loses nothing (the second)."""
    broken = tmp_path / "broken"
    proc = _train_killable(broken)
    last = broken / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    assert proc.poll() is None, "the run ended before it could be killed mid-epoch"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (broken / "metrics.json").exists()

    resumed = _train(broken, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert list((broken / "csv").glob("metrics-before-resume-*.csv")), "the logs before the kill were lost"
    a, b = _metrics(unbroken), _metrics(broken)
    print("unbroken:", a)
    print("resumed: ", b)
    assert a == b


@pytest.mark.slow
def test_resume_with_other_training_labels_or_without_a_checkpoint_is_one_line(unbroken, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(unbroken, run)
    other = _train(run, "ckpt_path=last", "seed=8", "trainer.max_epochs=4")
    assert other.returncode == 2
    assert "trained on other training labels" in other.stderr.strip().splitlines()[-1]
    empty = tmp_path / "empty"
    none = _train(empty, "ckpt_path=last")
    assert none.returncode == 2 and "Traceback" not in none.stderr
    (line,) = [x for x in none.stderr.splitlines() if x.startswith("hrn: error:")]
    assert "ckpt_path=last" in line and "no last" in line, line
    assert not (empty / "metrics.json").exists()
    root = fixtures.write_folder(tmp_path / "folder")
    foreign = run_command(
        "train", f"ckpt_path={unbroken / 'checkpoints' / 'last.ckpt'}", "dataset=folder", f"dataset.root={root}",
        "dataset.num_workers=0", "model.trunk=resnet18", "model.pretrained=false",
        f"hydra.run.dir={tmp_path / 'foreign'}", cwd=tmp_path,
    )  # fmt: skip
    assert foreign.returncode == 2, foreign.stderr[-2000:]
    (line,) = [x for x in foreign.stderr.splitlines() if x.startswith("hrn: error:")]
    assert "trained on another tree (levels [3, 6, 12])" in line and "levels [2, 3, 5]" in line, line


class ScaledLoss(CompositeLoss):
    """The composite loss times ``factor`` on the calls in ``calls`` (1-based), NaN from ``nan_from`` on."""

    def __init__(self, h, calls=(), factor: float = 1e30, nan_from: int | None = None) -> None:
        super().__init__(h)
        self.n, self.calls, self.factor, self.nan_from = 0, set(calls), factor, nan_from

    def forward(self, output, targets):
        terms = super().forward(output, targets)
        self.n += 1
        if self.nan_from is not None and self.n >= self.nan_from:
            return LossTerms(terms.total * float("nan"), terms.terms)
        if self.n in self.calls:
            return LossTerms(terms.total * self.factor, terms.terms)
        return terms


def _fit_scaled(h, loss, tmp_path, steps):
    """A run under 16-bit mixed precision with a real GradScaler, on the CPU (Lightning gives a CPU run none)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    module, trainer = _fit(h, loss, tmp_path, steps, MixedPrecision("16-mixed", "cpu", scaler=scaler))
    return module, scaler, trainer


def test_an_overflowing_step_under_a_grad_scaler_is_skipped_not_fatal(tree, tmp_path):
    """Steps 2 and 3 overflow float16 (the loss times 1e30): the scaler skips them and halves its scale twice;
    the run goes on to its last step with finite weights, where the fp32 guard would have stopped it."""
    module, scaler, trainer = _fit_scaled(tree, ScaledLoss(tree, calls=(2, 3)), tmp_path, steps=6)
    assert trainer.global_step == 6 and scaler.get_scale() <= 2.0**14  # halved at least for the two
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_a_loss_that_stays_nan_under_a_grad_scaler_stops_with_the_step(tree, tmp_path, monkeypatch):
    # the guard's patience and read interval shrunk from 10 and 10 (float16 steps are slow on a CPU); the rule
    # is the same: stop once the streak reaches the patience, read within one interval of it
    patience, every = 4, 3
    monkeypatch.setattr(module_under_test, "NONFINITE_PATIENCE", patience)
    monkeypatch.setattr(module_under_test, "SCALER_CHECK_EVERY", every)
    with pytest.raises(
        NonFiniteError, match=rf"^step \d+: the loss has not been finite for [{patience}-9]\d* steps in a row"
    ) as e:
        _fit_scaled(tree, ScaledLoss(tree, nan_from=3), tmp_path, steps=40)
    step = int(str(e.value).split()[1].rstrip(":"))
    first = 2  # the third call's step (0-based): the streak reaches the patience at first + patience - 1
    assert first + patience - 1 <= step <= first + patience + every  # not before, within one interval after
    state = torch.load(tmp_path / "checkpoints" / f"last-good-step{step}.ckpt", weights_only=True)[
        "state_dict"
    ]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())  # skipped steps
