"""Export formats: a checkpoint as one self-contained file that runs without this package (onnxruntime, or
libtorch / ``torch.jit.load``); what ``python -m hrn.export`` writes.

The exported model is :class:`hrn.deploy.Predictor`: network, tree marginals and top-down path in one graph.

    input   images      (B, 3, crop, crop)  float32: Resize((resize, resize), bilinear, antialias) -> CenterCrop(crop)
                                            -> [0, 1] -> (x - 0.5) / 0.5, as ``hrn.predict``;
                                            uint8 (input=uint8): the pixels after the crop, normalised inside
    outputs marginals   (B, N)  float32     marginal probability of every node (levels coarse -> fine)
            path        (B, L)  int64       global node index per level: a root-to-leaf path, as ``hrn.predict``
            leaf_probs  (B, n_L) float32    the leaf softmax head
            node        (B,)    int64       the node predicted at the export's threshold (-1 for none), as
                                            ``hrn.predict``'s ``prediction``; with threshold 0 the path's leaf

B is free (dynamic). Node names, level sizes, the tree, transform sizes and input/output names travel inside the
file as one JSON document (:func:`read_metadata`): ONNX metadata property ``hrn``, TorchScript extra file
``hrn.json``. With ``check=true`` (default) the exported model is loaded back and run on a batch of another size
before it is written, and must agree with the checkpoint.

``format=safetensors`` writes no graph but the weights-only share folder instead (:mod:`hrn.share`:
``model.safetensors`` and ``config.json``), checked the same way.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from hrn.atomic import atomic_write_bytes, json_text
from hrn.checkpoints import LoadedModel, load_checkpoint
from hrn.data.augment import MEAN, STD
from hrn.deploy.predictor import INPUT_NAME, OUTPUT_NAMES, Predictor
from hrn.description import ModelDescription
from hrn.errors import HRNError
from hrn.metrics.hierarchical import check_threshold
from hrn.share import folder_files, model_from_files, write_folder
from hrn.tree import check_source
from hrn.version import __version__

__all__ = [
    "ExportError",
    "FORMATS",
    "build_predictor",
    "export",
    "export_folder",
    "onnx_bytes",
    "predictor_of",
    "read_metadata",
    "run_exported",
    "torchscript_bytes",
]

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ""}  # format -> suffix of the default output
INPUTS = ("float32", "uint8")
METADATA_KEY = "hrn"  # ONNX metadata_props key; the TorchScript extra file is METADATA_KEY + ".json"
MIN_OPSET = 18  # the tree marginals' ScatterElements(reduction="max") entered ONNX in opset 18
EXAMPLE_BATCH, CHECK_BATCH = 2, 3  # trace at one batch size, check at another: the batch axis must be free
CHECK_ATOL = 1e-4  # probabilities; float32 reorderings between runtimes are ~1e-6
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the `export` extra


class ExportError(HRNError):
    """A bad export setting, a missing optional package, or an exported file that disagrees with its checkpoint."""


def _require_onnx() -> None:
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"format=onnx needs the packages {', '.join(missing)}: pip install 'hrn[export]'")


def predictor_of(
    model: LoadedModel, uint8_input: bool = False, threshold: float = 0.0, probabilities: str = "leaf"
) -> Predictor:
    """A trained model's network, tree and temperatures as an inference-only :class:`Predictor` (eval mode, no
    gradients), predicting at ``threshold`` from the node probabilities ``probabilities`` (as ``hrn.predict``)."""
    predictor = Predictor(
        model.net,
        model.hierarchy,
        model.tree_scores,
        uint8_input,
        (MEAN,) * 3,
        (STD,) * 3,
        threshold,
        model.calibration,
        probabilities,
    )
    # torch.export cannot record the tree marginals' in-place writes into views of tensors that need gradients;
    # an exported model never trains, so its weights are constants
    return predictor.eval().requires_grad_(False)


def build_predictor(
    ckpt_path: str | Path,
    uint8_input: bool = False,
    trust: bool = False,
    threshold: float = 0.0,
    probabilities: str = "leaf",
) -> tuple[Predictor, ModelDescription]:
    """The checkpoint's (or shared folder's) :func:`predictor_of`, and its self-description."""
    check_source(probabilities)
    model = load_checkpoint(ckpt_path, trust)
    return predictor_of(model, uint8_input, threshold, probabilities), model.description


def metadata(
    predictor: Predictor, description: ModelDescription, ckpt_path: str | Path, input_dtype: str
) -> dict:
    """What a consumer needs beside the graph: input preprocessing, output meaning, node names and the tree."""
    tree = description.tree.to_dict()
    names = [n for level in tree["levels"] for n in level]
    resize, crop = description.resize, description.crop
    steps = f"Resize(({resize}, {resize}), bilinear, antialias) -> CenterCrop({crop})"
    if input_dtype == "float32":
        steps += " -> float32 / 255 -> (x - mean) / std"
    return {
        "hrn_version": __version__,
        "checkpoint": Path(ckpt_path).name,
        "net": description.net.get("_target_"),
        "tree_scores": predictor.tree_scores,
        "probabilities": predictor.source,
        "threshold": predictor.threshold,
        "calibration": description.calibration,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, crop, crop], "dtype": input_dtype},
        "transform": {
            "resize": [resize, resize],
            "crop": crop,
            "mean": [MEAN] * 3,
            "std": [STD] * 3,
            "steps": steps,
        },
        "outputs": {
            "marginals": {"shape": ["batch", len(names)], "dtype": "float32"},
            "path": {"shape": ["batch", len(tree["levels"])], "dtype": "int64"},
            "leaf_probs": {"shape": ["batch", len(tree["levels"][-1])], "dtype": "float32"},
            "node": {"shape": ["batch"], "dtype": "int64"},
        },
        "output_names": list(OUTPUT_NAMES),
        "names": names,  # node index -> name, levels coarse -> fine: the index space of marginals and path
        "level_sizes": [len(level) for level in tree["levels"]],
        "leaf_offset": len(names) - len(tree["levels"][-1]),  # leaf_probs[:, j] is node leaf_offset + j
        "tree": tree,  # hrn.Hierarchy.from_dict rebuilds it
    }


def example_images(batch: int, crop: int, uint8_input: bool, seed: int = 0) -> torch.Tensor:
    """A random (batch, 3, crop, crop) input of the predictor's kind (to trace and to check with)."""
    g = torch.Generator().manual_seed(seed)
    if uint8_input:
        return torch.randint(0, 256, (batch, 3, crop, crop), generator=g, dtype=torch.uint8)
    return torch.rand(batch, 3, crop, crop, generator=g) * 2 - 1  # the normalised range [-1, 1]


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch's notice that torch.jit is deprecated (in favour of torch.export): TorchScript is still what
    libtorch (C++) loads, and the format this command was asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..*deprecated", category=FutureWarning)
        yield


