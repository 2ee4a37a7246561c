"""A careless or hostile user's files and flags (issue 45): nothing outside a run folder is removed, damaged files
are refused (never resumed or served), no pickle is loaded unasked, every help text prints, whatever Pillow raises
is a bad file, and every bound holds. Each test makes the fault for real and failed on d8c03a2."""
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastresnet.cli import build_parser, main
from fastresnet.config import Recipe, UserError
from fastresnet.data import load_image, read_folder

QUIET = dict(log=lambda *a: None)
TINY = ["--epochs", "2", "--bs", "10", "--lr-max", "1e-3", "--no-tta", "--width", "0.25"]


def cli(args, capsys):
    "Exit code and stderr of the command, run in this process; argparse's own exits count as their code."
    try: code = main([str(a) for a in args])
    except SystemExit as e: code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def files_under(folder: Path) -> dict:
    "Every file under `folder` with its bytes: what a command must leave as it was."
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run(trained_run):
    "A finished run (checkpoint kept) to copy and damage: the session's (read only)."
    return trained_run


@pytest.fixture
def copy(run, tmp_path):
    "A copy of the finished run, to damage."
    import shutil
    return Path(shutil.copytree(run, tmp_path / "copy"))


def img(tiny_folder): return tiny_folder / "test" / "cat" / "0003.png"


# ---------------------------------------------------------------- 1. --overwrite replaces only a run folder
def test_overwrite_refuses_the_data_its_parent_and_a_users_folder(tiny_folder, tmp_path, capsys, run):
    import shutil
    data = Path(shutil.copytree(tiny_folder, tmp_path / "parent" / "data"))
    (tmp_path / "parent" / "thesis.txt").write_text("four years of work")
    (tmp_path / "parent" / "sub").mkdir()
    (tmp_path / "parent" / "sub" / "notes.txt").write_text("notes")
    mixed = Path(shutil.copytree(run, tmp_path / "mixed"))  # a run folder a user also keeps a file in
    (mixed / "thesis.txt").write_text("four years of work")
    before = files_under(tmp_path)
    for out in (data, tmp_path / "parent", mixed):
        code, err = cli(["train", "--data", data, "--out", out, "--overwrite", *TINY], capsys)
        assert code == 2 and "--overwrite replaces only a fastresnet run folder" in err and "nothing in it" in err
    assert "thesis.txt" in err
    assert files_under(tmp_path) == before  # not one file removed or changed


def test_overwrite_still_replaces_a_run_folder(copy, tiny_folder, capsys):
    old = json.loads((copy / "run.json").read_text())
    (copy / "models" / "tmpab12cd").mkdir(parents=True)
    (copy / "models" / "tmpab12cd" / "_tmp.pth").write_bytes(b"a range test cut short")  # what lr_find leaves
    code, _ = cli(["train", "--data", tiny_folder, "--out", copy, "--overwrite", *TINY, "--seed", "7"], capsys)
    assert code == 0 and "seed = 7" in (copy / "settings.ini").read_text() and not (copy / "models").exists()
    assert json.loads((copy / "run.json").read_text())["n_train"] == old["n_train"]


# ---------------------------------------------------------------- 2. damaged checkpoints and weights
def _flip(path: Path, offset: int, bit: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def _weight_offset(path: Path) -> int:
    "The file offset of the first byte of the largest tensor record in a torch zip (a conv weight)."
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len


def _stopped(copy: Path) -> Path:
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "status": "stopped"}))
    return copy


