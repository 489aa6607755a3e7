"""Start every `make` target the README names, for real, and check each gets past its command line.

    python -m scripts.readme_targets --home .recalign       (CI runs it after `make run`)

`make run` and `make test` run to the end in CI; this covers the others, so a renamed option or a
moved module fails CI instead of a user:
- servers (`dev`, `mlflow-ui`, `serve`) must answer their health URL (on free ports of 127.0.0.1);
- commands (`champion`, `rollback`, `resume`) run to the end against the store `make run` filled;
- long jobs (`bench`, `robustness`, `robustness-tuned`, `tune`, `compare-datasets`, `compare-tokenizations`) and the documented
  variants of `make run` (`SOURCE=movielens-1m`, `SOURCE=simulator`, `SOURCE=file LOGS=... COLUMNS=...`,
  `TOKENIZATION=semantic`) must reach a first training step, then are stopped. They run in throw-away
  homes (sharing the download cache), so the stopped runs never touch `--home`.
Prints one line per target and exits non-zero when any target fails.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.local_servers import HOST, free_port, server_env, stop, wait_http

ROOT = Path(__file__).resolve().parents[1]
# the first model step of full_chain (the executor may start either model first)
FIRST_TRAINING_STEP = r'STEP_START - Started execution of step "(pretrained_policy|ranker_reward_model)"'
STEP_STARTED = r"STEP_START - Started execution of step"


@dataclass
class Target:
    """`make <args>` and how to tell it works: a health URL, a line in its output, or its exit."""

    name: str
    args: list[str]
    health_path: str | None = None  # a server: GET http://127.0.0.1:<port><path> answers 200
    port_var: str | None = None
    ready_pattern: str | None = None  # a job: this regex appears in its output, then it is stopped
    exit_ok: tuple[int, ...] = ()  # a command: it ends with one of these codes...
    exit_pattern: str | None = None  # ...and its output matches this regex
    own_home: bool = False  # run in a throw-away home (jobs that are stopped half way)
    timeout_s: float = 240
    env: dict[str, str] = field(default_factory=dict)
    services: bool = False  # needs `make services` up: checked with --services only

    @property
    def command(self) -> str:
        """The command line as the README writes it."""
        return "".join(f"{k}={v} " for k, v in self.env.items()) + "make " + " ".join(self.args)


SERVICES = {"RECALIGN_PROFILE": "services"}


def file_logs(path: Path, cache_dir: Path, n_users: int = 150) -> Path:
    """MovieLens-100k events of the first `n_users` users as a CSV the way people export logs: other column
    names (`COLUMNS` maps them) and ISO-8601 timestamps with a zone."""
    import pandas as pd

    from recmodels.data.movielens import read_movielens

    logs, _ = read_movielens("movielens-100k", cache_dir)
    users = sorted(logs["user_id"].unique(), key=str)[:n_users]
    logs = logs[logs["user_id"].isin(users)]
    stamps = pd.to_datetime(logs["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    logs.assign(timestamp=stamps).rename(columns={"user_id": "uid", "item_id": "movie_id", "timestamp": "ts"}).to_csv(
        path, index=False)
    return path


def targets(logs_csv: Path) -> list[Target]:
    return [
        Target("dev", ["dev"], health_path="/server_info", port_var="DEV_PORT", timeout_s=180),
        Target("mlflow-ui", ["mlflow-ui"], health_path="/health", port_var="MLFLOW_PORT", timeout_s=180),
        Target("serve", ["serve"], health_path="/ping", port_var="SERVE_PORT", timeout_s=180),
        Target("champion", ["champion"], exit_ok=(0,), exit_pattern=r"champion: v\d+"),
        # one `make run` leaves no earlier champion: rollback must refuse, saying so (make exits 2 when its
        # command fails), and move nothing
        Target("rollback", ["rollback"], exit_ok=(0, 2), exit_pattern=r"rolled back|no previous champion"),
        Target("champion DATASET=movielens-100k", ["champion", "DATASET=movielens-100k"], exit_ok=(0,),
               exit_pattern=r"model: recalign-post-trained-policy\.movielens-100k"),
        # `make run` succeeded: there is nothing to re-execute, and resume must say so
        # (tests/test_crash_recovery.py re-executes a killed run through the same command)
        Target("resume", ["resume"], exit_ok=(0, 2), exit_pattern=r"re-execution of|only a FAILURE can be re-executed"),
        Target("bench", ["bench"], ready_pattern=STEP_STARTED, own_home=True),
        Target("robustness", ["robustness"], ready_pattern=STEP_STARTED, own_home=True),
        Target("robustness-tuned", ["robustness-tuned"], ready_pattern=STEP_STARTED, own_home=True),
        Target("tune", ["tune"], ready_pattern=STEP_STARTED, own_home=True),
        Target("compare-datasets", ["compare-datasets"], ready_pattern=STEP_STARTED, own_home=True),
        Target("compare-tokenizations", ["compare-tokenizations"], ready_pattern=r"pretraining the atomic policy", own_home=True),
        Target("run SOURCE=movielens-1m", ["run", "SOURCE=movielens-1m"], ready_pattern=FIRST_TRAINING_STEP,
               own_home=True, timeout_s=300),
        Target("run SOURCE=simulator", ["run", "SOURCE=simulator"], ready_pattern=FIRST_TRAINING_STEP, own_home=True),
        Target("run WORKERS=1", ["run", "WORKERS=1"], ready_pattern=FIRST_TRAINING_STEP, own_home=True),
        Target("run SOURCE=file", ["run", "SOURCE=file", f"LOGS={logs_csv}", "COLUMNS=uid=user_id,movie_id=item_id,ts=timestamp"],
               ready_pattern=FIRST_TRAINING_STEP, own_home=True),
        Target("services run", ["run"], env=SERVICES, services=True,
               ready_pattern=FIRST_TRAINING_STEP, own_home=True),
        Target("services dev", ["dev"], env=SERVICES, services=True,
               health_path="/server_info", port_var="DEV_PORT", timeout_s=180),
        Target("services profile-env", ["-s", "profile-env"], env=SERVICES, services=True,
               exit_ok=(0,), exit_pattern=r"MLFLOW_TRACKING_URI=http://127\.0\.0\.1:\d+"),
        Target("run TOKENIZATION=semantic", ["run", "TOKENIZATION=semantic"], ready_pattern=FIRST_TRAINING_STEP,
               own_home=True),
    ]


def throwaway_home(cache_dir: Path) -> Path:
    home = Path(tempfile.mkdtemp(prefix="recalign-target-"))
    (home / "cache").symlink_to(cache_dir.resolve())
    return home


def wait_for_pattern(proc: subprocess.Popen, log: Path, pattern: str, timeout_s: float) -> float:
    start = time.monotonic()
    regex = re.compile(pattern)
    while time.monotonic() - start < timeout_s:
        if regex.search(log.read_text(errors="replace")):
            return time.monotonic() - start
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before printing /{pattern}/")
        time.sleep(0.5)
    raise TimeoutError(f"no /{pattern}/ in its output within {timeout_s:.0f} s")


def check(target: Target, home: Path, cache_dir: Path, logs_dir: Path) -> str:
    """Run one target; return what showed it works, or raise with the reason."""
    run_home = throwaway_home(cache_dir) if target.own_home else home
    args = list(target.args)
    port = None
    if target.port_var:
        port = free_port()
        args.append(f"{target.port_var}={port}")
    log = logs_dir / f"{re.sub(r'[^A-Za-z0-9]+', '-', target.name)}.log"
    env = server_env(RECALIGN_HOME=str(run_home), **target.env)
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        if target.health_path:
            seconds = wait_http(f"http://{HOST}:{port}{target.health_path}", target.timeout_s, proc, log)
            return f"answered {target.health_path} after {seconds:.0f} s"
        if target.ready_pattern:
            seconds = wait_for_pattern(proc, log, target.ready_pattern, target.timeout_s)
            return f"reached /{target.ready_pattern}/ after {seconds:.0f} s"
        code = proc.wait(timeout=target.timeout_s)
        text = log.read_text(errors="replace")
        if code not in target.exit_ok or not re.search(target.exit_pattern or "", text):
            raise RuntimeError(f"exit code {code}, output:\n{text[-2000:]}")
        return f"exit code {code}: {re.search(target.exit_pattern or '', text).group(0)}"
    finally:
        stop(proc)
        if target.own_home:
            shutil.rmtree(run_home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.readme_targets", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".recalign", help="the home `make run` filled")
    parser.add_argument("--only", nargs="*", help="target names to check (default: all)")
    parser.add_argument("--services", action="store_true",
                        help="check the services-profile targets instead (after `make services`)")
    args = parser.parse_args(argv)
    home = args.home.resolve()
    cache_dir = home / "cache"
    logs_dir = home / "readme-targets"
    logs_dir.mkdir(parents=True, exist_ok=True)
    logs_csv = file_logs(logs_dir / "my_logs.csv", cache_dir)
    failed = []
    for target in targets(logs_csv):
        if (args.only and target.name not in args.only) or target.services != args.services:
            continue
        start = time.monotonic()
        try:
            print(f"ok   {target.command}: {check(target, home, cache_dir, logs_dir)}", flush=True)
        except Exception as exc:  # report every target, then fail
            failed.append(target.name)
            print(f"FAIL {target.command} ({time.monotonic() - start:.0f} s): {exc}", flush=True)
    print(f"{len(failed)} of the README's make targets failed: {failed}" if failed
          else "every README make target started and got past its command line")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