def torchscript_bytes(predictor: Predictor, example: torch.Tensor, meta_json: str) -> bytes:
    """The predictor as a TorchScript archive (``torch.jit.load``, libtorch), traced on ``example`` (any batch
    size other than 1), with ``meta_json`` as its extra file ``hrn.json``."""
    # Tracing, not scripting: HRNOutput (a dataclass), list comprehensions over levels and the baselines' code
    # are not TorchScript, while their forward has no branch on values, so one trace records the whole model.
    buffer = io.BytesIO()
    with _quiet_jit(), warnings.catch_warnings():
        # what tracing warns about here is constant by design (the number of levels, N); the check reruns the
        # traced model at another batch size
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(predictor, (example,), check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": meta_json})
    return buffer.getvalue()


def onnx_bytes(predictor: Predictor, example: torch.Tensor, meta_json: str, opset: int) -> bytes:
    """The predictor as an ONNX model with a dynamic batch axis, captured on ``example`` (batch size other than 1),
    with ``meta_json`` as its metadata property ``hrn``. The predictor must need no gradients."""
    # The dynamo exporter (torch.export, the default): it keeps the batch axis symbolic from `dynamic_shapes` and
    # translates the tree marginals' scatter reductions (opset 18 ScatterElements / ScatterND with reduction).
    program = torch.onnx.export(
        predictor,
        (example,),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1)}},  # the name of forward's argument
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    proto = program.model_proto
    for node in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]:
        # each node's Python stack trace names files of the exporting machine: not for a file that is shipped
        keep = [(p.key, p.value) for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        for key, value in keep:
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta_json
    try:
        return proto.SerializeToString()
    except ValueError as e:  # protobuf's 2 GB limit
        raise ExportError(f"format=onnx: the model is too large for one ONNX file ({e})") from None


def _source(model: str | Path | bytes):
    """A path for the loaders, or the file's bytes wrapped for torch.jit.load / zipfile."""
    return io.BytesIO(model) if isinstance(model, bytes) else str(model)


def _name(model: str | Path | bytes) -> str:
    return "the model's bytes" if isinstance(model, bytes) else str(model)


def _is_torchscript(model: str | Path | bytes) -> bool:
    # TorchScript archives are zip files; ONNX files are protobufs
    return zipfile.is_zipfile(_source(model))


def read_metadata(model: str | Path | bytes) -> dict:
    """The JSON document stored in an exported model (ONNX or TorchScript; a path or the file's bytes)."""
    if _is_torchscript(model):
        # Read the archive's extra file with zipfile: torch.jit.load would deserialise (and so run) its code.
        with zipfile.ZipFile(_source(model)) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_KEY}.json")]
            if not names:
                raise ExportError(
                    f"{_name(model)}: a TorchScript file without hrn's {METADATA_KEY}.json metadata"
                )
            return json.loads(archive.read(names[0]))
    import onnx

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{_name(model)}: an ONNX file without hrn's {METADATA_KEY!r} metadata")
    return json.loads(props[METADATA_KEY])


