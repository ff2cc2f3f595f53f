"""`hrn.deploy.Predictor` and `hrn.export`: the exported model (TorchScript, ONNX via onnxruntime) returns what
`hrn.predict` prints for the same image files, at any batch size."""

import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from hrn import HRN, Hierarchy, TreeLoss, TreeProbabilities
from hrn.checkpoints import CheckpointError, load_checkpoint
from hrn.data.augment import eval_transform
from hrn.data.files import ImageFiles
from hrn.deploy import OUTPUT_NAMES, Predictor
from hrn.deploy.formats import (
    ExportError,
    build_predictor,
    export,
    onnx_bytes,
    read_metadata,
    run_exported,
    torchscript_bytes,
)
from hrn.nets import CHMCNN, HMCLMLP, HMCNF, ChangNet, Trunk
from hrn.predict import predict
from tests import fixtures
from tests.fixtures import greedy_path, random_tree, run_command

# predict prints probabilities rounded to 6 decimals (error <= 5e-7); the runtimes add ~1e-7 (measured)
PREDICT_TOL = 1e-6
LEAVES = [0, 3, 5, 8, 11]  # one image per leaf: a batch of 5 (and 1)


@pytest.fixture(scope="module")
def trained(tiny_run) -> Path:
    return tiny_run.best


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    # 40 px: the exported model's user resizes to the checkpoint's 32
    return fixtures.synthetic_image_files(tmp_path_factory.mktemp("images"), LEAVES, size=40, seed=3)


def tiny_trunk() -> Trunk:
    """Two convolutions for a trunk, (B, 3, 32, 32) -> (B, 32, 8, 8): the tests of this layer are about the heads,
    the tree and the graph around them, which a ResNet's ~60 layers would only make slower to trace and export (the
    trained checkpoints exported below have a real ResNet, tests/test_trunks.py timm trunks)."""
    convs = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
    )
    return Trunk("tiny", convs, channels=32, reduction=4)


def small_net(cls, h: Hierarchy) -> torch.nn.Module:
    kwargs = {"dim": 8} if cls in (HRN, ChangNet) else {}
    if cls is not ChangNet:
        kwargs["width"] = 16
    return cls(h, trunk=tiny_trunk(), **kwargs).eval()


