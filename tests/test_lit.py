"""Layer 3: the LightningModule — loss terms, per-level accuracy rules, optimiser groups, checkpoint contents."""

import functools

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hrn
from hrn import HRN, CompositeLoss, Hierarchy, HRNOutput, ModelDescription
from hrn.checkpoints import CHECKPOINT_KEY
from hrn.data.base import Batch
from hrn.losses import LeafCELoss
from hrn.training import HRNModule


@pytest.fixture
def tree() -> Hierarchy:
    # levels: [a, x] / [b, c, y] / [d, e, f, z]
    return Hierarchy.from_edges(
        [("a", "b"), ("a", "c"), ("b", "d"), ("b", "e"), ("c", "f"), ("x", "y"), ("y", "z")]
    )


class ScriptedNet(nn.Module):
    """Returns, for the sample whose 'image' holds index i, one-hot predictions of the script's i-th row."""

    def __init__(self, h: Hierarchy, script: list[tuple[int, int, int, int]]) -> None:
        super().__init__()
        self.sizes = h.level_sizes
        self.script = torch.tensor(
            script
        )  # per sample: predicted class at level 1, 2, 3 (sigmoid), leaf softmax
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        rows = self.script[images[:, 0].long()]
        sig = [
            0.1 + 0.8 * nn.functional.one_hot(rows[:, lvl], n).float() + self.w
            for lvl, n in enumerate(self.sizes)
        ]
        leaf = 5.0 * nn.functional.one_hot(rows[:, 3], self.sizes[-1]).float() + self.w
        return HRNOutput(sig, [torch.logit(s) for s in sig], leaf)


def make_module(h, net):
    return HRNModule(
        net,
        CompositeLoss(h),
        h,
        functools.partial(torch.optim.SGD, lr=0.1),
        None,
        description=ModelDescription(tree=h, net={"note": "test"}),
    )


def loader(targets):
    x = torch.arange(len(targets)).float()[:, None]
    return DataLoader(TensorDataset(x, torch.tensor(targets)), batch_size=3)  # 3 ∤ 5: a partial batch


def trainer(tmp_path, **kw):
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


def test_validation_accuracy_per_level_by_hand(tree, tmp_path):
    h = tree
    d, e, f, z = (h.index(n) for n in "defz")
    targets = [d, e, f, z, d]
    # truth per level (local):  l1: a a a x a | l2: b b c y b | l3: d e f z d
    script = [
        (0, 0, 0, 0),  # all right
        (0, 0, 0, 1),  # l3 sigmoid wrong (says d), softmax right (e)
        (0, 1, 2, 0),  # softmax wrong (d), sigmoid right (f)
        (0, 2, 3, 3),  # l1 wrong (a), l2 right (y), leaf right
        (1, 1, 1, 1),  # all wrong
    ]
    module = make_module(h, ScriptedNet(h, script))
    (metrics,) = trainer(tmp_path).validate(module, loader(targets), verbose=False)
    assert metrics["val/acc_l1"] == pytest.approx(3 / 5)
    assert metrics["val/acc_l2"] == pytest.approx(4 / 5)
    assert metrics["val/acc_l3"] == pytest.approx(3 / 5)  # softmax head: rows 0, 1, 3
    assert metrics["val/acc_leaf_sigmoid"] == pytest.approx(3 / 5)  # sigmoid head: rows 0, 2, 3
    for key in ("val/loss", "val/loss_tree", "val/loss_leaf_ce"):
        assert key in metrics
    assert metrics["val/loss"] == pytest.approx(
        metrics["val/loss_tree"] + metrics["val/loss_leaf_ce"], rel=1e-5
    )


def test_training_counts_only_labels_at_or_below_a_level(tree, tmp_path):
    h = tree
    d, b, x, z = (h.index(n) for n in "dbxz")
    targets = [d, b, x]  # a leaf, a level-2 and a level-1 label
    script = [(0, 0, 0, 0), (0, 1, 0, 0), (1, 2, 3, 3)]  # leaf right; b wrong at l2; x right at l1
    module = make_module(h, ScriptedNet(h, script))
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0, enable_checkpointing=False)
    t.fit(module, loader(targets))
    m = t.callback_metrics
    assert m["train/acc_l1"] == pytest.approx(1.0)  # all three count
    assert m["train/acc_l2"] == pytest.approx(1 / 2)  # d and b count
    assert m["train/acc_l3"] == pytest.approx(1.0)  # only the leaf-labelled sample counts
    assert m["train/acc_leaf_sigmoid"] == pytest.approx(1.0)


