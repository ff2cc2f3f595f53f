"""The compared methods (hrn.nets.compared, hrn.losses.compared): shapes, hand-checked losses, C-HMCNN's coherence, one Lightning step and
a fast_dev_run through the real Hydra config for each."""

import functools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, TensorDataset

from hrn import Hierarchy, ModelDescription
from hrn.checkpoints import load_checkpoint
from hrn.cli.config import CONF_DIR
from hrn.losses import ChangLoss, HMCLMLPLoss, HMCNFLoss, MCLoss
from hrn.nets import CHMCNN, HMCLMLP, HMCNF, BaselineOutput, ChangNet
from hrn.nets.compared import max_constraint
from hrn.train import train
from hrn.training import HRNModule

METHODS = {  # config name: (network, loss, small network arguments, small Hydra overrides)
    "chmcnn": (CHMCNN, MCLoss, {"width": 16}, ["model.width=32"]),
    "hmcnf": (HMCNF, HMCNFLoss, {"width": 16, "dim": 8}, ["model.width=32", "model.dim=16"]),
    "chang": (ChangNet, ChangLoss, {"dim": 8}, ["model.dim=16"]),
    "hmclmlp": (HMCLMLP, HMCLMLPLoss, {"width": 16}, ["model.width=32"]),
}
SMALL_RUN = [  # tests/test_train.py's TINY without the HRN-specific widths
    "dataset.train_per_leaf=4",
    "dataset.val_per_leaf=2",
    "dataset.test_per_leaf=3",
    "dataset.batch_size=16",
    "callbacks.progress_bar.refresh_rate=0",
]


