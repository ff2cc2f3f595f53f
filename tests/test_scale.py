"""Speed and scale switches: bf16 and channels_last numerics, torch.compile wiring, DDP on CPU, the bench."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from hrn import HRN, CompositeLoss, Hierarchy
from hrn.bench import main as bench_main
from hrn.benchmarks.timing import interleaved
from hrn.benchmarks.tree_loss import AuthorsTreeLoss, balanced_tree
from hrn.checkpoints import load_checkpoint
from hrn.losses import TreeLoss
from tests import fixtures


@pytest.fixture
def tree() -> Hierarchy:
    return Hierarchy.from_edges(
        [("a", "b"), ("a", "c"), ("b", "d"), ("b", "e"), ("c", "f"), ("x", "y"), ("y", "z")]
    )


def _loss(net, h, images, targets, **autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(autocast)):
        return CompositeLoss(h)(net(images), targets).total


def test_bf16_mixed_and_channels_last_stay_close_to_fp32(tree):
    torch.manual_seed(0)
    net = HRN(tree, trunk="resnet18", width=32, dim=16).eval()
    images = torch.randn(4, 3, 64, 64)
    targets = torch.tensor([5, 6, 2, 8])
    fp32 = _loss(net, tree, images, targets)
    bf16 = _loss(net, tree, images, targets, on=True)
    assert torch.isfinite(bf16) and bf16.dtype == torch.float32  # the tree loss and CE run in fp32
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.05)
    cl = HRN(tree, trunk="resnet18", width=32, dim=16).eval()
    cl.load_state_dict(net.state_dict())
    cl.to(
        memory_format=torch.channels_last
    )  # what HRNModule(channels_last=True) does to its network and batches
    cl_images = images.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_loss(cl, tree, cl_images, targets), fp32, rtol=1e-4, atol=1e-4)


def test_compile_switch_keeps_checkpoint_keys(tree, monkeypatch):
    from hrn.training import HRNModule

    compiled = []
    # the wiring, not the compiler
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append((m, kw)) or m)
    net = HRN(tree, trunk="resnet18", width=16, dim=8)
    module = HRNModule(net, CompositeLoss(tree), tree, torch.optim.SGD, compile=True)
    assert compiled == [(net, {"dynamic": False})]
    assert all(k.startswith(("net.", "loss.", "tree.")) for k in module.state_dict())


def test_static_compiled_picks_one_shape_per_mode(compiled_graphs):
    """The first shape of a mode is compiled; a smaller batch runs eagerly; a larger batch of the same image size
    (an epoch that started with its partial batch) is compiled instead, and from then on the smaller one is eager;
    another image size runs eagerly."""
    from hrn.training import StaticCompiled

    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    forward = StaticCompiled(net)
    for batch in (5, 2, 5, 2):  # training: 5 compiled, 2 eager
        forward(torch.randn(batch, 3, 4, 4))
    assert compiled_graphs == [True] and forward.shapes[True] == (5, 3, 4, 4)
    net.eval()
    with torch.no_grad():
        for batch in (3, 3, 6, 3, 6):  # evaluation starting with a partial batch: 3, then 6 replaces it
            assert forward(torch.randn(batch, 3, 4, 4)).shape == (batch, 2, 4, 4)
        assert compiled_graphs == [True, False, False] and forward.shapes[False] == (6, 3, 4, 4)
        assert forward(torch.randn(8, 3, 5, 5)).shape == (8, 2, 5, 5)  # another image size: eager
    assert len(compiled_graphs) == 3


@pytest.mark.slow
def test_compiled_net_has_one_graph_per_mode_and_runs_other_shapes_eagerly(tree, compiled_graphs):
    """Train and eval mode each compile once, at the first batch size seen in that mode; a partial batch runs
    eagerly (no new graph); the compiled outputs and gradients equal the eager network's."""
    from hrn.training import StaticCompiled

    torch.manual_seed(0)
    net = HRN(tree, trunk="resnet18", width=16, dim=8)
    forward = StaticCompiled(net)
    full, partial = torch.randn(4, 3, 32, 32), torch.randn(3, 3, 32, 32)
    targets = torch.tensor([2, 5, 6, 8])
    loss = CompositeLoss(tree)

    def step(fn, images):
        net.zero_grad()
        out = fn(images)
        loss(out, targets[: len(images)]).total.backward()
        return out, [p.grad.clone() for p in net.parameters()]

    for _ in range(2):  # two "epochs": full, full, partial batches in training, then in evaluation
        net.train()
        compiled, compiled_grads = step(forward, full)
        eager, eager_grads = step(net, full)  # train-mode BN uses batch statistics: the same outputs
        step(forward, partial)
        net.eval()
        with torch.no_grad():
            evaluated, evaluated_eager = forward(full), net(full)
            forward(partial)
    assert compiled_graphs == [True, False]  # one training graph, one evaluation graph, nothing else
    assert forward.shapes == {True: full.shape, False: full.shape}
    for a, b in [(compiled, eager), (evaluated, evaluated_eager)]:
        torch.testing.assert_close(a.leaf_logits, b.leaf_logits, rtol=1e-4, atol=1e-5)
        for s, t in zip(a.level_probs, b.level_probs, strict=True):
            torch.testing.assert_close(s, t, rtol=1e-4, atol=1e-5)
    for g, h in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-5)