def test_optimizer_groups_and_cosine_schedule(tree):
    net = HRN(tree, trunk="resnet18", width=16, dim=8)
    sched = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4)
    module = HRNModule(net, CompositeLoss(tree), tree, functools.partial(torch.optim.SGD, lr=0.002), sched)
    conf = module.configure_optimizers()
    opt, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0002, 0.002])
    assert conf["lr_scheduler"]["interval"] == "epoch"
    for _ in range(2):
        opt.step()
        scheduler.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.002 / 2 * (1 + 0))  # cos(π·2/4) = 0


def test_real_hrn_trains_a_step_and_the_checkpoint_describes_itself(tree, tmp_path):
    net = HRN(tree, trunk="resnet18", width=16, dim=8)
    module = HRNModule(
        net,
        CompositeLoss(tree),
        tree,
        functools.partial(torch.optim.SGD, lr=0.01),
        None,
        description=ModelDescription(tree=tree, net={"_target_": "hrn.nets.HRN", "trunk": "resnet18"}),
    )
    images = torch.randn(4, 3, 32, 32)
    targets = torch.tensor([tree.index(n) for n in ("d", "f", "c", "z")])
    data = DataLoader(TensorDataset(images, targets), batch_size=4)
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(module, data)
    assert torch.isfinite(t.callback_metrics["train/loss_step"])
    t.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert Hierarchy.from_dict(ckpt[CHECKPOINT_KEY]["tree"]) == tree
    assert ckpt[CHECKPOINT_KEY]["tree"]["levels"][0] == ["a", "x"]
    assert ckpt[CHECKPOINT_KEY]["net"] == {"_target_": "hrn.nets.HRN", "trunk": "resnet18"}
    assert (
        ckpt[CHECKPOINT_KEY]["tree_scores"] == "sigmoid"
        and ckpt[CHECKPOINT_KEY]["hrn_version"] == hrn.__version__
    )


def test_leaf_only_methods_rank_ap_by_the_leaf_softmax(tree, tmp_path):
    """Leaf CE trains no sigmoid head: its AP scores come from the leaf softmax, so a net whose sigmoid heads
    say the opposite of its (right) leaf head still gets AP 1."""
    h = tree
    d, e, f, z = (h.index(n) for n in "defz")
    targets = [d, e, f, z, d]
    script = [(1, 2, 3, 0), (1, 2, 3, 1), (1, 0, 0, 2), (0, 0, 0, 3), (1, 2, 3, 0)]  # heads wrong, leaf right
    module = HRNModule(
        ScriptedNet(h, script), LeafCELoss(h), h, functools.partial(torch.optim.SGD, lr=0.1), None
    )
    (metrics,) = trainer(tmp_path).validate(module, loader(targets), verbose=False)
    assert metrics["val/acc_l1"] == 1.0 and metrics["val/acc_l2"] == 1.0  # the leaf prediction's ancestors
    assert metrics["val/ap_micro"] == pytest.approx(1.0)
    paper = make_module(h, ScriptedNet(h, script))  # the same net under HRN's loss: AP from its sigmoid heads
    (metrics,) = trainer(tmp_path).validate(paper, loader(targets), verbose=False)
    assert metrics["val/ap_micro"] < 0.9


def test_channels_last_converts_the_network_and_its_batches(tree):
    torch.manual_seed(0)
    net = HRN(tree, trunk="resnet18", width=16, dim=8).eval()
    plain = make_module(tree, net)
    cl = HRNModule(
        HRN(tree, trunk="resnet18", width=16, dim=8).eval(), CompositeLoss(tree), tree, channels_last=True
    )
    cl.net.load_state_dict(net.state_dict())
    weight = cl.net.trunk[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    targets = torch.tensor([tree.index("d"), tree.index("z")])
    batch = cl.on_after_batch_transfer(Batch(images, targets, torch.arange(2)), 0)
    assert batch.images.dtype == torch.float32 and batch.images.is_contiguous(
        memory_format=torch.channels_last
    )
    want = plain.on_after_batch_transfer(Batch(images, targets, torch.arange(2)), 0)
    with torch.no_grad():
        torch.testing.assert_close(
            cl(batch.images).scores(), plain(want.images).scores(), rtol=1e-4, atol=1e-5
        )


def test_an_evaluation_only_module_has_no_optimizer(tree):
    module = HRNModule(HRN(tree, trunk="resnet18", width=16, dim=8), CompositeLoss(tree), tree)
    with pytest.raises(RuntimeError, match="built without an optimizer"):
        module.configure_optimizers()


def test_a_loss_states_where_probabilities_come_from(tree):
    class Bare(nn.Module):
        def forward(self, output, targets):
            return output.leaf_logits.sum()

    with pytest.raises(TypeError, match="Bare is not a hierarchical loss: it needs tree_scores"):
        HRNModule(HRN(tree, trunk="resnet18", width=16, dim=8), Bare(), tree)
    assert (
        HRNModule(HRN(tree, trunk="resnet18", width=16, dim=8), LeafCELoss(tree), tree).tree_scores == "leaf"
    )
