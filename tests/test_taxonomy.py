"""Your own taxonomy: the README's example run verbatim (a tree with one root, so a level of one class), then
evaluated and exported; the loaders' worker count and the lone last training image."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from hrn import Hierarchy, load_checkpoint
from hrn.cli.config import CONF_DIR
from hrn.data import base
from hrn.deploy.formats import export
from hrn.evaluate import evaluate
from hrn.losses import CompositeLoss
from hrn.nets import HRN
from hrn.training import HRNModule

ROOT = Path(__file__).resolve().parent.parent


def readme_block(heading: str) -> str:
    """The first bash block after ``heading`` in the README, as written."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(heading) :]
    start = after.index("```bash\n") + len("```bash\n")
    return after[start : after.index("```\n", start)]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """Run the README's "Your own taxonomy" block verbatim with this environment's python first on PATH."""
    work = tmp_path_factory.mktemp("readme")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-e", "-c", readme_block("### Your own taxonomy")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (work / "stdout.txt").write_text(result.stdout)
    return work / "mydata"


@pytest.mark.slow
def test_the_readme_example_trains_and_predicts_as_written(example):
    out = (example.parent / "stdout.txt").read_text()
    assert "1              1    1.0000" in out  # the one-class root level: kept, and right by construction
    predictions = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [Path(p["path"]).name for p in predictions] == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    tree = Hierarchy.from_csv(example / "tree.csv")
    for p in predictions:
        path = [step["label"] for step in p["path_prediction"]]
        assert path[0] == "Animal" and len(path) == 3
        assert tree.parent_of(tree.index(path[2])) == tree.index(path[1])
        assert p["top_k"]["1"] == [{"label": "Animal", "prob": p["path_prediction"][0]["prob"]}]


@pytest.mark.slow
def test_a_single_root_checkpoint_evaluates_and_exports(example, tmp_path):
    ckpt = example / "run" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt).hierarchy.level_sizes == [1, 2, 3]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt_path={ckpt}", f"run_dir={tmp_path / 'eval'}"])
    metrics = evaluate(cfg)
    assert metrics["test/acc_l1"] == 1.0 and metrics["test/num_samples"] == 1
    assert (tmp_path / "eval" / "confusion_l1.png").is_file()
    for fmt, suffix in (("torchscript", "pt"), ("onnx", "onnx")):
        assert export(ckpt, fmt, tmp_path / f"m.{suffix}")["check"]["paths_equal"]


def test_a_one_class_level_is_trivially_right_in_training_and_evaluation():
    h = Hierarchy.from_edges([("Animal", "Bird"), ("Animal", "Fish"), ("Bird", "Sparrow"), ("Fish", "Cod")])
    module = HRNModule(HRN(h, trunk="resnet18", width=16, dim=8), CompositeLoss(h), h)
    images, targets = (
        torch.randn(4, 3, 32, 32),
        torch.tensor([h.index(n) for n in ("Sparrow", "Cod", "Bird", "Animal")]),
    )
    module.train_metrics["acc_l1"](torch.zeros(4, dtype=torch.long), module.ancestor_at_level[0, targets])
    assert module.train_metrics["acc_l1"].compute() == 1.0
    module.eval()
    with torch.no_grad():
        module.eval_metrics["test"].update(*_eval_inputs(module, images, targets))
    assert module.eval_metrics["test"].compute()["acc_l1"] == 1.0


def _eval_inputs(module, images, targets):
    out = module.net(images)
    marginals = module.probabilities.node_probabilities(out, "sigmoid")
    return out.level_probs, out.leaf_logits, marginals, targets


def test_loader_workers_never_exceed_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert base.usable_workers(4) == 2 and base.usable_workers(1) == 1 and base.usable_workers(0) == 0


def test_a_lone_last_training_image_is_left_out_but_never_in_evaluation(tmp_path):
    from hrn.data.synthetic import synthetic

    data = synthetic(batch_size=5, train_per_leaf=1, val_per_leaf=1, test_per_leaf=1)  # 12 % 5 = 2: kept
    assert [len(b.targets) for b in data.loader("train")] == [5, 5, 2]
    data = synthetic(batch_size=11, train_per_leaf=1, val_per_leaf=1, test_per_leaf=1)
    # 12 % 11 = 1: a batch of one image would fail BatchNorm in training; evaluation scores every image
    assert [len(b.targets) for b in data.loader("train")] == [11]
    assert [len(b.targets) for b in data.loader("test")] == [11, 1]