def test_the_benched_formulations_agree():
    """The authors' formulation (float64 here) and both of ours give the same loss and, ours, the same gradient
    on the bench's 1,000-node tree, in fp32 too."""
    h = balanced_tree(1_000)
    scores = torch.rand(8, h.num_nodes, dtype=torch.float64)
    targets = torch.randint(0, h.num_nodes, (8,))
    subtree, dense = TreeLoss(h, "subtree"), TreeLoss(h, "dense")
    ours = subtree(scores, targets)
    authors = AuthorsTreeLoss(h, torch.device("cpu"))
    authors.states = authors.states.double()
    torch.testing.assert_close(authors(scores, targets), ours)
    torch.testing.assert_close(dense(scores, targets), ours)
    single = scores.float().requires_grad_()
    grads = [torch.autograd.grad(loss(single, targets), single)[0] for loss in (subtree, dense)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-8)


def test_interleaved_timing_alternates_the_order_every_round():
    calls = []
    rounds = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, torch.device("cpu")
    )
    assert len(rounds) == 3 and all(set(r) == {"a", "b"} and min(r.values()) > 0 for r in rounds)
    runs = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]  # consecutive repeats collapsed
    # Timer's warm-up of a then of b, then rounds a|b, b|a, a|b: the flipped order merges neighbouring repeats
    # into a b a b a b; a fixed order would give a b a b a b a b
    assert runs == ["a", "b", "a", "b", "a", "b"]


@pytest.mark.slow
def test_bench_quick_writes_json(tmp_path, capsys):
    """Every part of the benchmark, in its quick sizes: the JSON has each figure, the table names each row."""
    result = bench_main(["--quick", "--device", "cpu", "--out", str(tmp_path / "bench.json")])
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["quick"] is True and on_disk["machine"]["cores"] >= 1
    assert [r["tree"] for r in result["tree_loss"]] == ["cub", "1k", "10k"]
    for r in result["tree_loss"]:  # speed-ups are medians of per-round ratios, reported with their spread
        assert min(r["subtree_s"], r["dense_s"], r["auto_s"]) > 0
        assert r["auto_picks"] == "subtree"  # on the CPU
        for other in ("subtree", "dense"):
            low, high = r[f"auto_vs_{other}_range"]
            assert r["rounds"] == 2 and low <= r[f"auto_vs_{other}"] <= high
    assert "authors_s" in result["tree_loss"][0] and "authors_s" not in result["tree_loss"][-1]
    assert (
        result["train_step"]["ratio_median"] > 0
    )  # how much slower than a plain ResNet: a figure, not a test
    data = result["data"]
    assert {(r["path"], r["crop"], r["workers"]) for r in data["loaders"]} == {
        (path, 224, w) for path in ("pil", "cache", "shards", "streamed", "pil_float") for w in (0, 2)
    }
    assert set(data["shards_vs_cache"]) == set(data["streamed_vs_cache"]) == {"224/0", "224/2"}
    assert data["shard_write_s"]["224"] > 0
    assert all(r["images_per_s"] > 0 for r in data["loaders"]) and set(data["cache_speedup"]) == {
        "224/0",
        "224/2",
    }
    scale = data["scale"]  # the shard sets as they grow, each epoch in a process of its own
    assert scale["tree"] == {"levels": [5, 20, 100, 500, 1500, 4000, 10000], "nodes": 16_125}
    assert [(r["images"], r["read"]) for r in scale["memory"]] == [(500, "streamed"), (2_000, "streamed")]
    assert all(
        r["write_s"] > 0 and r["images_per_s"] > 0 and r["peak_growth_mb"] > 0 for r in scale["memory"]
    )
    assert set(scale["anon_mb_per_100k_images"]) == {"streamed"}  # by index too in the full run
    assert scale["train_step"]["trees"]["wide"]["nodes"] == 16_125 and scale["train_step"]["wide_vs_cub"] > 0
    assert data["transform_images_per_s"] > 0
    small = result["small_images"]
    # .ci/run installs the files; elsewhere the bench says they are absent and this is not run
    if Path("/usr/share/datasets/fashion-mnist").is_dir():
        assert [r["format"] for r in small["loaders"]][0] == "fashion_mnist (in memory)"
        assert all(r["images_per_s"] > 0 for r in small["loaders"]) and small["memory_vs_png"] > 0
    else:
        assert "no Fashion-MNIST files" in small["skipped"]
    convnet, vit = result["train_step_timm"]
    assert (convnet["trunk"], vit["trunk"]) == ("timm:convnext_atto", "timm:vit_tiny_patch16_224")
    for row in (convnet, vit):
        assert row["ratio_median"] > 0 and row["hrn_images_per_s"] > 0 and row["trunk_images_per_s"] > 0
    stems = result["stems"]
    assert stems["map_side"] == {"standard": 1, "small, stride 2": 2, "small, stride 1": 4}
    assert stems["slowdown"]["standard"] == 1 and stems["slowdown"]["small, stride 1"] > 0
    out = capsys.readouterr().out
    assert "timm:vit_tiny_patch16_224 at 64 px" in out and "small, stride 2" in out
    assert "shards / cache: " in out and "2,000 images streamed: written in" in out


