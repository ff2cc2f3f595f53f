"""The smaller slips: the unbalanced-tree hint names the real key, a smoke test writes no checkpoint and is never
averaged into a report, a confusion matrix keeps its title inside the figure and has a colour bar."""

import json

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from matplotlib.backends.backend_agg import FigureCanvasAgg

from hrn import Hierarchy, HierarchyError
from hrn.cli.config import CONF_DIR
from hrn.metrics.outputs import confusion_figure
from hrn.reports import find_runs, markdown, summary
from hrn.train import train
from tests.fixtures import TINY


def test_the_unbalanced_tree_hint_names_dataset_pad():
    with pytest.raises(HierarchyError, match=r"dataset.pad=true for dataset=folder"):
        Hierarchy.from_edges([("a", "b"), ("b", "c"), ("a", "d")])


def test_a_smoke_test_writes_no_checkpoint(tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={tmp_path}", *TINY, "trainer.fast_dev_run=true"])
    metrics = train(cfg)
    assert "test/acc_l1" in metrics and not list(tmp_path.rglob("*.ckpt"))


def _run(folder, seed, acc, fast_dev_run=False):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
    config = {"seed": seed, "relabel_ratio": 0.0, "trainer": {"fast_dev_run": fast_dev_run}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps({"test/acc_l1": acc}))


def test_a_report_never_averages_smoke_tests(tmp_path):
    _run(tmp_path / "0", 0, 0.8)
    _run(tmp_path / "1", 1, 0.9)
    _run(tmp_path / "2", 2, 0.0, fast_dev_run=True)
    runs = find_runs([tmp_path])
    assert [r.status for r in runs] == ["ok", "ok", "smoke"]
    assert summary(runs, "test/acc_l1")[("hrn (default)", 0.0)][::2] == (pytest.approx(0.85), 2)
    text = markdown(runs)
    assert "1 smoke tests (`trainer.fast_dev_run`, never averaged)" in text and "## Smoke tests" in text


@pytest.mark.parametrize("n", [2, 13, 40, 200])
def test_a_confusion_matrix_keeps_its_title_inside_and_has_a_colour_bar(n):
    names = [f"Procellariiformes {i}" for i in range(n)]
    fig = confusion_figure(torch.randint(0, 9, (n, n)), names, level=1)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    title = fig.axes[0].title.get_window_extent(canvas.get_renderer())
    assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "images"  # the colour bar
