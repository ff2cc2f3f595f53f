"""The four methods the HRN paper compares with, each rebuilt on the same trunk as :class:`hrn.model.HRN`.

    image ─ trunk (ResNet without avgpool/fc, as HRN) ─ x (B, C, h, w) ─ pool ─ (B, C) ─ the method's head

=========  ===================  =======================================================  ============================
config     network              head on the pooled trunk features                        loss
=========  ===================  =======================================================  ============================
chmcnn     :class:`CHMCNN`      MLP -> N sigmoid outputs, max-constraint module (MCM)    :class:`MCLoss`
hmcnf      :class:`HMCNF`       global flow of FC layers, local per-level outputs        :class:`HMCNFLoss`
chang      :class:`ChangNet`    level-specific features, finer ones detached into        :class:`ChangLoss`
                                coarser classifiers, softmax per level
hmclmlp    :class:`HMCLMLP`     one MLP per level, fed the previous level's outputs      :class:`HMCLMLPLoss`
=========  ===================  =======================================================  ============================

Every network returns a :class:`BaselineOutput` (an :class:`hrn.model.HRNOutput`), so :class:`hrn.lit.HRNModule`
trains and evaluates them exactly like HRN: ``sigmoid`` holds each level's class probabilities (accuracy is
their argmax at levels < L and ``leaf_logits``' argmax at the leaf level; the tree marginals are computed from
them), ``logits`` their log-odds, and ``extras`` the raw tensors the method's own loss needs.

Labels are node indices at any level. A *coarse-labelled* sample (label at a non-leaf node v: the image lies in
v's subtree, its leaf is unknown) is used as each class docstring says; every loss builds its targets from the
tree's index tensors (``ancestors``, ``ancestor_at_level``), kept as buffers, with no graph walks in ``forward``.

Shapes: B = batch, C = trunk channels (2048 for ResNet-50), N = nodes of the tree, L = levels, n_l = nodes of
level l (coarse -> fine, the package's node order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hrn.hierarchy import Hierarchy
from hrn.losses import LossTerms
from hrn.model import HRNOutput, ModelError, build_trunk, trunk_channels, trunk_param_groups

__all__ = [
    "BaselineOutput",
    "CHMCNN",
    "MCLoss",
    "HMCNF",
    "HMCNFLoss",
    "ChangNet",
    "ChangLoss",
    "HMCLMLP",
    "HMCLMLPLoss",
    "max_constraint",
]

COARSE_DESCENDANTS = ("negative", "ignore")


@dataclass
class BaselineOutput(HRNOutput):
    """:class:`hrn.model.HRNOutput` plus ``extras``: named raw tensors that only the method's loss reads."""

    extras: dict[str, torch.Tensor] = field(default_factory=dict)


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


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the true entries of ``mask`` (same shape); 0 (graph kept) when there are none."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


class _TrunkNet(nn.Module):
    """The part every compared method shares with HRN: trunk, channels-last, optimiser groups.

    Subclasses build their head after ``super().__init__`` and call ``self._finish()`` last.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str,
        pretrained: bool,
        weights: str | Path | None,
        trunk_lr_scale: float,
        channels_last: bool,
    ) -> None:
        super().__init__()
        self.channels = trunk_channels(trunk)
        self.level_sizes = hierarchy.level_sizes
        self.trunk_lr_scale = trunk_lr_scale
        self.channels_last = channels_last
        self.trunk = build_trunk(trunk, pretrained, weights)

    def _finish(self) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def trunk_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/32, W/32)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.trunk(images)

    def feature_layers(self, kind: str = "trunk") -> list[nn.Module]:
        """Per level, the layer Grad-CAM looks at: the trunk's last block (no level-specific conv blocks here)."""
        return [self.trunk[-1]] * len(self.level_sizes)

    def param_groups(self) -> list[dict]:
        """Optimiser groups as :meth:`hrn.model.HRN.param_groups`: trunk ``lr_scale = trunk_lr_scale``, head 1."""
        return trunk_param_groups(self, self.trunk_lr_scale)


