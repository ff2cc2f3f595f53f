"""Layer 4: one fast_dev_run training per dataset through the real Hydra config, and `python -m hrn.inspect`."""

import json
from pathlib import Path

import pytest
import torchvision
from hydra import compose, initialize_config_dir

from hrn.cli.build import build_data, build_module
from hrn.cli.config import CONF_DIR
from hrn.cli.errors import report_errors
from hrn.data.augment import default_padding
from hrn.train import train
from tests import fixtures
from tests.fixtures import run_command

WRITERS = {
    "cub": fixtures.write_cub,
    "aircraft": fixtures.write_aircraft,
    "cars": fixtures.write_cars_folders,
    "folder": fixtures.write_folder,
    "inat21": fixtures.write_inat21,
}
SMALL_MODEL = ["model.trunk=resnet18", "model.pretrained=false", "model.width=32", "model.dim=16"]


def overrides(name: str, root: Path) -> list[str]:
    return [
        f"dataset={name}",
        f"dataset.root={root}",
        "dataset.resize=20",
        "dataset.crop=16",
        "dataset.num_workers=0",
        "dataset.batch_size=8",
    ]


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("e2e")
    return {name: write(base / name) for name, write in WRITERS.items()}


def make_cfg(run_dir: Path, *args: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "train", overrides=[f"run_dir={run_dir}", "callbacks.progress_bar.refresh_rate=0", *args]
        )


@pytest.mark.parametrize("name", list(WRITERS))
def test_fast_dev_run_per_dataset(roots, tmp_path, name):
    cfg = make_cfg(
        tmp_path,
        *overrides(name, roots[name]),
        *SMALL_MODEL,
        "trainer.fast_dev_run=true",
        "relabel_ratio=0.5",
    )
    metrics = train(cfg)
    levels = {"cars": 2, "inat21": 7}.get(name, 3)
    assert {f"test/acc_l{lvl}" for lvl in range(1, levels + 1)} | {"test/acc_leaf_sigmoid"} <= set(metrics)
    assert (tmp_path / "metrics.json").is_file()


def test_real_datasets_default_to_the_paper_model(roots, tmp_path):
    cfg = make_cfg(tmp_path, *overrides("cub", roots["cub"]))
    assert cfg.model.trunk == "resnet50" and cfg.model.pretrained is True
    assert (cfg.dataset.resize, cfg.dataset.crop) == (20, 16)
    paper = make_cfg(tmp_path, "dataset=cub")
    assert (paper.dataset.resize, paper.dataset.crop, paper.dataset.padding) == (550, 448, None)
    assert default_padding(paper.dataset.crop) == 8  # padding=null: the paper's 8 px at 448


def test_offline_imagenet_weights_say_how_to_fix(roots, tmp_path, monkeypatch, capsys):
    def offline(self, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    cfg = make_cfg(tmp_path, *overrides("cub", roots["cub"]))
    with pytest.raises(SystemExit) as e:
        report_errors(lambda: build_module(cfg, build_data(cfg)))()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "cannot load ImageNet weights for resnet50" in err
    assert "model.weights=/path/to/resnet50.pth" in err and "model.pretrained=false" in err


def inspect(*args: str, cwd: Path) -> dict:
    result = run_command("inspect", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    # stdout is the one JSON document and nothing else (hrn.inspect | jq .), the logs go to stderr
    (line,) = result.stdout.strip().splitlines()
    assert not list(cwd.iterdir()), "hrn.inspect writes no run folder"
    return json.loads(line)


def test_inspect_cub_at_half_relabel(roots, tmp_path):
    out = inspect(
        *overrides("cub", roots["cub"]), "relabel_ratio=0.5", "dataset.val_fraction=0", cwd=tmp_path
    )
    print(json.dumps(out))
    assert out["dataset"] == "cub" and out["tree"]["levels"] == [13, 38, 200]
    # 3 training images per species: keep ceil(1.5) = 2, relabel 1 to its family
    assert out["train"] == {"num_samples": 600, "labelled_at_level": [0, 200, 400]}
    assert out["test"] == {"num_samples": 200, "labelled_at_level": [0, 0, 200]}
    assert out["val"] == out["test"] and out["val_is_test"] is True
    assert out["relabelled"] == 200 and out["degraded"] == 0


def test_inspect_inat21_with_four_of_its_ranks(roots, tmp_path):
    out = inspect(
        *overrides("inat21", roots["inat21"]), "dataset.ranks=[order,family,genus,species]",
        "dataset.variant=train_mini", "dataset.val_fraction=0", cwd=tmp_path,
    )  # fmt: skip
    assert out["dataset"] == "inat21_mini" and out["tree"]["levels"] == [3, 5, 5, 6]
    assert out["train"] == {"num_samples": 12, "labelled_at_level": [0, 0, 0, 12]}
    assert out["test"]["num_samples"] == 6


def test_inspect_folder_with_degrade(roots, tmp_path):
    out = inspect(
        *overrides("folder", roots["folder"]), "relabel_ratio=0.5", "degrade.scale=0.25", cwd=tmp_path
    )
    assert out["tree"]["levels"] == [2, 3, 5]
    # 2 training images per leaf: keep 1, relabel 1 (5 leaves); the two coarse rows stay as they are
    assert out["train"]["labelled_at_level"] == [1, 1 + 5, 5]
    assert out["relabelled"] == 5 and out["degraded"] == 5


def test_inspect_bad_root_is_one_line(tmp_path):
    result = run_command("inspect", "dataset=cub", f"dataset.root={tmp_path}/none", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("hrn: error: dataset.root=")
    assert "Traceback" not in result.stderr
