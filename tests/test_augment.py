"""Layer 1: the transforms split into a per-image window read and a batch normalisation, against torchvision's
per-image reference; and the on-disk image cache."""

import os
import pickle
import random
import shutil
from collections import Counter
from pathlib import Path

import filelock
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from hrn.data.augment import (
    Augment,
    default_padding,
    eval_transform,
    normalize,
    reference_train_transform,
    resize_image,
    window,
)
from hrn.data.base import DataError, EpochShuffleSampler, TensorImages
from hrn.data.cache import CachedFiles
from hrn.data.files import DecodedFiles
from hrn.data.folder import folder
from hrn.errors import HRNError
from tests import fixtures


def test_default_padding_scales_the_papers_8_px_at_448():
    assert [default_padding(c) for c in (448, 224, 112, 32, 16)] == [8, 4, 2, 1, 1]


def test_sizes_are_checked():
    with pytest.raises(HRNError, match="need 1 <= crop <= resize"):
        Augment(resize=32, crop=40, padding=2)


def test_params_depend_on_seed_epoch_index_only_and_cover_the_range():
    a = Augment(resize=20, crop=16, padding=2)  # offsets 0..8 in the 24 px padded image
    assert a.params(0, 1, 5) == a.params(0, 1, 5)
    draws = [a.params(3, e, i) for e in range(4) for i in range(250)]
    assert len({a.params(s, 0, 0) for s in range(20)}) > 1  # the seed matters
    assert len({a.params(0, e, 0) for e in range(20)}) > 1  # so does the epoch
    assert {t for t, _, _ in draws} == set(range(9)) and {left for _, left, _ in draws} == set(range(9))
    assert 0.4 < sum(f for _, _, f in draws) / len(draws) < 0.6
    assert Augment(20, 16, 2, flip=False).params(0, 0, 7)[2] == 0
    assert a.centre() == (
        2 + 2,
        2 + 2,
        0,
    )  # CenterCrop's offset (20 - 16) / 2, shifted into padded coordinates


@pytest.mark.parametrize("channels", [3, 1])
def test_window_equals_pad_crop_flip(channels):
    g = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    for resize, crop, padding in [(20, 16, 2), (20, 20, 3), (9, 4, 0), (32, 32, 1)]:
        a = Augment(resize, crop, padding)
        image = torch.randint(0, 256, (channels, resize, resize), generator=g, dtype=torch.uint8)
        for _ in range(40):
            span = resize + 2 * padding - crop
            box = (rng.randint(0, span), rng.randint(0, span), rng.randint(0, 1))
            expected = TF.crop(TF.pad(image.expand(3, -1, -1), [padding]), box[0], box[1], crop, crop)
            if box[2]:
                expected = TF.horizontal_flip(expected)
            out = torch.full(
                (3, crop, crop), 77, dtype=torch.uint8
            )  # garbage: the window must overwrite it all
            window(image.expand(3, -1, -1), box, a, out.numpy())
            assert torch.equal(out, expected), (resize, crop, padding, box)


@pytest.fixture
def root(tmp_path) -> Path:
    return fixtures.write_folder(tmp_path / "folder")


@pytest.mark.parametrize("cache", [False, True])
def test_loader_equals_torchvisions_per_image_transform_for_the_same_seed(root, cache, tmp_path):
    """The PIL path and the cached path both give, after the batch normalisation, what torchvision's per-image
    ops give on the decoded file with the same crop and flip: the same uint8 pixels (the float ops match too,
    so in practice the numbers are equal; 1e-6 is far below one uint8 step, 2/255)."""
    data = folder(str(root), resize=20, crop=16, padding=3, cache=cache, cache_dir=str(tmp_path / "c"))
    a = data.augment
    data.seed = 5
    loader = data.loader("train")
    loader.sampler.set_epoch(2)
    batch = next(iter(loader))
    images = normalize(batch.images)
    assert images.dtype == torch.float32 and images.shape[1:] == (3, 16, 16)
    for image, i in zip(images, batch.index.tolist(), strict=True):
        with Image.open(data.train.paths[i]) as im:
            expected = reference_train_transform(im.convert("RGB"), a, a.params(5, 2, i))
        torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)
    test = next(iter(data.loader("test")))
    for image, i in zip(normalize(test.images), test.index.tolist(), strict=True):
        with Image.open(data.test.paths[i]) as im:
            torch.testing.assert_close(image, eval_transform(20, 16)(im.convert("RGB")), rtol=0, atol=1e-6)


def test_an_epoch_is_the_same_with_any_number_of_workers(root, tmp_path):
    batches = {}
    for workers in (0, 2):
        data = folder(str(root), resize=20, crop=16, num_workers=workers, cache_dir=str(tmp_path / "c"))
        loader = data.loader("train")
        loader.sampler.set_epoch(1)
        batches[workers] = [(b.images, b.index) for b in loader]
    for (x0, i0), (x2, i2) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(i0, i2) and torch.equal(x0, x2)


def _cached(root: Path, tmp_path: Path, size: int = 20) -> tuple[CachedFiles, DecodedFiles]:
    paths = sorted((root / "img").glob("*.jpg"))
    decoded = DecodedFiles(paths, size)
    return CachedFiles(decoded, "fx-train", tmp_path / "cache"), decoded


def test_cache_holds_exactly_the_decoded_images_and_is_reused(root, tmp_path):
    cache, decoded = _cached(root, tmp_path)
    cache.prepare({1.0, 0.25})
    for scale in (1.0, 0.25):
        for i in range(len(decoded)):
            assert torch.equal(cache(i, scale), decoded(i, scale))
    built = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npy")}
    assert len(built) == 2 and not list((tmp_path / "cache").glob(".*.tmp"))
    again, _ = _cached(root, tmp_path)
    again.prepare({1.0, 0.25})  # another run, same files and size: nothing is rebuilt
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npy")} == built
    assert torch.equal(again(3), cache(3))