def tree_marginals_and_path(h: Hierarchy, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What hrn.predict does: TreeLoss marginals, then greedy_path one sample at a time."""
    marginals = TreeLoss(h).marginals(scores)
    return marginals, torch.tensor([greedy_path(m, h) for m in marginals])


# --------------------------------------------------------------------------------- the module (model layer)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale", [1.0, 40.0])  # sigmoid-like scores and large raw logits
def test_top_down_path_is_greedy_path_on_random_trees(seed, scale):
    h = random_tree(depth=2 + seed % 3, seed=seed, max_children=4)
    scores = torch.randn(16, h.num_nodes, generator=torch.Generator().manual_seed(seed)) * scale
    marginals, want = tree_marginals_and_path(h, scores)
    got = TreeProbabilities(h).top_down_path(marginals)
    assert got.dtype == torch.int64 and got.shape == (16, h.num_levels)
    assert torch.equal(got, want)
    # through a given node of any level (-1: the row's own prediction), as Grad-CAM's named targets
    through = torch.randint(-1, h.num_nodes, (16,), generator=torch.Generator().manual_seed(seed))
    pinned = TreeProbabilities(h).top_down_path(marginals, through)
    want = [
        greedy_path(m, h, None if int(t) < 0 else int(t)) for m, t in zip(marginals, through, strict=True)
    ]
    assert pinned.tolist() == want


def test_top_down_path_ties_take_the_first_child(small_tree):
    # levels: a x | b c y | d e f z w ; b and c tie under a, e and d tie under b, y is better but under x
    m = torch.tensor([[0.6, 0.4, 0.3, 0.3, 0.35, 0.1, 0.1, 0.2, 0.3, 0.3]])
    got = TreeProbabilities(small_tree).top_down_path(m)
    assert got.tolist() == [greedy_path(m[0], small_tree)] == [[0, 2, 5]]


@pytest.mark.parametrize(
    ("cls", "tree_scores"),
    [
        (HRN, "sigmoid"),
        (HRN, "logits"),
        (HRN, "leaf"),  # a leaf-only method's checkpoint (leaf CE, coarse constraint)
        (CHMCNN, "sigmoid"),
        (HMCNF, "sigmoid"),
        (ChangNet, "sigmoid"),
        (HMCLMLP, "sigmoid"),
    ],
)
def test_predictor_equals_the_network_through_treeloss_and_traces(cls, tree_scores):
    h = random_tree(depth=3, seed=7)
    net = small_net(cls, h)
    predictor = Predictor(net, h, tree_scores).eval().requires_grad_(False)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = net(images)
        marginals, path, leaf_probs, node = predictor(images)
    want_marginals = TreeLoss(h).node_probabilities(output, tree_scores)
    want_path = torch.tensor([greedy_path(m, h) for m in want_marginals])
    assert torch.equal(marginals, want_marginals) and torch.equal(path, want_path)
    assert torch.equal(leaf_probs, output.leaf_logits.softmax(1))
    assert torch.equal(node, want_path[:, -1])  # threshold 0: the path's leaf
    traced = torchscript_bytes(predictor, torch.randn(2, 3, 32, 32), "{}")
    for got, want in zip(run_exported(traced, images), (marginals, path, leaf_probs, node), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cls", "tree_scores"),
    [(CHMCNN, "sigmoid"), (HMCNF, "sigmoid"), (ChangNet, "sigmoid"), (HMCLMLP, "sigmoid")],
)
def test_compared_methods_export_to_onnx(cls, tree_scores):
    """Each compared network with the tree marginals (the Predictor's "tree" source); HRN's leaf source, the leaf
    softmax summed up the tree, is what every default export below holds."""
    h = random_tree(depth=3, seed=7)
    predictor = Predictor(small_net(cls, h), h, tree_scores).eval().requires_grad_(False)
    model = onnx_bytes(predictor, torch.randn(2, 3, 32, 32), "{}", opset=18)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = predictor(images)
    for got, w in zip(run_exported(model, images), want, strict=True):
        torch.testing.assert_close(got, w, rtol=0, atol=1e-6)


def test_uint8_input_equals_the_test_transform(small_tree):
    net = small_net(HRN, small_tree)
    pixels = torch.randint(
        0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    normalised = torch.stack([eval_transform(32, 32)(p) for p in pixels])
    with torch.no_grad():
        from_float = Predictor(net, small_tree)(normalised)
        from_uint8 = Predictor(net, small_tree, uint8_input=True)(pixels)
    for a, b in zip(from_float, from_uint8, strict=True):
        assert torch.equal(a, b)


def test_bad_tree_scores(small_tree):
    with pytest.raises(ValueError, match="tree_scores must be one of sigmoid, logits, leaf, got 'softmax'"):
        Predictor(torch.nn.Identity(), small_tree, "softmax")


def test_predictor_from_a_checkpoint_equals_its_module(trained, image_files):
    module = load_checkpoint(trained)
    predictor, _ = build_predictor(trained)  # probabilities=leaf, as hrn.predict
    by_tree, _ = build_predictor(trained, probabilities="tree")
    images = torch.stack([eval_transform(32, 32)(ImageFiles(image_files)(i)) for i in range(5)])
    with torch.no_grad():
        output = module.net(images)
        marginals, path, leaf_probs, _ = predictor(images)
        tree_marginals, tree_path, _, _ = by_tree(images)
    tree = TreeProbabilities(module.hierarchy)
    want = tree.leaf_marginals(output.leaf_logits)
    want_tree = tree.marginals(output.scores(module.tree_scores))
    assert predictor.tree_scores == module.tree_scores and not any(
        p.requires_grad for p in predictor.parameters()
    )
    assert torch.equal(marginals, want) and torch.equal(leaf_probs, output.leaf_logits.softmax(1))
    assert path.tolist() == [greedy_path(m, module.hierarchy) for m in want]
    assert torch.equal(tree_marginals, want_tree)
    assert tree_path.tolist() == [greedy_path(m, module.hierarchy) for m in want_tree]


# --------------------------------------------------------------------------- round trips against hrn.predict
def preprocess(paths: list[Path], meta: dict, uint8: bool = False) -> torch.Tensor:
    """What a deployment does before the exported model: the metadata's transform on each file."""
    t = meta["transform"]
    # the README's recipe: resize the PIL image to (height, width), as the datasets do, then crop
    steps = [v2.Resize(t["resize"], antialias=True), v2.ToImage(), v2.CenterCrop(t["crop"])]
    if not uint8:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(t["mean"], t["std"])]
    load = ImageFiles(paths)
    return torch.stack([v2.Compose(steps)(load(i)) for i in range(len(paths))])


def assert_matches_predict(outputs, paths: list[Path], ckpt: Path, meta: dict) -> float:
    """Exported (marginals, path, leaf_probs, node) for ``paths`` against hrn.predict's lines for the same files:
    the same path labels and predicted node, every node's and every leaf's probability within PREDICT_TOL. Returns
    the largest difference."""
    marginals, path, leaf_probs, node = (torch.as_tensor(o) for o in outputs)
    names, sizes = meta["names"], meta["level_sizes"]
    assert marginals.shape == (len(paths), len(names)) and path.shape == (len(paths), len(sizes))
    assert path.dtype == torch.int64 and leaf_probs.shape == (len(paths), sizes[-1])
    worst = 0.0
    for i, line in enumerate(predict(str(ckpt), [str(p) for p in paths], top_k=max(sizes), device="cpu")):
        assert [names[v] for v in path[i]] == [p["label"] for p in line["path_prediction"]]
        assert names[int(node[i])] == line["prediction"]["label"]
        for level in line["top_k"].values():  # top_k = the largest level: every node
            for entry in level:
                worst = max(worst, abs(float(marginals[i, names.index(entry["label"])]) - entry["prob"]))
        for entry in line["leaf_softmax_top_k"]:
            j = names.index(entry["label"]) - meta["leaf_offset"]
            worst = max(worst, abs(float(leaf_probs[i, j]) - entry["prob"]))
    assert worst <= PREDICT_TOL
    return worst


def test_torchscript_round_trip_equals_predict(trained, image_files, tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    ckpt.symlink_to(trained)
    summary = export(ckpt, "torchscript")  # out defaults to beside the checkpoint
    out = tmp_path / "tiny.pt"
    assert summary["out"] == str(out) and summary["bytes"] == out.stat().st_size
    assert summary["check"]["paths_equal"] and max(summary["check"]["max_abs_diff"].values()) <= 1e-6

    extra = {"hrn.json": ""}
    model = torch.jit.load(str(out), _extra_files=extra)  # what a user without hrn does
    meta = json.loads(extra["hrn.json"])
    assert meta == read_metadata(out)
    assert meta["output_names"] == list(OUTPUT_NAMES) and meta["input"]["shape"] == ["batch", 3, 32, 32]
    assert meta["transform"] == {
        "resize": [32, 32],
        "crop": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "steps": "Resize((32, 32), bilinear, antialias) -> CenterCrop(32) -> float32 / 255 -> (x - mean) / std",
    }
    assert Hierarchy.from_dict(meta["tree"]).names == meta["names"] and meta["level_sizes"] == [3, 6, 12]
    images = preprocess(image_files, meta)
    with torch.no_grad():
        assert_matches_predict(model(images), image_files, ckpt, meta)  # batch 5
        assert_matches_predict(model(images[:1]), image_files[:1], ckpt, meta)  # batch 1


@pytest.mark.slow
def test_onnx_round_trip_in_onnxruntime_equals_predict(trained, image_files, tmp_path):
    """uint8 input: the graph a consumer feeds raw pixels, its normalisation inside. The float32 input's graph is
    the same without those three operations (test_uint8_input_equals_the_test_transform); exporting it to ONNX is
    checked in onnxruntime on the single-root tree (tests/test_taxonomy.py) and the timm trunks
    (tests/test_trunks.py), the TorchScript round trip above takes float32."""
    input_dtype = "uint8"
    out = tmp_path / "model.onnx"
    summary = export(trained, "onnx", out, input=input_dtype)
    assert summary["check"]["paths_equal"] and max(summary["check"]["max_abs_diff"].values()) <= 1e-6

    import onnxruntime as ort  # the export extra, in the dev install; only the ONNX tests need it

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # no hrn, no torch needed
    meta = json.loads(session.get_modelmeta().custom_metadata_map["hrn"])
    assert meta["input"]["dtype"] == input_dtype
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    images = preprocess(image_files, meta, uint8=input_dtype == "uint8").numpy()
    assert_matches_predict(session.run(None, {"images": images}), image_files, trained, meta)
    assert_matches_predict(session.run(None, {"images": images[:1]}), image_files[:1], trained, meta)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"format": "tflite"},
            "format=tflite: unknown; use format=onnx, format=torchscript or format=safetensors",
        ),
        ({"input": "float16"}, "input=float16: unknown; use input=float32 or input=uint8"),
        ({"opset": 17}, "opset=17: use an ONNX opset of 18 or newer (the tree marginals need it)"),
        ({"opset": "new"}, "opset=new: use an ONNX opset of 18 or newer (the tree marginals need it)"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, kwargs, message):
    with pytest.raises(ExportError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        export(tmp_path / "any.ckpt", **kwargs)


def test_out_folder_and_bad_checkpoints(tmp_path):
    with pytest.raises(ExportError, match=r"out=.*: is a folder; give the file to write"):
        export(tmp_path / "any.ckpt", "torchscript", out=tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export(tmp_path / "none.ckpt", "torchscript")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not an HRN checkpoint"):
        export(tmp_path / "foreign.ckpt", "torchscript")


@pytest.mark.parametrize("package", ["onnx", "onnxscript", "onnxruntime"])
def test_missing_onnx_package_says_how_to_install(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    # onnxscript imports onnx: with onnx absent, an onnxscript not imported yet is missing too
    with pytest.raises(
        ExportError, match=rf"^format=onnx needs the packages .*{package}.*: pip install 'hrn\[export\]'$"
    ):
        export(tmp_path / "any.ckpt", "onnx")


def test_a_model_that_disagrees_is_not_written(trained, tmp_path, monkeypatch):
    def off_by_a_bit(model, images):
        marginals, path, leaf_probs, node = run_exported(model, images)
        return marginals + 1e-3, path, leaf_probs, node

    monkeypatch.setattr("hrn.deploy.formats.run_exported", off_by_a_bit)
    out = tmp_path / "model.pt"
    with pytest.raises(ExportError, match=r"model.pt: not written: the exported model disagrees"):
        export(trained, "torchscript", out)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left


def run(*args: str, cwd: Path):
    return run_command("export", *args, cwd=cwd)


def test_cli_writes_the_file_and_prints_one_line_errors(trained, tmp_path, monkeypatch):
    ok = run(f"ckpt_path={trained}", "format=torchscript", f"out={tmp_path}/m.pt", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    summary = json.loads(ok.stdout)
    assert summary["out"] == f"{tmp_path}/m.pt" and (tmp_path / "m.pt").stat().st_size == summary["bytes"]
    assert summary["check"]["batch_size"] == 3 and "Warning" not in ok.stderr

    bad = run(f"ckpt_path={trained}", "format=tflite", cwd=tmp_path)
    missing = run(f"ckpt_path={tmp_path}/none.ckpt", "format=torchscript", cwd=tmp_path)
    with monkeypatch.context() as m:  # onnxscript absent, as on a machine without the extra
        m.setitem(sys.modules, "onnxscript", None)
        no_onnx = run(f"ckpt_path={trained}", cwd=tmp_path)
    lines = {
        "bad": "hrn: error: format=tflite: unknown; use format=onnx, format=torchscript or format=safetensors",
        "missing": f"hrn: error: ckpt_path={tmp_path}/none.ckpt: checkpoint not found",
        "no_onnx": "hrn: error: format=onnx needs the packages onnxscript: pip install 'hrn[export]'",
    }
    for name, result in {"bad": bad, "missing": missing, "no_onnx": no_onnx}.items():
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [lines[name]], result.stderr
        assert result.stdout == ""


def test_export_never_overwrites_its_input(trained, tmp_path):
    """A checkpoint named model.pt: the default TorchScript file would be the checkpoint itself."""
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(trained.read_bytes())
    before = ckpt.read_bytes()
    for out in ([], [f"out={ckpt}"]):
        result = run(f"ckpt_path={ckpt}", "format=torchscript", *out, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [
            f"hrn: error: out={ckpt}: is the checkpoint being exported; give another file, "
            f"e.g. out={tmp_path / 'model-torchscript.pt'}"
        ], result.stderr
    assert ckpt.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_read_metadata_runs_no_code(trained, tmp_path, monkeypatch):
    """The TorchScript archive's hrn.json is read with zipfile: torch.jit.load (which would run the archive's code)
    is never called. A zip without it, or a file that is neither format, is one line."""
    out = tmp_path / "m.pt"
    export(trained, "torchscript", out, check=False)

    def refuse(*args, **kwargs):
        raise AssertionError("read_metadata loaded the TorchScript code")

    monkeypatch.setattr(torch.jit, "load", refuse)
    meta = read_metadata(out)
    assert meta["level_sizes"] == [3, 6, 12] and read_metadata(out.read_bytes()) == meta
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(ExportError, match="a TorchScript file without hrn's hrn.json metadata"):
        read_metadata(other)
