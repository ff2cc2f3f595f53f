"""Layer 2: the tree loss (against the dense state-enumeration oracle) and the composite loss."""

import time

import pytest
import torch
import torch.nn.functional as F

from hrn import CompositeLoss, Hierarchy, HRNOutput, TreeLoss
from hrn.losses import DENSE_MAX_NODES, LeafCELoss, LossError
from hrn.tree.probabilities import SOURCES, TreeScoresError
from tests.fixtures import dense_log_marginals, random_tree

# Every exactness and stability assertion runs for both ways of computing the loss.
FORMULATIONS = pytest.mark.parametrize("formulation", ["subtree", "dense"])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs() / b.abs().clamp_min(1e-12)).max().item()


@FORMULATIONS
@pytest.mark.parametrize("depth", [2, 3, 4, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_oracle_values_gradients_marginals(depth, seed, formulation):
    h = random_tree(depth, seed=seed * 10 + depth)
    loss = TreeLoss(h, formulation)
    assert loss.formulation_for(torch.device("cpu")) == formulation
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(6, h.num_nodes, generator=g, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.randint(0, h.num_nodes, (6,), generator=g)

    oracle_lp = dense_log_marginals(h, scores)
    oracle = -oracle_lp.gather(1, targets[:, None]).mean()
    (oracle_grad,) = torch.autograd.grad(oracle, scores)
    ours = loss(scores, targets)
    (ours_grad,) = torch.autograd.grad(ours, scores)

    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours_grad, oracle_grad, rtol=1e-9, atol=1e-12)
    marg = loss.marginals(scores.detach())
    torch.testing.assert_close(marg, oracle_lp.detach().exp(), rtol=1e-10, atol=1e-12)


def test_marginals_are_consistent(small_tree):
    """P(parent) = P(parent's own state) + sum of P(children): a parent is at least as likely as each child."""
    loss = TreeLoss(small_tree)
    m = loss.marginals(torch.randn(5, small_tree.num_nodes))
    parent = small_tree.parent
    child = torch.arange(small_tree.num_nodes)[parent >= 0]
    assert (m[:, parent[child]] >= m[:, child] - 1e-7).all()
    off = small_tree.offsets
    for lvl in range(small_tree.num_levels):  # a level's nodes are mutually exclusive
        assert (m[:, off[lvl] : off[lvl + 1]].sum(1) <= 1 + 1e-6).all()


@FORMULATIONS
def test_stable_for_raw_logits_of_magnitude_100(small_tree, formulation):
    loss = TreeLoss(small_tree, formulation)
    scores = (torch.randn(8, small_tree.num_nodes) * 100).requires_grad_()
    targets = torch.arange(8) % small_tree.num_nodes
    value = loss(scores, targets)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(scores.grad).all()
    oracle = -dense_log_marginals(small_tree, scores.detach().double()).gather(1, targets[:, None]).mean()
    torch.testing.assert_close(value.double(), oracle, rtol=1e-5, atol=1e-3)


@FORMULATIONS
def test_target_far_below_the_best_state_keeps_its_value_and_gradient(small_tree, formulation):
    """P(target) ~ exp(-800) in fp32: the target's subtree is summed in log space against its own maximum, so
    its mass neither underflows to 0 (loss inf) nor loses the gradient."""
    n = small_tree.num_nodes
    scores = torch.full((2, n), -400.0)
    scores[:, small_tree.index("x")] = 400.0  # the x-branch holds all the mass
    scores = scores.requires_grad_()
    targets = torch.tensor([small_tree.index("b"), small_tree.index("d")])  # two levels, far from x
    value = TreeLoss(small_tree, formulation)(scores, targets)
    value.backward()
    exact = scores.detach().double().requires_grad_()
    oracle = -dense_log_marginals(small_tree, exact).gather(1, targets[:, None]).mean()
    oracle.backward()
    assert torch.isfinite(value) and value.item() > 700
    torch.testing.assert_close(value.double(), oracle, rtol=1e-6, atol=0)
    torch.testing.assert_close(scores.grad.double(), exact.grad, rtol=1e-5, atol=1e-6)


@FORMULATIONS
def test_backward_can_run_twice_with_retain_graph(small_tree, formulation):
    scores = torch.randn(4, small_tree.num_nodes, requires_grad=True)
    value = TreeLoss(small_tree, formulation)(scores, torch.tensor([0, 2, 4, 9]))
    (first,) = torch.autograd.grad(value, scores, retain_graph=True)
    (second,) = torch.autograd.grad(value, scores)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@FORMULATIONS
def test_half_precision_scores_are_computed_in_fp32(small_tree, formulation):
    scores = torch.randn(4, small_tree.num_nodes)
    t = torch.tensor([0, 3, 5, 9])
    loss = TreeLoss(small_tree, formulation)
    out = loss(scores.bfloat16(), t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, loss(scores.bfloat16().float(), t))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under mixed precision the loss still runs in fp32
        mixed = loss(scores, t)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, loss(scores, t), rtol=1e-6, atol=1e-6)


def test_auto_takes_dense_on_cuda_up_to_the_threshold_and_subtree_otherwise(small_tree):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    auto = TreeLoss(small_tree)
    assert auto.formulation == "auto"
    assert auto.formulation_for(cpu) == "subtree" and auto.formulation_for(cuda) == "dense"
    edges = [("r", f"l{i}") for i in range(DENSE_MAX_NODES)]  # one more node than the threshold
    assert TreeLoss(Hierarchy.from_edges(edges)).formulation_for(cuda) == "subtree"
    assert TreeLoss(Hierarchy.from_edges(edges[:-1])).formulation_for(cuda) == "dense"
    assert TreeLoss(small_tree, "subtree").formulation_for(cuda) == "subtree"  # explicit choices are kept
    assert TreeLoss(small_tree, "dense").formulation_for(cpu) == "dense"


def test_unknown_formulation_is_one_line(small_tree):
    with pytest.raises(LossError, match=r"formulation must be one of auto, subtree, dense, got 'fast'"):
        TreeLoss(small_tree, "fast")
    with pytest.raises(LossError, match="loss.tree_scores"):
        CompositeLoss(small_tree, tree_scores="softmax")


@FORMULATIONS
def test_bad_score_shape_is_one_line(small_tree, formulation):
    with pytest.raises(ValueError, match=r"scores of shape \(B, 10\)"):
        TreeLoss(small_tree, formulation)(torch.zeros(2, 9), torch.zeros(2, dtype=torch.long))


def test_hundred_thousand_nodes_at_batch_64():
    # 10 roots -> 1,000 -> 99,000: 100,010 nodes, three levels.
    edges = [(f"r{i // 100}", f"m{i}") for i in range(1000)] + [
        (f"m{i // 99}", f"l{i}") for i in range(99_000)
    ]
    h = Hierarchy.from_edges(edges)
    assert h.num_nodes == 100_010
    loss = TreeLoss(h)
    scores = torch.randn(64, h.num_nodes, requires_grad=True)
    targets = torch.randint(0, h.num_nodes, (64,))
    start = time.perf_counter()
    value = loss(scores, targets)
    value.backward()
    elapsed = time.perf_counter() - start
    assert torch.isfinite(value) and torch.isfinite(scores.grad).all()
    # exactness on a slice: the marginal of a root equals the sum over its subtree computed the long way
    with torch.no_grad():
        lp = loss.log_marginals(scores[:2])
        s = scores[:2].double()
        c_mid = s[:, 10:1010] + s[:, :10].repeat_interleave(100, dim=1)
        c_leaf = s[:, 1010:] + c_mid.repeat_interleave(99, dim=1)
        a_root0 = torch.logsumexp(torch.cat([s[:, :1], c_mid[:, :100], c_leaf[:, : 100 * 99]], 1), 1)
        log_z = torch.logsumexp(
            torch.cat([torch.zeros(2, 1, dtype=torch.float64), s[:, :10], c_mid, c_leaf], 1), 1
        )
        torch.testing.assert_close(lp[:, 0].double(), a_root0 - log_z, rtol=1e-4, atol=1e-4)
    print(f"100,010-node tree, batch 64, forward+backward: {elapsed:.3f} s")


def _output(h: Hierarchy, b: int, seed: int = 0) -> HRNOutput:
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(b, n, generator=g) for n in h.level_sizes]
    return HRNOutput([t.sigmoid() for t in logits], logits, torch.randn(b, h.level_sizes[-1], generator=g))