def test_bench_only_runs_the_parts_named(tmp_path, capsys):
    result = bench_main(
        ["--quick", "--device", "cpu", "--only", "small_images", "--out", str(tmp_path / "b.json")]
    )
    assert set(result) == {"machine", "quick", "small_images"}
    assert set(json.loads((tmp_path / "b.json").read_text())) == set(result)
    assert "machine:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_main(["--only", "data,gpu", "--out", str(tmp_path / "never.json")])
    assert (
        "--only data,gpu: expected some of tree_loss,train_step,train_step_timm,stems,data,small_images"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "never.json").exists()


@pytest.mark.slow
def test_bench_e2e_times_whole_epochs_against_the_step_alone(tmp_path):
    result = bench_main(["--e2e", "--quick", "--workers", "1", "--out", str(tmp_path / "e2e.json")])
    e = json.loads((tmp_path / "e2e.json").read_text())["e2e"]
    assert e["epoch_s"] == pytest.approx(result["e2e"]["epoch_s"])
    assert e["setting"]["train"] == 64 and e["setting"]["test"] == 32 and len(e["epoch_s"]) == 2
    alone = e["step_alone"]
    assert alone["train_images_per_s"] > 0 and alone["eval_images_per_s"] > 0
    assert 0 < e["ratio"] == pytest.approx(alone["allowed_epoch_s"] / e["steady_epoch_s"])


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # the training callback comes from tests.fixtures: the checkout on the path, wherever the process starts
    env = fixtures.child_env(OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.slow
def test_ddp_cpu_trains_and_reports_the_single_process_metrics(tmp_path):
    """Two gloo processes train 2 epochs, each rank on its own share in a new order every epoch, never a 1-image
    batch; the test split has 5 images, so a DistributedSampler pads it to 6: the reported numbers must still count
    5 and equal a single-process evaluation of the same checkpoint."""
    root = fixtures.write_folder(tmp_path / "data")
    run = tmp_path / "run"
    small = [
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.resize=36",
        "dataset.crop=32",
        "dataset.num_workers=0",
        "model.trunk=resnet18",
        "model.pretrained=false",
        "model.width=32",
        "model.dim=16",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    orders = tmp_path / "orders"
    trained = _run(
        "hrn.train",
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "dataset.batch_size=5",
        *small,
        "+callbacks.order._target_=tests.fixtures.RecordOrder",
        f"+callbacks.order.folder={orders}",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    # 12 training images, 6 a rank: batches of 5 leave each rank a lone image, which must be dropped (the whole
    # dataset's 12 % 5 = 2 would not say so); each epoch's order is new, and the ranks never share an image
    seen = {}
    for rank in (0, 1):
        for line in (orders / f"order-rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            seen.setdefault((rank, record["epoch"]), []).extend(record["index"])
            assert len(record["index"]) == 5, record
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for rank in (0, 1):
        assert seen[(rank, 0)] != seen[(rank, 1)], "the same order in both epochs"
    for epoch in (0, 1):
        assert not set(seen[(0, epoch)]) & set(seen[(1, epoch)])
    ddp = json.loads((run / "metrics.json").read_text())
    assert ddp["test/num_samples"] == 5
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    single = fixtures.run_command(
        "evaluate", f"ckpt_path={best}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in (
        "num_samples",
        "acc_l1",
        "acc_l2",
        "acc_l3",
        "acc_leaf_sigmoid",
        "ap_micro",
        "full_path_acc",
        "consistency",
        "mistake_severity",
        "acc_l3_marginal",
    ):
        assert ddp[f"test/{key}"] == pytest.approx(one[f"test/{key}"], abs=1e-6), key


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_train_on_shards_agree_on_the_weights_and_count_each_test_image_once(tmp_path):
    """Multi-node as a cluster runs it, on this machine: two "nodes" of one process each, started apart with the
    variables a launcher sets (``NODE_RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` 127.0.0.1, ``MASTER_PORT``) and
    ``trainer.num_nodes=2``, train over gloo on shards of the folder dataset streamed by litdata's loader (which
    splits them by rank: the ranks are read once the process group exists), each in a run folder of its own. The
    two end with the same weights; the ranks never share a training image; the 5-image test split (padded to 6 by
    the DistributedSampler) counts 5, and the metrics equal a single-process evaluation of node 0's checkpoint."""
    root = fixtures.write_folder(tmp_path / "data")
    shards = tmp_path / "shards"
    written = fixtures.run_command(
        "shard", "dataset=folder", f"dataset.root={root}", "dataset.resize=36", "dataset.crop=32", "dataset.num_workers=0",
        f"dataset.cache_dir={tmp_path / 'cache'}", f"out={shards}", cwd=tmp_path,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr[-2000:]
    assert json.loads(written.stdout.strip().splitlines()[-1])["splits"]["test"] == 5
    port, logs = _free_port(), tmp_path / "logs"
    procs, errs = [], []
    for node in (0, 1):
        env = fixtures.child_env(
            OMP_NUM_THREADS="1",
            NODE_RANK=str(node),
            LOCAL_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        args = [
            "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2", "trainer.max_epochs=2",
            "dataset=shards", f"dataset.root={shards}", "dataset.stream=true", "dataset.batch_size=3", "model.trunk=resnet18",
            "model.pretrained=false", "model.width=16", "model.dim=8", "callbacks.progress_bar.refresh_rate=0",
            "+callbacks.order._target_=tests.fixtures.RecordOrder", f"+callbacks.order.folder={logs}",
            "+callbacks.weights._target_=tests.fixtures.RecordWeights", f"+callbacks.weights.folder={logs}",
            f"hydra.run.dir={tmp_path / f'node{node}'}",
        ]  # fmt: skip
        # stderr to a file, not a pipe: a pipe nobody reads until the end can fill and stall the run
        errs.append((tmp_path / f"node{node}.err").open("w"))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "hrn.train", *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=errs[-1],
            )  # fmt: skip
        )
    try:  # a node that fails leaves the other waiting for it: stop that one too
        deadline = time.time() + 600
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for f in errs:
            f.close()
    for node, proc in enumerate(procs):
        assert proc.returncode == 0, f"node {node}: {(tmp_path / f'node{node}.err').read_text()[-3000:]}"
    digests = {(logs / f"weights-rank{r}.txt").read_text() for r in (0, 1)}
    assert len(digests) == 1, "the nodes ended with different weights"
    for epoch in (0, 1):  # 12 training images, 6 a node, in batches of 3: each node its own half
        seen = [
            [i for line in (logs / f"order-rank{r}.jsonl").read_text().splitlines()
             if (rec := json.loads(line))["epoch"] == epoch for i in rec["index"]]
            for r in (0, 1)
        ]  # fmt: skip
        assert len(seen[0]) == len(seen[1]) == 6 and not set(seen[0]) & set(seen[1])
    ddp = json.loads((tmp_path / "node0" / "metrics.json").read_text())
    assert ddp["test/num_samples"] == 5 and not (tmp_path / "node1" / "metrics.json").exists()
    last = load_checkpoint(tmp_path / "node0" / "checkpoints" / "last.ckpt")
    assert fixtures.weights_digest(last.net) in digests  # node 0 saved the weights both hold
    best = next((tmp_path / "node0" / "checkpoints").glob("best-*.ckpt"))  # what train's test/ numbers are of
    single = fixtures.run_command(
        "evaluate", f"ckpt_path={best}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert one["test/num_samples"] == 5
    for key in ("acc_l1", "acc_l2", "acc_l3", "ap_micro", "full_path_acc", "consistency", "h_f1"):
        assert ddp[f"test/{key}"] == pytest.approx(one[f"test/{key}"], abs=1e-6), key
