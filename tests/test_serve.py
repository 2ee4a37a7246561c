"""`fastresnet serve` in a real browser: a model trained here on tiny generated data, the page driven by headless
Chromium (Debian's `chromium` through Playwright), the label on the page checked against `learn.predict` on the
same file, bad uploads answered on the page while the server keeps serving, a screenshot kept as an artifact."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastai.learner import load_learner
from PIL import Image

from conftest import script_module
from fastresnet.learner import model_file
from fastresnet.serve import MAX_PIXELS, example_images, run_facts

pytestmark = pytest.mark.slow
ARTIFACTS = Path(os.environ.get("FASTRESNET_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))


@pytest.fixture
def run_dir(trained_run):
    "The session's trained run (read only)."
    return trained_run


def test_the_model_file_is_the_weights_when_both_exist(run_dir, tmp_path):
    assert model_file(run_dir) == run_dir / "model.safetensors"
    assert model_file(run_dir / "model.pkl") == run_dir / "model.safetensors"   # no pickle when avoidable
    shutil.copy(run_dir / "model.pkl", tmp_path / "model.pkl")
    assert model_file(tmp_path / "model.pkl") == tmp_path / "model.pkl"
    facts = run_facts(run_dir / "model.safetensors")
    assert "Test accuracy" in facts and "on 20 test images" in facts and "2 epochs" in facts
    assert "40 training images" in facts


def test_examples_come_from_the_runs_data_or_are_generated(run_dir, tiny_folder, tmp_path):
    vocab = list(load_learner(run_dir / "model.pkl").dls.vocab)
    ex = example_images(run_dir / "model.safetensors", vocab, out=tmp_path)
    assert [Path(f).name for f in ex] == [f"{c}.png" for c in vocab[:4]]             # the run's test images, by class
    for f, c in zip(ex, vocab):
        assert Path(f).read_bytes() == sorted((tiny_folder / "test" / c).iterdir())[0].read_bytes()
    shutil.copy(run_dir / "model.safetensors", tmp_path / "model.safetensors")   # not in a run folder: generated
    gen = example_images(tmp_path / "model.safetensors", vocab, out=tmp_path / "gen")
    assert len(gen) == 4 and all(Image.open(f).size == (32, 32) for f in gen)


def test_serve_without_gradio_says_how_to_install_it(run_dir, monkeypatch, capsys):
    from fastresnet.cli import main
    monkeypatch.setitem(sys.modules, "gradio", None)   # as if not installed
    assert main(["serve", "--model", str(run_dir)]) == 2
    assert 'pip install "fastresnet[serve]"' in capsys.readouterr().err  # what a wheel user runs


def test_a_port_in_use_is_one_line_and_exit_2(run_dir, capsys):
    from fastresnet.cli import main
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", "--model", str(run_dir), "--port", str(s.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot serve on 127.0.0.1" in err and "Traceback" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_browser(reason: str):
    "Without a browser the page tests skip on a developer's machine; in CI (FASTRESNET_CI=1, .ci/run) they fail."
    if os.environ.get("FASTRESNET_CI"): pytest.fail(f"CI must run the browser tests: {reason}")
    print(f"SKIPPED browser test: {reason}")
    pytest.skip(reason)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None: _no_browser("no Chromium on this machine (.ci/run installs Debian's `chromium`; apt-get install "
                                "chromium)")
    return exe


def _playwright():
    try: from playwright.sync_api import sync_playwright
    except ImportError as e: _no_browser(f"Playwright is not installed ({e}; pip install -e '.[test]')")
    return sync_playwright


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    run_dir, here = trained_run, tmp_path_factory.mktemp("serve")
    port = _free_port()
    log = open(here / "serve.log", "w")
    tmp = here / "server-tmp"   # the server's /tmp: it must be empty again once the server stops
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "fastresnet.cli", "serve", "--model", str(run_dir),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TMPDIR": str(tmp)})
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):  # up to 120 s: importing Gradio and fastai takes a while on two cores
            if proc.poll() is not None: break
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError: time.sleep(0.5)
        else: raise AssertionError("the server did not answer within 120 s")
        assert proc.poll() is None, (here / "serve.log").read_text()
        yield url
    finally:
        proc.terminate()   # SIGTERM, as a service manager stops it
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()
    assert proc.returncode == 0, (here / "serve.log").read_text()
    left = [str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file() or f.name.startswith("fastresnet")]
    assert left == []   # examples and uploads went with the server (Gradio and torch leave only empty folders)


def test_the_api_endpoint_answers_like_learn_predict(server, run_dir, tiny_folder):
    from gradio_client import Client, handle_file
    img = tiny_folder / "test" / "bird" / sorted(os.listdir(tiny_folder / "test" / "bird"))[0]
    client = Client(server, verbose=False)
    # the one documented endpoint is the button's, named as the README and the page's "Use via API" say
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/predict"]
    label, _ = client.predict(handle_file(str(img)), api_name="/predict")
    assert label["label"] == load_learner(run_dir / "model.pkl").predict(img)[0]
    assert len(label["confidences"]) == 3


@pytest.fixture(scope="module")
def page(server):
    sync_playwright = _playwright()
    exe = _chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])  # root in CI: no sandbox
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        pg.goto(server)
        pg.wait_for_selector("#upload", timeout=60_000)
        yield pg
        browser.close()


LABEL = "#label [data-testid='label-output-value']"
IDLE = "() => ![...document.querySelectorAll('[data-testid=status-tracker]')].some(e => !e.classList.contains('hide'))"


def _upload(page, path: Path) -> None:
    "Remove the file shown, if any (which also clears the results), then upload `path` as a user would."
    if not page.locator("#upload input[type=file]").count():  # a file is shown: its Clear button brings the input back
        page.locator("#upload button[aria-label='Clear']").click()
        page.wait_for_function(f"() => !document.querySelector(\"{LABEL}\") && !document.querySelector('#seen img')",
                               timeout=30_000)
    page.set_input_files("#upload input[type=file]", str(path))


def _predict_on_page(page, img: Path) -> str:
    "Upload `img`, wait until the page shows its result (the results were cleared first), return the top class."
    _upload(page, img)
    page.wait_for_function("(sel) => document.querySelector('#seen img')?.src && "
                           "document.querySelector(sel)?.innerText", arg=LABEL, timeout=60_000)
    page.wait_for_function(IDLE, timeout=60_000)
    return page.locator(LABEL).inner_text().strip()


def _error_text(page) -> str:
    toast = page.locator("[data-testid='toast-body']").last
    toast.wait_for(timeout=60_000)
    text = toast.inner_text()
    for close in page.locator("[data-testid='toast-close']").all(): close.click()  # dismiss for the next check
    return text


def test_the_page_shows_what_learn_predict_says(page, run_dir, tiny_folder):
    img = tiny_folder / "test" / "cat" / sorted(os.listdir(tiny_folder / "test" / "cat"))[0]
    want = load_learner(run_dir / "model.pkl").predict(img)[0]
    assert _predict_on_page(page, img) == want
    assert "Test accuracy" in page.locator("#facts").inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(2000)  # Gradio fades new results in
    page.screenshot(path=str(ARTIFACTS / "serve.png"), full_page=True)
    assert (ARTIFACTS / "serve.png").stat().st_size > 10_000
    print(f"screenshot: {ARTIFACTS / 'serve.png'}")


@pytest.mark.parametrize("kind", ["not_an_image", "huge", "text_file", "over_20_mb"])
def test_bad_uploads_get_a_message_and_the_server_keeps_serving(page, kind, tmp_path, tiny_folder, run_dir):
    if kind == "not_an_image":
        bad = tmp_path / "holiday.png"
        bad.write_bytes(b"this is a text file, not a picture\n" * 20)
        expect = "corrupt or not an image"
    elif kind == "huge":
        bad = tmp_path / "huge.png"
        side = int(MAX_PIXELS ** 0.5) + 200
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(bad)   # one colour: a small file, many pixels
        expect = f"{side}x{side} pixels"
    elif kind == "over_20_mb":  # refused by Gradio before the upload
        bad = tmp_path / "big.png"
        bad.write_bytes(b"\0" * (21 * 2**20))
        expect = "maximum allowed size"
    else:  # refused by Gradio itself, from the extension, before our code sees it
        bad = tmp_path / "notes.txt"
        bad.write_text("hello\n")
        expect = "Invalid file type"
    _upload(page, bad)
    msg = _error_text(page)
    assert expect in msg and (bad.name in msg or kind == "text_file"), msg
    assert "/tmp/gradio" not in msg                                   # the user's file name, not the server's path
    cls = {"not_an_image": "dog", "huge": "frog", "text_file": "ship", "over_20_mb": "truck"}[kind]  # a new image
    img = tiny_folder / "test" / cls / sorted(os.listdir(tiny_folder / "test" / cls))[0]
    assert _predict_on_page(page, img) == load_learner(run_dir / "model.pkl").predict(img)[0]   # still serving


def test_clicking_an_example_classifies_it(page, run_dir, tmp_path):
    vocab = list(load_learner(run_dir / "model.pkl").dls.vocab)
    first = Path(example_images(run_dir / "model.safetensors", vocab, out=tmp_path)[0])
    if page.locator("#upload input[type=file]").count() == 0:
        page.locator("#upload button[aria-label='Clear']").click()
    page.wait_for_function(f"() => !document.querySelector(\"{LABEL}\")", timeout=30_000)
    page.get_by_text(first.name, exact=True).first.click()
    page.wait_for_function(f"() => document.querySelector(\"{LABEL}\")?.innerText", timeout=60_000)
    assert page.locator(LABEL).inner_text().strip() == load_learner(run_dir / "model.pkl").predict(first)[0]


def test_four_clients_at_once_each_get_learn_predicts_answer(server, run_dir, tmp_path):
    "The load benchmark's clients, small: 4 users x 10 distinct uploads at once; every answer is `learn.predict`'s."
    bench = script_module("benchmarks/bench_serve.py")
    files = bench.make_images(tmp_path / "uploads", 40, seed=1)
    records = bench.load(server, [files[i::4] for i in range(4)], timeout=120)
    assert len(records) == 40 and [r for r in records if "error" in r] == []
    learn = load_learner(run_dir / "model.pkl")
    for r in records:
        label, _, probs = learn.predict(r["file"])
        top = {c["label"]: c["confidence"] for c in r["confidences"]}
        assert r["label"] == label and abs(top[label] - float(probs.max())) < 1e-4, r