class _TargetsMixin(nn.Module):
    """Index buffers of the tree that the losses build their targets from (no graph walks in ``forward``)."""

    def _register_tree(self, hierarchy: Hierarchy) -> None:
        self.level_sizes = hierarchy.level_sizes
        # (N, N) bool: ancestors[v, u] = u is v or an ancestor of v; row t = the positive nodes of label t.
        self.register_buffer("ancestors", hierarchy.ancestors, persistent=False)
        # (N, N) bool: descendants[u, d] = d is u or below u.
        self.register_buffer("descendants", hierarchy.ancestors.T.contiguous(), persistent=False)
        # (L, N) long: label -> its class at level l, -1 when the label is coarser than l.
        self.register_buffer("ancestor_at_level", hierarchy.ancestor_at_level, persistent=False)

    def _positives(self, targets: torch.Tensor) -> torch.Tensor:
        """(B,) labels -> (B, N) bool: the label and its ancestors (the label set of hierarchical multi-label)."""
        return self.ancestors[targets]

    def _unknown(self, targets: torch.Tensor) -> torch.Tensor:
        """(B,) labels -> (B, N) bool: the strict descendants of each label (all false for a leaf label)."""
        below = self.descendants[targets]  # (B, N), the label included
        return below & ~F.one_hot(targets, below.shape[1]).bool()


