"""Tree loss, forward + backward at batch 64: the package's formulations (:class:`hrn.losses.TreeLoss` with
``formulation="subtree"``, ``"dense"`` and ``"auto"``, and which one auto picks on this device) against the authors'
formulation (the dense (N+1) x N state matrix, then a Python loop over the batch for each marginal), on the CUB
tree and on level-balanced trees of 1,000 / 10,000 / 100,000 nodes (the authors' only where their state matrix
fits). The kernels are timed in interleaved rounds; a speed-up of auto over another kernel is the median of the
per-round ratios, with their range."""

from __future__ import annotations

import statistics

import torch

from hrn.benchmarks.timing import interleaved
from hrn.data.files import shipped
from hrn.losses import TreeLoss
from hrn.tree import Hierarchy

__all__ = ["FORMULATIONS", "AuthorsTreeLoss", "balanced_tree", "bench_tree_loss"]


class AuthorsTreeLoss:
    """The authors' formulation, re-implemented op for op for comparison (their ``tree_loss.py``): scores of all
    N + 1 states by one product with the dense (N+1) x N state matrix and ``exp`` (no log-space stabilisation),
    then, sample by sample in Python, the rows of the states containing the label (``where`` on a state-matrix
    column), their joint summed and ``-log(marginal / Z)`` written into a float64 loss vector, whose mean is
    the loss."""

    def __init__(self, h: Hierarchy, device: torch.device) -> None:
        self.states = torch.cat([torch.zeros(1, h.num_nodes), h.ancestors.float()]).to(device)  # (N+1, N)

    def __call__(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        joint = torch.exp(torch.mm(self.states, scores.T))  # (N+1, B)
        z = joint.sum(0)
        losses = torch.zeros(scores.shape[0], dtype=torch.float64, device=scores.device)
        for i in range(len(targets)):
            rows = torch.where(self.states[:, targets[i]] > 0)[0]
            losses[i] = -torch.log(torch.index_select(joint[:, i], 0, rows).sum() / z[i])
        return losses.mean()


def balanced_tree(num_nodes: int, roots: int = 10, middle: int | None = None) -> Hierarchy:
    """A three-level tree of about ``num_nodes`` nodes: roots -> middle -> leaves, children spread evenly."""
    middle = middle or max(roots, int(round(num_nodes**0.5)))
    leaves = num_nodes - roots - middle
    edges = [(f"r{i % roots}", f"m{i}") for i in range(middle)]
    edges += [(f"m{i % middle}", f"l{i}") for i in range(leaves)]
    return Hierarchy.from_edges(edges)


FORMULATIONS = ("subtree", "dense", "auto")  # the package's own, all through hrn.losses.TreeLoss


def bench_tree_loss(quick: bool, device: torch.device, batch: int = 64) -> list[dict]:
    sizes = [
        ("cub", Hierarchy.from_csv(shipped("cub.csv"))),
        ("1k", balanced_tree(1_000)),
        ("10k", balanced_tree(10_000)),
    ]
    if not quick:
        sizes.append(("100k", balanced_tree(100_000)))
    rows = []
    for name, h in sizes:
        n = h.num_nodes
        g = torch.Generator().manual_seed(0)
        scores = torch.rand(batch, n, generator=g).to(device).requires_grad_()  # sigmoid-like, as the paper
        targets = torch.randint(0, n, (batch,), generator=g).to(device)
        kernels = {f: TreeLoss(h, formulation=f).to(device) for f in FORMULATIONS}
        # the authors' (N+1) x N state matrix in fp32: 576 MB at 12,000 nodes; their Python loop is slow on a CPU
        if n <= (1_000 if quick else 12_000):
            kernels["authors"] = AuthorsTreeLoss(h, device)

        def step(kernel, scores=scores, targets=targets):
            scores.grad = None
            kernel(scores, targets).backward()

        fns = {kname: (lambda k=kernel: step(k)) for kname, kernel in kernels.items()}
        rounds = interleaved(fns, 2 if quick else 15, device)
        row = {
            "tree": name,
            "num_nodes": n,
            "levels": h.level_sizes,
            "batch": batch,
            "rounds": len(rounds),
            "auto_picks": kernels["auto"].formulation_for(device),
        }
        for kname in kernels:
            row[f"{kname}_s"] = statistics.median(r[kname] for r in rounds)
        for other in kernels.keys() - {"auto"}:
            # the median of the per-round ratios: both kernels of a ratio ran under the same conditions
            ratios = [r[other] / r["auto"] for r in rounds]
            row[f"auto_vs_{other}"] = statistics.median(ratios)
            row[f"auto_vs_{other}_range"] = [min(ratios), max(ratios)]
        rows.append(row)
    return rows
