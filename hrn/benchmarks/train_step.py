"""Train step (forward + backward + SGD step) of HRN against a plain torchvision ResNet-50 classifier on the same
batch: the median ratio over paired runs, and images/s of each."""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
import torchvision

from hrn.benchmarks.timing import interleaved
from hrn.data.files import shipped
from hrn.losses import CompositeLoss
from hrn.nets import HRN
from hrn.tree import Hierarchy

__all__ = ["bench_train_step"]


def bench_train_step(quick: bool, device: torch.device) -> dict:
    """Paired train steps of HRN (CUB tree, ResNet-50) and a plain ResNet-50 classifier on the same batch."""
    h = Hierarchy.from_csv(shipped("cub.csv"))
    size, batch, pairs = (112, 4, 3) if quick else (224, 8, 5)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    targets = (h.offsets[-2] + torch.randint(0, h.level_sizes[-1], (batch,), generator=g)).to(device)
    hrn_net = HRN(h, trunk="resnet50").to(device).train()
    hrn_loss = CompositeLoss(h).to(device)
    plain = torchvision.models.resnet50(num_classes=h.level_sizes[-1]).to(device).train()
    opt_hrn = torch.optim.SGD(hrn_net.parameters(), lr=1e-3, momentum=0.9)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)

    def hrn_step() -> None:
        opt_hrn.zero_grad(set_to_none=True)
        hrn_loss(hrn_net(images), targets).total.backward()
        opt_hrn.step()

    def plain_step() -> None:
        opt_plain.zero_grad(set_to_none=True)
        F.cross_entropy(plain(images), targets - h.offsets[-2]).backward()
        opt_plain.step()

    rounds = interleaved({"hrn": hrn_step, "resnet50": plain_step}, pairs, device)
    hrn_times, plain_times = [r["hrn"] for r in rounds], [r["resnet50"] for r in rounds]
    ratios = [r["hrn"] / r["resnet50"] for r in rounds]
    return {
        "input": size,
        "batch": batch,
        "pairs": pairs,
        "hrn_s": statistics.median(hrn_times),
        "resnet50_s": statistics.median(plain_times),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "hrn_images_per_s": batch / statistics.median(hrn_times),
        "resnet50_images_per_s": batch / statistics.median(plain_times),
    }