def sp(x: float) -> float:
    """softplus: the BCE of logit x against target 0; sp(-x) is the BCE against target 1."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture
def tree3() -> Hierarchy:
    h = Hierarchy.from_edges(
        [("a", "b"), ("a", "c"), ("b", "d"), ("b", "e"), ("c", "f"), ("x", "y"), ("y", "z")]
    )
    assert h.names == ["a", "x", "b", "c", "y", "d", "e", "f", "z"]  # the hand examples index this order
    return h


@pytest.fixture
def tree2() -> Hierarchy:
    h = Hierarchy.from_edges([("a", "b"), ("a", "c"), ("x", "y")])
    assert h.names == ["a", "x", "b", "c", "y"]
    return h


def output_with(sizes: list[int], **extras: torch.Tensor) -> BaselineOutput:
    """An output whose per-level fields are zeros: for the losses that read only ``extras``."""
    b = next(iter(extras.values())).shape[0]
    zeros = [torch.zeros(b, n) for n in sizes]
    return BaselineOutput(level_probs=zeros, level_logits=zeros, leaf_logits=zeros[-1], extras=extras)


# ---------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("name", list(METHODS))
def test_shapes_finite_and_probabilities(tree3, name):
    net_cls, _, kwargs, _ = METHODS[name]
    torch.manual_seed(0)
    net = net_cls(tree3, trunk="resnet18", **kwargs)
    out = net(torch.randn(3, 3, 32, 32))
    assert isinstance(out, BaselineOutput)
    assert [tuple(s.shape) for s in out.level_probs] == [(3, 2), (3, 3), (3, 4)]
    assert [tuple(s.shape) for s in out.level_logits] == [(3, 2), (3, 3), (3, 4)]
    assert tuple(out.leaf_logits.shape) == (3, 4)
    assert out.scores("sigmoid").shape == (3, 9)
    for t in [*out.level_probs, *out.level_logits, out.leaf_logits, *out.extras.values()]:
        assert torch.isfinite(t).all()
    s = out.scores("sigmoid")
    assert ((s > 0) & (s < 1)).all()
    # logits are the log-odds of the sigmoid outputs, whatever produced them
    torch.testing.assert_close(out.scores("logits").sigmoid(), s, rtol=1e-4, atol=1e-6)
    # leaf accuracy (argmax of leaf_logits) agrees with the leaf-level probabilities
    assert torch.equal(out.leaf_logits.argmax(1), out.level_probs[-1].argmax(1))


@pytest.mark.parametrize("name", list(METHODS))
def test_param_groups_split_trunk_and_head(tree3, name):
    net_cls, _, kwargs, _ = METHODS[name]
    net = net_cls(tree3, trunk="resnet18", trunk_lr_scale=0.25, **kwargs)
    trunk, head = net.param_groups()
    assert trunk["lr_scale"] == 0.25 and head["lr_scale"] == 1.0
    assert {id(p) for p in trunk["params"]} == {id(p) for p in net.trunk.parameters()}
    assert len(trunk["params"]) + len(head["params"]) == len(list(net.parameters()))
    assert head["params"]
    assert all(not k.startswith(("descendants", "ancestors")) for k in net.state_dict())  # buffers not saved


def test_channels_last_gives_the_same_outputs(tree3):
    torch.manual_seed(0)
    a = HMCNF(tree3, trunk="resnet18", width=16, dim=8).eval()
    b = HMCNF(tree3, trunk="resnet18", width=16, dim=8).eval()
    b.load_state_dict(a.state_dict())
    b.to(
        memory_format=torch.channels_last
    )  # what HRNModule(channels_last=True) does to its network and batches
    x = torch.randn(2, 3, 32, 32)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a(x).scores(), b(cl).scores(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- C-HMCNN
Z3 = [-1.0, 0.5, -2.0, 0.3, 1.0, 2.0, -0.5, -3.0, 0.2]  # logits of a, x, b, c, y, d, e, f, z


def test_mcm_by_hand(tree3):
    z = torch.tensor([Z3])
    desc = tree3.ancestors.T
    # a: max(a, b, c, d, e, f) = d's 2; x: max(x, y, z) = y's 1; b: max(b, d, e) = 2; c: max(c, f) = 0.3;
    # y: max(y, z) = 1; leaves are their own descendants only.
    expected = torch.tensor([[2.0, 1.0, 2.0, 0.3, 1.0, 2.0, -0.5, -3.0, 0.2]])
    torch.testing.assert_close(max_constraint(z, desc), expected)
    # on probabilities it is the same max (it commutes with the sigmoid)
    torch.testing.assert_close(max_constraint(z.sigmoid(), desc), expected.sigmoid())


def test_mcm_outputs_are_coherent(tree3):
    torch.manual_seed(1)
    parent = tree3.parent
    child = torch.nonzero(parent >= 0).flatten()
    m = max_constraint(torch.randn(16, 9) * 3, tree3.ancestors.T)
    assert (m[:, parent[child]] >= m[:, child]).all()
    net = CHMCNN(tree3, trunk="resnet18", width=16)
    s = net(torch.randn(4, 3, 32, 32)).scores("sigmoid")
    assert (s[:, parent[child]] >= s[:, child]).all()
    # the unconstrained z is what MCM turns into the outputs
    out = net.eval()(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(
        out.scores("logits"), max_constraint(out.extras["node_logits"], tree3.ancestors.T)
    )


@pytest.mark.parametrize("coarse", ["negative", "ignore"])
def test_mcloss_by_hand_with_a_coarse_label(tree3, coarse):
    e, b = tree3.index("e"), tree3.index("b")
    z = torch.tensor([Z3, Z3])
    out = output_with(tree3.level_sizes, node_logits=z)
    # sample 1, leaf e: positives a, b, e, each predicted by its best positive descendant: max(a, b, e) = -0.5,
    # max(b, e) = -0.5, e = -0.5. Negatives by MCM: x 1, c 0.3, y 1, d 2, f -3, z 0.2.
    leaf = [sp(0.5)] * 3 + [sp(1.0), sp(0.3), sp(1.0), sp(2.0), sp(-3.0), sp(0.2)]
    # sample 2, coarse b: positives a -> max(a, b) = -1, b -> -2. Negatives x 1, c 0.3, y 1, f -3, z 0.2, and
    # b's children d (MCM 2), e (-0.5), which "ignore" leaves out.
    coarse_known = [sp(1.0), sp(2.0), sp(1.0), sp(0.3), sp(1.0), sp(-3.0), sp(0.2)]
    below = [sp(2.0), sp(-0.5)]
    terms = leaf + coarse_known + (below if coarse == "negative" else [])
    expected = sum(terms) / len(terms)
    got = MCLoss(tree3, coarse_descendants=coarse)(out, torch.tensor([e, b]))
    assert got.total.item() == pytest.approx(expected, rel=1e-6)
    assert set(got.terms) == {"mcloss"}


def test_mcloss_matches_the_probability_form_and_its_gradients(tree3):
    """The paper's form: h = sigmoid(z); positives MCM(y * h), negatives MCM(h); BCE on probabilities."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 9, generator=g, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, 9, (6,), generator=g)
    desc = tree3.ancestors.T
    y = tree3.ancestors[targets].double()
    h = z.sigmoid()
    dense = lambda p: (desc.double().unsqueeze(0) * p.unsqueeze(1)).amax(-1)  # noqa: E731 - tiny oracle
    pred = y * dense(y * h) + (1 - y) * dense(h)
    oracle = torch.nn.functional.binary_cross_entropy(pred, y)
    (oracle_grad,) = torch.autograd.grad(oracle, z)
    ours = MCLoss(tree3)(output_with(tree3.level_sizes, node_logits=z), targets).total
    (ours_grad,) = torch.autograd.grad(ours, z)
    torch.testing.assert_close(ours.double(), oracle, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours_grad.double(), oracle_grad, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------- HMCN-F
LOCAL2 = [0.5, -1.0, 1.0, 2.0, 2.0]  # a, x, b, c, y: P_F of c (0.75) > a (0.68) and y (0.81) > x (0.38)
GLOBAL2 = [1.0, 0.0, -1.0, 0.5, 1.0]


@pytest.mark.parametrize("coarse", ["negative", "ignore"])
def test_hmcnf_loss_by_hand_with_a_coarse_label(tree2, coarse):
    b, a = tree2.index("b"), tree2.index("a")
    local = torch.tensor([LOCAL2, LOCAL2])
    glob = torch.tensor([GLOBAL2, GLOBAL2])
    p = [0.5 * sigmoid(u) + 0.5 * sigmoid(v) for u, v in zip(LOCAL2, GLOBAL2, strict=True)]
    final = torch.tensor([p, p])
    out = BaselineOutput(
        level_probs=[final[:, :2], final[:, 2:]],
        level_logits=[torch.logit(final[:, :2]), torch.logit(final[:, 2:])],
        leaf_logits=torch.logit(final[:, 2:]),
        extras={"local_logits": local, "global_logits": glob},
    )

    def bce(z, positives, counted):  # mean over the counted nodes of both samples, by hand
        pairs = zip(positives, counted, strict=True)
        vals = [sp(-z[i]) if i in pos else sp(z[i]) for pos, cnt in pairs for i in cnt]
        return sum(vals) / len(vals)

    positives = [{0, 2}, {0}]  # label b: a and b; label a: a
    every = [0, 1, 2, 3, 4]
    counted = [every, every if coarse == "negative" else [0, 1, 4]]  # b, c are below the coarse label a
    # violations: children b, c of a and y of x; the same probabilities in both samples
    gaps = [max(0.0, p[2] - p[0]), max(0.0, p[3] - p[0]), max(0.0, p[4] - p[1])]
    violation = 0.1 * sum(g * g for g in gaps) / 3
    assert gaps[0] == 0 and gaps[1] > 0 and gaps[2] > 0  # c above a, y above x
    got = HMCNFLoss(tree2, violation_weight=0.1, coarse_descendants=coarse)(out, torch.tensor([b, a]))
    assert got.terms["local"].item() == pytest.approx(bce(LOCAL2, positives, counted), rel=1e-6)
    assert got.terms["global"].item() == pytest.approx(bce(GLOBAL2, positives, counted), rel=1e-6)
    assert got.terms["violation"].item() == pytest.approx(violation, rel=1e-5)
    assert got.total.item() == pytest.approx(sum(v.item() for v in got.terms.values()), rel=1e-6)


def test_hmcnf_final_output_mixes_local_and_global(tree3):
    torch.manual_seed(0)
    for beta in (0.5, 0.2, 1.0):
        net = HMCNF(tree3, trunk="resnet18", width=16, dim=8, beta=beta).eval()
        out = net(torch.randn(2, 3, 32, 32))
        mix = beta * out.extras["local_logits"].sigmoid() + (1 - beta) * out.extras["global_logits"].sigmoid()
        torch.testing.assert_close(out.scores("sigmoid"), mix, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            out.scores("logits"), torch.logit(mix.double()).float(), rtol=1e-4, atol=1e-5
        )


# ---------------------------------------------------------------------------------------------- Chang et al.
def test_chang_loss_by_hand_with_a_coarse_label(tree2):
    b, x = tree2.index("b"), tree2.index("x")
    rows = [[1.0, 0.0, 2.0, 0.0, -1.0], [0.0, 1.0, 0.5, 0.5, 3.0]]  # level 1: a, x | level 2: b, c, y
    out = output_with(tree2.level_sizes, softmax_logits=torch.tensor(rows))
    ce_l1 = (
        -math.log(math.exp(1) / (math.exp(1) + math.exp(0)))  # sample 1 (b): level-1 class a
        - math.log(math.exp(1) / (math.exp(0) + math.exp(1)))  # sample 2 (x): level-1 class x
    ) / 2
    ce_l2 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-1)))  # only sample 1 is known
    got = ChangLoss(tree2)(out, torch.tensor([b, x]))
    assert got.terms["ce_l1"].item() == pytest.approx(ce_l1, rel=1e-6)
    assert got.terms["ce_l2"].item() == pytest.approx(ce_l2, rel=1e-6)
    assert got.total.item() == pytest.approx(ce_l1 + ce_l2, rel=1e-6)
    # a batch of level-1 labels only: no level-2 term, but still a connected graph
    logits = torch.tensor(rows, requires_grad=True)
    none = ChangLoss(tree2)(output_with(tree2.level_sizes, softmax_logits=logits), torch.tensor([x, x]))
    assert none.terms["ce_l2"].item() == 0.0
    none.total.backward()
    assert logits.grad[:, 2:].abs().sum() == 0


