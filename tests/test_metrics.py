"""Layer 2: the evaluation metrics, by hand on a tiny tree and against scikit-learn."""

import pytest
import torch
from sklearn.metrics import average_precision_score

from hrn import Hierarchy, TreeLoss
from hrn.metrics import HierarchicalMetrics


@pytest.fixture
def tree() -> Hierarchy:
    # levels: [a, x] / [b, c, y] / [d, e, f, z]
    return Hierarchy.from_edges(
        [("a", "b"), ("a", "c"), ("b", "d"), ("b", "e"), ("c", "f"), ("x", "y"), ("y", "z")]
    )


def outputs(h: Hierarchy, rows: list[tuple[str, str, str, str]]):
    """Per sample: names predicted by the level-1 and level-2 sigmoid heads, the leaf sigmoid and leaf softmax."""
    sig = [torch.full((len(rows), n), 0.1) for n in h.level_sizes]
    leaf = torch.zeros(len(rows), h.level_sizes[-1])
    off = h.offsets
    for i, (l1, l2, l3_sig, l3_soft) in enumerate(rows):
        for lvl, name in enumerate((l1, l2, l3_sig)):
            sig[lvl][i, h.index(name) - off[lvl]] = 0.9
        leaf[i, h.index(l3_soft) - off[2]] = 4.0
    return sig, leaf


def test_hand_computed_values(tree):
    h = tree
    targets = torch.tensor([h.index(n) for n in ("d", "e", "f", "z")])
    sig, leaf = outputs(
        h,
        [
            ("a", "b", "d", "d"),  # all right, consistent
            ("a", "b", "e", "d"),  # leaf wrong: d vs e are siblings, LCA height 1; consistent
            (
                "a",
                "c",
                "f",
                "z",
            ),  # leaf wrong: z vs f share only the virtual root, LCA height 3; z's parent y != c
            ("x", "y", "d", "z"),  # all right by the paper heads (sigmoid leaf wrong)
        ],
    )
    marginals = TreeLoss(h).marginals(torch.cat(sig, 1))
    m = HierarchicalMetrics(h)
    m.update(sig, leaf, marginals, targets, torch.arange(4))
    out = {k: v.item() for k, v in m.compute().items()}
    assert out["acc_l1"] == 1.0 and out["acc_l2"] == 1.0
    assert out["acc_l3"] == 0.5  # softmax head
    assert out["acc_leaf_sigmoid"] == 0.75
    assert out["full_path_acc"] == 0.5
    assert out["consistency"] == 0.75
    assert out["mistake_severity"] == pytest.approx((1 + 3) / 2)
    assert out["num_samples"] == 4
    assert out["tice"] == 0.25  # sample 3 alone: its leaf z does not sit under its level-2 c
    assert out["wap"] == pytest.approx((2 * 1.0 + 3 * 1.0 + 4 * 0.5) / 9)  # weighted by 2, 3 and 4 classes


def test_marginal_accuracies_take_the_argmax_of_the_given_marginals_in_each_level(tree):
    h = tree
    targets = torch.tensor([h.index(n) for n in ("d", "e", "f", "z")])
    sig, leaf = outputs(h, [("a", "b", "d", "d")] * 4)  # the paper heads play no part here
    argmax = [("a", "b", "d"), ("a", "b", "d"), ("x", "y", "z"), ("x", "y", "z")]  # one path per sample
    marginals = torch.full((4, h.num_nodes), 0.05)
    for i, path in enumerate(argmax):
        for depth, name in enumerate(path):
            marginals[i, h.index(name)] = 0.9 - 0.1 * depth
    m = HierarchicalMetrics(h)
    m.update(sig, leaf, marginals, targets)
    out = {k: v.item() for k, v in m.compute().items()}
    # level 1: a a x x against a a a x; level 2: b b y y against b b c y; level 3: d d z z against d e f z
    assert (out["acc_l1_marginal"], out["acc_l2_marginal"], out["acc_l3_marginal"]) == (0.75, 0.75, 0.5)


def test_no_mistakes_means_zero_severity_and_duplicates_count_once(tree):
    h = tree
    targets = torch.tensor([h.index("d"), h.index("z")])
    sig, leaf = outputs(h, [("a", "b", "d", "d"), ("x", "y", "z", "z")])
    marginals = TreeLoss(h).marginals(torch.cat(sig, 1))
    m = HierarchicalMetrics(h)
    m.update(sig, leaf, marginals, targets, torch.tensor([0, 1]))
    # a DistributedSampler pads by repeating samples: the repeat (index 0 again) must not count
    m.update([s[:1] for s in sig], leaf[:1], marginals[:1], targets[:1], torch.tensor([0]))
    out = m.compute()
    assert out["mistake_severity"].item() == 0.0
    assert out["num_samples"].item() == 2
    assert m.records.index.tolist() == [0, 1]


def test_coarse_labels_count_only_at_their_level_and_above(tree):
    h = tree
    targets = torch.tensor([h.index("b"), h.index("d")])
    sig, leaf = outputs(h, [("a", "b", "d", "e"), ("a", "b", "d", "d")])
    m = HierarchicalMetrics(h)
    m.update(sig, leaf, TreeLoss(h).marginals(torch.cat(sig, 1)), targets)
    out = m.compute()
    assert out["acc_l2"].item() == 1.0
    assert out["acc_l3"].item() == 1.0  # only the leaf-labelled sample counts at the leaf level
    assert out["full_path_acc"].item() == 1.0


def test_ap_micro_matches_scikit_learn(tree):
    h = tree
    g = torch.Generator().manual_seed(0)
    b = 40
    targets = h.offsets[-2] + torch.randint(0, h.level_sizes[-1], (b,), generator=g)
    sig = [torch.rand(b, n, generator=g) for n in h.level_sizes]
    leaf = torch.randn(b, h.level_sizes[-1], generator=g) * 2
    m = HierarchicalMetrics(h)
    for chunk in torch.arange(b).split(7):  # several updates of uneven size
        m.update(
            [s[chunk] for s in sig], leaf[chunk], torch.rand(len(chunk), h.num_nodes), targets[chunk], chunk
        )
    ours = m.compute()["ap_micro"].item()
    scores = torch.cat([*sig[:-1], leaf.softmax(1)], 1).numpy()
    multi_hot = h.ancestors[targets].int().numpy()  # leaf + ancestors
    expected = average_precision_score(multi_hot, scores, average="micro")
    assert ours == pytest.approx(expected, abs=1e-6)
    assert m.records.scores.shape == (b, h.num_nodes)


def test_a_tree_over_ap_max_nodes_skips_ap_and_never_builds_the_ancestor_matrix(tree, caplog):
    """Above ``ap_max_nodes`` the (N, N) ancestor matrix is not built (10 GB at 100,000 nodes), a warning says AP is
    not computed, and every other metric still is."""
    h = tree
    m = HierarchicalMetrics(h, ap_max_nodes=h.num_nodes - 1)
    assert "ap_micro is not computed" in caplog.text and "ap_max_nodes=8" in caplog.text
    targets = torch.tensor([h.index("d"), h.index("z")])
    sig, leaf = outputs(h, [("a", "b", "d", "d"), ("x", "y", "z", "z")])
    m.update(sig, leaf, TreeLoss(h).marginals(torch.cat(sig, 1)), targets)
    out = m.compute()
    assert "ap_micro" not in out and out["acc_l3"].item() == 1.0 and out["h_f1"].item() == 1.0
    assert "ancestors" not in h.__dict__  # the cached (N, N) matrix of the Hierarchy was never computed
