"""Test helpers around the `flwr` CLI: private ports, and stopping what a test started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

REPO = Path(__file__).parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_processes_mentioning(text: str) -> None:
    """SIGTERM, then SIGKILL, every process whose command line contains ``text``,
    together with its process group (detached SuperLinks start their own)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError, ProcessLookupError):
                    kill(pid, sig)
        if sig == signal.SIGTERM:
            time.sleep(2)


def read_ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 4 of /proc/PID/stat, after the parenthesised command name.
    return int(stat.rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def descendants(root: int) -> dict[int, bytes]:
    """PIDs (with their command lines) of all live descendants of ``root``; Linux only."""
    if not Path("/proc").is_dir():
        return {}
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ppid := read_ppid(int(entry.name))) is not None:
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, bytes] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if (cmd := cmdline(child)) is not None:
                found[child] = cmd
                stack.append(child)
    return found
