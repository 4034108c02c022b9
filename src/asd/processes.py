"""Server processes on this machine: a free port, start and wait until healthy, stop.

Used by ``asd bench`` (the stand-in server and the Streamlit app in their own processes)
and by the tests that drive them the same way.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

STARTUP_S = 180  # TensorFlow import and model load in a server, numba's first compile in the app


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (to start a server on, or a server that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(
    args: list[str], env: dict, log_path: Path, health_url: str, cwd: Path | None = None, startup_s: float = STARTUP_S
) -> subprocess.Popen:
    """Start a server process (output to ``log_path``) and wait until ``health_url`` answers 200.

    Raises
    ------
    RuntimeError
        If it dies or does not answer within ``startup_s`` seconds (with its log's tail);
        the process is killed then.
    """
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(args[:3])} died at start-up:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    process.wait()
    raise RuntimeError(f"{health_url} not up after {startup_s:g} s:\n{log_path.read_text()[-3000:]}")


def stop_process(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """Terminate a process and wait for it; kill it if it lingers past ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