def test_composite_is_tree_plus_leaf_ce_on_leaf_labelled_only(small_tree):
    h = small_tree
    out = _output(h, 4)
    targets = torch.tensor([h.index("d"), h.index("b"), h.index("w"), h.index("x")])  # 2 leaf, 2 coarse
    terms = CompositeLoss(h)(out, targets)
    tree = TreeLoss(h)(out.scores("sigmoid"), targets)
    leaf0 = h.offsets[-2]
    ce = F.cross_entropy(out.leaf_logits[[0, 2]], targets[[0, 2]] - leaf0)
    torch.testing.assert_close(terms.terms["tree"], tree)
    torch.testing.assert_close(terms.terms["leaf_ce"], ce)
    torch.testing.assert_close(terms.total, tree + ce)
    # λ weights the CE; the raw-logit ablation feeds logits to the tree loss
    half = CompositeLoss(h, leaf_weight=0.5, tree_scores="logits")(out, targets)
    torch.testing.assert_close(half.terms["leaf_ce"], 0.5 * ce)
    torch.testing.assert_close(half.terms["tree"], TreeLoss(h)(out.scores("logits"), targets))


def test_composite_without_leaf_labels_has_zero_ce_and_gradients(small_tree):
    h = small_tree
    out = _output(h, 3)
    out.leaf_logits.requires_grad_()
    terms = CompositeLoss(h)(out, torch.tensor([0, 1, 2]))
    assert terms.terms["leaf_ce"].item() == 0.0
    terms.total.backward()
    assert out.leaf_logits.grad is not None and (out.leaf_logits.grad == 0).all()


