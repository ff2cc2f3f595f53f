"""``python -m hrn.shard``: a dataset as LitData shards, read back by litdata's own StreamingDataset with the split
sizes ``hrn.inspect`` reports and the pixels, labels and ids of the dataset itself."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from litdata import StreamingDataset
from omegaconf import OmegaConf

from hrn.cli.config import CONF_DIR
from hrn.data.base import DataError
from hrn.data.shards import MANIFEST, SPLITS, read_manifest, write_shards
from hrn.tree import Hierarchy
from tests.fixtures import run_command

DATA = ["dataset.train_per_leaf=4", "dataset.val_per_leaf=2", "dataset.test_per_leaf=3"]


def dataset_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("shard", overrides=["out=unused", *DATA, *overrides]).dataset


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "synthetic"
    ran = run_command("shard", *DATA, f"out={out}")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert json.loads(ran.stdout.strip().splitlines()[-1])["splits"] == {"train": 48, "val": 24, "test": 36}
    return out


def test_streaming_dataset_reads_back_what_inspect_counts(shards, tmp_path):
    seen = json.loads(run_command("inspect", *DATA, cwd=tmp_path).stdout.strip().splitlines()[-1])
    data = instantiate(dataset_cfg())
    for split in SPLITS:
        stream = StreamingDataset(str(shards / split))
        assert len(stream) == seen[split]["num_samples"] == len(getattr(data, split)), split
        images = getattr(data, split)
        for i in (0, len(stream) - 1):  # litdata keeps the written order without shuffle
            item = stream[i]
            assert item["image"].dtype == np.uint8 and item["image"].shape == (3, 32, 32)
            assert np.array_equal(item["image"], images.source(i).numpy())
            assert (item["label"], item["index"]) == (images.targets[i], i)
        assert json.loads((shards / split / "hrn-ids.json").read_text()) == images.paths
    manifest = json.loads((shards / MANIFEST).read_text())
    assert Hierarchy.from_dict(manifest["tree"]).level_sizes == seen["tree"]["levels"] == [3, 6, 12]
    assert (
        manifest["transform"] == {"resize": 32, "crop": 32, "padding": 2} and manifest["val_is_test"] is False
    )
    assert manifest["dataset"]["_target_"] == "hrn.data.synthetic.synthetic"


def test_a_complete_set_is_left_alone_and_other_settings_are_refused(shards):
    before = {p: p.stat().st_mtime_ns for p in shards.rglob("*") if p.is_file()}
    again = run_command("shard", *DATA, f"out={shards}")
    assert (
        again.returncode == 0
        and {p: p.stat().st_mtime_ns for p in shards.rglob("*") if p.is_file()} == before
    )
    other = run_command("shard", *DATA, "dataset.test_per_leaf=4", f"out={shards}")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1] == (
        f"hrn: error: out={shards}: holds the shards of other dataset settings; give another folder or delete it"
    )


def test_an_interrupted_write_never_reads_as_complete(tmp_path):
    cfg = dataset_cfg()
    data, source = instantiate(cfg), OmegaConf.to_container(cfg, resolve=True)
    calls = []

    def dies_on_the_second_split(**kwargs):
        calls.append(kwargs["output_dir"])
        Path(kwargs["output_dir"]).mkdir(parents=True)
        (Path(kwargs["output_dir"]) / "chunk-0-0.bin").write_bytes(b"half")
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(data, tmp_path / "out", source, optimize=dies_on_the_second_split)
    assert read_manifest(tmp_path / "out") is None and not (tmp_path / "out" / "val").exists()
    manifest = write_shards(data, tmp_path / "out", source)  # the real writer, from the start
    assert manifest["splits"] == {"train": 48, "val": 24, "test": 36}
    assert len(StreamingDataset(str(tmp_path / "out" / "val"))) == 24
    assert not list((tmp_path / "out").glob(".*.partial"))


def test_a_broken_manifest_is_one_line(tmp_path):
    from hrn.data.shards import shards as read_shards

    (tmp_path / MANIFEST).write_text("{half")
    with pytest.raises(DataError, match=rf"{MANIFEST}: not a readable shard manifest"):
        read_manifest(tmp_path)
    with pytest.raises(
        DataError, match=rf"dataset.root={tmp_path}: {MANIFEST} is not a readable shard manifest"
    ):
        read_shards(str(tmp_path))


def test_a_shard_set_behind_a_url_reads_as_its_folder(shards, tmp_path):
    """dataset.root as a URL: the manifest, labels and ids come through litdata's own downloader for the scheme and
    the chunks through StreamingDataset, kept under dataset.cache_dir. ``local:`` is litdata's scheme for a folder
    served as if it were remote (no object store is reachable here): the same labels, ids and pixels as the folder,
    by index and streamed; a URL with no set behind it is the usual one line."""
    from hrn.data.shards import shards as read_shards

    folder = read_shards(str(shards), batch_size=8)
    url = read_shards(f"local:{shards}", batch_size=8, cache_dir=str(tmp_path / "chunks"))
    for split in SPLITS:
        a, b = getattr(folder, split), getattr(url, split)
        assert (a.targets, a.paths) == (b.targets, b.paths) and b.source.folder == f"local:{shards}/{split}"
        for i in (0, len(a) - 1):
            assert torch.equal(a[i].images, b[i].images)
    assert list((tmp_path / "chunks" / "train").rglob("*.bin")), (
        "litdata kept no chunk under dataset.cache_dir"
    )
    streamed = read_shards(f"local:{shards}", batch_size=8, stream=True, cache_dir=str(tmp_path / "chunks"))
    indices = [i for batch in streamed.loader("train") for i in batch.index.tolist()]
    assert sorted(indices) == list(range(48))  # 48 = 6 batches of 8: the whole split, each image once
    with pytest.raises(DataError, match=rf"dataset.root=local:{tmp_path}/none: no complete shard set"):
        read_shards(f"local:{tmp_path}/none")
    with pytest.raises(
        DataError, match=r"out=s3://bucket/set: shards are written to a local or shared folder"
    ):
        write_shards(folder, "s3://bucket/set", {})
    assert not Path("s3:").exists()


SAME_MODEL = [  # what conf/dataset/synthetic.yaml picks, given to the shards run by hand
    "model.trunk=resnet18", "model.pretrained=false", "model.stem=small", "model.stem_stride=2",
    "model.width=32", "model.dim=16", "optimizer.lr=0.02", "trainer.max_epochs=2",
    "callbacks.progress_bar.refresh_rate=0", "relabel_ratio=0.5", "seed=3",
]  # fmt: skip


def test_a_run_on_shards_equals_the_run_on_their_dataset(shards, tmp_path):
    """dataset=shards: the same images, labels, relabelling, order and crops as the synthetic dataset they were
    written from, so the same weights and the same test metrics, bit for bit."""
    from hrn.train import train

    runs = {}
    for name, data in (
        ("synthetic", [*DATA, "dataset.batch_size=16"]),
        ("shards", ["dataset=shards", f"dataset.root={shards}", "dataset.batch_size=16"]),
    ):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"run_dir={tmp_path / name}", *data, *SAME_MODEL])
        runs[name] = train(cfg)
    assert runs["shards"] == runs["synthetic"]  # exact float equality
    assert runs["shards"]["test/num_samples"] == 36


def test_a_dataset_that_validates_on_test_is_written_once_and_read_back_so(tmp_path):
    from hrn.data.shards import shards as read_shards

    cfg = dataset_cfg()
    data = instantiate(cfg)
    data.val = data.test  # as a file dataset with dataset.val_fraction=0
    manifest = write_shards(data, tmp_path / "out", OmegaConf.to_container(cfg, resolve=True))
    assert manifest["val_is_test"] and manifest["splits"]["val"] == 36
    assert not (tmp_path / "out" / "val").exists() and (tmp_path / "out" / "test").is_dir()
    again = read_shards(str(tmp_path / "out"))
    assert again.val is again.test and len(again.test) == 36


def test_a_streamed_run_killed_mid_epoch_resumes_where_it_stopped(shards, tmp_path):
    """dataset.stream=true: litdata's StreamingDataLoader shuffles and drops the tail; its place in the epoch goes
    into every checkpoint. A run SIGKILLed in the middle of its second epoch (at a step of its own choosing, in a
    process of its own), then resumed from its last checkpoint, ends with the metrics of an unbroken run, bit for
    bit: the loader went on from the sample it had reached, with the same crops, labels and order."""
    import subprocess
    import sys

    from tests import fixtures

    run = [
        "dataset=shards", f"dataset.root={shards}", "dataset.stream=true", "dataset.batch_size=8",
        *SAME_MODEL[:4], "model.width=16", "model.dim=8", "trainer.max_epochs=2", "trainer.deterministic=true",
        "relabel_ratio=0.5", "seed=3",
        "callbacks.progress_bar.refresh_rate=0", "callbacks.model_checkpoint.monitor=null",
        "+callbacks.model_checkpoint.every_n_train_steps=1",  # a checkpoint after every step: mid-epoch ones
    ]  # fmt: skip
    unbroken = run_command("train", *run, f"hydra.run.dir={tmp_path / 'unbroken'}", cwd=tmp_path)
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    steps = json.loads((tmp_path / "unbroken" / "metrics.json").read_text())
    broken = tmp_path / "broken"
    env = fixtures.child_env()
    # 48 images, batch 8: 6 steps an epoch, so step 9 is the second epoch's fourth
    killed = subprocess.run(
        [sys.executable, "-m", "hrn.train", *run, f"hydra.run.dir={broken}",
         "+callbacks.kill._target_=tests.fixtures.KillAt", "+callbacks.kill.step=9"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (broken / "metrics.json").exists()
    state = torch.load(broken / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    loader = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (state["epoch"], state["global_step"], loader["num_samples_yielded"]) == (1, 9, 24)  # mid-epoch
    resumed = run_command("train", *run, f"hydra.run.dir={broken}", "ckpt_path=last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((broken / "metrics.json").read_text()) == steps