def test_cache_is_rebuilt_when_a_file_or_the_size_changes(root, tmp_path):
    cache, decoded = _cached(root, tmp_path)
    first = cache.path(1.0)
    cache.prepare({1.0})
    changed = decoded.paths[2]
    Image.new("RGB", (16, 16), (250, 10, 10)).save(changed)
    os.utime(changed, ns=(1, 1))  # even with an old time stamp: the size and mtime differ
    again, decoded_again = _cached(root, tmp_path)
    assert again.path(1.0) != first
    again.prepare({1.0})
    assert torch.equal(again(2), decoded_again(2)) and not torch.equal(again(2), cache(2))
    bigger, _ = _cached(root, tmp_path, size=24)
    assert bigger.path(1.0) not in (first, again.path(1.0))


def test_cache_is_built_under_a_lock_and_a_build_finished_while_waiting_is_used(root, tmp_path, monkeypatch):
    cache, decoded = _cached(root, tmp_path)
    lock_path = cache.path(1.0).with_suffix(".lock")
    held = []
    build = cache._build

    def build_and_check_the_lock(scale, path):
        with pytest.raises(filelock.Timeout):  # a second process (another lock on the file) has to wait
            filelock.FileLock(lock_path).acquire(timeout=0)
        held.append(scale)
        build(scale, path)

    monkeypatch.setattr(cache, "_build", build_and_check_the_lock)
    cache.prepare({1.0})
    assert held == [1.0] and torch.equal(cache(1), decoded(1))

    other = np.full((len(decoded), 3, 20, 20), 7, dtype=np.uint8)  # what another process wrote meanwhile

    class FinishedWhileWaiting(filelock.FileLock):
        def acquire(self, *args, **kwargs):
            got = super().acquire(*args, **kwargs)
            np.save(cache.path(0.5), other)
            return got

    monkeypatch.setattr("hrn.data.cache.FileLock", FinishedWhileWaiting)
    cache.prepare({0.5})
    assert held == [1.0] and torch.equal(cache(2, 0.5), torch.from_numpy(other[2]))


def test_cache_without_room_is_one_line(root, tmp_path, monkeypatch):
    cache, _ = _cached(root, tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10, 10, 10))
    with pytest.raises(
        DataError, match=r"the image cache needs 0\.0 GB and 0\.0 GB are free; point dataset.cache_dir"
    ):
        cache.prepare({1.0})


def test_the_epoch_sampler_keys_carry_seed_and_epoch():
    sampler = EpochShuffleSampler(6, seed=4)
    sampler.set_epoch(3)
    keys = list(sampler)
    assert sorted(k[0] for k in keys) == list(range(6)) and all(k[1:] == (4, 3) for k in keys)


def test_resize_image_gives_three_channels():
    grey = torch.randint(0, 256, (1, 7, 9), dtype=torch.uint8)
    assert resize_image(grey, 5).shape == (3, 5, 5)
    assert resize_image(Image.new("L", (9, 7)), 5).shape == (3, 5, 5)


def test_params_are_uniform_over_offsets_and_flips():
    """The offsets come from a hash of (seed, epoch, index): each of the 9 offsets about equally often."""
    a = Augment(resize=20, crop=16, padding=2)
    draws = [a.params(1, e, i) for e in range(3) for i in range(3000)]
    for part in range(2):
        counts = Counter(d[part] for d in draws)
        assert set(counts) == set(range(9))
        assert all(900 < n < 1100 for n in counts.values()), counts  # 1,000 expected, std about 30
    assert abs(sum(d[2] for d in draws) / len(draws) - 0.5) < 0.02
    assert len(set(draws)) == 9 * 9 * 2  # every (top, left, flip) occurs


def test_in_memory_images_pickle_without_a_second_copy():
    """Spawned loader workers get the images once (the numpy view is rebuilt, not sent)."""
    source = TensorImages(torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8), 32)
    state = source.__getstate__()
    assert "_arrays" not in state
    back = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(back.image(3, 1.0), source.image(3, 1.0))
    assert back.image(3, 1.0).shape == (1, 32, 32)


@pytest.mark.parametrize("cache", [False, True])
def test_eval_transform_sees_what_the_test_loader_scores_on_non_square_jpegs(tmp_path, cache):
    """No train/serve skew: 375 x 500 JPEGs resized to 550 and cropped to 448 (the paper's test transform) give
    hrn.predict's transform (eval_transform) exactly the pixels hrn.evaluate's loader gives, decoded or cached."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "tree.csv").write_text("parent,child\na,b\na,c\n")
    rows = ["path,label,split"]
    rng = np.random.default_rng(0)
    for i in range(6):
        field = rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)
        Image.fromarray(field).resize((500, 375), Image.BICUBIC).save(root / "img" / f"{i}.jpg", quality=90)
        rows.append(f"img/{i}.jpg,{'bc'[i % 2]},{'train' if i < 4 else 'test'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    data = folder(str(root), resize=550, crop=448, cache=cache, cache_dir=str(tmp_path / "c"), num_workers=0)
    test = next(iter(data.loader("test")))
    assert len(test.index) == 2
    for image, i in zip(normalize(test.images), test.index.tolist(), strict=True):
        with Image.open(data.test.paths[i]) as im:
            assert im.size == (500, 375)
            torch.testing.assert_close(image, eval_transform(550, 448)(im), rtol=0, atol=0)