def test_chang_coarse_levels_do_not_train_finer_features(tree3):
    torch.manual_seed(0)
    net = ChangNet(tree3, trunk="resnet18", dim=8)
    out = net(torch.randn(3, 3, 32, 32))
    targets = torch.tensor([tree3.index(n) for n in "dfz"])
    terms = ChangLoss(tree3)(out, targets).terms
    terms["ce_l1"].backward(retain_graph=True)
    grads = [sum(p.grad.abs().sum() for p in br.parameters()) for br in net.branches]
    assert grads[0] > 0 and grads[1] == 0 and grads[2] == 0  # level 1's CE reaches only its own branch
    assert net.classifiers[0].weight.shape[1] == 3 * 8  # but its classifier sees all three levels' features
    net.zero_grad()
    terms["ce_l3"].backward()
    assert sum(p.grad.abs().sum() for p in net.branches[2].parameters()) > 0


# ---------------------------------------------------------------------------------------------- HMC-LMLP
def test_hmclmlp_loss_by_hand_with_a_coarse_label(tree2):
    b, x = tree2.index("b"), tree2.index("x")
    l1 = [[0.4, -0.6], [1.5, 0.2]]  # a, x
    l2 = [[0.3, -1.2, 0.8], [2.0, 2.0, 2.0]]  # b, c, y; sample 2's row is unknown and must not count
    out = BaselineOutput(
        level_probs=[torch.tensor(l1).sigmoid(), torch.tensor(l2).sigmoid()],
        level_logits=[torch.tensor(l1), torch.tensor(l2)],
        leaf_logits=torch.tensor(l2),
    )
    bce_l1 = (sp(-0.4) + sp(-0.6) + sp(1.5) + sp(-0.2)) / 4  # targets: a (sample 1), x (sample 2)
    bce_l2 = (sp(-0.3) + sp(-1.2) + sp(0.8)) / 3  # sample 1 only, class b
    got = HMCLMLPLoss(tree2)(out, torch.tensor([b, x]))
    assert got.terms["bce_l1"].item() == pytest.approx(bce_l1, rel=1e-6)
    assert got.terms["bce_l2"].item() == pytest.approx(bce_l2, rel=1e-6)
    assert got.total.item() == pytest.approx(bce_l1 + bce_l2, rel=1e-6)


