#!/usr/bin/env python3
"""CI: README.md's Quick start, run as written on a "fresh machine".

The commands are read from README.md itself (the ```bash block under "## Quick start";
no copy of them exists elsewhere) and run in bash, in a fresh ``git clone`` (HEAD of
--repo; --readme tests an uncommitted README), with: a PATH holding no virtual
environment (``/usr/local/bin:/usr/bin:/bin``, where python3.11 must be); a temporary
HOME (the run writes ``~/.fedapp/runs`` and its MLflow store there) with the real
HOME's pip config files and pip cache; a temporary FLWR_HOME and free ports, so that
no SuperLink already running here is reused; no FLWR_*, FEDAPP_* or virtualenv
variables (the README must set what it needs).

A failing command stops the block. ``flwr run --stream`` exits 0 even when the run
failed, so then every run on the private SuperLink must be ``finished:completed``
(``flwr ls`` / ``flwr list --run-id ID``, JSON) and have left its outputs. Finally
every process the block started (SuperLink, SuperExec, Ray, ...) is found by the
FLWR_HOME in its environment and stopped by PID, whatever happened. On failure: a
non-zero exit and the logs' tails.

    python3 .ci/readme_quickstart.py [--repo SRC] [--readme README.md] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
DROP_VARS = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
             "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "PYENV_VERSION", "RAY_ADDRESS",
             "MLFLOW_TRACKING_URI", "XDG_CACHE_HOME", "XDG_DATA_HOME", "PIP_USER"}
DROP_PREFIXES = ("FLWR_", "FEDAPP_")
PIP_USER_CONFIGS = (".config/pip/pip.conf", ".pip/pip.conf")
TAG = "[readme-quickstart]"


class Failure(RuntimeError):
    """The quick start did not work as written."""


def say(message: str) -> None:
    print(f"{TAG} {message}", flush=True)


def quickstart_commands(readme: str) -> list[str]:
    """The ```bash block under '## Quick start' as logical commands (``\\`` lines joined)."""
    section = re.search(r"^##\s+Quick start\b.*?\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if section is None:
        raise Failure("README.md has no '## Quick start' section")
    block = re.search(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", section.group(1), re.M | re.S)
    if block is None:
        raise Failure("README.md's Quick start has no closed ```bash block")
    commands = [c.rstrip("\n") for c in re.split(r"(?<!\\)\n", block.group(1))
                if c.strip() and not c.lstrip().startswith("#")]
    if not commands:
        raise Failure("README.md's Quick start block has no command")
    return commands


def wrapper_script(commands: list[str], progress_fd: int) -> str:
    """A bash script running each command as written, stopping at the first failure.

    Each command runs in a ``{ ...; }`` group in the same shell (``. .venv/bin/activate``
    persists), so a failure anywhere in an ``a && b`` line stops the block too; the
    progress descriptor is closed for it (a detached SuperLink must not hold our stdout).
    """
    out = ["_qs_say() { printf '%s %s\\n' '" + TAG + "' \"$*\"; "
           "printf '%s %s\\n' '" + TAG + "' \"$*\" >&" + str(progress_fd) + "; }",
           "_qs_ms() { date +%s%3N; }"]
    total = len(commands)
    for k, command in enumerate(commands, 1):
        shown = shlex.quote(" ".join(command.replace("\\\n", " ").split()))
        out += [f"_qs_say step {k}/{total}: {shown}", "_qs_t=$(_qs_ms)", "{", command,
                f"}} {progress_fd}>&- || {{ _qs_rc=$?; _qs_say step {k}/{total} FAILED with exit "
                "status $_qs_rc after $(( ($(_qs_ms) - _qs_t) / 1000 ))s; exit $_qs_rc; }",
                f"_qs_say step {k}/{total} ok in $(( ($(_qs_ms) - _qs_t) / 1000 ))s"]
    return "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(home: Path, flwr_home: Path, path: str) -> dict[str, str]:
    """The environment of a new user's shell on this machine, with private state dirs."""
    env = {k: v for k, v in os.environ.items()
           if k not in DROP_VARS and not k.startswith(DROP_PREFIXES)}
    real_home = Path(os.environ.get("HOME", str(Path.home())))
    for rel in PIP_USER_CONFIGS:  # pip's per-user config (index, find-links) keeps working
        if (real_home / rel).is_file():
            (home / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(real_home / rel, home / rel)
    env.setdefault("PIP_CACHE_DIR", str(real_home / ".cache" / "pip"))
    env |= {"PATH": path, "HOME": str(home), "FLWR_HOME": str(flwr_home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    return env


def check_python(path: str) -> str:
    """python3.11 on ``path``, outside any virtual environment."""
    for entry in filter(None, path.split(os.pathsep)):
        if (Path(entry).parent / "pyvenv.cfg").exists():
            raise Failure(f"PATH entry {entry} is a virtual environment")
    python = shutil.which("python3.11", path=path)
    if python is None:
        raise Failure(f"python3.11 is not on PATH={path}")
    probe = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0], "
                            "sys.prefix != sys.base_prefix)"], capture_output=True, text=True,
                           timeout=60, check=True).stdout.split()
    if probe[1] == "True":
        raise Failure(f"{python} runs inside a virtual environment")
    return f"{python} (Python {probe[0]})"