def test_oracle_worst_relative_error():
    """The worst relative error of every marginal against the oracle, float64, depths 2-5 (printed for reports)."""
    worst = {}
    for depth in (2, 3, 4, 5):
        for seed in range(5):
            h = random_tree(depth, seed=100 + seed)
            scores = torch.randn(16, h.num_nodes, dtype=torch.float64) * 5
            worst[depth] = max(
                worst.get(depth, 0.0),
                rel_err(TreeLoss(h).marginals(scores), dense_log_marginals(h, scores).exp()),
            )
    print(
        f"worst relative error of the marginals vs the dense oracle: {max(worst.values()):.3e} by depth {worst}"
    )
    assert max(worst.values()) < 1e-9


def _lse(z: torch.Tensor) -> torch.Tensor:
    return z.exp().sum().log()


def test_leaf_ce_drops_coarse_labelled_samples(small_tree):
    h = small_tree
    out = _output(h, 2, seed=3)
    targets = torch.tensor([h.index("e"), h.index("b")])
    z = out.leaf_logits[0]
    expected = -(z[1] - _lse(z))  # e is leaf 1; the b-labelled sample does not count
    terms = LeafCELoss(h)(out, targets)
    torch.testing.assert_close(terms.total, expected)
    assert LeafCELoss.tree_scores == "leaf"  # a leaf-only method: coarse answers from the leaf softmax


def test_per_level_ce_counts_levels_at_or_above_the_label(small_tree):
    from hrn.losses import PerLevelCELoss

    h = small_tree
    out = _output(h, 2, seed=4)
    targets = torch.tensor([h.index("d"), h.index("y")])  # d: a/b/d = 0/0/0 ; y: x/y = 1/2, no leaf
    l1, l2, leaf = out.level_logits[0], out.level_logits[1], out.leaf_logits
    e1 = (-(l1[0, 0] - _lse(l1[0])) - (l1[1, 1] - _lse(l1[1]))) / 2
    e2 = (-(l2[0, 0] - _lse(l2[0])) - (l2[1, 2] - _lse(l2[1]))) / 2
    e3 = -(leaf[0, 0] - _lse(leaf[0]))
    terms = PerLevelCELoss(h)(out, targets)
    torch.testing.assert_close(terms.terms["ce_l1"], e1)
    torch.testing.assert_close(terms.terms["ce_l2"], e2)
    torch.testing.assert_close(terms.terms["ce_l3"], e3)
    torch.testing.assert_close(terms.total, e1 + e2 + e3)