def test_hmclmlp_feeds_previous_level_detached(tree3):
    torch.manual_seed(0)
    net = HMCLMLP(tree3, trunk="resnet18", width=16)
    assert [m[-1].out_features for m in net.mlps] == [2, 3, 4]
    assert [m[0][0].in_features for m in net.mlps] == [512, 512 + 2, 512 + 3]
    out = net(torch.randn(3, 3, 32, 32))
    terms = HMCLMLPLoss(tree3)(out, torch.tensor([tree3.index(n) for n in "dfz"])).terms
    terms["bce_l2"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.mlps[0].parameters())
    assert sum(p.grad.abs().sum() for p in net.mlps[1].parameters()) > 0


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", list(METHODS))
def test_one_optimiser_step_through_the_lightning_module(tree3, tmp_path, name):
    net_cls, loss_cls, kwargs, _ = METHODS[name]
    torch.manual_seed(0)
    net = net_cls(tree3, trunk="resnet18", **kwargs)
    description = ModelDescription(  # as hrn.cli.build.build_module records it, under the paths before 0.2
        tree=tree3,
        net={"_target_": f"hrn.baselines.{net_cls.__name__}", "trunk": "resnet18", **kwargs},
        loss={"_target_": f"hrn.baselines.{loss_cls.__name__}"},
    )
    module = HRNModule(
        net, loss_cls(tree3), tree3, functools.partial(torch.optim.SGD, lr=0.01), None, description
    )
    images = torch.randn(4, 3, 32, 32)
    targets = torch.tensor([tree3.index(n) for n in ("d", "f", "c", "z")])  # c is coarse-labelled
    before = [p.detach().clone() for p in net.parameters()]
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(TensorDataset(images, targets), batch_size=4))
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"])
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    # the checkpoint rebuilds the same network and loss (as hrn.evaluate and hrn.predict do)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = load_checkpoint(tmp_path / "m.ckpt")
    assert type(loaded.net) is net_cls and type(loaded.build_loss()) is loss_cls
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(images).scores(), module.eval()(images).scores())


