"""Layer 1: the label tree."""

import pytest
import torch

from hrn import Hierarchy, HierarchyError
from tests.fixtures import random_tree


def test_levels_order_and_index(small_tree):
    h = small_tree
    assert h.levels == [["a", "x"], ["b", "c", "y"], ["d", "e", "f", "z", "w"]]
    assert h.num_nodes == 10 and h.num_levels == 3 and h.level_sizes == [2, 3, 5]
    assert h.names == ["a", "x", "b", "c", "y", "d", "e", "f", "z", "w"]
    assert h.index("a") == 0 and h.index("y") == 4 and h.index("w") == 9
    assert h.parent.tolist() == [-1, -1, 0, 0, 1, 2, 2, 3, 4, 4]
    assert h.node_level.tolist() == [1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    assert [p.tolist() for p in h.level_parents] == [[0, 0, 1], [0, 0, 1, 2, 2]]


def test_api_example_from_issue():
    h = Hierarchy.from_edges([("Procellariiformes", "Diomedeidae"), ("Diomedeidae", "Laysan Albatross")])
    assert h.levels == [["Procellariiformes"], ["Diomedeidae"], ["Laysan Albatross"]]
    assert h.num_nodes == 3 and h.index("Diomedeidae") == 1


def test_siblings_are_grouped_under_parents_whatever_the_edge_order():
    h = Hierarchy.from_edges(
        [("x", "y"), ("a", "b"), ("y", "z"), ("a", "c"), ("b", "d"), ("c", "e"), ("b", "f")]
    )
    assert h.levels == [["x", "a"], ["y", "b", "c"], ["z", "d", "f", "e"]]
    # children of one parent are contiguous and follow the parent order
    assert h.level_parents[1].tolist() == [0, 1, 1, 2]


def test_ancestor_tensors(small_tree):
    h = small_tree
    anc = h.ancestors
    assert anc[h.index("e")].nonzero().flatten().tolist() == [h.index("a"), h.index("b"), h.index("e")]
    aal = h.ancestor_at_level
    # a leaf implies one class at every level; a level-2 label implies nothing at level 3
    assert aal[:, h.index("z")].tolist() == [1, 2, 3]
    assert aal[:, h.index("c")].tolist() == [0, 1, -1]
    assert aal[:, h.index("x")].tolist() == [1, -1, -1]


def test_lca_height_and_leaves_under(small_tree):
    h = small_tree
    assert h.lca_height(h.index("d"), h.index("d")) == 0
    assert h.lca_height(h.index("d"), h.index("e")) == 1
    assert h.lca_height(h.index("d"), h.index("f")) == 2
    assert h.lca_height(h.index("d"), h.index("z")) == 3  # only the virtual root in common
    assert h.leaves_under(h.index("a")) == [h.index(n) for n in "def"]


def test_csv_and_json_round_trip(tmp_path, small_tree):
    csv = tmp_path / "tree.csv"
    csv.write_text("parent,child\n" + "\n".join(f"{p},{c}" for p, c in small_tree.edges) + "\n")
    assert Hierarchy.from_csv(csv) == small_tree
    js = tmp_path / "tree.json"
    js.write_text(str([list(e) for e in small_tree.edges]).replace("'", '"'))
    assert Hierarchy.from_file(js) == small_tree
    assert Hierarchy.from_dict(small_tree.to_dict()) == small_tree


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_random_trees_are_level_balanced(depth):
    h = random_tree(depth, seed=depth)
    assert h.num_levels == depth
    assert Hierarchy.from_edges(h.edges) == h
    # every non-leaf node has a child
    for lvl in range(1, depth):
        assert set(h.level_parents[lvl - 1].tolist()) == set(range(h.level_sizes[lvl - 1]))


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([("a", "b"), ("b", "c"), ("c", "a")], "cycle"),
        ([("a", "a")], "cycle"),
        ([("a", "b"), ("x", "b"), ("b", "c"), ("x", "y"), ("y", "z")], "two parents: 'b'"),
        ([("a", "b"), ("b", "c"), ("a", "d")], "leaves at different depths: 'd'"),
        ([], "no nodes"),
        ([("a", "")], "empty node name"),
    ],
)
def test_bad_trees_get_one_clear_line(edges, message):
    with pytest.raises(HierarchyError, match=message) as info:
        Hierarchy.from_edges(edges)
    assert "\n" not in str(info.value)


def test_pad_extends_shallow_leaves():
    h = Hierarchy.from_edges([("a", "b"), ("b", "c"), ("a", "d")], pad=True)
    assert h.levels == [["a"], ["b", "d"], ["c", "d"]]
    assert h.padded == ["d"]
    assert h.index("d") == 4 and h.is_leaf(h.index("d"))  # the label means the leaf copy
    assert h.parent_of(4) == 2


def test_unknown_label_and_bad_csv(tmp_path, small_tree):
    with pytest.raises(HierarchyError, match="'nope' is not a node"):
        small_tree.index("nope")
    bad = tmp_path / "tree.csv"
    bad.write_text("from,to\na,b\n")
    with pytest.raises(HierarchyError, match="header 'parent,child'"):
        Hierarchy.from_csv(bad)
    bad.write_text("parent,child\na,b\nc\n")
    with pytest.raises(HierarchyError, match=r"tree.csv:3"):
        Hierarchy.from_csv(bad)
    with pytest.raises(HierarchyError, match="not found"):
        Hierarchy.from_csv(tmp_path / "missing.csv")


def test_tensors_are_cached_and_long(small_tree):
    assert small_tree.ancestors is small_tree.ancestors
    assert small_tree.parent.dtype == torch.long
