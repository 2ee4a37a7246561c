"""Attack the `fastresnet` command as a careless or hostile user would, and print a matrix of what it did.

Everything is made in a temporary folder: tiny CIFAR-shaped data in fastai's layout, one small trained run folder
(copied for every case that damages it), hostile images, model files and pickles. Each case runs the command as a
real subprocess (stdin from /dev/null, a time limit, its address space capped) and is classified as

    exit2      exit code 2, a `fastresnet...: error:` paragraph on stderr, no Traceback
    traceback  a `Traceback` on stderr (whatever the exit code)
    ok         exit code 0
    other(N)   any other exit code N (negative: killed by signal -N; `timeout`: over the limit)

and checked for two invariants: FILES LOST (every file under the case's user area, with its size and sha256, before
and after: the count missing or changed) and PICKLE RAN (pickles handed to the command create a marker file when
unpickled: the count of markers that appeared).

    python benchmarks/hostile_matrix.py                       # this checkout (sys.executable -m fastresnet.cli)
    PYTHONPATH=/other/checkout python benchmarks/hostile_matrix.py --cmd "python -m fastresnet.cli"
    python benchmarks/hostile_matrix.py --only 5,10           # cases whose name starts with 5 or 10

Exit status 1 if any case printed a traceback, lost a user file or ran a pickle; else 0.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
TRAIN_FLAGS = ["--epochs", "2", "--width", "0.125", "--bs", "64", "--lr-max", "0.003", "--no-tta"]
SUBCOMMANDS = ["train", "lr-find", "evaluate", "predict", "serve", "report", "summary"]
ERROR_RE = re.compile(r"^fastresnet(?: [a-z-]+)?: error:", re.M)  # ours (`fastresnet: error:`) or argparse's


# ---------------------------------------------------------------- the pickle payload
class Evil:
    "Unpickling this creates MARKER (no shell): what a hostile model.pkl would do, harmlessly."
    def __init__(self, marker: str): self.marker = marker
    def __reduce__(self): return (open, (self.marker, "w"))


def write_raw_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Evil(str(marker)), protocol=2))


def helper(name: str, *args) -> str:
    """Run a set-up step that needs torch in a child process: this process stays small, since a child's max RSS
    (reported per case) starts from its parent's at the fork."""
    return subprocess.run([sys.executable, __file__, "--helper", name, *map(str, args)], check=True,
                          capture_output=True, text=True).stdout.strip()


def write_torch_pickle(path: Path, marker: Path) -> None:
    "A torch.save zip (the format of fastai's model.pkl) whose data.pkl runs the payload."
    helper("torch-pickle", path, marker)


def _torch_pickle(path: str, marker: str) -> None:
    import torch
    torch.save(Evil(marker), path)


