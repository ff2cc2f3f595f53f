"""Kind to mistakes: each command's --help, and every command-line slip answered in one line with exit status 2."""

import pytest

from hrn.cli.entry import CommandLineError, check_command_line, command_help
from tests.fixtures import run_command

TRAIN_DOC = "``python -m hrn.train [overrides]``: train, test with the best checkpoint."


@pytest.mark.parametrize(
    ("command", "config", "args", "expected"),
    [
        (
            "train",
            "train",
            ["relabel_ratoi=0.5"],
            r"^relabel_ratoi: not a key of hrn.train \(did you mean relabel_ratio",
        ),
        (
            "train",
            "train",
            ["trainer.max_epoch=2"],
            r"^trainer.max_epoch: .*did you mean trainer.max_epochs.*\+trainer",
        ),
        (
            "train",
            "train",
            ["+relabel_ratoi=0.5"],
            r"^\+relabel_ratoi: hrn.train has no key relabel_ratoi \(did you mean",
        ),
        (
            "train",
            "train",
            ["dataset=cubb"],
            r"^dataset=cubb: no such option; dataset is one of aircraft, .*cub, .*did you mean cub",
        ),
        (
            "train",
            "train",
            ["dataset=checkpoint"],
            r"^dataset=checkpoint: the dataset a checkpoint was trained on, for",
        ),
        ("train", "train", ["+seed=3"], r"^\+seed: seed is a key already; set it without the \+"),
        ("train", "train", ["seed=0,1"], r"^seed=0,1: several values sweep only with -m"),
        ("train", "train", ["dataset=folder"], r"^dataset.root is required; usage: python -m hrn.train"),
        (
            "predict",
            "predict",
            ["ckpt_path=x.ckpt"],
            r"^images is required; usage: python -m hrn.predict ckpt_path=PATH",
        ),
        ("evaluate", "evaluate", [], r"^ckpt_path is required; usage: python -m hrn.evaluate ckpt_path=PATH"),
        ("evaluate", "evaluate", ["ckpt_path=x", "model=hrn"], r"^model: not a config group of hrn.evaluate"),
        (
            "predict",
            "predict",
            ["ckpt_path=x", "images=a.jpg", "top_kk=3"],
            r"^top_kk: not a key .*did you mean top_k",
        ),
    ],
)
def test_each_slip_is_one_line(command, config, args, expected):
    with pytest.raises(CommandLineError, match=expected) as info:
        check_command_line(command, config, args, TRAIN_DOC)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "args",
    [
        ["relabel_ratio=0.5", "trainer.max_epochs=2"],
        ["+trainer.limit_predict_batches=1"],  # Lightning's other Trainer arguments
        ["-m", "seed=0,1", "relabel_ratio=0,0.5"],  # a sweep
        ["dataset=folder", "dataset.root=/data", "model=chmcnn", "loss=tree", "~logger"],
        ["hydra/launcher=slurm", "hydra.run.dir=x", "--cfg", "hydra", "-p", "hydra.launcher"],
        ["experiment=[paper_cub,ablation_gsb]", "dataset.root=/data"],
    ],
)
def test_what_is_right_passes(args):
    check_command_line("train", "train", args, TRAIN_DOC)


def test_help_lists_the_commands_own_keys_and_groups():
    train = command_help("train", "train", TRAIN_DOC)
    assert train.startswith("usage: python -m hrn.train") and "Train, test with the best checkpoint." in train
    assert "relabel_ratio     0.0" in train and "dataset           synthetic" in train
    assert (
        "checkpoint" not in train.split("dataset           synthetic")[1].splitlines()[0]
    )  # not offered here
    predict = command_help("predict", "predict", "``python -m hrn.predict ...``: classify images.")
    assert "usage: python -m hrn.predict ckpt_path=PATH images=LIST|FOLDER|GLOB" in predict
    assert "images" in predict and "(required)" in predict and "top_k" in predict
    assert "groups" not in predict and "dataset" not in predict  # no training groups
    evaluate = command_help("evaluate", "evaluate", "``python -m hrn.evaluate ...``: evaluate.")
    assert "checkpoint" in evaluate and "split" in evaluate


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        (
            "train",
            ["relabel_ratoi=0.5"],
            "hrn: error: relabel_ratoi: not a key of hrn.train (did you mean relabel_ratio",
        ),
        ("predict", [], "hrn: error: ckpt_path is required; usage: python -m hrn.predict"),
        (
            "train",
            ["model=chmcnn", "loss.coarse_descendants=typo", "trainer.fast_dev_run=true"],
            "hrn: error: loss.coarse_descendants='typo': use one of negative, ignore",
        ),
    ],
)
def test_the_commands_exit_2_with_one_line(tmp_path, command, args, expected):
    result = run_command(command, *args, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("hrn: error:")]
    assert len(errors) == 1 and errors[0].startswith(expected), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "inspect", "export", "gradcam"])
def test_help_of_each_command(command):
    result = run_command(command, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"usage: python -m hrn.{command}")
    assert "keys (key=value):" in result.stdout
