"""``python -m hrn.demo``: the page's answers equal ``hrn.predict``'s, bad input is one line, and the page works in
a real browser (Debian's Chromium through Playwright: upload, read the prediction, move the threshold, count the
heatmaps, a screenshot)."""

import socket
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from hrn import load_checkpoint
from hrn.cli.config import CONF_DIR
from hrn.deploy.page import PageModel, prediction_text
from hrn.predict import predict
from tests import fixtures
from tests.fixtures import run_command

CHROMIUM = Path(
    "/usr/bin/chromium"
)  # Debian's; .ci/run installs it (Playwright's own download is unreachable)


@pytest.fixture(scope="module")
def trained(learnt_run) -> Path:
    return learnt_run.best


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    return fixtures.synthetic_image_files(tmp_path_factory.mktemp("demo-images"), [0, 5, 10], seed=11)


def test_the_page_answers_what_predict_answers(trained, image_files):
    page = PageModel(load_checkpoint(trained), device="cpu", top_k=3)
    for path in image_files:
        analysis = page.analyse(path)
        assert len(analysis.overlays) == 3 and analysis.overlays[0][0].shape == (64, 64, 3)
        for threshold in (0.0, 0.5, 0.9):
            (want,) = predict(str(trained), [str(path)], top_k=3, threshold=threshold, device="cpu")
            assert page.answer(analysis, threshold) == want  # the same dict, prediction and path included
    assert "no answer" in prediction_text({"prediction": None, "path_prediction": []}, 0.9).lower()


def test_a_bad_checkpoint_is_one_line_before_any_server(tmp_path):
    result = run_command("demo", f"ckpt_path={tmp_path / 'missing.ckpt'}", "port=1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("hrn: error:")]
    assert "missing.ckpt" in line and "hrn.demo:" not in result.stdout
    bad = run_command("demo", "ckpt_path=x.ckpt", "threshold=2", cwd=tmp_path)
    assert bad.returncode == 2 and "threshold=2" in bad.stderr.splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(trained):
    from hrn.demo import serve

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("demo", overrides=[f"ckpt_path={trained}", f"port={free_port()}", "device=cpu"])
    blocks, url = serve(cfg)
    yield url
    blocks.close()


@pytest.mark.slow
def test_in_a_real_browser(served, trained, image_files, tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "the browser test needs Debian's Chromium: apt-get install -y chromium"
    (want,) = predict(str(trained), [str(image_files[0])], top_k=3, device="cpu")
    chain = " › ".join(step["label"] for step in want["path_prediction"])
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not an image")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served)
        start = time.perf_counter()
        page.locator("#image input[type=file]").set_input_files(str(image_files[0]))
        page.wait_for_function(
            "document.querySelector('#prediction').innerText.includes('level 3')", timeout=60_000
        )
        assert (
            page.locator("#prediction").inner_text().startswith(chain)
        )  # hrn.predict's path, down to the leaf
        page.locator("#cams img").first.wait_for(timeout=30_000)
        assert page.locator("#cams img").count() == 3  # one heatmap a level
        print(
            f"upload to heatmaps in the browser: {time.perf_counter() - start:.2f} s"
        )  # a figure, not a test
        levels = []
        for threshold in ("0.5", "0.99"):  # up the tree: the answer can only get coarser
            before = page.locator("#prediction").inner_text()
            box = page.locator("#threshold input[type=number]")
            box.fill(threshold)
            box.press("Enter")
            page.wait_for_function(
                f"!document.querySelector('#prediction').innerText.includes('threshold 0.') || "
                f"document.querySelector('#prediction').innerText.includes('threshold {float(threshold):.2f}')",
                timeout=30_000,
            )
            text = page.locator("#prediction").inner_text()
            levels.append(0 if "No answer" in text else int(text.split("· level ")[1][0]))
            assert text != before or levels[-1] == 3
            if threshold == "0.5":  # the README's docs/demo.png is this screenshot
                page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        assert levels[0] >= levels[1] and levels[1] < 3, levels
        page.reload()  # a fresh page: its upload box empty again
        page.locator("#image input[type=file]").set_input_files(str(not_an_image))
        message = page.get_by_text("Cannot read notes.jpg as an image", exact=False)
        message.first.wait_for(timeout=30_000)
        assert "Traceback" not in page.locator("body").inner_text()
        browser.close()
    assert Image.open(tmp_path / "demo.png").size[0] == 1280


def test_examples_come_from_the_test_split_when_its_files_are_here(tmp_path):
    from hrn.demo import example_images

    root = fixtures.write_folder(tmp_path / "folder")
    ckpt = fixtures.train_folder(root, tmp_path / "run", "dataset.batch_size=4")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        demo_cfg = compose("demo", overrides=[f"ckpt_path={ckpt}"])
    model = load_checkpoint(ckpt)
    picked = example_images(demo_cfg, model, 4)
    test = {
        line.split(",")[0]
        for line in (root / "labels.csv").read_text().splitlines()[1:]
        if line.endswith(",test")
    }
    assert picked and all(Path(p).is_file() and Path(p).relative_to(root).as_posix() in test for p in picked)
    labels = {Path(p).name.split("_")[0] for p in picked}
    assert len(labels) == len(picked)  # one per class
    assert example_images(demo_cfg, model, 0) == []
