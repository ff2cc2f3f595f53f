"""Safe to share: checkpoints are read with torch's safe unpickler and can never run code, checkpoints of the
earlier format load only with trust_checkpoint=true, and the weights-only share folder (safetensors + config.json)
stands for its checkpoint everywhere."""

import json
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from hrn import load_checkpoint
from hrn.checkpoints import CheckpointError, read_checkpoint
from hrn.cli.config import CONF_DIR
from hrn.deploy.formats import export, run_exported
from hrn.evaluate import evaluate
from hrn.predict import predict
from hrn.share import CONFIG, WEIGHTS
from tests import fixtures
from tests.fixtures import TINY, run_command


class WritesAFile:
    """A pickle payload: unpickled by the full unpickler, it calls os.system and creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tiny_run) -> Path:
    return tiny_run.last


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    return fixtures.synthetic_image_files(tmp_path_factory.mktemp("images"), [0, 5, 11], seed=4)


def poisoned(trained: Path, folder: Path) -> tuple[Path, Path]:
    """The trained checkpoint with a payload beside its description; the file the payload would create."""
    ckpt = torch.load(trained, weights_only=True)
    marker = folder / "pwned"
    ckpt["hrn"]["note"] = WritesAFile(marker)
    torch.save(ckpt, folder / "evil.ckpt")
    return folder / "evil.ckpt", marker


def test_our_checkpoints_hold_only_what_the_safe_unpickler_reads(trained):
    ckpt = torch.load(trained, weights_only=True)  # raises on anything else
    assert isinstance(ckpt["hrn_rng"]["numpy"][1], torch.Tensor) and "state_dict" in ckpt


def test_a_payload_is_refused_in_one_line_and_never_runs(trained, tmp_path):
    evil, marker = poisoned(trained, tmp_path)
    for load in (read_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match=r"evil.ckpt: refused: loading it would call posix.system"):
            load(evil)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "gradcam", "train"])
def test_every_loading_command_and_a_resume_refuse_a_payload(trained, image_files, tmp_path, command):
    evil, marker = poisoned(trained, tmp_path)
    args = {
        "predict": [f"ckpt_path={evil}", f"images={image_files[0]}"],
        "evaluate": [f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'eval'}"],
        "export": [f"ckpt_path={evil}", "format=torchscript", f"out={tmp_path / 'm.pt'}"],
        "gradcam": [f"ckpt_path={evil}", f"images={image_files[0]}", f"out={tmp_path / 'cams.png'}"],
        "train": [f"ckpt_path={evil}", *TINY, f"hydra.run.dir={tmp_path / 'resume'}"],
    }[command]
    result = run_command(command, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("hrn: error:")]
    assert "refused: loading it would call posix.system" in line and "trust_checkpoint=true" in line
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_a_checkpoint_of_the_earlier_format_needs_trust(trained, tmp_path):
    """hrn before 0.2 kept NumPy's random state as an array, which the safe unpickler refuses."""
    import numpy as np

    ckpt = torch.load(trained, weights_only=True)
    ckpt["hrn_rng"]["numpy"] = np.random.get_state()
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match=r"refused: loading it would call numpy.*trust_checkpoint=true"):
        load_checkpoint(tmp_path / "old.ckpt")
    assert type(load_checkpoint(tmp_path / "old.ckpt", trust=True).net).__name__ == "HRN"


def test_the_share_folder_stands_for_its_checkpoint(trained, image_files, tmp_path):
    summary = export(trained, "safetensors", tmp_path / "shared")
    folder = tmp_path / "shared"
    assert summary["files"] == [CONFIG, WEIGHTS] and summary["check"]["paths_equal"]
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG, WEIGHTS]
    config = json.loads((folder / CONFIG).read_text())
    assert config["model_type"] == "hrn" and config["architectures"] == ["HRN"] and config["tree"]["levels"]
    assert config["transform"]["crop"] == 32 and "root" not in config["dataset"]
    images = [str(p) for p in image_files]
    by_file = list(predict(str(trained), images))
    by_folder = list(predict(str(folder), images))
    assert [r["path_prediction"] for r in by_folder] == [r["path_prediction"] for r in by_file]
    assert [r["top_k"] for r in by_folder] == [r["top_k"] for r in by_file]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        metrics = [
            evaluate(compose("evaluate", overrides=[f"ckpt_path={c}", f"run_dir={tmp_path / name}"]))
            for name, c in (("from_ckpt", trained), ("from_folder", folder))
        ]
    assert metrics[0] == pytest.approx(metrics[1], abs=1e-6)
    onnx = export(folder, "torchscript", tmp_path / "from_folder.pt")  # a folder exports like a checkpoint
    assert onnx["check"]["paths_equal"] and run_exported(
        tmp_path / "from_folder.pt", torch.zeros(1, 3, 32, 32)
    )


def test_a_folder_that_is_not_one_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="a folder without config.json or model.safetensors"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CONFIG).write_text('{"model_type": "bert"}')
    (tmp_path / "bad" / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="does not describe an hrn model"):
        load_checkpoint(tmp_path / "bad")


@pytest.mark.parametrize("content", [b"just some text\n", bytes(range(256)) * 8], ids=["text", "random"])
def test_a_file_that_is_no_checkpoint_says_so_and_never_points_at_trust(tmp_path, image_files, content):
    """No zip or pickle header: the answer is what the file is not, not the unsafe flag (which would not help)."""
    bogus = tmp_path / "model.ckpt"
    bogus.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(bogus)
    assert "not a PyTorch checkpoint" in str(caught.value) and "trust_checkpoint" not in str(caught.value)
    result = run_command("predict", f"ckpt_path={bogus}", f"images={image_files[0]}", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"hrn: error: ckpt_path={bogus}: not a PyTorch checkpoint (a file written by torch.save, as hrn.train "
        "writes them)"
    ], result.stderr