def _check_coarse(value: str) -> str:
    if value not in COARSE_DESCENDANTS:
        raise ValueError(f"coarse_descendants must be one of {', '.join(COARSE_DESCENDANTS)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------- C-HMCNN
class CHMCNN(_TrunkNet):
    """C-HMCNN(h): Giunchiglia & Lukasiewicz, "Coherent Hierarchical Multi-Label Classification Networks",
    NeurIPS 2020, on the HRN trunk.

    ``h``: pooled trunk features (B, C) -> ``num_layers`` x [Linear, BN, ReLU, Dropout] of ``width`` -> Linear ->
    z (B, N), one sigmoid output per node. The outputs are made coherent by the max-constraint module
    ``MCM(h)_v = max_{d ⊒ v} h_d`` (d ranges over v and its descendants), so a parent is never less likely than
    any of its children. Because the max commutes with the sigmoid, ``MCM(sigmoid(z)) = sigmoid(MCM(z))``.

    Output (a :class:`BaselineOutput`): ``sigmoid`` = MCM(h) split per level, (B, n_l) each; ``logits`` =
    MCM(z) split per level; ``leaf_logits`` = the leaf part of z (MCM is the identity on leaves), (B, n_L);
    ``extras["node_logits"]`` = the unconstrained z (B, N), which :class:`MCLoss` needs.

    Coarse-labelled samples: the label set of a sample labelled at node v is {v} ∪ ancestors(v) (positives);
    every other node is a negative — including v's descendants — under :class:`MCLoss` with the default
    ``coarse_descendants="negative"``. This is how the authors train: their HMC benchmarks (FunCat, GO, ...)
    annotate many samples down to an internal class only, encode the classes below it as 0, and MCLoss is a
    plain BCE over all N outputs; the paper has no notion of an unknown label. ``coarse_descendants="ignore"``
    (an ablation) leaves v's descendants out of the loss instead.

    Args:
        hierarchy: the label tree (its level sizes and descendant matrix are kept).
        trunk, pretrained, weights, trunk_lr_scale, channels_last: as :class:`hrn.model.HRN`.
        width: hidden width of ``h``; default C / 2 (HRN's F). The authors tuned it per tabular dataset.
        num_layers: hidden layers of ``h`` (>= 0; 0 = a linear head).
        dropout: dropout after each hidden layer (the authors used dropout on tabular data; off like HRN).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str = "resnet50",
        pretrained: bool = False,
        weights: str | Path | None = None,
        width: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        trunk_lr_scale: float = 0.1,
        channels_last: bool = False,
    ) -> None:
        super().__init__(hierarchy, trunk, pretrained, weights, trunk_lr_scale, channels_last)
        if num_layers < 0:
            raise ModelError(f"model.num_layers={num_layers}: must be >= 0")
        width = width or self.channels // 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        dims = [self.channels] + [width] * num_layers
        self.hidden = nn.Sequential(*(_fc(a, b, dropout) for a, b in zip(dims[:-1], dims[1:], strict=True)))
        self.out = nn.Linear(dims[-1], hierarchy.num_nodes)
        self.register_buffer("descendants", hierarchy.ancestors.T.contiguous(), persistent=False)
        self._finish()

    def forward(self, images: torch.Tensor) -> BaselineOutput:
        """(B, 3, H, W) -> :class:`BaselineOutput` (see the class docstring)."""
        z = self.out(self.hidden(self.pool(self.trunk_features(images)).flatten(1)))  # (B, N)
        constrained = max_constraint(z, self.descendants)  # (B, N), = logit of MCM(sigmoid(z))
        logits = list(torch.split(constrained, self.level_sizes, dim=1))
        return BaselineOutput(
            sigmoid=[t.sigmoid() for t in logits],
            logits=logits,
            leaf_logits=logits[-1],
            extras={"node_logits": z},
        )


class MCLoss(_TargetsMixin):
    """MCLoss of C-HMCNN (Giunchiglia & Lukasiewicz, NeurIPS 2020): BCE over all N nodes where a positive node v
    is predicted by ``max_{d ⊒ v} y_d · h_d`` (its best *positive* descendant) and a negative node by MCM(h)_v.

    Computed in logit space (the max commutes with the sigmoid, so it equals the paper's BCE on probabilities,
    but stays finite for large logits): positives use the max of z over v's positive descendants, negatives
    MCM(z); then ``binary_cross_entropy_with_logits``, averaged over the (B, N) entries that count.

    Args:
        hierarchy: the label tree.
        coarse_descendants: what a coarse label's descendants are: ``"negative"`` (the authors' encoding, see
            :class:`CHMCNN`) or ``"ignore"`` (left out of the mean).

    Terms: ``mcloss``.
    """

    def __init__(self, hierarchy: Hierarchy, coarse_descendants: str = "negative") -> None:
        super().__init__()
        self.coarse_descendants = _check_coarse(coarse_descendants)
        self._register_tree(hierarchy)

    def forward(self, output: BaselineOutput, targets: torch.Tensor) -> LossTerms:
        """``output.extras["node_logits"]``: (B, N) unconstrained z; ``targets``: (B,) node indices, any level."""
        z = output.extras["node_logits"].float()  # (B, N)
        y = self._positives(targets)  # (B, N) bool
        negative_pred = max_constraint(z, self.descendants)  # (B, N)
        # (B, N, N): d is a positive descendant of v; the row of a positive v always holds v itself.
        pos_desc = self.descendants.unsqueeze(0) & y.unsqueeze(1)
        positive_pred = torch.where(pos_desc, z.unsqueeze(1), float("-inf")).amax(dim=-1)  # -inf off y
        pred = torch.where(y, positive_pred, negative_pred)
        bce = F.binary_cross_entropy_with_logits(pred, y.to(pred.dtype), reduction="none")
        if self.coarse_descendants == "ignore":
            loss = _masked_mean(bce, ~self._unknown(targets))
        else:
            loss = bce.mean()
        return LossTerms(loss, {"mcloss": loss})


# ---------------------------------------------------------------------------------------------- HMCN-F
class HMCNF(_TrunkNet):
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
    and every other node = 0, v's descendants included (:class:`HMCNFLoss` default
    ``coarse_descendants="negative"``): the authors train on the same FunCat/GO HMC benchmarks, where a sample
    annotated down to an internal class has 0 below it, with plain BCE over all outputs.

    Args:
        hierarchy: the label tree.
        trunk, pretrained, weights, trunk_lr_scale, channels_last: as :class:`hrn.model.HRN`.
        width: width of the global-flow layers; default C / 2 (HRN's F; the paper used 384 on tabular data).
        dim: width of each level's local transformation layer (default 512, HRN's D).
        beta: β, the weight of the local outputs in P_F (0.5 in the paper), in [0, 1].
        dropout: dropout after every FC layer (the authors used dropout on tabular data; off like HRN).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str = "resnet50",
        pretrained: bool = False,
        weights: str | Path | None = None,
        width: int | None = None,
        dim: int = 512,
        beta: float = 0.5,
        dropout: float = 0.0,
        trunk_lr_scale: float = 0.1,
        channels_last: bool = False,
    ) -> None:
        super().__init__(hierarchy, trunk, pretrained, weights, trunk_lr_scale, channels_last)
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
        self._finish()

    def forward(self, images: torch.Tensor) -> BaselineOutput:
        """(B, 3, H, W) -> :class:`BaselineOutput` (see the class docstring)."""
        x = self.pool(self.trunk_features(images)).flatten(1)  # (B, C)
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
            sigmoid=list(torch.split(log_p.exp(), self.level_sizes, dim=1)),
            logits=final_logits,
            leaf_logits=final_logits[-1],
            extras={"local_logits": local_logits, "global_logits": global_logits},
        )


class HMCNFLoss(_TargetsMixin):
    """HMCN-F's loss (Wehrmann et al., ICML 2018): ``BCE(P_L) + BCE(P_G) + λ · L_H`` with the hierarchical
    violation penalty ``L_H = mean over samples and non-root nodes c of max(0, P_F[c] - P_F[parent(c)])²``.

    Each BCE is the mean over the (B, N) entries that count (all of them by default), on the logits.

    Args:
        hierarchy: the label tree.
        violation_weight: λ (0.1 in the paper).
        coarse_descendants: ``"negative"`` (the authors' encoding, see :class:`HMCNF`) or ``"ignore"``.

    Terms: ``local``, ``global``, ``violation`` (already multiplied by λ).
    """

    def __init__(
        self, hierarchy: Hierarchy, violation_weight: float = 0.1, coarse_descendants: str = "negative"
    ) -> None:
        super().__init__()
        self.coarse_descendants = _check_coarse(coarse_descendants)
        self.violation_weight = violation_weight
        self._register_tree(hierarchy)
        child = torch.nonzero(hierarchy.parent >= 0).flatten()
        self.register_buffer("child", child, persistent=False)  # (N - n_1,)
        self.register_buffer("child_parent", hierarchy.parent[child], persistent=False)  # (N - n_1,)

    def forward(self, output: BaselineOutput, targets: torch.Tensor) -> LossTerms:
        """``output``: from :class:`HMCNF`; ``targets``: (B,) node indices at any level."""
        y = self._positives(targets).float()  # (B, N)
        known = ~self._unknown(targets) if self.coarse_descendants == "ignore" else torch.ones_like(y).bool()
        terms = {}
        for name in ("local", "global"):
            logits = output.extras[f"{name}_logits"].float()
            terms[name] = _masked_mean(F.binary_cross_entropy_with_logits(logits, y, reduction="none"), known)
        p = output.scores("sigmoid").float()  # (B, N) final P_F
        gap = (p[:, self.child] - p[:, self.child_parent]).clamp_min(0.0)
        terms["violation"] = self.violation_weight * gap.square().mean()
        return LossTerms(sum(terms.values()), terms)


# ---------------------------------------------------------------------------------------------- Chang et al.
class ChangNet(_TrunkNet):
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
    l counts in the CE of levels 1..l (its label and its ancestors) and not below (:class:`ChangLoss`). The
    paper trains on full paths only; a per-level softmax has no way to say "none of these", so leaving the
    unknown levels out is the only faithful use of such a sample.

    Args:
        hierarchy: the label tree.
        trunk, pretrained, weights, trunk_lr_scale, channels_last: as :class:`hrn.model.HRN`.
        dim: width of each level's feature branch (the authors: 600 split over CUB's 3 levels = 200).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str = "resnet50",
        pretrained: bool = False,
        weights: str | Path | None = None,
        dim: int = 200,
        trunk_lr_scale: float = 0.1,
        channels_last: bool = False,
    ) -> None:
        super().__init__(hierarchy, trunk, pretrained, weights, trunk_lr_scale, channels_last)
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
        self._finish()

    def forward(self, images: torch.Tensor) -> BaselineOutput:
        """(B, 3, H, W) -> :class:`BaselineOutput` (see the class docstring)."""
        x = self.norm(self.pool(self.trunk_features(images)).flatten(1))  # (B, C)
        feats = [branch(x) for branch in self.branches]  # f_l, (B, dim) each
        logits = [
            clf(torch.cat([feats[lvl], *(f.detach() for f in feats[lvl + 1 :])], dim=1))
            for lvl, clf in enumerate(self.classifiers)
        ]  # (B, n_l) softmax logits
        log_probs = [t.log_softmax(dim=1) for t in logits]
        return BaselineOutput(
            sigmoid=[t.exp() for t in log_probs],
            logits=[_log_odds(t) for t in log_probs],
            leaf_logits=logits[-1],
            extras={"softmax_logits": torch.cat(logits, dim=1)},
        )


class ChangLoss(_TargetsMixin):
    """Chang et al.'s loss (CVPR 2021): the sum over levels of the softmax cross-entropy of each level.

    Level l's CE is averaged over the samples whose label is at level l or finer (the level-l class is known);
    it is 0 (graph kept) when the batch has none.

    Terms: ``ce_l1``, ..., ``ce_lL``.
    """

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        self._register_tree(hierarchy)

    def forward(self, output: BaselineOutput, targets: torch.Tensor) -> LossTerms:
        """``output.extras["softmax_logits"]``: (B, N); ``targets``: (B,) node indices at any level."""
        per_level = torch.split(output.extras["softmax_logits"].float(), self.level_sizes, dim=1)
        level_targets = self.ancestor_at_level[:, targets]  # (L, B), -1 where unknown
        terms = {}
        for lvl, (logits, t) in enumerate(zip(per_level, level_targets, strict=True), start=1):
            ce = F.cross_entropy(logits, t.clamp_min(0), reduction="none")  # (B,)
            terms[f"ce_l{lvl}"] = _masked_mean(ce, t >= 0)
        return LossTerms(sum(terms.values()), terms)


# ---------------------------------------------------------------------------------------------- HMC-LMLP
class HMCLMLP(_TrunkNet):
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

    Coarse-labelled samples: per-level BCE on the levels where the label is known (:class:`HMCLMLPLoss`): a
    sample labelled at level l is a one-hot target for levels 1..l and is left out of the deeper levels' losses.
    The paper does not treat unknown labels; leaving the sample out of the levels it has no class for is the
    local-classifier convention (each level's network learns from the samples labelled at its level), and an
    all-zero target there would teach "none of these classes", which is false for a coarse label.

    Args:
        hierarchy: the label tree.
        trunk, pretrained, weights, trunk_lr_scale, channels_last: as :class:`hrn.model.HRN`.
        width: hidden width of each level's MLP; default C / 2 (HRN's F).
        dropout: dropout after the hidden layer (off, like HRN).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str = "resnet50",
        pretrained: bool = False,
        weights: str | Path | None = None,
        width: int | None = None,
        dropout: float = 0.0,
        trunk_lr_scale: float = 0.1,
        channels_last: bool = False,
    ) -> None:
        super().__init__(hierarchy, trunk, pretrained, weights, trunk_lr_scale, channels_last)
        width = width or self.channels // 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        previous = [0, *self.level_sizes[:-1]]
        self.mlps = nn.ModuleList(
            nn.Sequential(_fc(self.channels + prev, width, dropout), nn.Linear(width, n))
            for prev, n in zip(previous, self.level_sizes, strict=True)
        )
        self._finish()

    def forward(self, images: torch.Tensor) -> BaselineOutput:
        """(B, 3, H, W) -> :class:`BaselineOutput` (see the class docstring)."""
        x = self.pool(self.trunk_features(images)).flatten(1)  # (B, C)
        logits: list[torch.Tensor] = []
        sigmoid: list[torch.Tensor] = []
        for mlp in self.mlps:
            inp = torch.cat([x, sigmoid[-1].detach()], dim=1) if sigmoid else x
            logits.append(mlp(inp))  # (B, n_l)
            sigmoid.append(logits[-1].sigmoid())
        return BaselineOutput(sigmoid=sigmoid, logits=logits, leaf_logits=logits[-1])


class HMCLMLPLoss(_TargetsMixin):
    """HMC-LMLP's loss, all levels at once: ``sum over levels l of BCE(level-l logits, one-hot level-l class)``.

    Level l's BCE is the mean over its n_l outputs and the samples whose label is at level l or finer; 0 (graph
    kept) when the batch has none.

    Terms: ``bce_l1``, ..., ``bce_lL``.
    """

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        self._register_tree(hierarchy)

    def forward(self, output: HRNOutput, targets: torch.Tensor) -> LossTerms:
        """``output.logits``: per level (B, n_l); ``targets``: (B,) node indices at any level."""
        level_targets = self.ancestor_at_level[:, targets]  # (L, B), -1 where unknown
        terms = {}
        for lvl, (logits, t) in enumerate(zip(output.logits, level_targets, strict=True), start=1):
            logits = logits.float()
            y = F.one_hot(t.clamp_min(0), logits.shape[1]).to(logits.dtype)  # (B, n_l)
            bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
            terms[f"bce_l{lvl}"] = _masked_mean(bce, (t >= 0).unsqueeze(1).expand_as(bce))
        return LossTerms(sum(terms.values()), terms)
