"""The LightningModule: HRN's training and evaluation steps, the one place (with the rest of :mod:`hrn.training`)
that knows about Lightning.

It is *given* its network, loss, optimiser and scheduler (the last two as partials, from Hydra's
``_partial_: true``), so the same module trains HRN and the compared methods.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from hrn.data.augment import normalize
from hrn.data.base import Batch
from hrn.description import CHECKPOINT_KEY, RNG_KEY, ModelDescription
from hrn.errors import HRNError
from hrn.losses import HierarchicalLoss
from hrn.metrics import HierarchicalMetrics, level_predictions
from hrn.training.checkpointing import rng_states, set_rng_states
from hrn.tree import Hierarchy, TreeProbabilities, check_source, check_tree_scores

__all__ = [
    "MIN_GRAD_SCALE",
    "NONFINITE_PATIENCE",
    "SCALER_CHECK_EVERY",
    "HRNModule",
    "NonFiniteError",
    "ResumeError",
    "StaticCompiled",
]

NONFINITE_PATIENCE = 10
"""Under a GradScaler, the steps in a row with a non-finite loss after which the run stops (a few are normal while
the scaler finds its scale; a loss that stays NaN is not)."""
MIN_GRAD_SCALE = 2.0**-8
"""Under a GradScaler, the scale under which the run stops: from 2^16 it takes 24 overflows in a row with no good
step between to get here, and gradients scaled that far down underflow in float16."""
SCALER_CHECK_EVERY = 10
"""Under a GradScaler, how often (in steps) the guard reads its device-side counter and the scale."""


class NonFiniteError(HRNError):
    """A loss term or gradient became NaN or infinite; training stops after saving the last good state."""

    kind = "failed"  # the run started and broke, as opposed to settings refused before it started


class ResumeError(HRNError):
    """A checkpoint that cannot continue this run (its training labels differ)."""


class StaticCompiled:
    """``net`` through ``torch.compile(dynamic=False)`` at one input shape per mode (train / eval): the first shape
    seen in that mode, or a later one of the same image size and a larger batch (when an epoch happens to start
    with a partial batch). Any other shape (the last, partial batch of an epoch) runs the eager ``net``.

    Why: with dynamic shapes allowed, the partial batch makes torch.compile trace the network again with a
    symbolic batch size, once for training and once for evaluation, and run the slower dynamic graph from then
    on; with static shapes it would compile a graph for every batch size it meets. This way there is one graph
    for training and one for evaluation (validation and test share it) with fixed shapes, and one eager batch
    per epoch. Not an ``nn.Module``, so the compiled wrapper stays out of state dicts and checkpoint keys.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.compiled = torch.compile(net, dynamic=False)
        self.shapes: dict[bool, torch.Size] = {}  # net.training -> the input shape compiled for that mode

    def __call__(self, images: torch.Tensor):
        shape = self.shapes.setdefault(self.net.training, images.shape)
        if images.shape[1:] == shape[1:] and images.shape[0] > shape[0]:
            shape = self.shapes[self.net.training] = images.shape
        return (self.compiled if images.shape == shape else self.net)(images)


