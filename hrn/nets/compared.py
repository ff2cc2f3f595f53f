"""The four methods the HRN paper compares with, each rebuilt on the same trunk as :class:`hrn.nets.HRN`.

    image ─ trunk (hrn.nets.trunks, as HRN) ─ x (B, C, h, w) ─ pool ─ (B, C) ─ the method's head

=========  ===================  =======================================================  ==============================
config     network              head on the pooled trunk features                        loss (:mod:`hrn.losses`)
=========  ===================  =======================================================  ==============================
chmcnn     :class:`CHMCNN`      MLP -> N sigmoid outputs, max-constraint module (MCM)    :class:`~hrn.losses.MCLoss`
hmcnf      :class:`HMCNF`       global flow of FC layers, local per-level outputs        :class:`~hrn.losses.HMCNFLoss`
chang      :class:`ChangNet`    level-specific features, finer ones detached into        :class:`~hrn.losses.ChangLoss`
                                coarser classifiers, softmax per level
hmclmlp    :class:`HMCLMLP`     one MLP per level, fed the previous level's outputs      :class:`~hrn.losses.HMCLMLPLoss`
=========  ===================  =======================================================  ==============================

Every network returns a :class:`BaselineOutput` (an :class:`hrn.nets.HRNOutput`), so
:class:`hrn.training.HRNModule` trains and evaluates them exactly like HRN: ``sigmoid`` holds each level's class probabilities (accuracy is
their argmax at levels < L and ``leaf_logits``' argmax at the leaf level; the tree marginals are computed from
them), ``logits`` their log-odds, and ``extras`` the raw tensors the method's own loss needs.

Labels are node indices at any level. A *coarse-labelled* sample (label at a non-leaf node v: the image lies in
v's subtree, its leaf is unknown) is used as each class docstring says; the losses (:mod:`hrn.losses.compared`)
build their targets from the tree's index tensors, kept as buffers, with no graph walks in ``forward``.

Shapes: B = batch, C = trunk channels (2048 for ResNet-50), N = nodes of the tree, L = levels, n_l = nodes of
level l (coarse -> fine, the package's node order).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hrn.nets.output import BaselineOutput
from hrn.nets.trunks import ModelError, Trunk, TrunkNetwork
from hrn.tree import Hierarchy

__all__ = ["BaselineOutput", "CHMCNN", "ChangNet", "HMCLMLP", "HMCNF", "max_constraint"]


# ---------------------------------------------------------------------------------------------- shared pieces
def max_constraint(x: torch.Tensor, descendants: torch.Tensor) -> torch.Tensor:
    """C-HMCNN's max-constraint module: ``out[:, v] = max of x[:, d] over d in descendants(v), v included``.

    Args:
        x: (B, N) scores (probabilities or logits: the max commutes with the sigmoid).
        descendants: (N, N) bool, ``descendants[v, d]`` true when d is v or below v.
    Returns:
        (B, N). Dense: builds a (B, N, N) tensor, fine for the few hundred nodes of the image trees.
    """
    return torch.where(descendants, x.unsqueeze(1), float("-inf")).amax(dim=-1)


def _log_odds(log_p: torch.Tensor) -> torch.Tensor:
    """``log p - log(1 - p)`` from ``log p``, finite (p is capped at 1 - 1e-7)."""
    log_p = log_p.clamp(max=-1e-7)
    log_1mp = torch.where(
        log_p > -math.log(2.0), torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p))
    )
    return log_p - log_1mp


def _fc(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    """Linear -> BN1d -> ReLU -> Dropout: (B, c_in) -> (B, c_out). The hidden layer of every MLP head here."""
    return nn.Sequential(
        nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True), nn.Dropout(dropout)
    )


class CHMCNN(TrunkNetwork):
    """C-HMCNN(h): Giunchiglia & Lukasiewicz, "Coherent Hierarchical Multi-Label Classification Networks",
    NeurIPS 2020, on the HRN trunk.

    ``h``: pooled trunk features (B, C) -> ``num_layers`` x [Linear, BN, ReLU, Dropout] of ``width`` -> Linear ->
    z (B, N), one sigmoid output per node. The outputs are made coherent by the max-constraint module
    ``MCM(h)_v = max_{d ⊒ v} h_d`` (d ranges over v and its descendants), so a parent is never less likely than
    any of its children. Because the max commutes with the sigmoid, ``MCM(sigmoid(z)) = sigmoid(MCM(z))``.

    Output (a :class:`BaselineOutput`): ``sigmoid`` = MCM(h) split per level, (B, n_l) each; ``logits`` =
    MCM(z) split per level; ``leaf_logits`` = the leaf part of z (MCM is the identity on leaves), (B, n_L);
    ``extras["node_logits"]`` = the unconstrained z (B, N), which :class:`~hrn.losses.MCLoss` needs.

    Coarse-labelled samples: the label set of a sample labelled at node v is {v} ∪ ancestors(v) (positives);
    every other node is a negative — including v's descendants — under :class:`~hrn.losses.MCLoss` with the default
    ``coarse_descendants="negative"``. This is how the authors train: their HMC benchmarks (FunCat, GO, ...)
    annotate many samples down to an internal class only, encode the classes below it as 0, and MCLoss is a
    plain BCE over all N outputs; the paper has no notion of an unknown label. ``coarse_descendants="ignore"``
    (an ablation) leaves v's descendants out of the loss instead.

    Args:
        hierarchy: the label tree (its level sizes and descendant matrix are kept).
        trunk, trunk_lr_scale, trunk_options: as :class:`hrn.nets.HRN`.
        width: hidden width of ``h``; default C / 2 (HRN's F). The authors tuned it per tabular dataset.
        num_layers: hidden layers of ``h`` (>= 0; 0 = a linear head).
        dropout: dropout after each hidden layer (the authors used dropout on tabular data; off like HRN).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str | Trunk = "resnet50",
        width: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        trunk_lr_scale: float = 0.1,
        **trunk_options,
    ) -> None:
        super().__init__(hierarchy, trunk, trunk_lr_scale, **trunk_options)
        if num_layers < 0:
            raise ModelError(f"model.num_layers={num_layers}: must be >= 0")
        width = width or self.channels // 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        dims = [self.channels] + [width] * num_layers
        self.hidden = nn.Sequential(*(_fc(a, b, dropout) for a, b in zip(dims[:-1], dims[1:], strict=True)))
        self.out = nn.Linear(dims[-1], hierarchy.num_nodes)
        self.register_buffer("descendants", hierarchy.ancestors.T.contiguous(), persistent=False)

    def forward(self, images: torch.Tensor) -> BaselineOutput:
        """(B, 3, H, W) -> :class:`BaselineOutput` (see the class docstring)."""
        z = self.out(self.hidden(self.pool(self.forward_features(images)).flatten(1)))  # (B, N)
        constrained = max_constraint(z, self.descendants)  # (B, N), = logit of MCM(sigmoid(z))
        logits = list(torch.split(constrained, self.level_sizes, dim=1))
        return BaselineOutput(
            level_probs=[t.sigmoid() for t in logits],
            level_logits=logits,
            leaf_logits=logits[-1],
            extras={"node_logits": z},
        )


