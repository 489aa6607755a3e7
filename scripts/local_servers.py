"""Start local servers (MLflow scoring server, `mlflow ui`, `dagster dev`) on 127.0.0.1 and stop them.

Each server runs in its own process group, so stopping it (SIGINT, then SIGKILL after a grace
period) also ends the workers it spawned. Used by the serving test and the UI check.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent  # the virtual environment's scripts (mlflow, dagster, uvicorn)
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy: 127.0.0.1 only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    """The current environment with the venv's scripts first on PATH (MLflow starts `uvicorn` by name)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.update(extra)
    return env


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> float:
    """Poll `url` until it answers 200; return the seconds waited. Raise if the server exits or never answers."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server for {url} exited with code {proc.returncode}:\n{tail}")
        try:
            with _LOCAL.open(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s:\n{tail}")


def stop(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGINT to the server's process group, SIGKILL if it is still there after `grace_s`."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def running(cmd: list[str], health_url: str, log: Path, timeout_s: float = 120, cwd: str | Path | None = None,
            env: dict[str, str] | None = None) -> Iterator[float]:
    """Run `cmd` until the block ends; yield the seconds it took to answer `health_url`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env or server_env(),
                                start_new_session=True)
    try:
        yield wait_http(health_url, timeout_s, proc, log)
    finally:
        stop(proc)


def post_json(url: str, payload: dict, timeout_s: float = 30) -> tuple[int, dict]:
    """POST `payload` as JSON; return (HTTP status, decoded JSON body), error statuses included."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with _LOCAL.open(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def serve_command(model_uri: str, port: int) -> list[str]:
    """`mlflow models serve` of `model_uri` in the current environment on 127.0.0.1:`port`."""
    return [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", HOST, "-p", str(port)]
