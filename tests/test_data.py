"""Layer 1-2: the synthetic dataset and the paper's protocols (relabel, degrade)."""

import math

import pytest
import torch

from hrn.data.augment import downsample
from hrn.data.base import DataError
from hrn.data.protocols import apply_protocols, kept_count, relabel
from hrn.data.synthetic import make_images, synthetic, synthetic_hierarchy


def texture_score(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B,): > 0 for horizontal stripes (rows alternate), < 0 for vertical ones."""
    x = images.float().mean(1)
    return (x[:, 1:] - x[:, :-1]).abs().mean((1, 2)) - (x[:, :, 1:] - x[:, :, :-1]).abs().mean((1, 2))


def nearest_mean_accuracy(
    train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor
):
    classes = train_y.unique()
    means = torch.stack([train[train_y == c].mean(0) for c in classes])
    pred = classes[torch.cdist(test, means).argmin(1)]
    return (pred == test_y).float().mean().item()


def test_hierarchy_is_three_levels():
    h = synthetic_hierarchy()
    assert h.level_sizes == [3, 6, 12]
    assert h.levels[0] == ["hbar", "vbar", "square"]
    assert h.levels[2][:2] == ["hbar-red-hstripes", "hbar-red-vstripes"]


def test_seeded_and_split_sizes():
    a, b = (
        synthetic(train_per_leaf=4, val_per_leaf=2, test_per_leaf=3),
        synthetic(train_per_leaf=4, val_per_leaf=2, test_per_leaf=3),
    )
    assert (len(a.train), len(a.val), len(a.test)) == (48, 24, 36)
    torch.testing.assert_close(a.train.source(5), b.train.source(5))
    assert not torch.equal(a.train.source(0), a.test.source(0))  # splits differ
    image, target, index = a.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and target == a.hierarchy.offsets[-2]
    assert index == 0 and torch.equal(
        image, a.train.source(0)
    )  # an index key: the centre crop (all of it here)
    image, _, index = a.train[(7, 0, 3)]  # a training key (i, seed, epoch): its own crop and flip
    assert index == 7 and not torch.equal(image, a.train.source(7))


def test_coarse_structure_survives_a_quarter_downsample_fine_detail_does_not():
    g = torch.Generator().manual_seed(0)
    leaves = torch.arange(12).repeat_interleave(60)
    images = make_images(leaves, 32, g)
    small = downsample(images, 0.25)  # (B, 3, 8, 8)
    up = torch.nn.functional.interpolate(small.float(), size=32, mode="bilinear")
    shape = leaves // 4
    half = len(leaves) // 2
    idx = torch.randperm(len(leaves), generator=g)
    tr, te = idx[:half], idx[half:]
    # level 1 is still plain to see at 8x8 px: the shape's mask (saturated colour on a grey background)
    flat = (small.float().amax(1) - small.float().amin(1)).flatten(1)
    assert nearest_mean_accuracy(flat[tr], shape[tr], flat[te], shape[te]) > 0.9
    # the leaf texture decides at full resolution and is gone after the downsample
    horizontal = leaves % 2 == 0
    full = ((texture_score(images) > 0) == horizontal).float().mean().item()
    low = ((texture_score(up) > 0) == horizontal).float().mean().item()
    assert full > 0.97
    assert abs(low - 0.5) < 0.15


def test_kept_count_guards_float_error():
    assert 30 * (1 - 0.7) > 9  # the float trap
    assert kept_count(30, 0.7) == 9
    assert kept_count(30, 0.0) == 30
    assert kept_count(7, 0.5) == 4  # ceil(3.5)
    assert kept_count(10, 0.9) == 1
    assert kept_count(1, 0.99) == 1


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("order", ["file", "random"])
def test_relabel_counts_per_class(ratio, order):
    h = synthetic_hierarchy()
    leaf0 = h.offsets[-2]
    sizes = [30, 7, 12, 1, 5, 30, 9, 10, 11, 3, 2, 30]
    targets = [leaf0 + c for c, n in enumerate(sizes) for _ in range(n)]
    new, changed = relabel(targets, h, ratio, order=order, seed=3)
    for c, n in enumerate(sizes):
        members = [i for i, t in enumerate(targets) if t == leaf0 + c]
        kept = [i for i in members if new[i] == leaf0 + c]
        moved = [i for i in members if new[i] == h.parent_of(leaf0 + c)]
        assert len(kept) == math.ceil(round(n * (1 - ratio), 9)) and len(kept) + len(moved) == n
        assert all(changed[i] for i in moved) and not any(changed[i] for i in kept)
        if order == "file":
            assert kept == members[: len(kept)]  # the authors keep the first ones in list order


def test_relabel_random_is_seeded_and_leaves_coarse_labels_alone():
    h = synthetic_hierarchy()
    targets = [h.offsets[-2]] * 20 + [0, 3]
    a, _ = relabel(targets, h, 0.5, "random", seed=1)
    b, _ = relabel(targets, h, 0.5, "random", seed=1)
    c, _ = relabel(targets, h, 0.5, "random", seed=2)
    f, _ = relabel(targets, h, 0.5, "file")
    assert a == b and a != c and a != f
    assert a[-2:] == [0, 3]


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "half"])
def test_relabel_ratio_outside_unit_interval_is_one_line(ratio):
    with pytest.raises(DataError, match=r"relabel_ratio=.* is outside \[0, 1\)"):
        relabel([0], synthetic_hierarchy(), ratio)


def test_apply_protocols_relabels_and_degrades_train_only():
    data = synthetic(train_per_leaf=10, val_per_leaf=2, test_per_leaf=2)
    test_targets = list(data.test.targets)
    apply_protocols(data, relabel_ratio=0.5, degrade_scale=0.25)
    h = data.hierarchy
    assert data.train.labelled_at_level(h) == [0, 60, 60]
    assert data.info["protocol"]["relabelled"] == 60 and data.info["protocol"]["degraded"] == 60
    assert data.train.degraded == [not h.is_leaf(t) for t in data.train.targets]
    assert data.test.targets == test_targets and not any(data.test.degraded)
    # a degraded image was downsampled to 8 px, then resized back: its fine texture is gone, a kept one's is not
    assert data.train.scale(0) == 1.0 and data.train.scale(9) == 0.25
    sharp, blurred = data.train.source(0, data.train.scale(0)), data.train.source(9, data.train.scale(9))
    assert sharp.shape == blurred.shape == (3, 32, 32)
    assert texture_score(sharp[None]).abs() > 5 * texture_score(blurred[None]).abs()
    batch = data.train.__getitems__([0, 9])  # the loader serves each at its own scale
    assert torch.equal(batch.images, torch.stack([sharp, blurred]))
    apply_protocols(
        synthetic(train_per_leaf=2, val_per_leaf=1, test_per_leaf=1),
        degrade_scale=0.25,
        degrade_apply_to="all",
    )
    with pytest.raises(DataError, match="degrade.apply_to='some'"):
        apply_protocols(data, degrade_scale=0.25, degrade_apply_to="some")
    with pytest.raises(DataError, match=r"degrade.scale=0 must be in \(0, 1\]"):
        apply_protocols(data, degrade_scale=0)


def test_loader_counts_every_sample():
    data = synthetic(train_per_leaf=3, val_per_leaf=1, test_per_leaf=5, batch_size=7)  # 60 test, 7 ∤ 60
    assert sum(len(b.targets) for b in data.loader("test")) == 60
    data.val.targets, data.val.paths = [], []
    with pytest.raises(DataError, match="val split has no samples"):
        data.loader("val")
