"""Shared test helpers: random level-balanced trees and the dense state-enumeration oracle of the tree loss."""

from __future__ import annotations

import os
import random

import pytest
import torch

from hrn import Hierarchy


def random_tree(depth: int, seed: int, max_children: int = 3, roots: int | None = None) -> Hierarchy:
    """A random level-balanced tree of ``depth`` levels (every leaf at the deepest level)."""
    rng = random.Random(seed)
    level = [f"n0_{i}" for i in range(roots or rng.randint(1, 3))]
    edges = []
    for d in range(1, depth):
        nxt = []
        for parent in level:
            for _ in range(rng.randint(1, max_children)):
                child = f"n{d}_{len(nxt)}"
                nxt.append(child)
                edges.append((parent, child))
        level = nxt
    rng.shuffle(edges)  # the builder must not depend on edge order for structure
    return Hierarchy.from_edges(edges)


def dense_log_marginals(h: Hierarchy, scores: torch.Tensor) -> torch.Tensor:
    """The oracle: enumerate the N + 1 legal states explicitly (paper Eq. 3-5). (B, N) -> (B, N) log P(v).

    State 0 is the empty state; state v + 1 = {v} ∪ ancestors(v). P(v) sums P over states that contain v.
    """
    states = torch.cat(
        [torch.zeros(1, h.num_nodes, dtype=scores.dtype), h.ancestors.to(scores.dtype)]
    )  # (N+1, N)
    log_p_state = (scores @ states.T).log_softmax(dim=1)  # (B, N+1)
    contains = states.bool()  # (N+1, N): state s contains node v
    out = []
    for v in range(h.num_nodes):
        out.append(torch.logsumexp(log_p_state[:, contains[:, v]], dim=1))
    return torch.stack(out, dim=1)


@pytest.fixture(autouse=True, scope="session")
def image_cache_dir(tmp_path_factory):
    """Image caches (``hrn.data.cache``) built by the tests go to a temporary folder, not the user's ~/.cache;
    subprocesses inherit it through the environment."""
    folder = tmp_path_factory.mktemp("hrn-cache")
    os.environ["HRN_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture
def small_tree() -> Hierarchy:
    return Hierarchy.from_edges(
        [("a", "b"), ("a", "c"), ("b", "d"), ("b", "e"), ("c", "f"), ("x", "y"), ("y", "z"), ("y", "w")]
    )


@pytest.fixture
def compiled_graphs(monkeypatch) -> list[bool]:
    """Make ``torch.compile`` count the graphs it compiles: returns the list it appends to, one entry per graph
    (whether it was traced with gradients on, i.e. a training graph). The graphs run through AOTAutograd
    without code generation (``aot_eager``): what the compiler is asked for is the same as with inductor, in
    seconds rather than minutes of C++ compilation on a CPU."""
    import torch._dynamo

    graphs: list[bool] = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")
    real = torch.compile

    def backend(gm, example_inputs):
        graphs.append(torch.is_grad_enabled())
        return aot_eager(gm, example_inputs)

    torch._dynamo.reset()  # compiled code is cached per function: start from none
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend=backend, **kw))
    yield graphs
    torch._dynamo.reset()


def greedy_path(marginals: torch.Tensor, h: Hierarchy, node: int | None = None) -> list[int]:
    """The oracle of the top-down path, one sample at a time with a Python walk over the tree: (N,) marginals -> a
    root-to-leaf path (global indices, one per level). ``node=None``: the most probable level-1 node, then its most
    probable child, and so on. A node index: its ancestors, the node, then below it the most probable child at
    each level."""
    off = h.offsets
    path = [int(marginals[: off[1]].argmax()) if node is None else node]
    while h.parent_of(path[0]) >= 0:
        path.insert(0, h.parent_of(path[0]))
    for lvl in range(len(path), h.num_levels):
        children = (h.level_parents[lvl - 1] == path[-1] - off[lvl - 1]).nonzero().flatten() + off[lvl]
        path.append(int(children[marginals[children].argmax()]))
    return path
