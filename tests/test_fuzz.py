"""Fuzzing: every tree or labels input either loads correctly or fails with the package's own error type and a
one-line message — never an unrelated exception."""

import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hrn import Hierarchy, HierarchyError
from hrn.data.base import DataError
from hrn.data.folder import read_labels
from hrn.errors import HRNError

CASES = 400  # per test; the closing note reports the total
FAST = settings(
    max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

names = st.text(alphabet=string.ascii_letters[:6] + " _-,\"'\n\x00é", min_size=0, max_size=4)
edges = st.lists(st.tuples(names, names), max_size=14)


def check_tree(h: Hierarchy) -> None:
    """Invariants of a tree that loaded."""
    assert h.num_nodes == sum(h.level_sizes) and all(h.level_sizes)
    for v in range(h.num_nodes):
        p = h.parent_of(v)
        assert (p == -1) == (h.level_of(v) == 1)
        assert p == -1 or h.level_of(p) == h.level_of(v) - 1
    assert Hierarchy.from_edges(h.edges) == h


def one_line(e: Exception) -> None:
    assert isinstance(e, HRNError), type(e)
    assert str(e) and "\n" not in str(e)


@FAST
@given(edges)
def test_tree_builder_on_random_edge_lists(edge_list):
    try:
        h = Hierarchy.from_edges(edge_list)
    except HierarchyError as e:
        one_line(e)
    else:
        check_tree(h)


@FAST
@given(edges, st.booleans())
def test_tree_builder_with_padding(edge_list, pad):
    try:
        h = Hierarchy.from_edges(edge_list, pad=pad)
    except HierarchyError as e:
        one_line(e)
    else:
        assert all(h.is_leaf(h.index(n)) for n in h.padded)


csv_text = st.one_of(
    st.text(max_size=120),
    st.lists(st.tuples(names, names), max_size=10).map(
        lambda rows: "parent,child\n" + "\n".join(",".join(r) for r in rows)
    ),
)


@FAST
@given(st.one_of(csv_text.map(str.encode), st.binary(max_size=120)))
def test_tree_csv_parsing(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("fuzz") / "tree.csv"
    path.write_bytes(payload)
    try:
        h = Hierarchy.from_csv(path)
    except HierarchyError as e:
        one_line(e)
        assert str(path) in str(e)
    else:
        check_tree(h)


@FAST
@given(st.one_of(st.text(max_size=120).map(str.encode), st.binary(max_size=80)))
def test_tree_json_parsing(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("fuzz") / "tree.json"
    path.write_bytes(payload)
    try:
        check_tree(Hierarchy.from_json(path))
    except HierarchyError as e:
        one_line(e)


TREE = Hierarchy.from_edges([("Animal", "Bird"), ("Bird", "Crow"), ("Plant", "Tree"), ("Tree", "Oak")])
labels_rows = st.lists(
    st.tuples(
        st.sampled_from(["img/a.jpg", "", "x.png", "a,b"]),
        st.sampled_from(["Crow", "Bird", "Animal", "Oak", "Maple", "", "crow"]),
        st.sampled_from(["train", "val", "test", "", "TRAIN", "dev"]),
    ),
    max_size=8,
)
headers = st.sampled_from(["path,label,split", "path,label", "path,label,split,extra", "file,label", ""])


@FAST
@given(headers, labels_rows, st.binary(max_size=40), st.booleans())
def test_labels_csv_parsing(tmp_path_factory, header, rows, junk, add_junk):
    folder: Path = tmp_path_factory.mktemp("fuzz")
    ncols = len(header.split(","))
    text = header + "\n" + "\n".join(",".join(r[:ncols]) for r in rows)
    payload = text.encode() + (junk if add_junk else b"")
    (folder / "labels.csv").write_bytes(payload)
    try:
        parsed, has_split = read_labels(folder / "labels.csv", TREE)
    except DataError as e:
        one_line(e)
    else:
        assert has_split == (header == "path,label,split")
        for sample, split in parsed:
            assert 0 <= sample.target < TREE.num_nodes
            assert split in (("train", "val", "test") if has_split else (None,))
