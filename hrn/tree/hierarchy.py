"""The label-relation tree: built once with networkx, validated, then exported to index tensors.

Node order everywhere in the package (model outputs, targets, metrics) is the concatenation of ``levels``,
coarse -> fine. Inside a level, nodes are ordered by their parent's position in the previous level, then by
first appearance in the edge list, so a CSV written in a sensible order keeps that order.

Everything that needs a graph walk happens here, in ``__init__``; losses, models and metrics only read the
exported tensors (``parent``, ``node_level``, ``ancestors``...), which they keep as buffers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import networkx as nx
import torch

from hrn.errors import HRNError

__all__ = ["Hierarchy", "HierarchyError"]


class HierarchyError(HRNError):
    """A label tree (or a label) that the package cannot use. The message is one line and says how to fix it."""


def _short(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class Hierarchy:
    """A level-balanced label tree over ``N`` nodes (the virtual root is not a node).

    Level 1 holds the nodes without a parent (the coarsest labels), level ``L`` the leaves. HRN needs every leaf
    at depth ``L``; a tree that is not level-balanced is rejected with the shallow leaves named, unless
    ``pad=True``, which extends each shallow leaf with pass-through copies of itself (named ``"<leaf>"`` at every
    extra level, distinguished by level) until it reaches depth ``L``.

    Args:
        edges: ``(parent, child)`` pairs of node names.
        pad: extend shallow leaves with pass-through nodes instead of raising.
    """

    def __init__(self, edges: Iterable[tuple[str, str]], *, pad: bool = False) -> None:
        edges = [(str(p), str(c)) for p, c in edges]
        if not edges:
            raise HierarchyError("the label tree has no nodes: give at least one (parent, child) edge")
        graph = nx.DiGraph()
        first_seen: dict[str, int] = {}
        for parent, child in edges:
            for name in (parent, child):
                if name == "":
                    raise HierarchyError(f"edge ({parent!r}, {child!r}) has an empty node name")
                first_seen.setdefault(name, len(first_seen))
            if parent == child:
                raise HierarchyError(f"node {parent!r} is its own parent: the tree has a cycle")
            graph.add_edge(parent, child)

        two_parents = sorted(n for n in graph if graph.in_degree(n) > 1)
        if two_parents:
            detail = "; ".join(
                f"{n!r} under {_short(sorted(graph.predecessors(n)), 3)}" for n in two_parents[:3]
            )
            raise HierarchyError(
                f"node(s) with two parents: {detail} — a label tree gives each node one parent; "
                "rename one copy if they are different classes"
            )
        if not nx.is_directed_acyclic_graph(graph):
            cycle = " -> ".join(repr(p) for p, _ in nx.find_cycle(graph))
            raise HierarchyError(f"the label tree has a cycle: {cycle}")

        roots = sorted((n for n in graph if graph.in_degree(n) == 0), key=first_seen.__getitem__)
        depth: dict[str, int] = {}
        order: list[str] = []  # breadth-first, children in first-seen order
        frontier = roots
        d = 1
        while frontier:
            nxt: list[str] = []
            for n in frontier:
                depth[n] = d
                order.append(n)
                nxt.extend(sorted(graph.successors(n), key=first_seen.__getitem__))
            frontier, d = nxt, d + 1
        num_levels = max(depth.values())

        leaves = [n for n in order if graph.out_degree(n) == 0]
        shallow = [n for n in leaves if depth[n] < num_levels]
        if shallow and not pad:
            raise HierarchyError(
                f"leaves at different depths: {_short(shallow)} are above level {num_levels}; HRN needs every "
                "leaf at the deepest level (fix the tree, or extend them with pass-through copies: dataset.pad=true for "
                "dataset=folder, Hierarchy.from_edges(..., pad=True) in Python)"
            )
        parent_of: dict[tuple[int, str], tuple[int, str] | None] = {}
        levels: list[list[tuple[int, str]]] = [[] for _ in range(num_levels)]
        for n in order:  # parents come before children in BFS order, so levels stay grouped by parent
            key = (depth[n], n)
            preds = list(graph.predecessors(n))
            parent_of[key] = (depth[n] - 1, preds[0]) if preds else None
            levels[depth[n] - 1].append(key)
        for n in shallow:  # pass-through copies keep the leaf's name at every level below it
            prev = (depth[n], n)
            for lvl in range(depth[n] + 1, num_levels + 1):
                key = (lvl, n)
                parent_of[key] = prev
                levels[lvl - 1].append(key)
                prev = key
        # Re-sort each level by parent position so siblings are contiguous (padding appended out of order).
        for lvl in range(1, num_levels):
            pos = {k: i for i, k in enumerate(levels[lvl - 1])}
            levels[lvl].sort(key=lambda k: pos[parent_of[k]])  # stable: keeps first-seen order among siblings

        self._keys: list[tuple[int, str]] = [k for level in levels for k in level]
        self._position = {k: i for i, k in enumerate(self._keys)}
        self.levels: list[list[str]] = [[name for _, name in level] for level in levels]
        self._parent: list[int] = [
            -1 if parent_of[k] is None else self._position[parent_of[k]] for k in self._keys
        ]
        self._by_name: dict[str, int] = {}
        self._ambiguous: set[str] = set()
        for i, (_, name) in enumerate(self._keys):
            if name in self._by_name:
                self._ambiguous.add(name)
            else:
                self._by_name[name] = i
        for name in shallow:  # a label naming a padded leaf means the leaf itself: its deepest copy
            self._by_name[name] = max(i for i, k in enumerate(self._keys) if k[1] == name)
        self._ambiguous -= set(shallow)
        self.padded: list[str] = shallow

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_edges(cls, edges: Iterable[tuple[str, str]], *, pad: bool = False) -> Hierarchy:
        """Build from ``(parent, child)`` name pairs."""
        return cls(edges, pad=pad)

    @classmethod
    def from_csv(cls, path: str | Path, *, pad: bool = False) -> Hierarchy:
        """Build from a CSV file with the header ``parent,child`` and one edge a row."""
        path = Path(path)
        if not path.is_file():
            raise HierarchyError(f"{path}: tree file not found (expected a CSV with header 'parent,child')")
        edges = []
        try:
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = [h.strip() for h in next(reader, [])]
                if header[:2] != ["parent", "child"]:
                    raise HierarchyError(
                        f"{path}: first line must be the header 'parent,child', found {header!r}"
                    )
                for lineno, row in enumerate(reader, start=2):
                    if not row or all(not c.strip() for c in row):
                        continue
                    if len(row) < 2 or not row[0].strip() or not row[1].strip():
                        raise HierarchyError(
                            f"{path}:{lineno}: expected 'parent,child', found {','.join(row)!r}"
                        )
                    edges.append((row[0].strip(), row[1].strip()))
        except (UnicodeDecodeError, csv.Error) as e:
            raise HierarchyError(f"{path}: not a readable UTF-8 CSV file ({e})") from None
        try:
            return cls(edges, pad=pad)
        except HierarchyError as e:
            raise HierarchyError(f"{path}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path, *, pad: bool = False) -> Hierarchy:
        """Build from a JSON file holding a list of ``[parent, child]`` pairs."""
        path = Path(path)
        try:
            edges = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise HierarchyError(f"{path}: cannot read the tree as JSON ({e})") from None
        if not isinstance(edges, list) or not all(isinstance(e, list | tuple) and len(e) == 2 for e in edges):
            raise HierarchyError(f"{path}: expected a JSON list of [parent, child] pairs")
        try:
            return cls([tuple(e) for e in edges], pad=pad)
        except HierarchyError as e:
            raise HierarchyError(f"{path}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path, *, pad: bool = False) -> Hierarchy:
        """``from_json`` for ``.json`` files, ``from_csv`` otherwise."""
        return cls.from_json(path, pad=pad) if str(path).endswith(".json") else cls.from_csv(path, pad=pad)

    # ---------------------------------------------------------------- names and sizes
    @property
    def num_nodes(self) -> int:
        """N, the number of nodes (the virtual root excluded)."""
        return len(self._keys)

    @property
    def num_levels(self) -> int:
        """L, the number of levels."""
        return len(self.levels)

    @property
    def level_sizes(self) -> list[int]:
        """``[n_1, ..., n_L]``."""
        return [len(level) for level in self.levels]

    @property
    def offsets(self) -> list[int]:
        """Index of each level's first node in the concatenated order, plus N at the end (L + 1 values)."""
        out = [0]
        for n in self.level_sizes:
            out.append(out[-1] + n)
        return out

    @property
    def names(self) -> list[str]:
        """Node names in the concatenated coarse -> fine order."""
        return [name for _, name in self._keys]

    @property
    def edges(self) -> list[tuple[str, str]]:
        """The ``(parent, child)`` pairs in node order; ``Hierarchy.from_edges(h.edges)`` rebuilds ``h``.

        Level-1 nodes appear as parents only, so the edge list of a one-level tree would be empty; such trees are
        not representable by edges and are rejected anyway (HRN needs at least one parent-child link).
        """
        return [(self._keys[p][1], self._keys[i][1]) for i, p in enumerate(self._parent) if p >= 0]

    def index(self, name: str) -> int:
        """Position of the node called ``name`` in the concatenated coarse -> fine order."""
        if name in self._ambiguous:
            raise HierarchyError(f"label {name!r} names more than one node of the tree; it is ambiguous")
        try:
            return self._by_name[name]
        except KeyError:
            raise HierarchyError(f"label {name!r} is not a node of the tree") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def level_of(self, index: int) -> int:
        """1-based level of node ``index``."""
        return int(self.node_level[index])

    def parent_of(self, index: int) -> int:
        """Index of the parent of node ``index`` (-1 for a level-1 node)."""
        return self._parent[index]

    def is_leaf(self, index: int) -> bool:
        return index >= self.offsets[-2]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hierarchy) and self._keys == other._keys and self._parent == other._parent

    def __repr__(self) -> str:
        return f"Hierarchy(levels={self.level_sizes}, num_nodes={self.num_nodes})"

    def to_dict(self) -> dict:
        """A plain description (node names and parents) that ``from_dict`` turns back into the same tree."""
        return {"levels": [list(level) for level in self.levels], "parent": list(self._parent)}

    @classmethod
    def from_dict(cls, d: dict) -> Hierarchy:
        names = [n for level in d["levels"] for n in level]
        offsets = [0]
        for level in d["levels"]:
            offsets.append(offsets[-1] + len(level))
        # Rebuild through edges; padded copies (same name at two levels) are rebuilt by padding again.
        edges = []
        for i, p in enumerate(d["parent"]):
            if p >= 0 and names[p] != names[i]:
                edges.append((names[p], names[i]))
        h = cls(edges, pad=True)
        if h.to_dict() != {"levels": [list(x) for x in d["levels"]], "parent": list(d["parent"])}:
            raise HierarchyError("the stored tree description is inconsistent (levels and parents disagree)")
        return h

    # ---------------------------------------------------------------- tensors (computed once)
    @cached_property
    def parent(self) -> torch.Tensor:
        """(N,) long: global index of each node's parent, -1 at level 1."""
        return torch.tensor(self._parent, dtype=torch.long)

    @cached_property
    def node_level(self) -> torch.Tensor:
        """(N,) long: 1-based level of each node."""
        return torch.cat(
            [torch.full((n,), lvl, dtype=torch.long) for lvl, n in enumerate(self.level_sizes, 1)]
        )

    @cached_property
    def level_parents(self) -> list[torch.Tensor]:
        """For l = 2..L: (n_l,) long, the *local* index (inside level l-1) of each level-l node's parent."""
        off = self.offsets
        return [self.parent[off[lvl] : off[lvl + 1]] - off[lvl - 1] for lvl in range(1, self.num_levels)]

    @cached_property
    def ancestors(self) -> torch.Tensor:
        """(N, N) bool: ``ancestors[v, u]`` is true when u is v or an ancestor of v (the state of node v)."""
        n = self.num_nodes
        out = torch.eye(n, dtype=torch.bool)
        for lvl in range(1, self.num_levels):  # a node's row = its parent's row plus itself
            lo, hi = self.offsets[lvl], self.offsets[lvl + 1]
            out[lo:hi] |= out[self.parent[lo:hi]]
        return out

    @cached_property
    def ancestor_at_level(self) -> torch.Tensor:
        """(L, N) long: local index (inside level l) of node v's ancestor at level l, or -1 when v is coarser.

        Row l-1 maps any label to the level-l class it implies; a label above level l implies none (-1).
        """
        n, L = self.num_nodes, self.num_levels
        out = torch.full((L, n), -1, dtype=torch.long)
        idx = torch.arange(n)
        out[self.node_level - 1, idx] = idx - torch.tensor(self.offsets[:-1])[self.node_level - 1]
        for lvl in range(2, L + 1):  # fill coarser rows from the parent's row
            lo, hi = self.offsets[lvl - 1], self.offsets[lvl]
            par = self.parent[lo:hi]
            out[: lvl - 1, lo:hi] = out[: lvl - 1, par]
        return out

    def lca_height(self, a: int, b: int) -> int:
        """Height above the leaves of the lowest common ancestor of nodes a and b at the same level.

        0 when a == b; L when they share no ancestor but the virtual root.
        """
        la, lb = self.level_of(a), self.level_of(b)
        if la != lb:
            raise ValueError("lca_height compares two nodes of the same level")
        h = 0
        while a != b:
            a, b, h = self._parent[a], self._parent[b], h + 1
            if a < 0:
                return h
        return h

    def leaves_under(self, index: int) -> list[int]:
        """Global indices of the leaves in the subtree of node ``index``."""
        lo = self.offsets[-2]
        row = self.ancestors[lo:, index]
        return (torch.nonzero(row).flatten() + lo).tolist()
