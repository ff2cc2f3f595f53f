"""Predict what you know: the deepest confident node, the hierarchical metrics (checked against hiclass), the
specificity table, and calibrated tree probabilities through every command."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hiclass import metrics as hiclass_metrics
from hydra import compose, initialize_config_dir
from PIL import Image
from torchmetrics.functional.classification import multiclass_calibration_error

from hrn import load_checkpoint
from hrn.cli.config import CONF_DIR
from hrn.deploy.formats import export, read_metadata, run_exported
from hrn.evaluate import evaluate
from hrn.metrics import HierarchicalMetrics
from hrn.metrics.hierarchical import ThresholdError, check_threshold, hierarchical_prf, true_prefix
from hrn.predict import predict
from hrn.train import train
from hrn.tree import TreeProbabilities
from tests import fixtures
from tests.fixtures import TINY, greedy_path, random_tree, run_command


def ancestors_path(h, node: int) -> list[int]:
    path = [node]
    while h.parent_of(path[0]) >= 0:
        path.insert(0, h.parent_of(path[0]))
    return path


@pytest.mark.parametrize("seed", range(5))
def test_hierarchical_prf_equals_hiclass_on_predictions_of_mixed_depth(seed):
    h = random_tree(depth=4, seed=seed, max_children=3)
    rng = np.random.default_rng(seed)
    m = 40
    labels = rng.integers(0, h.num_nodes, m)  # labels at any level, as after relabelling
    predicted = rng.integers(-1, h.num_nodes, m)  # a node of any level, or none
    predicted[0] = h.offsets[-2]  # at least one prediction
    paths, depth = [], []
    for p in predicted:  # the predicted node's ancestors, then any continuation down to a leaf
        path = ancestors_path(h, int(p)) if p >= 0 else []
        depth.append(len(path))
        full = greedy_path(torch.rand(h.num_nodes), h, path[-1] if path else None)
        paths.append(full)
    path = torch.tensor(paths)
    truth = h.ancestor_at_level[:, torch.tensor(labels)].T
    known = truth >= 0
    match = true_prefix(path, truth, known, torch.tensor(h.offsets))
    got = hierarchical_prf(torch.tensor(depth), match, known.sum(1))

    def rows(nodes):
        out = []
        for v in nodes:
            names = [h.names[u] for u in ancestors_path(h, int(v))] if v >= 0 else []
            out.append(names + [""] * (h.num_levels - len(names)))
        return np.array(out)

    y_true, y_pred = rows(labels), rows(predicted)
    want = [
        hiclass_metrics.precision(y_true, y_pred, average="micro"),
        hiclass_metrics.recall(y_true, y_pred, average="micro"),
        hiclass_metrics.f1(y_true, y_pred, average="micro"),
    ]
    assert [float(x) for x in got] == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_confident_node_stops_at_the_last_node_that_reaches_the_threshold(seed):
    h = random_tree(depth=3, seed=seed, max_children=4)
    tree = TreeProbabilities(h)
    marginals = tree.marginals(
        torch.randn(20, h.num_nodes, generator=torch.Generator().manual_seed(seed)) * 3
    )
    for tau in (0.0, 0.2, 0.5, 0.8, 1.0):
        node, depth = tree.confident_node(marginals, tau)
        for i in range(20):
            walk = [v for v in greedy_path(marginals[i], h)]
            kept = []
            for v in walk:  # walk down the path, stop at the first node under the threshold
                if marginals[i, v] < tau:
                    break
                kept.append(v)
            assert int(depth[i]) == len(kept) and int(node[i]) == (kept[-1] if kept else -1)
    assert bool((tree.confident_node(marginals, 0.0)[1] == h.num_levels).all())  # threshold 0: the leaf


def test_the_new_metrics_by_hand(small_tree):
    # levels: a x | b c y | d e f z w ; three leaf-labelled samples
    h = small_tree
    metric = HierarchicalMetrics(h, threshold=0.5)
    marginals = torch.tensor(
        [
            [0.9, 0.1, 0.6, 0.3, 0.1, 0.5, 0.1, 0.3, 0.05, 0.05],  # a -> b -> d (0.5): full path at 0.5
            [0.7, 0.3, 0.2, 0.4, 0.3, 0.1, 0.1, 0.3, 0.2, 0.1],  # a -> c (0.4 < 0.5): stops at a
            [0.2, 0.8, 0.1, 0.1, 0.8, 0.1, 0.1, 0.1, 0.6, 0.2],  # x -> y -> z (0.6)
        ]
    )
    targets = torch.tensor([h.index("d"), h.index("f"), h.index("w")])
    sigmoid = list(marginals.split(h.level_sizes, 1))
    leaf_logits = torch.log(marginals[:, 5:])
    metric.update(sigmoid, leaf_logits, marginals, targets)
    out = metric.compute()
    # P: {a,b,d}, {a}, {x,y,z}; T: {a,b,d}, {a,c,f}, {x,y,w}
    assert out["h_precision"] == pytest.approx((3 + 1 + 2) / (3 + 1 + 3))
    assert out["h_recall"] == pytest.approx((3 + 1 + 2) / 9)
    assert out["coverage_l1"] == 1 and out["coverage_l2"] == pytest.approx(2 / 3)
    assert out["coverage_l3"] == pytest.approx(2 / 3)
    assert metric.records.node.tolist() == [h.index("d"), h.index("a"), h.index("z")]
    assert out["tice"] == 0  # a -> b -> d, a -> c -> f, x -> y -> z: every per-level prediction is one path
    assert out["wap"] == pytest.approx((2 * 1 + 3 * 1 + 5 * 2 / 3) / 10)  # levels of 2, 3, 5 classes; z != w
    # top-5 of 5 leaves: every leaf; LCA heights with d: 0 1 2 3 3, with f: 2 2 0 3 3, with w: 3 3 3 1 0
    assert out["hdist_at5"] == pytest.approx((9 + 10 + 10) / 15)
    assert out["mistake_severity_top5"] == out["hdist_at5"]  # the old name, one release
    level3 = marginals[:, 5:]
    want = multiclass_calibration_error(level3, torch.tensor([0, 2, 4]), num_classes=5, n_bins=15)
    assert out["ece_l3"] == pytest.approx(float(want), abs=1e-6)


def test_a_threshold_outside_0_1_is_one_line():
    for bad in (-0.1, 1.5, "high"):
        with pytest.raises(ThresholdError, match=r"threshold=.*: a marginal probability in \[0, 1\]"):
            check_threshold(bad)
    assert check_threshold(1) == 1.0


# ------------------------------------------------------------------------------------ trained, evaluated, calibrated
@pytest.fixture(scope="module")
def trained(learnt_run) -> Path:
    return learnt_run.best


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    return fixtures.synthetic_image_files(tmp_path_factory.mktemp("images"), list(range(12)), seed=5)


def test_a_higher_threshold_gives_coarser_answers(trained, image_files):
    images = [str(p) for p in image_files]
    at_leaf = list(predict(str(trained), images))
    assert all(r["prediction"]["level"] == 3 for r in at_leaf)
    assert [r["prediction"]["label"] for r in at_leaf] == [r["path_prediction"][-1]["label"] for r in at_leaf]
    strict = list(predict(str(trained), images, threshold=0.9))
    levels = [r["prediction"]["level"] if r["prediction"] else 0 for r in strict]
    assert min(levels) < 3 and all(lvl <= 3 for lvl in levels)
    for r, level in zip(strict, levels, strict=True):  # the deepest node of the path that reaches 0.9
        reached = [p for p in r["path_prediction"] if p["prob"] >= 0.9]
        assert level == len(reached) and (not reached or r["prediction"]["label"] == reached[-1]["label"])


def test_probabilities_pick_the_node_probabilities_of_every_command(trained, image_files, tmp_path):
    """probabilities=leaf (predict's default): the leaf level's marginals are the leaf softmax, so its top-k is the
    softmax's; evaluate with it scores the leaf level's marginals as the leaf head; export records the source."""
    images = [str(p) for p in image_files[:4]]
    by_leaf = list(predict(str(trained), images, top_k=12))
    by_tree = list(predict(str(trained), images, top_k=12, probabilities="tree"))
    for leaf, tree in zip(by_leaf, by_tree, strict=True):
        assert leaf["top_k"]["3"] == leaf["leaf_softmax_top_k"] == tree["leaf_softmax_top_k"]
        assert leaf["top_k"]["1"] != tree["top_k"]["1"]
        for level in ("1", "2", "3"):  # every level a distribution: its nodes' masses add up to 1
            assert sum(n["prob"] for n in leaf["top_k"][level]) == pytest.approx(1, abs=1e-5)
    plain = evaluate(evaluate_cfg(trained, tmp_path / "tree"))
    metrics = evaluate(evaluate_cfg(trained, tmp_path / "leaf", "probabilities=leaf"))
    assert metrics["test/acc_l3_marginal"] == metrics["test/acc_l3"] == plain["test/acc_l3"]
    assert metrics["test/ap_micro"] != plain["test/ap_micro"]  # AP ranks the nodes by the leaf source too
    export(trained, "torchscript", tmp_path / "m.pt", check=False)
    assert read_metadata(tmp_path / "m.pt")["probabilities"] == "leaf"
    ran = run_command("predict", f"ckpt_path={trained}", f"images={images[0]}", "probabilities=marginal")
    assert ran.returncode == 2 and ran.stderr.strip().splitlines()[-1] == (
        "hrn: error: probabilities='marginal': use one of tree, leaf, mix, heads"
    )


def evaluate_cfg(ckpt, run_dir, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("evaluate", overrides=[f"ckpt_path={ckpt}", f"run_dir={run_dir}", *overrides])


def test_evaluate_writes_the_metrics_the_node_and_the_specificity_table(trained, tmp_path):
    metrics = evaluate(evaluate_cfg(trained, tmp_path, "threshold=0.5"))
    for key in ("h_precision", "h_recall", "h_f1", "tice", "wap", "hdist_at5", "mistake_severity_top5"):
        assert f"test/{key}" in metrics
    assert {f"test/ece_l{lvl}" for lvl in (1, 2, 3)} | {f"test/coverage_l{lvl}" for lvl in (1, 2, 3)} <= set(
        metrics
    )
    saved = np.load(tmp_path / "predictions.npz")
    assert saved["node"].dtype == np.int64 and saved["node"].shape == (72,)
    lines = (tmp_path / "specificity.csv").read_text().splitlines()
    assert lines[0] == "threshold,h_precision,h_recall,h_f1,stop_l0,stop_l1,stop_l2,stop_l3,node_accuracy"
    rows = [dict(zip(lines[0].split(","), map(float, line.split(",")), strict=True)) for line in lines[1:]]
    assert rows[0]["threshold"] == 0 and rows[0]["stop_l3"] == 1  # threshold 0: every prediction is a leaf
    assert all(abs(sum(r[f"stop_l{lvl}"] for lvl in range(4)) - 1) < 1e-5 for r in rows)
    assert rows[-1]["stop_l3"] <= rows[0]["stop_l3"] and (tmp_path / "specificity.png").is_file()


@pytest.mark.parametrize("method", ["loss=leaf_ce", "model=chmcnn"])
def test_every_method_gets_the_metrics(tmp_path, method):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        tiny = [o for o in TINY if not o.startswith("model.dim")]  # C-HMCNN has no embedding width
        cfg = compose("train", overrides=[f"run_dir={tmp_path}", *tiny, method, "trainer.fast_dev_run=true"])
    metrics = train(cfg)
    assert {"test/h_f1", "test/tice", "test/wap", "test/hdist_at5", "test/ece_l3"} <= set(metrics)


def test_calibration_fits_temperatures_that_predict_evaluate_and_export_use(trained, image_files, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("calibrate", overrides=[f"ckpt_path={trained}", f"out={tmp_path / 'cal.ckpt'}"])
    from hrn.calibrate import calibrate

    result = calibrate(cfg)
    record = result["calibration"]
    assert (
        len(record["tree_temperature"]) == 3 and record["leaf_temperature"] > 0 and record["split"] == "val"
    )
    for part in ("tree", "leaf"):
        assert record["nll"][part]["after"] <= record["nll"][part]["before"] + 1e-6  # fitted by NLL on val
    calibrated = load_checkpoint(tmp_path / "cal.ckpt")
    assert calibrated.calibration == record and load_checkpoint(trained).calibration is None
    tree = calibrated.probabilities()
    assert torch.allclose(tree.tree_temperature[:3], torch.tensor(record["tree_temperature"][0]))
    plain, cal = (list(predict(str(c), [str(image_files[0])])) for c in (trained, tmp_path / "cal.ckpt"))
    assert plain[0]["path_prediction"][0]["prob"] != cal[0]["path_prediction"][0]["prob"]
    summary = export(tmp_path / "cal.ckpt", "torchscript", tmp_path / "cal.pt", threshold=0.6)
    meta = read_metadata(tmp_path / "cal.pt")
    assert meta["calibration"] == record and meta["threshold"] == 0.6 and summary["check"]["paths_equal"]
    image = calibrated.transform()(Image.open(image_files[0]).convert("RGB"))[None]
    marginals, path, leaf_probs, node = run_exported(tmp_path / "cal.pt", image)
    (by_predict,) = predict(str(tmp_path / "cal.ckpt"), [str(image_files[0])], threshold=0.6)
    assert float(marginals[0, path[0, 0]]) == pytest.approx(
        by_predict["path_prediction"][0]["prob"], abs=1e-6
    )
    want = by_predict["prediction"]["label"] if by_predict["prediction"] else None
    assert (calibrated.hierarchy.names[int(node[0])] if int(node[0]) >= 0 else None) == want
    metrics = evaluate(evaluate_cfg(tmp_path / "cal.ckpt", tmp_path / "eval"))
    assert "test/ece_l3" in metrics


def test_calibration_fits_on_held_out_images_only(tmp_path):
    """A model trained with val_fraction=0 on a folder: no split of its dataset is held out, whatever the flags;
    a labels file of other images is, once it holds enough of them."""
    root = fixtures.write_folder(tmp_path / "folder", with_split=False)
    last = fixtures.train_folder(root, tmp_path / "run", "dataset.val_fraction=0", "dataset.batch_size=8")
    ckpt = f"ckpt_path={last}"

    def held_out(name: str, count: int) -> Path:  # images the model never saw, labelled at the leaves
        leaves = ["Sparrow", "Crow", "Cod", "Oak", "Pine"]
        lines = ["path,label"]
        for i in range(count):
            fixtures.jpeg(tmp_path / name / f"{i}.jpg", 1000 + i)
            lines.append(f"{i}.jpg,{leaves[i % 5]}")
        fixtures.write_lines(tmp_path / name / "labels.csv", lines)
        return tmp_path / name / "labels.csv"

    def refused(*args: str) -> str:
        result = run_command("calibrate", ckpt, *args, f"out={tmp_path / 'never.ckpt'}", cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("hrn: error:")]
        assert not (tmp_path / "never.ckpt").exists()
        return line

    assert "validates on its test split" in refused() and "labels=FILE" in refused()
    assert "another training split" in refused("dataset.val_fraction=0.1")  # those images were trained on
    assert "were trained on" in refused(f"labels={root / 'labels.csv'}")
    for count in (1, 3):
        line = refused(f"labels={held_out(f'few{count}', count)}")
        assert f"{count} image(s) are too few" in line and "at least 34" in line, line
    ok = run_command(
        "calibrate", ckpt, f"labels={held_out('many', 40)}", f"out={tmp_path / 'c.ckpt'}", cwd=tmp_path
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    record = load_checkpoint(tmp_path / "c.ckpt").calibration
    assert record["held_out_images"] == 40 and record["split"].startswith("labels=")
    low, high = record["bounds"]
    assert all(low <= t <= high for t in [*record["tree_temperature"], record["leaf_temperature"]])
    assert "held-out ECE" in ok.stdout and "test accuracy" in ok.stdout


def test_predict_threshold_on_the_command_line(trained, image_files, tmp_path):
    run = [f"ckpt_path={trained}", f"images={image_files[0]}"]
    ok = run_command("predict", *run, "threshold=0.9", cwd=tmp_path)
    assert ok.returncode == 0 and "prediction" in json.loads(ok.stdout.splitlines()[0])
    bad = run_command("predict", *run, "threshold=1.5", cwd=tmp_path)
    assert bad.returncode == 2 and "hrn: error: threshold=1.5: a marginal probability in [0, 1]" in bad.stderr