def environ_has(pid: int, entry: bytes) -> bool:
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def started_processes(flwr_home: Path) -> dict[int, str]:
    """Live processes whose environment carries our private FLWR_HOME: everything the block
    started (a detached SuperLink and what it spawned, Ray included), whatever its parent."""
    entry = f"FLWR_HOME={flwr_home}".encode()
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            pid = int(proc.name)
            if environ_has(pid, entry):
                try:
                    argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
                except OSError:
                    continue
                found[pid] = " ".join(Path(a).name if "/" in a else a for a in argv[:4] if a)
    return found


def stop_processes(flwr_home: Path, grace: float = 10.0) -> None:
    """SIGTERM each started process by PID, SIGKILL what is left after ``grace`` seconds."""
    stopped: dict[int, str] = {}
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
        procs = started_processes(flwr_home)
        if not procs:
            break
        stopped |= procs
        for pid in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and started_processes(flwr_home):
            time.sleep(0.5)
    left = started_processes(flwr_home)
    for pid, cmd in sorted(stopped.items()):
        say(f"  stopped pid {pid}: {cmd}")
    if left:
        raise Failure(f"could not stop: {left}")
    say(f"stopped {len(stopped)} process(es) started by the quick start")


def flwr_json(flwr: Path, args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    proc = subprocess.run([str(flwr), *args, "--format", "json"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    if "{" not in proc.stdout:
        raise Failure(f"`flwr {' '.join(args)}` printed no JSON (exit {proc.returncode}):\n"
                      f"{proc.stdout}{proc.stderr}")
    return dict(json.loads(proc.stdout[proc.stdout.index("{"):]))


def check_runs(clone: Path, env: dict[str, str], home: Path) -> list[str]:
    """Every run on the private SuperLink ended ``finished:completed`` and left its outputs."""
    flwr = clone / ".venv" / "bin" / "flwr"
    if not flwr.exists():
        raise Failure(f"{flwr} is missing: the quick start did not install into .venv")
    port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    try:  # `flwr ls` would start a new, empty SuperLink if ours were gone
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
    except OSError as exc:
        raise Failure(f"the managed SuperLink (port {port}) is not running: {exc}") from exc
    env = {**env, "PATH": f"{flwr.parent}{os.pathsep}{env['PATH']}"}
    runs = flwr_json(flwr, ["ls"], env, clone).get("runs", [])
    if not runs:
        raise Failure("the SuperLink knows no run: `flwr run` submitted nothing")
    summary = []
    for run_id in (str(r["run-id"]) for r in runs):
        info = flwr_json(flwr, ["list", "--run-id", run_id], env, clone)["runs"][0]
        if info["status"] != "finished:completed":
            raise Failure(f"run {run_id} ended {info['status']}: {info.get('status-details')}")
        out = home / ".fedapp" / "runs" / f"run-{run_id}"
        missing = [n for n in ("model.pt", "rounds.json") if not (out / n).is_file()]
        if missing:
            raise Failure(f"run {run_id} completed but {out} lacks {', '.join(missing)}")
        last = json.loads((out / "rounds.json").read_text())[-1]
        summary.append(f"run {run_id} {info['status']} (Flower counts {info['elapsed']}s), "
                       f"round {last['round']}: accuracy {last['server-accuracy']:.4f}")
    return summary


def tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return f"(no {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_block(args: argparse.Namespace, work: Path) -> tuple[list[str], float]:
    """Clone, run the README's block there and check the runs; returns summary and seconds."""
    clone, home, flwr_home = work / "fedapp", work / "home", work / "flwr-home"
    home.mkdir()
    subprocess.run(["git", "clone", "--quiet", str(args.repo), str(clone)], check=True,
                   timeout=300)
    if args.readme is not None:
        shutil.copy2(args.readme, clone / "README.md")
    commands = quickstart_commands((clone / "README.md").read_text())
    say(f"python: {check_python(args.path)}; PATH={args.path}")
    env = clean_env(home, flwr_home, args.path)
    if Path("/tmp/ray/ray_current_cluster").exists():
        say("warning: /tmp/ray/ray_current_cluster exists; Ray may try to join that cluster")
    script = work / "quickstart.sh"
    progress = os.dup(sys.stdout.fileno())
    script.write_text(wrapper_script(commands, progress))
    say(f"{len(commands)} command(s) from README.md's Quick start, in {clone}")
    t0 = time.monotonic()
    with open(args.log, "w") as log:
        proc = subprocess.Popen(["bash", str(script)], cwd=clone, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                pass_fds=(progress,), start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise Failure(f"the quick start did not finish in {args.timeout:.0f}s") from None
        finally:
            os.close(progress)
    seconds = time.monotonic() - t0
    if rc != 0:
        raise Failure(f"the quick start failed with exit status {rc}")
    say(f"the block exited 0 after {seconds:.0f}s; checking the run's status")
    return check_runs(clone, env, home), seconds


def clean_up(args: argparse.Namespace, work: Path, ok: bool) -> bool:
    """Stop what the block started; remove ``work`` (keeping a failure's log). False if a
    process could not be stopped."""
    try:
        stop_processes(work / "flwr-home")
    except Failure as exc:
        say(f"FAILED to clean up: {exc}")
        ok = False
    if args.keep:
        say(f"kept {work}")
        return ok
    if not ok and args.log.exists():
        fd, kept = tempfile.mkstemp(prefix="readme-quickstart-", suffix=".log")
        os.close(fd)
        shutil.copyfile(args.log, kept)
        say(f"full log: {kept}")
    shutil.rmtree(work, ignore_errors=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(REPO), help="what to git clone (default: here)")
    parser.add_argument("--readme", type=Path, help="README.md to use instead of the clone's")
    parser.add_argument("--path", default=CLEAN_PATH, help="PATH for the block")
    parser.add_argument("--timeout", type=float, default=2400.0, help="seconds for the block")
    parser.add_argument("--keep", action="store_true", help="keep the clone, venv and outputs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedapp-quickstart-"))
    args.log = work / "quickstart.log"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on SIGTERM too
    ok = False
    try:
        summary, seconds = run_block(args, work)
        for line in summary:
            say(line)
        say(f"OK: README.md's Quick start works as written ({seconds:.0f}s)")
        ok = True
    except (Failure, subprocess.SubprocessError, OSError, KeyError, ValueError) as exc:
        say(f"FAILED: {exc}")
        say(f"--- last lines of the quick start's output ({args.log}) ---")
        print(tail(args.log, 60), flush=True)
        say("--- last lines of the managed SuperLink's log ---")
        print(tail(work / "flwr-home" / "local-superlink" / "superlink.log", 30), flush=True)
    finally:
        ok = clean_up(args, work, ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