# ---------------------------------------------------------------- files and images
def png_bytes(arr: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def rand_img(rng, size=32) -> np.ndarray: return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_data(root: Path, rng, n_train=20, n_test=5) -> None:
    for split, n in (("train", n_train), ("test", n_test)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n): Image.fromarray(rand_img(rng)).save(d / f"{i}.png")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_ihdr_len_zero(rng) -> bytes:
    b = bytearray(png_bytes(rand_img(rng)))
    b[8:12] = b"\0\0\0\0"  # IHDR's length field
    return bytes(b)


def png_text_bomb(rng, mb: int = 101) -> bytes:
    "A valid 32x32 PNG with a zTXt chunk (before IDAT) that inflates to `mb` MB of zeros; CRC correct."
    co, zeros, comp = zlib.compressobj(9), bytes(2**20), []
    for _ in range(mb): comp.append(co.compress(zeros))
    comp.append(co.flush())
    ztxt = chunk(b"zTXt", b"Comment\0\0" + b"".join(comp))
    b = png_bytes(rand_img(rng))
    return b[:33] + ztxt + b[33:]  # signature (8) + IHDR chunk (25), then the bomb


def flip_bit(path: Path, offset: int, mask: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= mask
    path.write_bytes(bytes(b))


def flip_exponent_bit(ck: Path) -> str:
    """Flip bit 30 (an exponent bit) of the aligned float32 word in the middle of the checkpoint's largest model
    weight, found by its raw bytes in the file. Returns what changed."""
    return helper("flip-exponent", ck)


def _flip_exponent_bit(ck: Path) -> str:
    import torch
    sd = torch.load(ck, map_location="cpu", weights_only=True)["model"]
    name, t = max(((k, v) for k, v in sd.items() if v.dtype == torch.float32), key=lambda kv: kv[1].numel())
    raw, data = t.contiguous().numpy().tobytes(), ck.read_bytes()
    start = data.find(raw)
    if start < 0:  # not stored contiguously: fall back to the middle of the file
        start, raw = 0, data
    word = (start + len(raw) // 2) & ~3
    before = struct.unpack("<f", data[word:word + 4])[0]
    flip_bit(ck, word + 3, 0x40)  # little-endian: bit 30 is bit 6 of the word's last byte
    after = struct.unpack("<f", ck.read_bytes()[word:word + 4])[0]
    return f"{name}@{word}: {before:.3g}->{after:.3g}"


def snapshot(paths: list[Path]) -> dict:
    "path -> (kind, size, sha256 / link target) for every file, link and folder under `paths`."
    out = {}
    def add(p: Path):
        if p.is_symlink(): out[str(p)] = ("link", 0, os.readlink(p))
        elif p.is_dir(): out[str(p)] = ("dir", 0, "")
        elif p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for blk in iter(lambda: f.read(1 << 20), b""): h.update(blk)
            out[str(p)] = ("file", p.stat().st_size, h.hexdigest())
    for root in paths:
        root = Path(root)
        if not (root.exists() or root.is_symlink()): continue
        add(root)
        if root.is_dir() and not root.is_symlink():
            for dirpath, dirnames, filenames in os.walk(root):
                for n in dirnames + filenames: add(Path(dirpath) / n)
    return out


def lost(before: dict, after: dict) -> int:
    "Entries missing or changed (folders: only missing)."
    return sum(1 for k, v in before.items() if after.get(k) != v)


# ---------------------------------------------------------------- running one case
@dataclass
class Result:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float | None
    timed_out: bool = False


@dataclass
class Case:
    name: str
    args: list[str]
    expected: str = "exit2"               # exit2 | ok | other(1) | any
    user: list[Path] = field(default_factory=list)     # the user area: files that must survive
    markers: list[Path] = field(default_factory=list)  # created if a pickle ran
    env: dict = field(default_factory=dict)
    check: object = None                  # fn(Result) -> (ok: bool, note: str), run after classification
    after: object = None                  # fn() -> str: a note, and clean-up (e.g. unmount)
    sigterm_after: float | None = None    # send SIGTERM this many seconds after the start
    sigterm_when: object = None           # ... or as soon as fn() is true (checked every 0.1 s)
    detail: str = ""                      # what the set-up did (e.g. which bit was flipped)


def classify(r: Result) -> str:
    if r.timed_out: return "timeout"
    if "Traceback" in r.stderr: return "traceback"
    if r.rc == 2 and ERROR_RE.search(r.stderr): return "exit2"
    if r.rc == 0: return "ok"
    return f"other({r.rc})"


def _limit(as_bytes: int):
    def fn():
        if as_bytes: resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    return fn


def run_cmd(prefix: list[str], args: list[str], cwd: Path, env: dict, timeout: float, mem_gb: float,
            sigterm_after: float | None = None, sigterm_when=None) -> Result:
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    t0 = time.time()
    p = subprocess.Popen(prefix + args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f,
                         start_new_session=True, preexec_fn=_limit(int(mem_gb * 2**30)))
    status = ru = None
    timed_out, termed = False, False
    while True:
        pid, st, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            status, ru = st, usage
            break
        now = time.time() - t0
        if not termed and ((sigterm_after is not None and now >= sigterm_after) or (sigterm_when and sigterm_when())):
            os.kill(p.pid, signal.SIGTERM)
            termed = True
        if now > timeout:
            timed_out = True
            with_pg = os.getpgid(p.pid)
            os.killpg(with_pg, signal.SIGKILL)
            _, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    out_f.seek(0), err_f.seek(0)
    return Result(p.returncode, out_f.read().decode("utf-8", "replace"), err_f.read().decode("utf-8", "replace"),
                  time.time() - t0, ru.ru_maxrss / 1024 if ru else None, timed_out)


def note_of(got: str, r: Result) -> str:
    "One line saying what happened: the exception, the error paragraph, or the last thing said."
    err = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
    if got == "traceback":  # the exception line: the last unindented line after the last Traceback
        tail = r.stderr[r.stderr.rfind("Traceback"):].splitlines()[1:]
        return next((ln for ln in reversed(tail) if ln.strip() and not ln[0].isspace()), err[-1] if err else "")
    if got == "exit2":
        m = ERROR_RE.search(r.stderr)
        return " ".join(r.stderr[m.start():].split())
    out = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    return (err[-1] if err else "") or (out[-1] if out else "")


def short(s: str, n: int) -> str: return s if len(s) <= n else s[:n - 3] + "..."


# ---------------------------------------------------------------- the cases
def build_cases(T: Path, DATA: Path, RUN: Path, rng, mounts: list) -> list[Case]:
    "Set up every case's files in T and return the cases (in order)."
    cases: list[Case] = []
    IMG = DATA / "test" / "cat" / "0.png"

    def d(name: str) -> Path:
        p = T / "cases" / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def data_copy(where: Path) -> Path:
        shutil.copytree(DATA, where)
        return where

    def run_copy(where: Path) -> Path:
        shutil.copytree(RUN, where, symlinks=True)
        return where

    def train(data, out, *extra):
        return ["train", "--data", str(data), "--out", str(out), *TRAIN_FLAGS, *extra]

    # 1. --overwrite on folders that are not runs
    w = d("1a")
    dc = data_copy(w / "data")
    cases.append(Case("1a --out=DATA --overwrite", train(dc, dc, "--overwrite"), user=[dc]))
    w = d("1b")
    dc = data_copy(w / "parent" / "data")
    (w / "parent" / "thesis.txt").write_text("four years of work\n")
    cases.append(Case("1b --out=DATA/.. --overwrite", train(dc, w / "parent", "--overwrite"), user=[w / "parent"]))
    w = d("1c")
    (w / "mine" / "sub").mkdir(parents=True)
    (w / "mine" / "thesis.txt").write_text("four years of work\n")
    (w / "mine" / "sub" / "notes.txt").write_text("notes\n")
    cases.append(Case("1c --out=thesis dir --overwrite", train(DATA, w / "mine", "--overwrite"), user=[w / "mine"]))

    # 2. corrupted checkpoint / weights
    w = d("2a")
    rc = run_copy(w / "run")
    ck = rc / "checkpoint.pth"
    mid = ck.stat().st_size // 2
    flip_bit(ck, mid, 0x40)
    cases.append(Case("2a ckpt mid-bit --resume", ["train", "--resume", str(rc)], detail=f"byte {mid} ^0x40"))
    w = d("2b")
    rc = run_copy(w / "run")
    cases.append(Case("2b ckpt exponent bit --resume", ["train", "--resume", str(rc)],
                      detail=flip_exponent_bit(rc / "checkpoint.pth")))
    for tag, cmd in (("2c", "predict"), ("2d", "evaluate")):
        w = d(tag)
        rc = run_copy(w / "run")
        st = rc / "model.safetensors"
        mid = st.stat().st_size // 2
        flip_bit(st, mid, 0x40)
        args = ["predict", str(IMG), "--model", str(rc)] if cmd == "predict" else \
               ["evaluate", "--model", str(rc), "--data", str(DATA)]
        cases.append(Case(f"{tag} safetensors mid-bit {cmd}", args, detail=f"byte {mid} ^0x40"))

    # 3. help everywhere
    def usage(r):
        first = (r.stdout.splitlines() or [""])[0]
        return first.startswith("usage:"), f"stdout: {first.strip()}"
    cases.append(Case("3 fastresnet --help", ["--help"], expected="ok", check=usage))
    cases.append(Case("3 fastresnet -h", ["-h"], expected="ok", check=usage))
    for s in SUBCOMMANDS:
        for h in ("--help", "-h"): cases.append(Case(f"3 {s} {h}", [s, h], expected="ok", check=usage))

    # 4. images Pillow rejects with unusual exceptions
    for tag, what, blob in (("4a", "IHDR len 0", png_ihdr_len_zero(rng)), ("4b", "zTXt bomb", png_text_bomb(rng))):
        w = d(tag + "-train")
        dc = data_copy(w / "data")
        (dc / "train" / "cat" / "bad.png").write_bytes(blob)
        cases.append(Case(f"{tag} {what}: train", train(dc, w / "run"), user=[dc]))
        w = d(tag + "-predict")
        imgs = w / "imgs"
        imgs.mkdir()
        good = 6
        for i in range(good): Image.fromarray(rand_img(rng)).save(imgs / f"good{i}.png")
        (imgs / "bad.png").write_bytes(blob)
        csv = w / "out.csv"
        def rows_check(r, csv=csv, good=good):
            if not csv.exists():
                part = csv.with_name(csv.name + ".partial")
                return False, f"no out.csv{' (a .partial is left)' if part.exists() else ''}"
            n = sum(1 for ln in csv.read_text().splitlines()[1:] if ln.strip())
            return n == good, f"csv rows {n}/{good}"
        cases.append(Case(f"{tag} {what}: predict dir --csv", ["predict", str(imgs), "--model", str(RUN), "--csv",
                                                                str(csv)], expected="other(1)", user=[imgs],
                          check=rows_check))
        w = d(tag + "-evaluate")
        dc = data_copy(w / "data")
        (dc / "test" / "cat" / "bad.png").write_bytes(blob)
        cases.append(Case(f"{tag} {what}: evaluate", ["evaluate", "--model", str(RUN), "--data", str(dc)], user=[dc]))

    # 5. hostile model.safetensors metadata
    from safetensors import safe_open
    from safetensors.numpy import save_file
    with safe_open(RUN / "model.safetensors", framework="np") as f:
        meta0, sd0 = dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    recipe0 = json.loads(meta0["recipe"])
    hostile = {
        "5a recipe width 1e6": {"recipe": json.dumps({**recipe0, "width": 1e6})},
        "5b recipe size 100000": {"recipe": json.dumps({**recipe0, "size": 100000})},
        "5c vocab ints": {"vocab": json.dumps(list(range(10)))},
        "5d vocab not JSON": {"vocab": "airplane,automobile,bird"},
        "5e stats [[1,2],[3]]": {"stats": json.dumps([[1, 2], [3]])},
        "5f stats zero std": {"stats": json.dumps([[0.49, 0.48, 0.45], [0.0, 0.24, 0.26]])},
        "5g recipe not JSON": {"recipe": "{width: 0.125"},
        "5h recipe JSON list": {"recipe": json.dumps([1, 2, 3])},
    }
    for name, change in hostile.items():
        w = d(name.split()[0])
        file = w / "model.safetensors"
        save_file(sd0, str(file), metadata={**meta0, **change})
        cases.append(Case(f"{name}: predict", ["predict", str(IMG), "--model", str(file)]))
        cases.append(Case(f"{name}: summary", ["summary", "--model", str(file)]))

    # 6. damaged run files
    for tag, fname, text, args in (("6a", "final.json", "{\n", "report"), ("6b", "metrics.json", "{\n", "report"),
                                   ("6c", "schedule.json", "{\n", "report"), ("6d", "run.json", "[1,2,3]\n", "resume")):
        w = d(tag)
        rc = run_copy(w / "run")
        (rc / fname).write_text(text)
        cmd = ["report", str(rc)] if args == "report" else ["train", "--resume", str(rc)]
        cases.append(Case(f"{tag} {fname}={text.strip()!r} {args}", cmd))

    # 7. mount points
    if os.geteuid() != 0:
        print("skipping 7 (mount points, read-only cache): not root", flush=True)
    else:
        def mount(where: Path, options: str, what: str) -> bool:
            "A tmpfs at `where` (made empty), or a printed reason why not."
            where.mkdir()
            ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
            if ok.returncode: print(f"skipping {what}: mount failed: {ok.stderr.decode().strip()}", flush=True)
            else: mounts.append(where)
            return not ok.returncode

        w = d("7a")
        mnt = w / "mnt"
        if mount(mnt, "size=64m", "7a (--out a mount point)"):
            def after_7a(mnt=mnt, w=w):
                left = [p.name for p in w.iterdir() if p.name.startswith(f".{mnt.name}.")]
                subprocess.run(["umount", str(mnt)], capture_output=True)
                mounts.remove(mnt)
                return f"left beside it: {', '.join(left)}" if left else "nothing left beside it"
            cases.append(Case("7a --out a tmpfs mount point", train(DATA, mnt), expected="ok", after=after_7a))
        w = d("7b")
        ro = w / "ro"
        if mount(ro, "ro,size=1m", "7b (read-only cache)"):
            def after_7b(ro=ro):
                subprocess.run(["umount", str(ro)], capture_output=True)
                mounts.remove(ro)
                return ""
            dc = data_copy(w / "data")  # a path no cache has seen
            cases.append(Case("7b FASTRESNET_CACHE read-only", train(dc, w / "run"), expected="ok", user=[dc],
                              env={"FASTRESNET_CACHE": str(ro / "cache")}, after=after_7b))

    # 8. unbounded values
    for tag, flag, value in (("8a", "--seed", "99999999999999999999"), ("8b", "--width", "1e6"),
                             ("8c", "--size", "100000"), ("8d", "--epochs", "99999999999999999999"),
                             ("8e", "--epochs", "2_0"), ("8f", "--subset", "0")):
        w = d(tag)
        args = train(DATA, w / "run")
        if flag in args: args[args.index(flag) + 1] = value
        else: args += [flag, value]
        cases.append(Case(f"{tag} {flag} {value}", args))

    # 9. image modes the model never saw
    w = d("9")
    i16 = w / "gray16.png"
    Image.fromarray(np.full((32, 32), 30000, np.uint16) + rng.integers(0, 500, (32, 32)).astype(np.uint16)).save(i16)
    ftif = w / "float.tif"
    Image.fromarray(rng.random((32, 32), dtype=np.float32), mode="F").save(ftif)
    def show(r):  # exit 0 with a note, or refused: either is fine; say what happened
        words = " | ".join(ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip())
        return True, short(words, 160)
    with Image.open(i16) as im1, Image.open(ftif) as im2: modes = im1.mode, im2.mode
    cases.append(Case(f"9a 16-bit gray PNG ({modes[0]}) predict", ["predict", str(i16), "--model", str(RUN)],
                      expected="ok|exit2|other(1)", user=[i16], check=show))
    cases.append(Case(f"9b float TIFF ({modes[1]}) predict", ["predict", str(ftif), "--model", str(RUN)],
                      expected="ok|exit2|other(1)", user=[ftif], check=show))

    # 10. pickles
    mk = T / "markers"
    mk.mkdir(exist_ok=True)
    w = d("10a")
    m = mk / "10a-raw"
    write_raw_pickle(w / "evil.bin", m)
    cases.append(Case("10a predict --model evil.bin (raw pickle)",
                      ["predict", str(IMG), "--model", str(w / "evil.bin")], markers=[m]))
    m = mk / "10a-torch"
    write_torch_pickle(w / "evil-torch.bin", m)
    cases.append(Case("10a predict --model evil.bin (torch zip)", ["predict", str(IMG), "--model",
                                                                   str(w / "evil-torch.bin")], markers=[m]))
    for cmd in ("predict", "evaluate", "summary"):
        w = d(f"10b-{cmd}")
        m = mk / f"10b-{cmd}"
        (w / "run").mkdir()
        write_torch_pickle(w / "run" / "model.pkl", m)
        args = {"predict": ["predict", str(IMG), "--model", str(w / "run")],
                "evaluate": ["evaluate", "--model", str(w / "run"), "--data", str(DATA)],
                "summary": ["summary", "--model", str(w / "run")]}[cmd]
        cases.append(Case(f"10b {cmd} --model DIR/model.pkl only", args, markers=[m]))
    w = d("10c")
    m = mk / "10c"
    write_torch_pickle(w / "evil.pkl", m)
    cases.append(Case("10c train --init evil.pkl", train(DATA, w / "run", "--init", str(w / "evil.pkl")), markers=[m]))

    # 11. odd entries, a lost checkpoint, an interrupted predict
    w = d("11a")
    dc = data_copy(w / "data")
    os.symlink(w / "nowhere.png", dc / "train" / "cat" / "dangling.png")
    (dc / "train" / "dog" / "x.png").mkdir()
    def mentions(r):
        said = [n for n in ("dangling.png", "x.png") if n in r.stderr]
        return len(said) == 2, f"warning names: {', '.join(said) or 'neither'}"
    cases.append(Case("11a dangling link + dir x.png: train", train(dc, w / "run"), expected="ok", user=[dc],
                      check=mentions))
    w = d("11b")
    rc = run_copy(w / "run")
    (rc / "checkpoint.pth").unlink()
    info = json.loads((rc / "run.json").read_text())
    (rc / "run.json").write_text(json.dumps({**info, "status": "stopped"}, indent=2))
    cases.append(Case("11b no checkpoint, status stopped: --resume", ["train", "--resume", str(rc)],
                      expected="ok|exit2", check=lambda r: (True, short(note_of(classify(r), r), 160))))
    w = d("11c")
    many = w / "imgs"
    many.mkdir()
    for i in range(3000): Image.fromarray(rand_img(rng)).save(many / f"{i:04d}.png")
    for tag, when, label in (("11c", dict(sigterm_after=2.0), "after 2 s"),
                             ("11d", None, "once out.csv.partial exists")):
        csv = w / f"out-{tag}.csv"
        extra = when or dict(sigterm_when=lambda c=csv: c.with_name(c.name + ".partial").exists())
        def term_check(r, csv=csv):
            part = csv.with_name(csv.name + ".partial")
            rows = (sum(1 for _ in part.open()) - 1) if part.exists() else None
            last = next((ln for ln in reversed(r.stderr.splitlines()) if ln.strip()), "")
            return True, (f"rc {r.rc}; out.csv {'exists' if csv.exists() else 'absent'}; .partial "
                          f"{'absent' if rows is None else f'{rows} rows'}; stderr: {short(last.strip(), 90)!r}")
        cases.append(Case(f"{tag} SIGTERM predict 3000 imgs {label}", ["predict", str(many), "--model", str(RUN),
                                                                        "--csv", str(csv)],
                          expected="any", user=[many], check=term_check, **extra))
    return cases


# ---------------------------------------------------------------- main
def main() -> int:
    if sys.argv[1:2] == ["--helper"]:
        name, args = sys.argv[2], sys.argv[3:]
        if name == "torch-pickle": _torch_pickle(*args)
        elif name == "flip-exponent": print(_flip_exponent_bit(Path(args[0])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cmd", default=None, help="command prefix (default: the running python -m fastresnet.cli)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per case (default 300)")
    ap.add_argument("--mem-gb", type=float, default=6, help="address-space cap per case, GB (0: none; default 6)")
    ap.add_argument("--only", default=None, help="comma-separated prefixes of the case names to run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    a = ap.parse_args()
    prefix = shlex.split(a.cmd) if a.cmd else [sys.executable, "-m", "fastresnet.cli"]
    t_start = time.time()
    T = Path(tempfile.mkdtemp(prefix="hostile-matrix-"))
    mounts: list[Path] = []
    env0 = {**os.environ, "FASTRESNET_CACHE": str(T / "cache"), "PYTHONUNBUFFERED": "1"}
    rng = np.random.default_rng(0)
    try:
        DATA, RUN = T / "DATA", T / "RUN"
        make_data(DATA, rng)
        print(f"temporary folder: {T}\ncommand: {shlex.join(prefix)}", flush=True)
        r = run_cmd(prefix, ["train", "--data", str(DATA), "--out", str(RUN), *TRAIN_FLAGS], T, env0, a.timeout,
                    a.mem_gb)
        if r.rc != 0 or not (RUN / "model.safetensors").is_file():
            print(f"the reference run failed (rc {r.rc}):\n{r.stderr[-3000:]}", file=sys.stderr)
            return 1
        print(f"reference run: {RUN} ({r.seconds:.0f} s)", flush=True)
        shutil.copytree(DATA, T / "DATA.pristine")
        shutil.copytree(RUN, T / "RUN.pristine")
        data_snap, run_snap = snapshot([DATA]), snapshot([RUN])
        cases = build_cases(T, DATA, RUN, rng, mounts)
        if a.only:  # "5" selects 5a..5h, "2b" selects 2b alone
            sel = {x.strip() for x in a.only.split(",")}
            cases = [c for c in cases if c.name.split()[0] in sel or re.match(r"\d+", c.name).group() in sel]
        print(f"set-up: {time.time() - t_start:.0f} s; {len(cases)} cases\n", flush=True)

        W = 44
        head = f"{'case':<{W}} {'expected':<17} {'got':<11} {'lost':>4} {'pickle':>6} {'rssMB':>6} {'sec':>5}  note"
        print(head + "\n" + "-" * len(head), flush=True)
        totals = dict(tried=0, exit2=0, traceback=0, lost=0, pickle=0, unexpected=0, timeout=0)
        for c in cases:
            before = snapshot(c.user + [DATA])
            for m in c.markers: m.unlink(missing_ok=True)
            r = run_cmd(prefix, c.args, T, {**env0, **c.env}, a.timeout, a.mem_gb, c.sigterm_after, c.sigterm_when)
            got = classify(r)
            n_lost = lost(before, snapshot(c.user + [DATA]))
            n_pickle = sum(m.exists() for m in c.markers)
            note = note_of(got, r)
            ok_row = c.expected == "any" or got in c.expected.split("|")
            if c.check:
                good, extra = c.check(r)
                ok_row = ok_row and good
                note = extra if c.name.startswith(("3 ", "9", "11b", "11c", "11d")) else f"{extra}; {note}"
            if c.after:
                more = c.after()
                if more: note = f"{more}; {note}"
            if c.detail: note = f"[{c.detail}] {note}"
            if snapshot([DATA]) != data_snap:  # a case destroyed the shared data: put it back for the others
                shutil.rmtree(DATA, ignore_errors=True)
                shutil.copytree(T / "DATA.pristine", DATA)
                note = f"SHARED DATA DAMAGED, restored; {note}"
            if snapshot([RUN]) != run_snap:
                shutil.rmtree(RUN, ignore_errors=True)
                shutil.copytree(T / "RUN.pristine", RUN)
                note = f"REFERENCE RUN CHANGED, restored; {note}"
            totals["tried"] += 1
            totals["exit2"] += got == "exit2"
            totals["traceback"] += got == "traceback"
            totals["timeout"] += got == "timeout"
            totals["lost"] += n_lost
            totals["pickle"] += n_pickle
            totals["unexpected"] += not ok_row
            rss = f"{r.max_rss_mb:.0f}" if r.max_rss_mb else "-"
            flag = " " if ok_row else "!"
            print(f"{short(c.name, W):<{W}} {c.expected:<17} {got + flag:<11} {n_lost:>4} {n_pickle:>6} {rss:>6} "
                  f"{r.seconds:>5.1f}  {short(note, 170)}", flush=True)

        print(f"\ncases tried:                               {totals['tried']}")
        print(f"exits 2 with a paragraph:                  {totals['exit2']}")
        print(f"tracebacks (goal 0):                       {totals['traceback']}")
        print(f"files lost outside run folders (goal 0):   {totals['lost']}")
        print(f"pickles run without the opt-in (goal 0):   {totals['pickle']}")
        print(f"rows not as expected (marked !):           {totals['unexpected']}")
        print(f"timeouts ({a.timeout:.0f} s):                           {totals['timeout']}")
        print(f"total time: {time.time() - t_start:.0f} s")
        return 1 if totals["traceback"] or totals["lost"] or totals["pickle"] else 0
    finally:
        for m in list(mounts): subprocess.run(["umount", str(m)], capture_output=True)
        if a.keep: print(f"kept {T}")
        else: shutil.rmtree(T, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