class HRNModule(L.LightningModule):
    """Trains and evaluates a hierarchical classifier.

    Args:
        net: maps images (B, 3, H, W) to an :class:`hrn.nets.HRNOutput`-like object (``sigmoid``, ``leaf_logits``).
        loss: a :class:`hrn.losses.HierarchicalLoss`: ``loss(output, targets) -> LossTerms`` (total and named
            terms), and its ``tree_scores``, where the node probabilities come from.
        hierarchy: the label tree the targets index into.
        optimizer: ``optimizer(params) -> torch.optim.Optimizer``; the net's parameter groups carry an
            ``lr_scale`` that multiplies the optimiser's learning rate (trunk 10x smaller in the paper). None for
            a module that only evaluates (``hrn.evaluate``).
        scheduler: ``scheduler(optimizer) -> LRScheduler`` stepped once per epoch, or None.
        description: what the model says of itself (:class:`~hrn.description.ModelDescription`: network and
            loss settings, transform sizes, dataset, calibration), written into every checkpoint with this
            module's tree and tree scores, so a checkpoint describes itself. None: the tree and tree scores only.
        compile: run the network through ``torch.compile`` (``compile=true``): one static-shape graph for
            training and one for evaluation, partial batches eager (:class:`StaticCompiled`).
        channels_last: keep the network's weights and its input batches in channels-last memory format
            (``channels_last=true``: faster convolutions on most GPUs).
        threshold: the marginal a predicted node must reach for the hierarchical precision, recall and F1 and the
            coverage of validation and test (``threshold=``; 0: the whole path).
        calibration: temperatures fitted by ``hrn.calibrate`` (``tree_temperature``, ``leaf_temperature``), for
            evaluating a calibrated model; None: none.
        probabilities: the node probabilities of the validation and test metrics (marginal accuracies, paths,
            hP / hR / hF, coverage, ECE; AP too when not ``"tree"``), one of :data:`hrn.tree.SOURCES`: ``"tree"``
            (the paper's, what training reports) or ``hrn.evaluate probabilities=leaf|mix``.

    Batches are :class:`~hrn.data.base.Batch` es (images, targets, dataset indices) or plain tuples; uint8 images
    (what the package's loaders yield, already cropped and flipped) are normalised to float once they are on the
    training device.

    Logged per stage: ``{stage}/loss`` and each loss term ``{stage}/loss_<term>``; ``{stage}/acc_l{l}`` for
    l = 1..L (sigmoid head for l < L, leaf softmax head for l = L) and ``{stage}/acc_leaf_sigmoid``. A sample
    counts at level l only when its label is at level l or finer, so in training (relabelled data) only
    leaf-labelled samples count for leaf accuracy.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: HierarchicalLoss,
        hierarchy: Hierarchy,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        description: ModelDescription | None = None,
        compile: bool = False,
        channels_last: bool = False,
        threshold: float = 0.0,
        calibration: dict | None = None,
        probabilities: str = "tree",
    ) -> None:
        super().__init__()
        if not isinstance(loss, HierarchicalLoss):
            raise TypeError(
                f"{type(loss).__name__} is not a hierarchical loss: it needs tree_scores and __call__"
            )
        self.channels_last = channels_last
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        # the compiled wrapper is kept outside the module tree, so state dicts (and checkpoints) keep their keys
        object.__setattr__(self, "_forward", StaticCompiled(net) if compile else net)
        self.loss = loss
        self.hierarchy = hierarchy
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_levels = hierarchy.num_levels
        # (L, N): the level-l class implied by each label, -1 when the label is coarser than level l.
        self.register_buffer("ancestor_at_level", hierarchy.ancestor_at_level, persistent=False)
        # Training: running per-level accuracy. Validation and test: the full hierarchical metrics (hrn.metrics).
        # A level of one class (a tree with one root) is kept and always right; torchmetrics counts from 2 classes.
        self.train_metrics = nn.ModuleDict(
            {
                f"acc_l{lvl}": MulticlassAccuracy(max(n, 2), average="micro", ignore_index=-1)
                for lvl, n in enumerate(hierarchy.level_sizes, start=1)
            }
        )
        self.train_metrics["acc_leaf_sigmoid"] = MulticlassAccuracy(
            max(hierarchy.level_sizes[-1], 2), average="micro", ignore_index=-1
        )
        self.eval_metrics = nn.ModuleDict(
            {stage: HierarchicalMetrics(hierarchy, threshold) for stage in ("val", "test")}
        )
        # Node probabilities (marginal predictions, AP, hrn.predict's path) come from where the loss says. Losses
        # that train only the leaf head (flat baselines) read them from the leaf softmax, and answer coarse levels
        # with the leaf prediction's ancestors: nothing trains their sigmoid heads.
        self.tree_scores = check_tree_scores(loss.tree_scores)
        self.coarse_from_leaf = self.tree_scores == "leaf"
        self.leaf_offset = hierarchy.offsets[-2]
        self.probabilities = TreeProbabilities.calibrated(hierarchy, calibration)
        self.source = check_source(probabilities)
        # AP ranks by the probabilities a user gets: a calibrated model's calibrated marginals, or the other
        # sources' node probabilities, not the raw heads
        self.ap_from_marginals = self.coarse_from_leaf or calibration is not None or self.source != "tree"
        self._nonfinite_streak = torch.zeros(
            (), dtype=torch.long
        )  # mixed precision: non-finite losses in a row
        self.description = (description or ModelDescription(tree=hierarchy)).replace(
            tree=hierarchy, tree_scores=self.tree_scores
        )

    def forward(self, images: torch.Tensor):
        return self.net(images)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 images become float on the training device: a quarter of the bytes cross to it, and the float
        work runs there on the whole batch."""
        if isinstance(batch, Batch) and batch.images.dtype == torch.uint8:
            batch = batch._replace(images=normalize(batch.images))
        if self.channels_last:
            images = batch[0].contiguous(memory_format=torch.channels_last)
            batch = batch._replace(images=images) if isinstance(batch, Batch) else (images, *batch[1:])
        return batch

    def level_predictions(self, output) -> torch.Tensor:
        """(B, L) local class predicted at each level: the paper's heads, or the leaf prediction's ancestors."""
        if self.coarse_from_leaf:
            return self.ancestor_at_level[:, output.leaf_logits.argmax(1) + self.leaf_offset].T
        return level_predictions(output.level_probs, output.leaf_logits)

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, targets = batch[0], batch[1]
        index = batch[2] if len(batch) > 2 else None  # dataset indices, to count each image once under DDP
        output = self._forward(images)
        terms = self.loss(output, targets)
        self._last_terms = terms.terms
        batch_size = targets.shape[0]
        sync = stage != "train"
        self.log(
            f"{stage}/loss",
            terms.total,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=sync,
        )
        for name, value in terms.terms.items():
            self.log(
                f"{stage}/loss_{name}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=sync,
            )
        if stage == "train":
            level_targets = self.ancestor_at_level[:, targets]  # (L, B)
            preds = self.level_predictions(output)  # (B, L)
            for lvl in range(self.num_levels):
                self.train_metrics[f"acc_l{lvl + 1}"](preds[:, lvl], level_targets[lvl])
            self.train_metrics["acc_leaf_sigmoid"](output.level_probs[-1].argmax(1), level_targets[-1])
            for name, metric in self.train_metrics.items():
                self.log(
                    f"train/{name}",
                    metric,
                    on_step=False,
                    on_epoch=True,
                    prog_bar=name == "acc_l1",
                    batch_size=batch_size,
                )
        else:
            with torch.no_grad():
                marginals = self.probabilities.node_probabilities(output, self.tree_scores, self.source)
            self.eval_metrics[stage].update(
                output.level_probs,
                output.leaf_logits,
                marginals,
                targets,
                index,
                self.level_predictions(output),
                marginals if self.ap_from_marginals else None,  # AP: the paper's heads, or the marginals
            )
        return terms.total

    def _log_eval(self, stage: str) -> None:
        metric = self.eval_metrics[stage]
        values = metric.compute()  # gathers all processes' samples and drops sampler padding: already global
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "acc_l1")
        metric.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        scaler = self._grad_scaler()
        if scaler is not None:  # mixed precision with a GradScaler: count on the device, read every few steps
            self._nonfinite_streak = torch.where(
                loss.detach().isfinite(), 0, self._nonfinite_streak.to(loss.device) + 1
            )
            if (self.trainer.global_step + 1) % SCALER_CHECK_EVERY == 0:
                self._check_scaled_run(scaler)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError(
                "this HRNModule was built without an optimizer: it evaluates, it does not train"
            )
        groups = (
            self.net.param_groups() if hasattr(self.net, "param_groups") else [{"params": self.parameters()}]
        )
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.description.to_dict()
        # Lightning restores weights, optimiser, scheduler and loop counters, but not the random generators that
        # decide the next epoch's shuffling and augmentations; keep them so a resumed run repeats an unbroken one.
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        tree = checkpoint.get(CHECKPOINT_KEY, {}).get("tree")
        if tree is not None and tree != self.hierarchy.to_dict():
            raise ResumeError(
                "the checkpoint was trained on another tree than this run's; resume with the dataset the run "
                "started with"
            )
        saved = (
            checkpoint.get(CHECKPOINT_KEY, {}).get("data", {}).get("protocol", {}).get("train_labels_sha256")
        )
        now = self.description.data.get("protocol", {}).get("train_labels_sha256")
        if saved and now and saved != now:
            raise ResumeError(
                "the checkpoint was trained on other training labels than this run's (on the same tree: "
                "relabel_ratio, relabel.order, seed or the dataset's images differ); resume with the settings the "
                "run started with"
            )
        self._resume_rng = checkpoint.get(RNG_KEY)

    def on_train_start(self) -> None:
        states = getattr(self, "_resume_rng", None)
        if states is not None:
            set_rng_states(states)
            self._resume_rng = None

    # ---------------------------------------------------------------- non-finite guard
    # Without a GradScaler (fp32, bf16-mixed) a non-finite loss or gradient is a real failure: the run stops at that
    # step, before the optimiser uses it, with the last good weights saved. It costs one read of a device flag per
    # step and no collective: a non-finite loss makes non-finite gradients, and under DDP every process holds the
    # same (all-reduced) gradients, so every process decides the same. With a GradScaler (16-mixed), a step whose
    # scaled gradients overflow is the scaler's business (it skips the step and lowers its scale); the run stops
    # only when the scale collapses or the loss itself stays non-finite, read every SCALER_CHECK_EVERY steps.

    def _grad_scaler(self):
        plugin = getattr(self._trainer, "precision_plugin", None) if self._trainer is not None else None
        return getattr(plugin, "scaler", None)

    def _save_and_stop(self, what: str) -> None:
        """Stop the run after saving the current (still finite) weights, naming the step and what broke."""
        step = self.trainer.global_step
        callback = self.trainer.checkpoint_callback
        folder = (
            Path(callback.dirpath)
            if callback is not None and callback.dirpath
            else Path(self.trainer.default_root_dir)
        )
        path = folder / f"last-good-step{step}.ckpt"
        self.trainer.save_checkpoint(path)
        raise NonFiniteError(
            f"step {step}: {what}; stopped, the last good state is in {path} "
            "(lower the learning rate, try trainer.gradient_clip_val or check the data)"
        )

    def _check_scaled_run(self, scaler) -> None:
        streak = int(self._nonfinite_streak)  # the read every SCALER_CHECK_EVERY steps
        scale = float(scaler.get_scale())
        what = ""
        if streak >= NONFINITE_PATIENCE:
            what = f"the loss has not been finite for {streak} steps in a row (NaN or inf)"
        elif scale < MIN_GRAD_SCALE:
            what = (
                f"the GradScaler's scale collapsed to {scale:.3g} (every step's gradients overflow, so no step "
                "is taken)"
            )
        # the streak is each process's own: decide together, so all stop or none
        if self.trainer.strategy.reduce_boolean_decision(bool(what), all=False):
            self._save_and_stop(what or "another process's loss or GradScaler scale is not finite")

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._grad_scaler() is not None:
            return  # the scaler skips an overflowing step itself
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all()):  # one read a step
            return
        bad = [name for name, value in self._last_terms.items() if not bool(value.detach().isfinite())]
        self._save_and_stop(f"the loss term '{bad[0]}' is not finite" if bad else "a gradient is not finite")
