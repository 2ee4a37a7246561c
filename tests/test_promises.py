"""Promises of docs/reliability.md that had code but no test (issue 50), each made to happen for real: a changed
split, no network, a bad model to start from, a reader that stops early, a pixel bomb, an address this machine
lacks, a full queue, a settings file's length, a background run."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import pytest
from PIL import Image

from conftest import pictures
from fastresnet.cli import main

TINY = ["--epochs", "2", "--bs", "10", "--lr-max", "1e-3", "--no-tta", "--width", "0.25"]
CLI = [sys.executable, "-m", "fastresnet.cli"]


def cli(args, capsys):
    try: code = main([str(a) for a in args])
    except SystemExit as e: code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture
def run(trained_run):
    "The session's trained run (width 0.25; read only)."
    return trained_run


def test_resume_refuses_data_whose_held_out_files_changed(tmp_path, capsys):
    pictures(tmp_path / "photos", ["red", "green"], 6)
    code, err = cli(["train", "--data", tmp_path / "photos", "--out", tmp_path / "r", "--epochs", "3", *TINY[2:]],
                    capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    (tmp_path / "r" / "run.json").write_text(json.dumps({**info, "status": "stopped"}))
    held = json.loads((tmp_path / "r" / "split.json").read_text())["valid"][0]
    (tmp_path / "photos" / held).rename(tmp_path / "photos" / (held + ".moved.png"))  # a held-out file renamed
    code, err = cli(["train", "--resume", tmp_path / "r"], capsys)
    assert code == 2 and "held-out images differ" in err


def test_no_network_is_one_paragraph(tmp_path):
    """A real failed download: every request goes to a proxy on a closed local port, in a home of its own (a new
    process: fastai reads its home once)."""
    env = {**os.environ, "HOME": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "FASTRESNET_CACHE": str(tmp_path)}
    env.pop("FASTAI_HOME", None)
    for data in ([], ["--data", "cifar100"]):
        p = subprocess.run(CLI + ["train", *data, "--out", str(tmp_path / "r"), *TINY], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=300)
        assert p.returncode == 2 and "Could not download" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert (tmp_path / ".fastai").is_dir()  # the download was tried from the test's home


def test_init_with_a_bad_file_and_a_width_that_differs(run, tiny_folder, tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    code, err = cli(["train", "--data", tiny_folder, "--out", tmp_path / "ft", "--init", tmp_path / "junk.safetensors",
                     *TINY], capsys)
    assert code == 2 and "junk.safetensors is not a usable fastresnet weights file" in err
    from fastresnet.learner import recipe_learner
    with pytest.warns(UserWarning, match=r"the network's width is its 0.25, not 0.5"):
        learn = recipe_learner(str(tiny_folder), init=run, width=0.5, bs=10)
    assert learn.model.width == 0.25


def test_a_reader_that_stops_early_gets_exit_141(run, tiny_folder):
    p = subprocess.Popen(CLI + ["predict", str(tiny_folder / "test"), "--model", str(run)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # as `| head -0` does: every line the command prints meets a closed pipe
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141 and "Traceback" not in err and "BrokenPipeError" not in err


def test_predict_refuses_an_image_over_pillows_pixel_limit_from_its_header(run, tmp_path, capsys):
    Image.new("1", (10_000, 9_000)).save(tmp_path / "huge.png")  # 90 million pixels, over Pillow's 89,478,485
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, err = cli(["predict", tmp_path / "huge.png", "--model", run], capsys)
    assert code == 1 and "huge.png is 10000x9000 pixels, more than the 89,478,485 accepted" in err


def test_serve_on_an_address_this_machine_lacks_is_one_line(run, capsys):
    code, err = cli(["serve", "--model", run, "--host", "192.0.2.1", "--port", "7861"], capsys)  # TEST-NET-1:
    assert code == 2 and "cannot serve on 192.0.2.1:7861" in err                         # binding sends nothing


def test_a_settings_files_epochs_get_the_peak_note(tmp_path, capsys, tiny_folder):
    (tmp_path / "short.ini").write_text("[train]\nepochs = 12\n")
    code, err = cli(["train", "--settings", tmp_path / "short.ini", "--data", tmp_path / "missing", "--out",
                     tmp_path / "r"], capsys)
    assert code == 2 and "note: 12 epochs: the LR peaks at the end of epoch 3" in err  # 12 x 5/24 = 2.5, half up


@pytest.mark.slow
def test_a_full_queue_refuses_at_once(run, tiny_folder, tmp_path):
    from gradio_client import Client, handle_file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(CLI + ["serve", "--model", str(run), "--port", str(port), "--max-queue", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert time.time() < deadline and proc.poll() is None, "the server did not start"
                time.sleep(1)
        img = handle_file(str(sorted((tiny_folder / "test" / "cat").iterdir())[0]))
        jobs = [client.submit(img, api_name="/predict") for _ in range(24)]  # one answered, one waits, the rest
        outcomes = []
        for job in jobs:
            try: outcomes.append(job.result(timeout=120) and "answered")
            except Exception as e: outcomes.append(str(e))
        assert "answered" in outcomes and any("Queue is full" in o for o in outcomes), outcomes
        # About one run in five, one of the 24 simultaneous requests ends with httpx's "peer closed connection
        # without sending complete message body" (a response cut off during the burst, before the queue answers):
        # counted apart and allowed once; a hang (the 120 s timeout) or any other failure fails the test.
        cut = [o for o in outcomes if o.startswith("peer closed connection")]
        other = [o for o in outcomes if o != "answered" and "Queue is full" not in o and o not in cut]
        assert not other and len(cut) <= 1, outcomes
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_a_background_run_ignores_ctrl_c_and_stops_on_sigterm(tiny_folder, tmp_path):
    "A POSIX shell starts `cmd &` with SIGINT ignored; `kill -TERM` stops it as Ctrl-C would, checkpoint kept."
    out = tmp_path / "bg"
    cmd = " ".join(CLI + ["train", "--data", str(tiny_folder), "--out", str(out), "--epochs", "60", "--bs", "10",
                          "--lr-max", "1e-3", "--width", "0.25"])
    sh = subprocess.Popen(["bash", "-c", f"{cmd} & echo $!; wait $!; echo exit=$?"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    pid = int(sh.stdout.readline())
    deadline = time.time() + 300
    while not (out / "checkpoint.pth").exists() and time.time() < deadline: time.sleep(0.2)
    os.kill(pid, signal.SIGINT)  # ignored: the shell set SIGINT to ignored for its background job
    time.sleep(2)
    assert sh.poll() is None, "Ctrl-C stopped a background run"
    os.kill(pid, signal.SIGTERM)
    rest, err = sh.communicate(timeout=120)
    assert "exit=130" in rest and f"fastresnet train --resume {out}" in err


def test_uploads_are_deleted_after_ten_minutes(run):
    "A page left running does not fill the disk: Gradio deletes uploads older than UPLOAD_TTL every UPLOAD_TTL."
    from fastresnet.serve import UPLOAD_TTL, build_app
    assert UPLOAD_TTL == 600 and build_app(run).delete_cache == (600, 600)