def run_exported(model: str | Path | bytes, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run an exported model (a path or the file's bytes) on a CPU batch: (marginals, path, leaf_probs), as
    :class:`Predictor` returns them."""
    if _is_torchscript(model):
        with _quiet_jit(), torch.no_grad():
            return tuple(torch.jit.load(_source(model), map_location="cpu")(images))
    import onnxruntime as ort

    session = ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"]
    )
    return tuple(torch.from_numpy(a) for a in session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()}))


def check_exported(
    run: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], predictor: Predictor, crop: int, out: Path
) -> dict:
    """Run the exported model (``run``: images -> its outputs, from the bytes to be written) on a random batch of
    CHECK_BATCH (not the traced size) and compare with the predictor: the largest absolute differences; an
    ExportError beyond CHECK_ATOL."""
    images = example_images(CHECK_BATCH, crop, predictor.uint8_input, seed=1)
    with torch.no_grad():
        want = predictor(images)
        got = run(images)
    diffs = {
        name: float((g.float() - w.float()).abs().max())
        for name, g, w in zip(OUTPUT_NAMES, got, want, strict=True)
        if name not in ("path", "node")
    }
    result = {
        "batch_size": CHECK_BATCH,
        "max_abs_diff": diffs,
        "paths_equal": bool(torch.equal(got[1], want[1]) and torch.equal(got[3], want[3])),
    }
    if max(diffs.values()) > CHECK_ATOL:
        raise ExportError(
            f"out={out}: not written: the exported model disagrees with the checkpoint (max abs differences "
            f"{diffs}, tolerance {CHECK_ATOL}); please report it"
        )
    return result


def export(
    ckpt_path: str | Path,
    format: str = "onnx",  # format, input: the command line's names
    out: str | Path | None = None,
    input: str = "float32",
    opset: int = MIN_OPSET,
    check: bool = True,
    trust: bool = False,
    threshold: float = 0.0,
    probabilities: str = "leaf",
) -> dict:
    """Export the checkpoint (or shared folder) at ``ckpt_path`` to ``out`` (default: beside it, ``<name>.onnx``,
    ``<name>.pt``, or the folder ``<name>/`` for ``format=safetensors``, :mod:`hrn.share`).

    Returns a summary: ``out``, ``format``, ``bytes``, ``export_s`` (graph capture and serialisation) and, with
    ``check``, the comparison with the checkpoint on a fresh batch (:func:`check_exported`). ``trust``: as
    :func:`hrn.checkpoints.read_checkpoint`; ``threshold``: the marginal the exported ``node`` output must reach
    (the shared folder keeps the whole model and takes its threshold where it is used); ``probabilities``: the
    node probabilities the exported ``marginals``, ``path`` and ``node`` come from (:data:`hrn.tree.SOURCES`, as
    ``hrn.predict``; recorded in the metadata).
    """
    threshold = check_threshold(threshold)
    check_source(probabilities)
    if format not in FORMATS:
        raise ExportError(
            f"format={format}: unknown; use format=onnx, format=torchscript or format=safetensors"
        )
    if format == "safetensors":
        return export_folder(ckpt_path, out, check, trust)
    if input not in INPUTS:
        raise ExportError(f"input={input}: unknown; use input=float32 or input=uint8")
    if format == "onnx":
        if not isinstance(opset, int) or opset < MIN_OPSET:
            raise ExportError(
                f"opset={opset}: use an ONNX opset of {MIN_OPSET} or newer (the tree marginals need it)"
            )
        _require_onnx()
    out = Path(out) if out else Path(ckpt_path).with_suffix(FORMATS[format])
    if out.exists() and out.resolve() == Path(ckpt_path).resolve():
        other = out.with_name(f"{out.stem}-{format}{FORMATS[format]}")
        raise ExportError(f"out={out}: is the checkpoint being exported; give another file, e.g. out={other}")
    if out.is_dir():
        raise ExportError(
            f"out={out}: is a folder; give the file to write, e.g. out={out / ('model' + FORMATS[format])}"
        )

    predictor, description = build_predictor(ckpt_path, input == "uint8", trust, threshold, probabilities)
    info = metadata(predictor, description, ckpt_path, input)
    crop = info["transform"]["crop"]
    example = example_images(EXAMPLE_BATCH, crop, predictor.uint8_input)
    start = time.perf_counter()
    meta_json = json_text(info, sort_keys=True)
    if format == "onnx":
        payload = onnx_bytes(predictor, example, meta_json, opset)
    else:
        payload = torchscript_bytes(predictor, example, meta_json)
    export_s = time.perf_counter() - start
    summary = {"out": str(out), "format": format, "bytes": len(payload), "export_s": round(export_s, 2)}
    if check:  # before writing: a file that disagrees with its checkpoint never lands where a user looks
        summary["check"] = check_exported(lambda images: run_exported(payload, images), predictor, crop, out)
    atomic_write_bytes(out, payload)
    log.info("wrote %s (%s, %.1f MB) in %.1f s", out, format, len(payload) / 1e6, export_s)
    return summary


def export_folder(
    ckpt_path: str | Path, out: str | Path | None, check: bool = True, trust: bool = False
) -> dict:
    """``format=safetensors``: the weights-only share folder (``model.safetensors`` and ``config.json``,
    :mod:`hrn.share`) of the checkpoint at ``ckpt_path``, checked like the other formats by rebuilding the model
    from the bytes to be written, before they are."""
    model = load_checkpoint(ckpt_path, trust)
    out = Path(out) if out else Path(ckpt_path).with_suffix("")
    if out.resolve() == Path(ckpt_path).resolve():
        raise ExportError(
            f"out={out}: is the model being exported; give another folder, e.g. out={out}-shared"
        )
    start = time.perf_counter()
    files = folder_files(model)
    summary = {
        "out": str(out),
        "format": "safetensors",
        "bytes": sum(len(b) for b in files.values()),
        "files": sorted(files),
        "export_s": round(time.perf_counter() - start, 2),
    }
    if check:
        again = predictor_of(model_from_files(files, out))
        summary["check"] = check_exported(again, predictor_of(model), model.crop, out)
    write_folder(files, out)
    log.info("wrote %s (%s)", out, ", ".join(sorted(files)))
    return summary
