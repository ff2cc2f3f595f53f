"""`hrn.report`: tables and a plot from a hand-built Hydra multirun (no training)."""

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hrn.report import main
from hrn.reports import DEFAULT_METHOD, find_runs, method_of, shared_settings, summary
from tests.fixtures import run_command

LEAF_CE = "loss=leaf_ce"
# (method, ratio, seed) -> test/acc_l1, test/acc_l2, test/ap_micro; dyadic numbers, so means are exact
METRICS = {
    (DEFAULT_METHOD, 0.0, 0): (0.75, 0.5, 0.875),
    (DEFAULT_METHOD, 0.0, 1): (0.5, 0.25, 0.625),
    (DEFAULT_METHOD, 0.5, 0): (0.625, 0.375, 0.75),
    (DEFAULT_METHOD, 0.5, 1): (0.375, 0.125, 0.5),
    (LEAF_CE, 0.0, 0): (0.25, 0.125, 0.5),
    (LEAF_CE, 0.0, 1): (0.25, 0.125, 0.5),
    (LEAF_CE, 0.5, 0): (0.125, 0.0625, 0.25),
    (LEAF_CE, 0.5, 1): (0.25, 0.0625, 0.375),
}
FAILED = (DEFAULT_METHOD, 0.5, 2)


def make_run(run_dir: Path, method: str, ratio: float, seed: int, metrics: tuple | None) -> Path:
    hydra = run_dir / ".hydra"
    hydra.mkdir(parents=True)
    overrides = ["trainer.max_epochs=2", f"seed={seed}", "hydra.sweep.dir=multirun"]
    if ratio:  # ratio 0 is the default: it comes from config.yaml only
        overrides.insert(0, f"relabel_ratio={ratio}")
    if method != DEFAULT_METHOD:
        overrides.append(method)
    loss = "hrn.losses.LeafCELoss" if method == LEAF_CE else "hrn.losses.CompositeLoss"
    config = {
        "seed": seed,
        "relabel_ratio": ratio if ratio else 0,
        "run_dir": "${hydra:runtime.output_dir}",
        "model": {"_target_": "hrn.model.HRN", "gsb": True},
        "loss": {"_target_": loss},
        "dataset": {"_target_": "hrn.data.synthetic.synthetic"},
        "trainer": {"max_epochs": 2},
    }
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (hydra / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "checkpoints").mkdir()
    if metrics is not None:
        acc1, acc2, ap = metrics
        flat = {
            "test/acc_l1": acc1,
            "test/acc_l2": acc2,
            "test/acc_l2_marginal": acc2,
            "test/acc_leaf_sigmoid": acc2,
            "test/ap_micro": ap,
            "test/full_path_acc": acc2 / 2,
            "test/mistake_severity": 1.5,
            "test/loss": 1.0 + seed,
        }
        (run_dir / "metrics.json").write_text(json.dumps(flat))
    return run_dir


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    for n, ((method, ratio, seed), metrics) in enumerate(METRICS.items()):
        make_run(root / str(n), method, ratio, seed, metrics)
    make_run(root / str(len(METRICS)), *FAILED, None)
    return root


def table(md: str, heading: str) -> dict[str, dict[str, str]]:
    """The Markdown table under ``heading``: row name -> column name -> cell."""
    lines = md.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[start:end]]
    header, body = rows[0], rows[2:]
    return {row[0].strip("`"): dict(zip(header[1:], row[1:], strict=True)) for row in body}


def test_method_drops_ratio_seed_and_run_settings_and_sorts():
    assert method_of(["relabel_ratio=0.5", "seed=1", "hydra.sweep.dir=x", "run_dir=y"]) == DEFAULT_METHOD
    assert (
        method_of(["+trainer.fast_dev_run=true", "callbacks.ckpt.monitor=a", "logger.name=b"])
        == DEFAULT_METHOD
    )
    assert method_of(["model.gsb=False", "seed=2", "loss=leaf_ce"]) == "loss=leaf_ce model.gsb=false"
    assert method_of(["relabel.order=random"]) == "relabel.order=random"  # not relabel_ratio


