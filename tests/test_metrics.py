"""Layer 2: the evaluation metrics, by hand on a tiny tree and against scikit-learn."""

import json
import subprocess
import sys

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


HUNDRED_K = """
import json, resource, sys
import torch
from hrn.benchmarks.tree_loss import balanced_tree
from hrn.losses import TreeLoss
from hrn.metrics import HierarchicalMetrics

h = balanced_tree(101_100, roots=100, middle=1_000)  # 100 / 1,000 / 100,000 nodes
g = torch.Generator().manual_seed(0)
sig = [torch.rand(64, n, generator=g) for n in h.level_sizes]
leaf = torch.randn(64, h.level_sizes[-1], generator=g)
marginals = TreeLoss(h).marginals(torch.cat(sig, 1))
targets = torch.randint(0, h.num_nodes, (64,), generator=g)
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * resource.getpagesize()  # resident bytes now
m = HierarchicalMetrics(h)  # the default ap_max_nodes: AP off at this size
for _ in range(2):
    m.update(sig, leaf, marginals, targets)
out = m.compute()
with open("/proc/self/status") as f:  # VmHWM: this process's peak; ru_maxrss would carry the parent's over exec
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
print(json.dumps({"grew": peak - before, "nodes": h.num_nodes, "ancestors": "ancestors" in h.__dict__,
                  "keys": sorted(out), "num_samples": out["num_samples"].item()}))
"""


def test_a_101100_node_tree_is_measured_within_1_gb():
    """Constructing the metrics, two updates and a compute for a 101,100-node tree (64 samples each) grow the
    process by under 1 GB at its peak, in a process of its own: the (N, N) ancestor matrix alone would be 10 GB.
    (The peak since the process started, less the resident size before: an upper bound on what the metrics took.)"""
    ran = subprocess.run([sys.executable, "-c", HUNDRED_K], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    seen = json.loads(ran.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == 101_100 and seen["num_samples"] == 128 and not seen["ancestors"]
    assert "ap_micro is not computed" in ran.stderr and "ap_micro" not in seen["keys"]
    assert {"acc_l3", "h_f1", "hdist_at5", "mistake_severity"} <= set(seen["keys"])
    assert seen["grew"] < 2**30, f"grew by {seen['grew'] / 2**20:.0f} MiB"


def test_evaluate_outputs_of_a_tree_over_ap_max_nodes_stay_bounded(tree, tmp_path, monkeypatch):
    """What hrn.evaluate writes for a tree too big for AP: ``predictions.npz`` keeps the labels as (M,) node
    indices and no (M, N) arrays, the (N, N) ancestor matrix is never built, a level over the confusion cap gets
    no PNG, and ``per_class.csv``'s support and accuracy are the hand counts."""
    import numpy as np

    from hrn.metrics import outputs as written_files

    h = tree
    m = HierarchicalMetrics(h, ap_max_nodes=h.num_nodes - 1)
    targets = torch.tensor([h.index(n) for n in ("d", "e", "z", "b")])
    sig, leaf = outputs(
        h, [("a", "b", "d", "d"), ("a", "b", "d", "d"), ("x", "y", "z", "z"), ("a", "c", "f", "f")]
    )
    m.update(sig, leaf, TreeLoss(h).marginals(torch.cat(sig, 1)), targets, index=torch.arange(4))
    m.compute()
    written_files.write_predictions(tmp_path / "p.npz", m.records, h, ["i0", "i1", "i2", "i3"])
    saved = np.load(tmp_path / "p.npz")
    assert saved["target"].tolist() == targets.tolist()
    assert saved["targets"].shape == saved["scores"].shape == (4, 0)
    rows = {r["node"]: r for r in written_files.per_class_rows(m.records, h)}
    # b: the labels d, e and b imply it, the level-2 head said b, b, c: 2 of 3; d: one sample, right; f: none
    assert (rows["b"]["support"], rows["b"]["accuracy"]) == (3, pytest.approx(2 / 3))
    assert (rows["d"]["support"], rows["d"]["accuracy"], rows["e"]["accuracy"]) == (1, 1.0, 0.0)
    assert rows["f"]["support"] == 0 and rows["f"]["accuracy"] != rows["f"]["accuracy"]  # nan
    assert [r["node"] for r in written_files.per_class_rows(m.records, h)] == h.names
    monkeypatch.setattr(
        written_files, "CONFUSION_MAX_CLASSES", 3
    )  # levels of 2, 3, 4 classes: the last is over it
    written = written_files.write_confusions(tmp_path, m.records, h)
    assert [p.name for p in written] == ["confusion_l1.png", "confusion_l2.png"]
    assert not (tmp_path / "confusion_l3.png").exists() and "ancestors" not in h.__dict__
