"""A fork server for the tests that start many `fastresnet` processes (the SIGKILL soak, the full disks, the run
folders): one Python process imports fastresnet, fastai and torch once (about 6 s on two busy cores) and forks a
fresh process for each command. Each is a real process: its own pid, signals, files, exit status and working folder,
running `fastresnet.cli.main` from its start; only the imports are inherited, done before any tensor work, so no
thread pool is copied. Tests of what a new interpreter does (the entry point, import-time warnings, a process that
imports only fastai) start one with `subprocess` instead.

    server = ForkServer()
    p = server.run(["train", "--data", ...], cwd=..., env=...)     # .returncode (-SIG if a signal ended it),
    child = server.start([...], point=("train_batch", 6, "SIGSTOP"))  # .stdout, .stderr; or start, signal, wait
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class Child:
    "A forked `fastresnet` process: `pid`, `send_signal`, `wait`."
    def __init__(self, server, pid: int, folder: Path): self.server, self.pid, self.folder = server, pid, folder
    def send_signal(self, sig) -> None: os.kill(self.pid, sig)
    def poll(self): return None if Path(f"/proc/{self.pid}").exists() and _state(self.pid) != "Z" else "ended"

    def wait(self, timeout: float = 600) -> Result:
        "Its exit status (-SIG if a signal ended it) and output; killed with SIGKILL after `timeout` seconds."
        watchdog = threading.Timer(timeout, lambda: os.kill(self.pid, 9))
        watchdog.start()
        try: status = json.loads(self.server._line())["status"]
        finally: watchdog.cancel()
        out, err = ((self.folder / n).read_text(errors="replace") for n in ("stdout", "stderr"))
        for n in ("stdout", "stderr"): (self.folder / n).unlink()
        self.folder.rmdir()
        self.server.busy = False
        return Result(status, out, err)


def _state(pid: int) -> str: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


class ForkServer:
    def __init__(self, env: dict | None = None):
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}   # threads as this process has them
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.busy = False
        assert self._line() == "ready\n", "the fork server did not start"

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line: raise RuntimeError(f"the fork server ended ({self.proc.wait()})")
        return line

    def start(self, argv, point: tuple | None = None, cwd=None, env: dict | None = None) -> Child:
        """Fork `fastresnet ARGV` (in `cwd`, with this process's environment and `env`); `point` = (KIND, N, SIGNAL)
        as for tests/interrupt.py. One child at a time."""
        assert not self.busy, "the fork server runs one command at a time: wait for the last one"
        folder = Path(tempfile.mkdtemp(prefix="forked-"))
        req = {"argv": [str(a) for a in argv], "point": [str(x) for x in point] if point else None,
               "cwd": str(cwd or os.getcwd()), "env": {**os.environ, **(env or {})},
               "stdout": str(folder / "stdout"), "stderr": str(folder / "stderr")}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        self.busy = True
        return Child(self, json.loads(self._line())["pid"], folder)

    def run(self, argv, point=None, cwd=None, env=None, timeout: float = 600) -> Result:
        return self.start(argv, point, cwd, env).wait(timeout)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def _child(req: dict) -> None:
    "In the forked process: its folder, environment and output files, then `fastresnet.cli.main` (never returns)."
    code = 1
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            f = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.stdin = open(0, closefd=False)                      # fresh file objects: none shared with the server
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
        if req["point"]:
            import interrupt
            import signal
            kind, n, sig = req["point"]
            interrupt.install(setattr, kind, int(n), getattr(signal, sig))
        from fastresnet.cli import main
        code = main(req["argv"])
    except SystemExit as e: code = e.code if isinstance(e.code, int) else 1
    except BaseException: traceback.print_exc()
    finally:
        for f in (sys.stdout, sys.stderr):
            try: f.flush()
            except Exception: pass
        os._exit(code)


def _serve() -> None:
    "The server: import what every command imports, then fork one child per request and report how it ended."
    sys.path.insert(0, str(Path(__file__).resolve().parent))     # tests/: interrupt.py
    import importlib
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("fastai.vision.all", "fastresnet.cli", "fastresnet.inference", "fastresnet.learner",
                     "fastresnet.report", "fastresnet.resume", "fastresnet.serve", "fastresnet.train", "interrupt"):
            importlib.import_module(name)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0: _child(req)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