class HMCNF(TrunkNetwork):
    """HMCN-F: Wehrmann, Cerri & Barros, "Hierarchical Multi-Label Classification Networks", ICML 2018, on the
    HRN trunk.

    With x the pooled trunk features (B, C) and each FC layer = Linear, BN, ReLU, Dropout:

    * global flow: ``A_G^1 = FC(x)``, ``A_G^l = FC([A_G^{l-1}, x])`` (B, width) for l = 2..L;
    * local outputs: ``A_L^l = FC_T(A_G^l)`` (B, dim), ``P_L^l = sigmoid(W_L^l A_L^l)`` (B, n_l);
    * global output: ``P_G = sigmoid(W_G A_G^L)`` (B, N) over all nodes;
    * final: ``P_F = β · [P_L^1, ..., P_L^L] + (1 - β) · P_G`` (B, N), β = 0.5 in the paper.

    Output (a :class:`BaselineOutput`): ``sigmoid`` = P_F split per level; ``logits`` = log-odds of P_F (computed
    in log space) per level; ``leaf_logits`` = the leaf part of those; ``extras["local_logits"]`` and
    ``extras["global_logits"]``: the (B, N) pre-sigmoid local (concatenated) and global outputs.

    Coarse-labelled samples: as for C-HMCNN, a sample labelled at node v has the targets {v} ∪ ancestors(v) = 1
    and every other node = 0, v's descendants included (:class:`~hrn.losses.HMCNFLoss` default
    ``coarse_descendants="negative"``): the authors train on the same FunCat/GO HMC benchmarks, where a sample
    annotated down to an internal class has 0 below it, with plain BCE over all outputs.

    Args:
        hierarchy: the label tree.
        trunk, trunk_lr_scale, trunk_options: as :class:`hrn.nets.HRN`.
        width: width of the global-flow layers; default C / 2 (HRN's F; the paper used 384 on tabular data).
        dim: width of each level's local transformation layer (default 512, HRN's D).
        beta: β, the weight of the local outputs in P_F (0.5 in the paper), in [0, 1].
        dropout: dropout after every FC layer (the authors used dropout on tabular data; off like HRN).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str | Trunk = "resnet50",
        width: int | None = None,
        dim: int = 512,
        beta: float = 0.5,
        dropout: float = 0.0,
        trunk_lr_scale: float = 0.1,
        **trunk_options,
    ) -> None:
        super().__init__(hierarchy, trunk, trunk_lr_scale, **trunk_options)
        if not 0.0 <= beta <= 1.0:
            raise ModelError(f"model.beta={beta}: must be in [0, 1]")
        width = width or self.channels // 2
        self.beta = beta
        self.pool = nn.AdaptiveAvgPool2d(1)
        levels = range(len(self.level_sizes))
        self.global_layers = nn.ModuleList(
            _fc(self.channels + (width if lvl else 0), width, dropout) for lvl in levels
        )
        self.local_transforms = nn.ModuleList(_fc(width, dim, dropout) for _ in levels)
        self.local_outputs = nn.ModuleList(nn.Linear(dim, n) for n in self.level_sizes)
        self.global_output = nn.Linear(width, hierarchy.num_nodes)

    def forward(self, images: torch.Tensor) -> BaselineOutput:
        """(B, 3, H, W) -> :class:`BaselineOutput` (see the class docstring)."""
        x = self.pool(self.forward_features(images)).flatten(1)  # (B, C)
        a = None
        local = []
        for lvl, layer in enumerate(self.global_layers):
            a = layer(x if a is None else torch.cat([a, x], dim=1))  # A_G^l, (B, width)
            local.append(self.local_outputs[lvl](self.local_transforms[lvl](a)))  # (B, n_l)
        local_logits = torch.cat(local, dim=1)  # (B, N)
        global_logits = self.global_output(a)  # (B, N)
        # log P_F and log(1 - P_F) as log-sum-exps of the two weighted branches: exact and finite.
        log_b = math.log(self.beta) if self.beta > 0 else float("-inf")
        log_1mb = math.log(1.0 - self.beta) if self.beta < 1 else float("-inf")
        log_p = torch.logaddexp(log_b + F.logsigmoid(local_logits), log_1mb + F.logsigmoid(global_logits))
        log_q = torch.logaddexp(log_b + F.logsigmoid(-local_logits), log_1mb + F.logsigmoid(-global_logits))
        final_logits = list(torch.split(log_p - log_q, self.level_sizes, dim=1))
        return BaselineOutput(
            level_probs=list(torch.split(log_p.exp(), self.level_sizes, dim=1)),
            level_logits=final_logits,
            leaf_logits=final_logits[-1],
            extras={"local_logits": local_logits, "global_logits": global_logits},
        )


class ChangNet(TrunkNetwork):
    """Chang, Pang, Zheng, Ma, Song & Guo, "Your 'Flamingo' is my 'Bird': Fine-Grained, or Not", CVPR 2021, on
    the HRN trunk.

    Trunk features are max-pooled (B, C) (global max pool, as the authors' released code) and normalised
    (BN1d); each level l has its own feature branch ``f_l = ELU(BN(Linear(C -> dim)))`` (B, dim). The authors'
    code slices one BN-Linear-BN-ELU layer of width L·dim into L level-specific parts, which is the same thing. Level l's classifier is a Linear on
    ``[f_l, f_{l+1}.detach(), ..., f_L.detach()]`` (B, (L - l + 1)·dim) -> n_l softmax logits: finer features help
    the coarser classifiers, but the coarse labels' gradients never reach (and blur) the finer features.

    Output (a :class:`BaselineOutput`): ``sigmoid`` = the per-level softmax probabilities (B, n_l) (the method's
    class probabilities; argmax = the softmax prediction); ``logits`` = their log-odds; ``leaf_logits`` = the
    leaf classifier's softmax logits (B, n_L); ``extras["softmax_logits"]`` = all levels' softmax logits (B, N).

    Coarse-labelled samples: cross-entropy at the levels where the label is known — a sample labelled at level
    l counts in the CE of levels 1..l (its label and its ancestors) and not below (:class:`~hrn.losses.ChangLoss`). The
    paper trains on full paths only; a per-level softmax has no way to say "none of these", so leaving the
    unknown levels out is the only faithful use of such a sample.

    Args:
        hierarchy: the label tree.
        trunk, trunk_lr_scale, trunk_options: as :class:`hrn.nets.HRN`.
        dim: width of each level's feature branch (the authors: 600 split over CUB's 3 levels = 200).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str | Trunk = "resnet50",
        dim: int = 200,
        trunk_lr_scale: float = 0.1,
        **trunk_options,
    ) -> None:
        super().__init__(hierarchy, trunk, trunk_lr_scale, **trunk_options)
        num_levels = len(self.level_sizes)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.norm = nn.BatchNorm1d(self.channels)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(self.channels, dim), nn.BatchNorm1d(dim), nn.ELU(inplace=True))
            for _ in range(num_levels)
        )
        self.classifiers = nn.ModuleList(
            nn.Linear(dim * (num_levels - lvl), n) for lvl, n in enumerate(self.level_sizes)
        )

    def forward(self, images: torch.Tensor) -> BaselineOutput:
        """(B, 3, H, W) -> :class:`BaselineOutput` (see the class docstring)."""
        x = self.norm(self.pool(self.forward_features(images)).flatten(1))  # (B, C)
        feats = [branch(x) for branch in self.branches]  # f_l, (B, dim) each
        logits = [
            clf(torch.cat([feats[lvl], *(f.detach() for f in feats[lvl + 1 :])], dim=1))
            for lvl, clf in enumerate(self.classifiers)
        ]  # (B, n_l) softmax logits
        log_probs = [t.log_softmax(dim=1) for t in logits]
        return BaselineOutput(
            level_probs=[t.exp() for t in log_probs],
            level_logits=[_log_odds(t) for t in log_probs],
            leaf_logits=logits[-1],
            extras={"softmax_logits": torch.cat(logits, dim=1)},
        )