def test_means_and_stds_over_finished_seeds_only(sweep):
    runs = find_runs([sweep])
    assert len(runs) == 9
    for level, key in enumerate(("test/acc_l1", "test/acc_l2", "test/ap_micro")):
        stats = summary(runs, key)
        assert set(stats) == {(m, r) for m, r, _ in METRICS}
        for (method, ratio), (mean, std, n) in stats.items():
            values = [v[level] for (m, r, _), v in METRICS.items() if (m, r) == (method, ratio)]
            assert n == 2  # the failed seed 2 is not averaged in
            assert mean == statistics.fmean(values) == (values[0] + values[1]) / 2
            assert std == statistics.stdev(values) == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    mean, std, n = summary(runs, "test/acc_l1")[(DEFAULT_METHOD, 0.5)]
    assert (mean, n) == (0.5, 2) and std == statistics.stdev([0.625, 0.375])


def test_report_files(sweep, capsys):
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    md = (sweep / "results.md").read_text()

    acc = table(md, "## Accuracy per level")
    assert set(acc) == {DEFAULT_METHOD, LEAF_CE}
    assert list(acc[DEFAULT_METHOD]) == ["r=0 l1", "r=0 l2", "r=0.5 l1", "r=0.5 l2"]
    assert acc[DEFAULT_METHOD]["r=0 l1"] == "0.6250 ± 0.1768"  # 0.75, 0.5
    assert acc[DEFAULT_METHOD]["r=0.5 l1"] == "0.5000 ± 0.1768"  # 0.625, 0.375; not the failed seed 2
    assert acc[LEAF_CE]["r=0 l1"] == "0.2500 ± 0.0000"
    assert acc[LEAF_CE]["r=0.5 l2"] == "0.0625 ± 0.0000"
    assert "r=0.5 l1" in printed and "0.6250 ± 0.1768" in printed
    other = table(md, "## Other metrics")
    assert list(other[LEAF_CE]) == [
        f"r={r} {m}" for r in ("0", "0.5") for m in ("ap_micro", "full_path_acc", "mistake_severity")
    ]
    assert other[LEAF_CE]["r=0.5 ap_micro"] == "0.3125 ± 0.0884"
    assert other[DEFAULT_METHOD]["r=0 mistake_severity"] == "1.5000 ± 0.0000"

    failed = table(md, "## Failed or unfinished runs")
    assert list(failed) == [str(sweep / "8")]
    assert failed[str(sweep / "8")] == {
        "method": DEFAULT_METHOD,
        "relabel_ratio": "0.5",
        "seed": "2",
        "why": "no metrics.json",
    }

    with open(sweep / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    assert list(rows[0])[:5] == ["run_dir", "method", "relabel_ratio", "seed", "status"]
    assert "test/acc_l2_marginal" in rows[0] and "test/loss" in rows[0]
    by_dir = {row["run_dir"]: row for row in rows}
    assert [row["status"] for row in rows].count("ok") == 8
    bad = by_dir[str(sweep / "8")]
    assert (bad["status"], bad["method"], bad["relabel_ratio"], bad["seed"]) == (
        "failed",
        DEFAULT_METHOD,
        "0.5",
        "2",
    )
    assert all(bad[k] == "" for k in rows[0] if k.startswith("test/"))
    first = by_dir[str(sweep / "0")]
    assert (first["status"], first["relabel_ratio"], first["seed"]) == ("ok", "0", "0")
    assert float(first["test/acc_l1"]) == 0.75 and float(first["test/loss"]) == 1.0
    assert by_dir[str(sweep / "6")]["method"] == LEAF_CE

    png = sweep / "accuracy_vs_relabel_ratio.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < png.stat().st_size < 2_000_000
    with Image.open(png) as image:
        width, height = image.size
    assert width > height >= 300  # two level panels side by side
    assert not list(sweep.glob(".*.tmp"))  # atomic writes leave no temporary files
    for name in ("results.csv", "results.md", str(png.name)):
        assert f"wrote {sweep / name}" in printed


def test_fewer_seeds_are_marked(sweep):
    (sweep / "7" / "metrics.json").unlink()  # leaf_ce r=0.5 seed 1 now unfinished too
    main([str(sweep)])
    md = (sweep / "results.md").read_text()
    acc = table(md, "## Accuracy per level")
    assert acc[LEAF_CE]["r=0.5 l1"] == "0.1250 (n=1)"
    assert acc[LEAF_CE]["r=0 l1"] == "0.2500 ± 0.0000"
    assert set(table(md, "## Failed or unfinished runs")) == {str(sweep / "7"), str(sweep / "8")}


def test_out_dir_and_parent_dir(sweep, tmp_path, capsys):
    out = tmp_path / "report" / "here"
    assert main([str(tmp_path / "multirun"), "--out", str(out)]) == 0  # runs two levels down are found
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_vs_relabel_ratio.png",
        "results.csv",
        "results.md",
    ]
    assert not (tmp_path / "multirun" / "results.md").exists() and not (sweep / "results.md").exists()
    assert "0.6250 ± 0.1768" in (out / "results.md").read_text()


