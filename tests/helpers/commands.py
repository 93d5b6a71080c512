"""Running the commands as a user does: train.py in this process or a new one, a free port for
launchers, and any command's `--help` with the heavy libraries it imported."""
from __future__ import annotations

import configparser
import importlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
# fp32 unless a test says otherwise: the CPU precision probe (tests/test_precision_probe.py) would time
# each new model and batch shape once more
FP32 = ["--mixed-precision", "no"]
TINY_TRAIN = ["--no-pretrained", "--img-size", "32", "--batch-size", "32", "--no-progress",
              "--report-to", "none", *FP32]
# what `--help` must not import: each costs seconds before the first line
HEAVY_LIBRARIES = ("accelerate", "datasets", "timm", "torch")


def run_cli(script: str, *args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run train.py / ensemble.py exactly as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def reset_accelerate() -> None:
    """Accelerate keeps its state per process: an in-process run must neither see nor leave one."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def in_process(main: Callable[[list[str]], int], name: str, argv: list[str]) -> subprocess.CompletedProcess:
    """A command's entry point (`main(argv)`) in this process, its output and exit code captured: the
    same code as the command without paying a new interpreter's imports (~4 s) on every call."""
    stdout, stderr = io.StringIO(), io.StringIO()
    reset_accelerate()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            reset_accelerate()
    return subprocess.CompletedProcess([name, *argv], code, stdout.getvalue(), stderr.getvalue())


def train_in_process(argv: list[str]) -> subprocess.CompletedProcess:
    """train.py's own entry point (`train_main`) in this process."""
    from cifar10_levels.cli.train import train_main

    return in_process(train_main, "train.py", argv)


def console_script_in_process(name: str, *args: object) -> subprocess.CompletedProcess:
    """`NAME ARGS` (a console script of setup.cfg) through its entry point in this process."""
    module, _, function = console_scripts()[name].partition(":")
    return in_process(getattr(importlib.import_module(module), function), name, [str(a) for a in args])


def train(dataset: Path, out: Path, *args: str, env: dict | None = None, check: bool = True,
          new_process: bool = False, probe_precision: bool = False) -> subprocess.CompletedProcess:
    """A tiny training run: in this process, or as the real command where the environment is part of
    the test (`env`) or `new_process` asks for it; `probe_precision`: no --mixed-precision, so the run
    measures its precision as a user's run on a CPU does."""
    tiny = [a for a in TINY_TRAIN if a not in FP32] if probe_precision else TINY_TRAIN
    argv = ["--dataset", dataset, "--output-dir", out, *tiny, *args]
    if env is None and not new_process:
        result = train_in_process([str(a) for a in argv])
    else:
        result = run_cli("train.py", *argv, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """An exit-2 refusal: one `error:` line on stderr, no traceback, naming each of `words`."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def read_results(out: Path) -> dict:
    """The results.json of the one run under an output directory."""
    (results,) = out.glob("*/results.json")
    return json.loads(results.read_text())


def start_train(dataset: Path, out: Path, *args: str) -> subprocess.Popen:
    """train.py in a new process that the test can signal while it runs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--dataset", str(dataset),
                             "--output-dir", str(out), *TINY_TRAIN, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def signal_trees(procs: list[subprocess.Popen], sig: int) -> None:
    """`sig` to each running process and to all its descendants (a launcher's workers too)."""
    import psutil

    for proc in procs:
        if proc.poll() is not None:
            continue
        try:
            parent = psutil.Process(proc.pid)
            tree = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in tree:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass


def stop_when(procs: subprocess.Popen | list[subprocess.Popen], condition: Callable[[], object],
              timeout: float = 600, slice_s: float = 0.002) -> None:
    """Run the processes in short slices (SIGCONT, then SIGSTOP, each with its descendants) until
    `condition()` holds while they are stopped, and leave them stopped there: the test signals
    processes whose progress it has seen, however loaded the machine (`signal_trees(procs,
    signal.SIGCONT)` lets them go on)."""
    procs = [procs] if isinstance(procs, subprocess.Popen) else procs
    deadline = time.monotonic() + timeout
    while True:
        signal_trees(procs, signal.SIGSTOP)
        if condition():
            return
        ended = [proc for proc in procs if proc.poll() is not None]
        if ended or time.monotonic() > deadline:
            for proc in procs:
                proc.kill()
            output = "\n".join(proc.stdout.read() if proc.stdout else "" for proc in ended)
            raise AssertionError(f"a process ended first:\n{output}" if ended else "timed out")
        signal_trees(procs, signal.SIGCONT)
        time.sleep(slice_s)


def free_port() -> int:
    """A port no other run holds, for a launcher's rendezvous (29500 may be taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def console_scripts() -> dict[str, str]:
    """setup.cfg's console scripts: name -> 'module:function'."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


@dataclass
class HelpRun:
    returncode: int
    stdout: str
    stderr: str
    heavy: list[str] | None  # the HEAVY_LIBRARIES it imported; None: it crashed before saying


def command_help(kind: str, target: str, name: str | None = None) -> HelpRun:
    """`name --help` in a new interpreter, as a user types it: kind "entry" (a console script's
    'module:function'), "script" (train.py at the root) or "module" (`python -m target`)."""
    module, _, function = target.partition(":")
    run = {"entry": f"from {module} import {function}; sys.exit({function}())",
           "script": f"runpy.run_path({str(ROOT / target)!r}, run_name='__main__')",
           "module": f"runpy.run_module({target!r}, run_name='__main__', alter_sys=True)"}[kind]
    code = (f"import json, runpy, sys\nsys.argv = [{name or target!r}, '--help']\ncode = 0\n"
            f"try:\n    {run}\nexcept SystemExit as exit_:\n    code = exit_.code\n"
            f"heavy = sorted(set({list(HEAVY_LIBRARIES)!r}) & set(sys.modules))\n"
            "print('heavy imports:', json.dumps(heavy), file=sys.stderr)\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    *lines, last = done.stderr.splitlines() or [""]
    if not last.startswith("heavy imports: "):
        return HelpRun(done.returncode, done.stdout, done.stderr, None)
    return HelpRun(done.returncode, done.stdout, "\n".join(lines), json.loads(last.split(": ", 1)[1]))