class HMCLMLP(TrunkNetwork):
    """HMC-LMLP: Cerri, Barros & de Carvalho, "Hierarchical multi-label classification using local neural
    networks", JCSS 2014, on the HRN trunk.

    One MLP per level: level l's MLP takes the pooled trunk features x (B, C), concatenated for l >= 2 with
    level l-1's sigmoid outputs (B, n_{l-1}), through [Linear, BN, ReLU, Dropout] of ``width`` to n_l sigmoid
    outputs. The previous level's outputs enter *detached*: in the original, level l-1's network is already
    trained and frozen when level l is trained, so level l's error never changes it.

    Training: the original trains the levels one after another (level l once level l-1 is done). We train all
    levels jointly (one loss summed over levels, one optimiser, the same schedule as the other methods): every
    method in the comparison then gets the same trunk, budget and schedule, the shared trunk is fine-tuned once
    instead of L times, and the detached inputs keep the original's one-way flow between the levels' MLPs.

    Output (a :class:`BaselineOutput`): ``sigmoid`` = each level's sigmoid outputs (B, n_l); ``logits`` = their
    pre-sigmoid values; ``leaf_logits`` = the leaf level's logits (B, n_L).

    Coarse-labelled samples: per-level BCE on the levels where the label is known (:class:`~hrn.losses.HMCLMLPLoss`): a
    sample labelled at level l is a one-hot target for levels 1..l and is left out of the deeper levels' losses.
    The paper does not treat unknown labels; leaving the sample out of the levels it has no class for is the
    local-classifier convention (each level's network learns from the samples labelled at its level), and an
    all-zero target there would teach "none of these classes", which is false for a coarse label.

    Args:
        hierarchy: the label tree.
        trunk, trunk_lr_scale, trunk_options: as :class:`hrn.nets.HRN`.
        width: hidden width of each level's MLP; default C / 2 (HRN's F).
        dropout: dropout after the hidden layer (off, like HRN).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str | Trunk = "resnet50",
        width: int | None = None,
        dropout: float = 0.0,
        trunk_lr_scale: float = 0.1,
        **trunk_options,
    ) -> None:
        super().__init__(hierarchy, trunk, trunk_lr_scale, **trunk_options)
        width = width or self.channels // 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        previous = [0, *self.level_sizes[:-1]]
        self.mlps = nn.ModuleList(
            nn.Sequential(_fc(self.channels + prev, width, dropout), nn.Linear(width, n))
            for prev, n in zip(previous, self.level_sizes, strict=True)
        )

    def forward(self, images: torch.Tensor) -> BaselineOutput:
        """(B, 3, H, W) -> :class:`BaselineOutput` (see the class docstring)."""
        x = self.pool(self.forward_features(images)).flatten(1)  # (B, C)
        logits: list[torch.Tensor] = []
        sigmoid: list[torch.Tensor] = []
        for mlp in self.mlps:
            inp = torch.cat([x, sigmoid[-1].detach()], dim=1) if sigmoid else x
            logits.append(mlp(inp))  # (B, n_l)
            sigmoid.append(logits[-1].sigmoid())
        return BaselineOutput(level_probs=sigmoid, level_logits=logits, leaf_logits=logits[-1])
