"""The suite's pytest fixtures: the image cache folder, small trees, the compile counter, and the trained runs
that several modules share (trained once a session). Plain helpers live in ``tests/fixtures.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from hrn import Hierarchy
from tests import fixtures


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


# ---------------------------------------------------------------- trained runs, once a session


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this session sees (the workers' common base), for
    :func:`tests.fixtures.once_per_session`."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_run(shared_dir) -> fixtures.TrainedRun:
    """One tiny synthetic run (:data:`tests.fixtures.TINY`, 2 epochs): the checkpoint of every module that needs a
    trained model but not a good one (evaluate, export, share, safety, the README's snippets)."""
    folder, metrics = fixtures.once_per_session(
        shared_dir, "tiny-run", lambda f: fixtures.train_tiny(f, "trainer.max_epochs=2")
    )
    return fixtures.TrainedRun(folder, metrics)


@pytest.fixture(scope="session")
def learnt_run(shared_dir) -> fixtures.TrainedRun:
    """A run that has learnt something (:data:`tests.fixtures.LEARNT`: 12 images a leaf, 4 epochs, 64 px with the
    standard stem, whose 2 x 2 maps Grad-CAM can explain): calibration, confident predictions and heatmaps need a
    network above chance."""
    folder, metrics = fixtures.once_per_session(
        shared_dir, "learnt-run", lambda f: fixtures.train_tiny(f, *fixtures.LEARNT)
    )
    return fixtures.TrainedRun(folder, metrics)


@pytest.fixture(scope="session")
def default_run(shared_dir) -> fixtures.TrainedRun:
    """``make train``: ``python -m hrn.train`` with no override, in this process; its stdout is kept."""

    def make(folder: Path) -> dict:
        ran = fixtures.run_command("train", f"hydra.run.dir={folder}", cwd=folder)
        assert ran.returncode == 0, ran.stderr[-2000:]
        return {"stdout": ran.stdout}

    folder, result = fixtures.once_per_session(shared_dir, "default-run", make)
    return fixtures.TrainedRun(folder, json.loads((folder / "metrics.json").read_text()), result["stdout"])


# ---------------------------------------------------------------- markers

SHARED_RUNS = {"tiny_run", "learnt_run", "default_run", "unbroken", "timm_run"}
INTEGRATION_MODULES = {
    "test_command_line", "test_datasets_e2e", "test_evaluate", "test_experiments", "test_export", "test_install",
    "test_notebooks", "test_reliability", "test_safety", "test_scale", "test_train", "test_gradcam",
    "test_confident", "test_fashion_mnist", "test_taxonomy", "test_trunks", "test_loggers", "test_report",
}  # fmt: skip


FIRST = {
    "default_run",
    "unbroken",
}  # the longest trainings: started first, so no worker waits on one at the end


def pytest_configure(config) -> None:
    """Under pytest-xdist each worker gets its share of the cores for torch (and the processes it starts): two
    workers with a thread per core each would fight over the cores and run several times slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items) -> None:
    """Each test is ``unit`` or ``integration`` (``pytest -m unit`` runs the fast layer alone): integration when it
    uses a shared trained run or sits in a module of commands and end-to-end runs, unit otherwise. The tests of
    the longest runs go first (a stable sort: the rest keep their order)."""
    items.sort(key=lambda item: not FIRST & set(getattr(item, "fixturenames", ())))
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        shared = SHARED_RUNS & set(getattr(item, "fixturenames", ()))
        item.add_marker(
            pytest.mark.integration if shared or module in INTEGRATION_MODULES else pytest.mark.unit
        )
