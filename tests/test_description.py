"""A model's self-description (hrn.description.ModelDescription): written and read back unchanged, and anything
malformed in a checkpoint or a shared folder's config.json is one line naming the file and what is wrong."""

import json

import pytest
import torch
from safetensors.torch import save as save_safetensors

from hrn import Hierarchy, ModelDescription, load_checkpoint
from hrn.description import CHECKPOINT_KEY, CheckpointError
from hrn.share import CONFIG, WEIGHTS, share_config

TREE = {"levels": [["a", "b"], ["c", "d", "e"]], "parent": [-1, -1, 0, 0, 1]}
GOOD = {
    "tree": TREE,
    "net": {"_target_": "hrn.nets.HRN", "trunk": "resnet18", "width": 8, "dim": 8},
    "loss": {"_target_": "hrn.losses.CompositeLoss"},
    "tree_scores": "sigmoid",
    "data": {"name": "synthetic", "resize": 40, "crop": 32},
    "dataset": {"_target_": "hrn.data.synthetic.SyntheticData", "root": "/here"},
    "calibration": {"tree_temperature": [1.5, 2.0], "leaf_temperature": 0.8},
    "hrn_version": "0.3.0",
}


def test_a_description_round_trips_through_plain_data_and_json():
    d = ModelDescription.from_dict(GOOD)
    assert d.tree == Hierarchy.from_edges([("a", "c"), ("a", "d"), ("b", "e")])
    assert (d.resize, d.crop, d.tree_scores, d.version) == (40, 32, "sigmoid", "0.3.0")
    assert ModelDescription.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    assert d.replace(calibration=None).calibration is None and d.calibration is not None
    shared = share_config(
        d
    )  # the share folder's config.json: the same description, less the machine's folders
    assert shared["model_type"] == "hrn" and shared["architectures"] == ["HRN"]
    assert "root" not in shared["dataset"] and ModelDescription.from_dict(shared).tree == d.tree


def test_a_description_of_hrn_0_2_reads():
    """0.2 wrote no version and, before it, no tree_scores: both read as unknown (the loss then says it)."""
    old = {k: v for k, v in GOOD.items() if k not in ("hrn_version", "tree_scores", "calibration")}
    d = ModelDescription.from_dict(old)
    assert d.version is None and d.tree_scores is None and d.calibration is None


def broken(change: dict | None = None, drop: str | None = None) -> dict:
    d = json.loads(json.dumps(GOOD))
    d.update(change or {})
    d.pop(drop, None)
    return d


MALFORMED = [
    (broken(drop="tree"), "no 'tree'"),
    ([1, 2], "expected a mapping, got list"),
    (broken({"tree": "a,b"}), "'tree' must be a mapping"),
    (broken({"tree": {"levels": [["a"], []], "parent": [-1]}}), "tree.levels must be a non-empty list"),
    (broken({"tree": {"levels": [["a", 3]], "parent": [-1, -1]}}), "node names"),
    (broken({"tree": {"levels": TREE["levels"], "parent": [-1, -1, 0]}}), "one parent index per node (5)"),
    (broken({"tree": {"levels": TREE["levels"], "parent": [-1, -1, 0, 0, 7]}}), "tree.parent[4] = 7"),
    (broken({"tree": {"levels": TREE["levels"], "parent": [-1, -1, 0, 0, "b"]}}), "tree.parent[4] = 'b'"),
    (broken({"tree": {"levels": [["a", "b"], ["c"]], "parent": [2, -1, 0]}}), "has a cycle"),
    (broken({"net": ["HRN"]}), "'net' must be a mapping"),
    (broken({"net": {"trunk": "resnet18"}}), "net._target_ must name"),
    (broken({"loss": {"weight": 1}}), "loss._target_ must name"),
    (broken({"tree_scores": "softmax"}), "tree_scores must be one of sigmoid, logits, leaf"),
    (broken({"data": {"resize": "big"}}), "data.resize must be a positive whole number"),
    (broken({"data": {"crop": 0}}), "data.crop must be a positive whole number"),
    (broken({"calibration": {"tree_temperature": [1.0]}}), "must list 2 temperatures"),
    (broken({"calibration": {"tree_temperature": [1.0, 0.0]}}), "positive finite number, got 0.0"),
    (broken({"calibration": {"leaf_temperature": "hot"}}), "calibration.leaf_temperature"),
    (broken({"hrn_version": 3}), "hrn_version must be a string"),
    (broken({"net": {"_target_": "os.system"}}), "network 'os.system' is not one of the package's"),
    (broken({"net": {"_target_": "hrn.nets.HRN", "depth": 3}}), "has no setting(s) depth"),
    (broken({"net": {"_target_": "hrn.nets.HRN", "trunk": "resnet18", "width": "wide"}}), "cannot be built"),
]


@pytest.mark.parametrize(("description", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_a_malformed_checkpoint_description_is_one_line(tmp_path, description, message):
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {}, CHECKPOINT_KEY: description}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"ckpt_path={path}: ") and message in text


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({k: v for k, v in broken(drop="tree").items()} | {"model_type": "hrn"}, "no 'tree'"),
        (
            broken({"tree": {"levels": TREE["levels"], "parent": [-1, -1, 0, 9, 1]}}) | {"model_type": "hrn"},
            "tree.parent[3] = 9",
        ),
        (broken({"data": []}) | {"model_type": "hrn"}, "'data' must be a mapping, got list"),
        (broken() | {"model_type": "bert"}, "does not describe an hrn model"),
        ("{not json", "is not JSON"),
    ],
)
def test_a_malformed_config_json_of_a_shared_folder_is_one_line(tmp_path, config, message):
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / CONFIG).write_text(config if isinstance(config, str) else json.dumps(config))
    (folder / WEIGHTS).write_bytes(save_safetensors({"x": torch.zeros(1)}))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(folder)
    assert (
        "\n" not in str(e.value)
        and str(e.value).startswith(f"ckpt_path={folder}: ")
        and message in str(e.value)
    )