@pytest.mark.parametrize("where", ["middle", "exponent"])
def test_a_damaged_checkpoint_is_never_resumed(copy, capsys, where):
    ck = copy / "checkpoint.pth"
    if where == "middle": _flip(ck, ck.stat().st_size // 2, 0)
    else: _flip(ck, _weight_offset(ck) + 40 * 4 + 3, 6)  # float32 40's bit 30: its exponent's top bit
    weights = (copy / "model.safetensors").read_bytes()
    code, err = cli(["train", "--resume", _stopped(copy)], capsys)
    assert code == 2 and "checkpoint.pth is damaged" in err and "CRC-32" in err and "diverged" not in err
    assert (copy / "model.safetensors").read_bytes() == weights  # nothing was trained or exported


def test_a_damaged_weights_file_is_not_used(copy, tiny_folder, capsys):
    w = copy / "model.safetensors"
    _flip(w, w.stat().st_size // 2, 3)
    for args in (["predict", img(tiny_folder), "--model", copy],
                 ["evaluate", "--model", w, "--data", tiny_folder], ["summary", "--model", w]):
        code, err = cli(args, capsys)
        assert code == 2 and "is damaged" in err and "SHA-256" in err, (args, err)


# ---------------------------------------------------------------- 3. every help
@pytest.mark.parametrize("command", sorted(build_parser()._subparsers._group_actions[0].choices) + [None])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_help_prints(command, flag, capsys):
    with pytest.raises(SystemExit) as e: main([command, flag] if command else [flag])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: fastresnet" in out
    if command == "train":  # every setting's flag, with its help
        for f in Recipe.__dataclass_fields__.values():
            assert "--" + f.name.replace("_", "-") in out
        assert "(0.2: 20%)" in " ".join(out.split())  # a help that holds a bare %


# ---------------------------------------------------------------- 4. whatever Pillow raises
def _png() -> bytes:
    buf = BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bad_pngs(folder: Path) -> list[Path]:
    "A PNG whose IHDR length is zeroed, and one whose zTXt chunk inflates to 200 MB (a text bomb)."
    folder.mkdir(parents=True, exist_ok=True)
    raw = bytearray(_png())
    raw[8:12] = bytes(4)
    (folder / "ihdr.png").write_bytes(bytes(raw))
    data = b"k\0\0" + zlib.compress(b"a" * (200 << 20), 9)
    chunk = struct.pack(">I", len(data)) + b"zTXt" + data + struct.pack(">I", zlib.crc32(b"zTXt" + data))
    (folder / "ztxt.png").write_bytes(_png()[:33] + chunk + _png()[33:])
    return [folder / "ihdr.png", folder / "ztxt.png"]


def test_pillows_other_exceptions_are_bad_files_everywhere(run, tiny_folder, tmp_path, capsys):
    import shutil
    data = Path(shutil.copytree(tiny_folder, tmp_path / "data"))
    bad = bad_pngs(data / "train" / "cat")
    code, err = cli(["train", "--data", data, "--out", tmp_path / "r", *TINY], capsys)
    assert code == 2 and "2 image file(s)" in err and "ihdr.png" in err and "ztxt.png" in err
    folder = tmp_path / "predict"
    shutil.copytree(tiny_folder / "test" / "cat", folder)
    bad = bad_pngs(folder)
    code, err = cli(["predict", folder, "--model", run, "--csv", tmp_path / "out.csv"], capsys)
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert code == 1 and len(rows) == 1 + len(list((tiny_folder / "test" / "cat").iterdir()))  # every good image
    assert all(f"{b} is corrupt or not an image (ValueError" in err for b in bad)
    from fastresnet.learner import load_model
    from fastresnet.serve import classify
    for b in bad:
        with pytest.raises(UserError, match=f"{b.name} is corrupt"): classify(load_model(run), str(b))


# ---------------------------------------------------------------- 5. hostile weights-file metadata
HOSTILE_META = {
    "width 1e6": ("recipe", lambda r: json.dumps({**r, "width": 1e6}), "at most 4"),
    "size 1e5": ("recipe", lambda r: json.dumps({**r, "size": 100000}), "at most 512"),
    "width as text": ("recipe", lambda r: json.dumps({**r, "width": "wide"}), "not a float"),
    "recipe not JSON": ("recipe", lambda r: "{width: 1", "not JSON"),
    "recipe a list": ("recipe", lambda r: "[1, 2]", "not a JSON object"),
    "vocab of ints": ("vocab", lambda v: json.dumps(list(range(10))), "class names"),
    "vocab not JSON": ("vocab", lambda v: "cat, dog", "not JSON"),
    "vocab of 10^6": ("vocab", lambda v: json.dumps([str(i) for i in range(10**6)]), "class names"),
    "stats short": ("stats", lambda s: "[[1, 2], [3]]", "3 channels"),
    "stats zero std": ("stats", lambda s: "[[0.5, 0.5, 0.5], [0.2, 0, 0.2]]", "above 0"),
    "other width's tensors": ("recipe", lambda r: json.dumps({**r, "width": 0.5}), "do not make the network"),
}


@pytest.mark.parametrize("case", HOSTILE_META)
def test_hostile_weights_metadata_is_refused_before_anything_is_allocated(run, tmp_path, tiny_folder, capsys, case):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(run / "model.safetensors", framework="pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key, change, match = HOSTILE_META[case]
    meta = {**meta, key: change(json.loads(meta[key]))}
    meta.pop("sha256")  # as a hand-made file would come: the damage check is not what refuses it
    save_file(sd, tmp_path / "evil.safetensors", metadata=meta)
    for args in (["predict", img(tiny_folder), "--model", tmp_path / "evil.safetensors"],
                 ["summary", "--model", tmp_path / "evil.safetensors"]):
        code, err = cli(args, capsys)
        assert code == 2 and "evil.safetensors" in err and match in err, (case, err)


# ---------------------------------------------------------------- 6. damaged run files
@pytest.mark.parametrize("name, text, command", [
    ("final.json", "{", "report"), ("metrics.json", "{", "report"), ("schedule.json", "{", "report"),
    ("final.json", '{"accuracy": "high"}', "report"), ("final.json", "{", "serve"), ("run.json", "[1,2,3]", "resume"),
])
def test_damaged_run_files_are_one_paragraph_naming_the_file(copy, capsys, name, text, command):
    (copy / name).write_text(text)
    args = {"report": ["report", copy], "serve": ["serve", "--model", copy, "--port", "7"],
            "resume": ["train", "--resume", copy]}[command]
    code, err = cli(args, capsys)
    assert code == 2 and f"{copy / name} is damaged" in err and "restore it from a copy" in err


# ---------------------------------------------------------------- 7. mount points, a read-only cache
def _mount(where: Path, *options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0: pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64m",) + options), "tmpfs", str(where)],
                         capture_output=True, text=True)
    if got.returncode: pytest.skip(f"this machine does not allow mounting a tmpfs: {got.stderr.strip()}")


@pytest.fixture
def mounts():
    made = []
    yield made
    for m in reversed(made): subprocess.run(["umount", "-l", str(m)], check=False)


def test_out_a_mount_point_is_a_run_folder(tmp_path, tiny_folder, capsys, mounts):
    vol = tmp_path / "volume"
    _mount(vol)
    mounts.append(vol)
    for more in ([], ["--overwrite"]):  # a new run into the empty volume, then one replacing it in place
        code, err = cli(["train", "--data", tiny_folder, "--out", vol, *TINY, *more], capsys)
        assert code == 0, err
        assert (vol / "model.safetensors").is_file() and os.path.ismount(vol)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "volume"]  # no .volume.new-*, no lock file


def test_a_read_only_cache_never_stops_a_run(tmp_path, tiny_folder, capsys, mounts, monkeypatch):
    ro = tmp_path / "ro"
    _mount(ro, "ro")
    mounts.append(ro)
    monkeypatch.setenv("FASTRESNET_CACHE", str(ro / "cache"))
    code, err = cli(["train", "--data", tiny_folder, "--out", tmp_path / "r", *TINY], capsys)
    assert code == 0 and "Not caching the decoded images" in err


# ---------------------------------------------------------------- 8. bounds
@pytest.mark.parametrize("flags, match", [
    (["--seed", "99999999999999999999"], "at most 4294967295"), (["--width", "1e6"], "at most 4.0"),
    (["--size", "100000"], "at most 512"), (["--epochs", "99999999999999999999"], "at most 10000"),
    (["--epochs", "2_0"], "not a valid int"), (["--lr-max", "1_0"], "not a valid float"),
    (["--subset", "0"], "not a whole number >= 1"), (["--subset", "2_0"], "not a whole number"),
])
def test_out_of_range_values_are_refused(flags, match, tiny_folder, tmp_path, capsys):
    code, err = cli(["train", "--data", tiny_folder, "--out", tmp_path / "r", *flags], capsys)
    assert code == 2 and match in err and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- 9. pixels as they are meant
def test_16_bit_grayscale_is_scaled_and_float_pixels_are_refused(tmp_path):
    v16 = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64  # 0..65472
    Image.fromarray(v16).save(tmp_path / "g16.png")
    with pytest.warns(UserWarning, match="16-bit"): x = load_image(tmp_path / "g16.png")
    want = np.floor(v16 / 257 + 0.5).astype(np.uint8)  # 16 bits to 8: value / 257, rounded
    assert all(np.array_equal(x[c].numpy(), want) for c in range(3))
    Image.fromarray(np.random.rand(32, 32).astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UserError, match="floating-point pixels"): load_image(tmp_path / "f.tif")


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[0, :, 0] = 255  # a red top row
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "phone.png", exif=exif)
    shown = np.rot90(rgb, k=-1)  # the top row becomes the right column
    assert np.array_equal(load_image(tmp_path / "phone.png").permute(1, 2, 0).numpy(), shown)


# ---------------------------------------------------------------- 10. no pickle unasked
class Payload:
    "A pickle that leaves a file behind when it is loaded: proof that its code ran."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (open, (self.marker, "w"))


def test_no_command_unpickles_without_being_asked(tmp_path, tiny_folder, capsys):
    import pickle
    marker = tmp_path / "PWNED"
    (tmp_path / "only_pkl").mkdir()
    for f in (tmp_path / "evil.bin", tmp_path / "only_pkl" / "model.pkl"): f.write_bytes(pickle.dumps(Payload(marker)))
    for model in (tmp_path / "evil.bin", tmp_path / "only_pkl"):
        for args in (["predict", img(tiny_folder), "--model", model], ["evaluate", "--model", model],
                     ["summary", "--model", model], ["serve", "--model", model, "--port", "7"],
                     ["train", "--data", tiny_folder, "--out", tmp_path / "ft", "--init", model, *TINY]):
            code, err = cli(args, capsys)
            assert code == 2 and "--allow-pickle" in err and not marker.exists(), (args, err)
    cli(["predict", img(tiny_folder), "--model", tmp_path / "evil.bin", "--allow-pickle"], capsys)
    assert marker.exists()  # the opt-in does unpickle: the check above could see it


# ---------------------------------------------------------------- 11. smaller
def test_links_and_folders_in_a_class_folder_are_counted(tiny_folder, tmp_path):
    import shutil
    data = Path(shutil.copytree(tiny_folder, tmp_path / "data"))
    (data / "train" / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (data / "train" / "cat" / "x.png").mkdir()
    with pytest.warns(UserWarning, match=r"cat: skipping 1 folder\(s\) \(x\.png/\), 1 broken link\(s\) or entries that "
                      r"are not files \(gone\.png\)"): read_folder(data)


def test_a_run_whose_checkpoint_was_deleted_says_so(copy, capsys):
    (copy / "checkpoint.pth").unlink()
    code, err = cli(["train", "--resume", _stopped(copy)], capsys)
    assert code == 2 and "had completed 2 epoch(s)" in err and "checkpoint.pth is gone" in err


def test_report_tables_hold_any_class_name_and_name_the_download(copy):
    from fastresnet.report import write_report
    final = json.loads((copy / "final.json").read_text())
    names = ["ca\nt" if c == "cat" else "a|b" if c == "dog" else c for c in final["vocab"]]
    final["per_class"] = dict(zip(names, final["per_class"].values()))
    (copy / "final.json").write_text(json.dumps({**final, "vocab": names}))
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "data": None}))
    text = write_report(copy).read_text()
    table = text[text.index("| class | accuracy |"):].split("\n\n")[0].splitlines()
    assert len(table) == 2 + len(names) and all(line.count(" | ") == 1 for line in table[2:])
    assert "data: CIFAR-10, downloaded by fastai" in text and "None" not in text


@pytest.mark.slow
def test_predict_csv_stopped_by_sigterm_says_where_the_rows_are(run, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    png = _png()
    for i in range(6000): (folder / f"{i:05d}.png").write_bytes(png)
    out = tmp_path / "out.csv"
    p = subprocess.Popen([sys.executable, "-m", "fastresnet.cli", "predict", str(folder), "--model", str(run),
                          "--csv", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial, deadline = tmp_path / "out.csv.partial", time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if partial.exists() and partial.read_text().count("\n") > 1: break  # a batch is written, more to come
        time.sleep(0.05)
    p.send_signal(signal.SIGSTOP)  # held at a real moment of the run, then stopped as a service manager does
    p.send_signal(signal.SIGTERM)
    p.send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=120)
    done = partial.read_text().count("\n") - 1
    assert p.returncode == 130 and f"the {done} predictions made so far are in {partial}" in err
    assert 0 < done < 6000 and not out.exists()