def test_coarse_constraint_uses_leaves_under_the_parent_level_label(small_tree):
    from hrn.losses import CoarseConstraintLoss

    h = small_tree  # leaves d e f z w; b -> d e, c -> f, y -> z w
    out = _output(h, 3, seed=5)
    targets = torch.tensor([h.index("d"), h.index("c"), h.index("x")])
    m = torch.tensor([[1.0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1]])
    z = out.leaf_logits
    bce = (z.clamp_min(0) - z * m + torch.log1p(torch.exp(-z.abs()))).mean()
    ce = -(z[0, 0] - _lse(z[0]))
    terms = CoarseConstraintLoss(h, a=1.0, b=2.0)(out, targets)
    torch.testing.assert_close(terms.terms["constraint_bce"], 2.0 * bce)
    torch.testing.assert_close(terms.terms["leaf_ce"], ce)
    torch.testing.assert_close(terms.total, ce + 2.0 * bce)


@pytest.mark.parametrize("seed", range(4))
def test_leaf_marginals_sum_the_leaf_softmax_up_the_tree(seed):
    """A leaf-only method's node probabilities: each node gets the softmax mass of the leaves under it."""
    h = random_tree(depth=2 + seed % 3, seed=seed, max_children=4)
    out = _output(h, 5, seed=seed)
    got = TreeLoss(h).node_probabilities(out, "leaf")
    under = h.ancestors[h.offsets[-2] :].float()  # (n_L, N): the leaf and its ancestors
    torch.testing.assert_close(got, out.leaf_logits.softmax(1) @ under)
    for part in got.split(h.level_sizes, 1):  # a distribution at every level
        torch.testing.assert_close(part.sum(1), torch.ones(5))
    torch.testing.assert_close(
        TreeLoss(h).node_probabilities(out, "sigmoid"), TreeLoss(h).marginals(out.scores("sigmoid"))
    )


@pytest.mark.parametrize("seed", range(3))
def test_the_sources_of_node_probabilities(seed):
    """probabilities=leaf is the leaf softmax summed up the tree whatever the tree scores, mix the node-by-node mean
    of it and the tree marginals, heads the heads' outputs; a leaf-only model answers the leaf source for all."""
    h = random_tree(depth=3, seed=seed, max_children=3)
    out = _output(h, 4, seed=seed)
    tree = TreeLoss(h)
    under = h.ancestors[h.offsets[-2] :].float()  # (n_L, N): the leaf and its ancestors
    leaf = out.leaf_logits.softmax(1) @ under
    marginals = tree.marginals(out.scores("sigmoid"))
    torch.testing.assert_close(tree.node_probabilities(out, "sigmoid", "leaf"), leaf)
    torch.testing.assert_close(tree.node_probabilities(out, "logits", "leaf"), leaf)
    torch.testing.assert_close(tree.node_probabilities(out, "sigmoid", "mix"), (marginals + leaf) / 2)
    torch.testing.assert_close(tree.node_probabilities(out, "sigmoid", "tree"), marginals)
    for source in SOURCES:
        torch.testing.assert_close(tree.node_probabilities(out, "leaf", source), leaf)
    for source in ("tree", "leaf", "mix"):
        mix = tree.node_probabilities(out, "sigmoid", source)
        for lvl in range(1, h.num_levels):  # a parent holds at least its children's mass, as a marginal does
            parents = h.level_parents[lvl - 1]
            below = torch.zeros(4, h.level_sizes[lvl - 1]).index_add(
                1, parents, mix.split(h.level_sizes, 1)[lvl]
            )
            assert bool((mix.split(h.level_sizes, 1)[lvl - 1] >= below - 1e-6).all())
    # heads: each head's own output, no tree inference (a compared method on its own probabilities)
    torch.testing.assert_close(
        tree.node_probabilities(out, "sigmoid", "heads"), torch.cat(out.level_probs, 1)
    )
    with pytest.raises(
        TreeScoresError, match=r"^probabilities='marginals': use one of tree, leaf, mix, heads$"
    ):
        tree.node_probabilities(out, "sigmoid", "marginals")


def test_unknown_score_source_is_one_line(small_tree):
    with pytest.raises(
        TreeScoresError, match="tree_scores must be one of sigmoid, logits, leaf, got 'softmax'"
    ):
        TreeLoss(small_tree).node_probabilities(_output(small_tree, 1, seed=0), "softmax")