def make_cfg(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[f"run_dir={run_dir}", *SMALL_RUN, *overrides])


LOSS_TARGETS = {
    "chmcnn": "hrn.losses.MCLoss",
    "hmcnf": "hrn.losses.HMCNFLoss",
    "chang": "hrn.losses.ChangLoss",
    "hmclmlp": "hrn.losses.HMCLMLPLoss",
}


@pytest.mark.parametrize("name", list(METHODS))
def test_model_config_selects_its_loss_and_the_command_line_wins(tmp_path, name):
    cfg = make_cfg(tmp_path, f"model={name}")
    assert cfg.loss._target_ == LOSS_TARGETS[name]
    assert cfg.model._target_ == f"hrn.nets.{METHODS[name][0].__name__}.build"
    assert (
        cfg.model.trunk == "resnet18" and cfg.model.pretrained is False
    )  # the synthetic dataset still picks
    assert make_cfg(tmp_path, f"model={name}", "loss=composite").loss._target_ == "hrn.losses.CompositeLoss"
    assert make_cfg(tmp_path).loss._target_ == "hrn.losses.CompositeLoss"  # HRN keeps its own loss


@pytest.mark.parametrize("name", list(METHODS))
def test_fast_dev_run_of_each_model_config(tmp_path, name):
    cfg = make_cfg(tmp_path, f"model={name}", *METHODS[name][3], "trainer.fast_dev_run=true")
    metrics = train(cfg)
    assert {"test/acc_l1", "test/acc_l2", "test/acc_l3", "test/acc_leaf_sigmoid", "test/loss"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
