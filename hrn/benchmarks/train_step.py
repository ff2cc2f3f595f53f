"""Train step (forward + backward + SGD step) of HRN against a plain torchvision ResNet-50 classifier on the same
batch: the median ratio over paired runs, and images/s of each."""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from hrn.benchmarks.timing import interleaved
from hrn.data.files import shipped
from hrn.losses import CompositeLoss
from hrn.nets import HRN
from hrn.tree import Hierarchy

__all__ = ["TIMM_TRUNKS", "bench_stems", "bench_timm_train_steps", "bench_train_step"]

TIMM_TRUNKS = ("timm:convnext_tiny", "timm:vit_small_patch16_224")  # a ConvNet and a ViT of ResNet-50's size
TIMM_TRUNKS_QUICK = ("timm:convnext_atto", "timm:vit_tiny_patch16_224")


def _paired(
    nets: dict[str, tuple[nn.Module, nn.Module]], images, targets, leaf0: int, pairs: int, device
) -> dict:
    """Train steps (forward, loss, backward, SGD step) of each ``name -> (network, loss or None)`` on one batch, in
    interleaved rounds: seconds per step of each, per round. A loss of None is a plain leaf classifier's CE."""
    steps = {}
    for name, (net, loss) in nets.items():
        net.to(device).train()
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

        def step(net=net, loss=loss, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            out = net(images)
            value = loss(out, targets).total if loss is not None else F.cross_entropy(out, targets - leaf0)
            value.backward()
            optimizer.step()

        steps[name] = step
    return interleaved(steps, pairs, device)


def _ratio(rounds: list[dict], a: str, b: str) -> dict:
    ratios = [r[a] / r[b] for r in rounds]
    return {"ratio_median": statistics.median(ratios), "ratios": ratios}


def _batch(h: Hierarchy, size: int, batch: int, device):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    targets = (h.offsets[-2] + torch.randint(0, h.level_sizes[-1], (batch,), generator=g)).to(device)
    return images, targets


def bench_train_step(quick: bool, device: torch.device) -> dict:
    """Paired train steps of HRN (CUB tree, ResNet-50) and a plain ResNet-50 classifier on the same batch."""
    h = Hierarchy.from_csv(shipped("cub.csv"))
    size, batch, pairs = (64, 2, 2) if quick else (224, 8, 5)
    images, targets = _batch(h, size, batch, device)
    nets = {
        "hrn": (HRN(h, trunk="resnet50"), CompositeLoss(h).to(device)),
        "resnet50": (torchvision.models.resnet50(num_classes=h.level_sizes[-1]), None),
    }
    rounds = _paired(nets, images, targets, h.offsets[-2], pairs, device)
    hrn_s, plain_s = (statistics.median(r[k] for r in rounds) for k in ("hrn", "resnet50"))
    return {
        "input": size,
        "batch": batch,
        "pairs": pairs,
        "hrn_s": hrn_s,
        "resnet50_s": plain_s,
        **_ratio(rounds, "hrn", "resnet50"),
        "hrn_images_per_s": batch / hrn_s,
        "resnet50_images_per_s": batch / plain_s,
    }


def bench_timm_train_steps(quick: bool, device: torch.device) -> list[dict]:
    """Paired train steps of HRN on a timm trunk (CUB tree) and of the same timm model as a plain classifier, for
    a ConvNet and a ViT (:data:`TIMM_TRUNKS`), at 224 px, batch 8: HRN's cost over the trunk alone."""
    import timm

    h = Hierarchy.from_csv(shipped("cub.csv"))
    size, batch, pairs = (64, 2, 2) if quick else (224, 8, 5)
    images, targets = _batch(h, size, batch, device)
    rows = []
    for trunk in TIMM_TRUNKS_QUICK if quick else TIMM_TRUNKS:
        name = trunk.split(":", 1)[1]
        plain = timm.create_model(
            name, num_classes=h.level_sizes[-1], **({"img_size": size} if "vit" in name else {})
        )
        nets = {
            "hrn": (HRN(h, trunk=trunk, image_size=size), CompositeLoss(h).to(device)),
            "trunk": (plain, None),
        }
        rounds = _paired(nets, images, targets, h.offsets[-2], pairs, device)
        hrn_s, plain_s = (statistics.median(r[k] for r in rounds) for k in ("hrn", "trunk"))
        rows.append(
            {
                "trunk": trunk,
                "input": size,
                "batch": batch,
                "pairs": pairs,
                "hrn_s": hrn_s,
                "trunk_s": plain_s,
                **_ratio(rounds, "hrn", "trunk"),
                "hrn_images_per_s": batch / hrn_s,
                "trunk_images_per_s": batch / plain_s,
            }
        )
    return rows


def bench_stems(quick: bool, device: torch.device) -> dict:
    """Train steps of the Fashion-MNIST recipe's HRN (its 2 -> 6 -> 10 tree, a from-scratch ResNet-18 at 32 px,
    batch 128) with the standard stem (a 1x1 map for the GSBs) and the small-image stems (3x3, no max-pool, stride
    2 or 1: 2x2 and 4x4 maps), interleaved: images/s of each and the slowdown over the standard stem."""
    from hrn.data.fashion_mnist import fashion_mnist_hierarchy

    h = fashion_mnist_hierarchy()
    batch, pairs = (16, 2) if quick else (128, 5)
    images, targets = _batch(h, 32, batch, device)
    stems = {
        "standard": {},
        "small, stride 2": {"stem": "small", "stem_stride": 2},
        "small, stride 1": {"stem": "small"},
    }
    nets = {
        k: (HRN(h, trunk="resnet18", image_size=32, **v), CompositeLoss(h).to(device))
        for k, v in stems.items()
    }
    rounds = _paired(nets, images, targets, h.offsets[-2], pairs, device)
    seconds = {k: statistics.median(r[k] for r in rounds) for k in stems}
    return {
        "input": 32,
        "batch": batch,
        "pairs": pairs,
        "map_side": {k: nets[k][0].map_side for k in stems},
        "images_per_s": {k: batch / s for k, s in seconds.items()},
        "slowdown": {k: _ratio(rounds, k, "standard")["ratio_median"] for k in stems},
    }