def test_single_run_dir(sweep, capsys):
    run = sweep / "4"
    assert main([str(run)]) == 0
    acc = table((run / "results.md").read_text(), "## Accuracy per level")
    assert acc == {LEAF_CE: {"r=0 l1": "0.2500", "r=0 l2": "0.1250"}}
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run_dir"], r["status"]) for r in rows] == [(str(run), "ok")]
    assert "None: every run wrote metrics.json." in (run / "results.md").read_text()
    assert (run / "accuracy_vs_relabel_ratio.png").stat().st_size > 5_000


def test_no_runs_is_an_error(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"hrn: error: {tmp_path / 'empty'}: no runs found (no .hydra/overrides.yaml at or below it)"
    assert not (tmp_path / "empty" / "results.md").exists()


def test_missing_dir_cli(tmp_path):
    missing = tmp_path / "nope"
    result = run_command("report", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == f"hrn: error: {missing}: no such directory"
    assert result.stdout == ""


def test_overlapping_dirs_count_once_and_repeated_seeds_are_said(sweep, tmp_path):
    assert len(find_runs([sweep, sweep / "0", tmp_path / "multirun"])) == 9
    again = make_run(tmp_path / "rerun" / "0", DEFAULT_METHOD, 0.0, 0, (1.0, 1.0, 1.0))
    assert main([str(sweep), str(again), "--out", str(tmp_path / "both")]) == 0
    md = (tmp_path / "both" / "results.md").read_text()
    assert f"- {DEFAULT_METHOD} r=0 seed=0" in md.split("## Repeated seeds", 1)[1]
    assert table(md, "## Accuracy per level")[DEFAULT_METHOD]["r=0 l1"] == "0.7500 ± 0.2500"  # 0.75, 0.5, 1.0


def test_settings_every_run_shares_leave_the_row_names(tmp_path):
    """A study run as several sweeps of one experiment: the rows read `loss=leaf_ce`, not
    `experiment=study loss=leaf_ce`, and results.md says once what they share."""
    root = tmp_path / "study"
    make_run(root / "a" / "0", "experiment=study", 0.0, 0, (0.5, 0.25, 0.5))
    make_run(root / "b" / "0", "experiment=study loss=leaf_ce", 0.0, 0, (0.25, 0.125, 0.5))
    for run in (root / "a" / "0", root / "b" / "0"):  # make_run writes the method as one override
        overrides = run / ".hydra" / "overrides.yaml"
        parts = [p for o in yaml.safe_load(overrides.read_text()) for p in o.split(" ")]
        overrides.write_text(yaml.safe_dump(parts))
    runs = find_runs([root])
    assert sorted(r.method for r in runs) == sorted([DEFAULT_METHOD, LEAF_CE])
    assert main([str(root)]) == 0
    md = (root / "results.md").read_text()
    assert "left out of the row names: `experiment=study`" in md
    assert set(table(md, "## Accuracy per level")) == {DEFAULT_METHOD, LEAF_CE}
    # one method alone keeps its whole name: stripped, it would read as the default
    (single,) = find_runs([root / "b"])
    assert single.method == "experiment=study loss=leaf_ce" and shared_settings([single]) == []
