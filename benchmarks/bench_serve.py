"""`fastresnet serve` under load: a real server process on localhost, `--clients` concurrent `gradio_client`
users each sending `--requests` uploads (distinct generated PNGs) one after another through the page's API.
Reports errors, p50/p95/max latency, requests/s, the server's resident memory before/after and the size of its
temporary folder (uploads) before/after. Then the queue policy: `--burst` requests at once at a server started
with `--max-queue` `--burst-queue`: how many are answered, how many are told the queue is full, and how long the
slowest waited (a refusal must come at once, never a hang).

    python benchmarks/bench_serve.py                      # an untrained full-width model: the same cost per image
    python benchmarks/bench_serve.py --model runs/X       # or a trained run / model file

Only localhost; bounded in count (clients x requests) and time (--timeout per request).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import OtherLoad, add_machine_args, header, rss_mb, untrained_model, wait_for_idle  # noqa: E402
from fastresnet.serve import UPLOAD_TTL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, tmp: Path, max_queue: int | None = None, log: Path | None = None):
    "`fastresnet serve` in its own process with `tmp` as its temporary folder; (process, url) once it answers."
    port, tmp = free_port(), Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "fastresnet.cli", "serve", "--model", str(model), "--port", str(port)]
    if max_queue: args += ["--max-queue", str(max_queue)]
    out = open(log or tmp.parent / f"serve-{port}.log", "w")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}/"
    for _ in range(480):  # up to 4 minutes: importing Gradio and fastai is slow on two busy cores
        if proc.poll() is not None: raise RuntimeError(f"the server stopped: {Path(out.name).read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError: time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not answer within 240 s")


def stop_server(proc) -> int:
    proc.terminate()
    try: return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def folder_size(path: Path) -> tuple[int, float]:
    "Files under `path` and their total size in MB."
    files = [f for f in Path(path).rglob("*") if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files) / 2**20


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    "`n` distinct 32x32 PNGs (random colours), so every upload is a new file to the server."
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def load(url: str, files_per_client: list[list[Path]], timeout: float = 120) -> list[dict]:
    """Each client (a thread with its own `gradio_client.Client`) sends its files one after another, as a user
    clicking Classify would; all clients start together. One record per request: file, seconds, label or error."""
    from gradio_client import Client, handle_file
    records, start = [], threading.Barrier(len(files_per_client))
    lock = threading.Lock()
    def client(files):
        try: c = Client(url, verbose=False)
        except Exception as e:  # a server that cannot even hand out its API description counts against it
            c = e
        start.wait()
        for f in files:
            t = time.perf_counter()
            try:
                if isinstance(c, Exception): raise c
                job = c.submit(handle_file(str(f)), api_name="/predict")
                label, _ = job.result(timeout=timeout)
                rec = {"file": str(f), "label": label["label"], "confidences": label["confidences"]}
            except BaseException as e:  # gradio_client reports a full queue as QueueError, a lost job as CancelledError
                rec = {"file": str(f), "error": f"{type(e).__name__}: {e}"}
            rec["seconds"] = time.perf_counter() - t
            with lock: records.append(rec)
    threads = [threading.Thread(target=client, args=(fs,)) for fs in files_per_client]
    for t in threads: t.start()
    for t in threads: t.join()
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="run folder or model file (default: an untrained full-width model)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=50, help="uploads per client, one after another")
    ap.add_argument("--rounds", type=int, default=2, help="the whole load this many times (memory after each)")
    ap.add_argument("--burst", type=int, default=32, help="requests sent at once for the queue-policy check (0: skip)")
    ap.add_argument("--burst-queue", type=int, default=4, help="--max-queue of the server the burst goes to")
    ap.add_argument("--timeout", type=float, default=120, help="seconds a request may take before it counts as hung")
    ap.add_argument("--json", help="also write the figures here")
    add_machine_args(ap)
    a = ap.parse_args()
    condition = wait_for_idle(a)
    other = OtherLoad()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        work = Path(work)
        model = Path(a.model) if a.model else untrained_model(work)
        files = make_images(work / "images", 3)
        tmp = work / "server-tmp"
        proc, url = start_server(model, tmp)
        try:
            load(url, [files[:3]])                                      # warm-up: first model call, Gradio caches
            rss0, (n0, mb0) = rss_mb(proc.pid), folder_size(tmp)
            recs, walls, rss = [], [], []
            for k in range(a.rounds):  # the same load again with new files: memory that keeps growing is a leak
                files = make_images(work / f"images-{k}", max(a.clients * a.requests, a.burst), seed=k + 1)
                t0 = time.perf_counter()
                recs += load(url, [files[i::a.clients] for i in range(a.clients)], a.timeout)
                walls.append(time.perf_counter() - t0)
                rss.append(rss_mb(proc.pid))
            wall, rss1, (n1, mb1) = sum(walls), rss[-1], folder_size(tmp)
        finally: code = stop_server(proc)
        left = folder_size(tmp)
        ok = [r["seconds"] for r in recs if "error" not in r]
        errors = [r["error"] for r in recs if "error" in r]
        q = statistics.quantiles(ok, n=20, method="inclusive") if len(ok) > 1 else [float("nan")] * 19
        res = {"clients": a.clients, "requests_each": a.requests, "answered": len(ok), "errors": len(errors),
               "error_examples": errors[:3], "p50_s": statistics.median(ok) if ok else None, "p95_s": q[18],
               "max_s": max(ok) if ok else None, "requests_per_s": len(ok) / wall, "wall_s": wall,
               "rss_mb_before": rss0, "rss_mb_after_each_round": rss, "tmp_files_before": n0, "tmp_mb_before": mb0,
               "tmp_files_after": n1, "tmp_mb_after": mb1, "server_exit": code, "tmp_files_after_stop": left[0]}
        if a.burst:
            proc, url = start_server(model, work / "burst-tmp", a.burst_queue)
            try:
                load(url, [files[:1]])
                burst = load(url, [[f] for f in make_images(work / "burst", a.burst, seed=99)], a.timeout)
            finally: stop_server(proc)
            full = [r for r in burst if "error" in r and "Queue is full" in r["error"]]
            res["burst"] = {"sent": a.burst, "max_queue": a.burst_queue,
                            "answered": sum("error" not in r for r in burst), "told_queue_full": len(full),
                            "other_errors": [r["error"] for r in burst if "error" in r and r not in full][:3],
                            "slowest_refusal_s": max((r["seconds"] for r in full), default=None),
                            "slowest_answer_s": max((r["seconds"] for r in burst if "error" not in r), default=None)}
    print(header("fastresnet serve under load", condition))
    print(f"model: {a.model or 'untrained full-width (random weights)'}; {a.rounds} rounds of {a.clients} clients x "
          f"{a.requests} uploads (32x32 PNG, each distinct), localhost")
    print(f"answered {res['answered']}, errors {res['errors']} {res['error_examples'] or ''}")
    print(f"latency p50 {res['p50_s'] * 1000:.0f} ms, p95 {res['p95_s'] * 1000:.0f} ms, "
          f"max {res['max_s'] * 1000:.0f} ms;"
          f" {res['requests_per_s']:.1f} requests/s over {wall:.1f} s")
    print(f"server resident memory {rss0:.0f} MB after warm-up; after each round: "
          f"{', '.join(f'{m:.0f} MB' for m in rss)} ({rss1 - rss0:+.0f} MB in all)")
    print(f"server temporary folder: {n0} files / {mb0:.1f} MB before, {n1} files / {mb1:.1f} MB after "
          f"(uploads kept {UPLOAD_TTL} s); {left[0]} files once the server stopped (exit {code})")
    if a.burst:
        b = res["burst"]
        print(f"burst: {b['sent']} requests at once, --max-queue {b['max_queue']}: {b['answered']} answered, "
              f"{b['told_queue_full']} told 'Queue is full! Please try again.' (slowest refusal "
              f"{(b['slowest_refusal_s'] or 0) * 1000:.0f} ms), slowest answer {(b['slowest_answer_s'] or 0):.2f} s, "
              f"other errors {b['other_errors'] or 'none'}")
    print(other.report())
    if a.json: Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
