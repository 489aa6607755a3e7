"""Seconds per epoch and page faults of the chain's pretraining step, with the step processes keeping the memory
they free for reuse (the default) and with glibc's own settings (`RECALIGN_RETAIN_FREED_MEMORY=0`); JSON on stdout.

    python benchmarks/chain_allocator.py [--epochs 10] [--rounds 2] [--out FILE]

Each round runs `full_chain` on MovieLens-100k once per setting, in turn: a real `dagster job execute` (as `make
run` starts it, multiprocess executor, 2 step processes on 2 cores) on a fresh temporary home, with the pretrained
policy capped at `--epochs` epochs and no early stop; the run is stopped once its pretrained_policy step has
succeeded. Reported per run: each epoch's seconds (the step's `history` metadata), the pretraining step process's
minor page faults and user and system CPU seconds (read from /proc every second, up to the step's end), the
ranker's step span (it trains beside the first epochs) and the last epoch's valid NDCG@10, which the setting
leaves as it was (only where memory comes from changes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from parallel_steps import DAGSTER, chain_config, fresh_home  # noqa: E402

PRETRAINING_DONE = 'Finished execution of step "pretrained_policy"'
SETTINGS = {"freed memory kept": "1", "glibc defaults": "0"}  # values of recmodels.runtime.RETAIN_VARIABLE


def process_tree(root: int) -> list[int]:
    """`root` and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack += children.get(pid, [])
    return tree


def cpu_counters(pid: int) -> dict | None:
    """Minor page faults and user / system CPU seconds of `pid` so far (None once it has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return {"minor_faults": int(fields[7]), "user_s": int(fields[11]) / ticks, "system_s": int(fields[12]) / ticks}


def pretraining_events(home: Path) -> dict:
    """From the run's event log: the pretraining step's process, its epochs and the ranker's span."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    with dg.DagsterInstance.get() as instance:
        (record,) = instance.get_run_records()
        pid, history, span = None, None, {}
        for entry in instance.all_logs(record.dagster_run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_WORKER_STARTED and event.step_key == "pretrained_policy":
                pid = event.pid
            elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                materialization = event.event_specific_data.materialization
                if materialization.asset_key.path[-1] == "pretrained_policy":
                    history = materialization.metadata["history"].value
            elif event.step_key == "ranker_reward_model" and event.event_type in (
                    dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS):
                span[event.event_type.value] = entry.timestamp
    ranker_s = round(span["STEP_SUCCESS"] - span["STEP_START"], 1) if len(span) == 2 else None  # None: still training
    return {"pid": pid, "history": history, "ranker_step_s": ranker_s}


def epoch_rows(history_markdown: str) -> list[dict]:
    """The rows of the `history` metadata table (markdown: epoch, train_loss, valid_hr@10, valid_ndcg@10, seconds,
    sequences_per_s)."""
    lines = [line.strip().strip("|").split("|") for line in history_markdown.strip().splitlines()]
    header = [cell.strip() for cell in lines[0]]
    return [dict(zip(header, (float(cell) for cell in line))) for line in lines[2:]]


def run_until_pretrained(config: dict, retain: str, cache: Path | None) -> dict:
    """One full_chain run with the retain variable at `retain`, stopped after its pretrained_policy step."""
    from pipelines.run_config import executor_config, full_chain_command
    from recmodels.runtime import RETAIN_VARIABLE

    home, config_file, env = fresh_home(config, executor_config(), cache, "recalign-allocator-")
    env[RETAIN_VARIABLE] = retain
    log = home / "run.log"
    with open(log, "w") as out:
        run = subprocess.Popen(full_chain_command(DAGSTER, config_file, "movielens-100k"), cwd=ROOT, env=env,
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    counters: dict[int, dict] = {}
    while run.poll() is None and PRETRAINING_DONE not in log.read_text():
        for pid in process_tree(run.pid):
            counters[pid] = cpu_counters(pid) or counters.get(pid)
        time.sleep(1)
    finished = PRETRAINING_DONE in log.read_text()
    if run.poll() is None:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    try:
        if not finished:
            raise RuntimeError(f"the run ended before its pretrained_policy step succeeded:\n{log.read_text()[-3000:]}")
        events = pretraining_events(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    epochs = epoch_rows(events["history"])
    seconds = [row["seconds"] for row in epochs]
    return {"seconds_per_epoch": [round(s, 2) for s in seconds], "pretraining_s": round(sum(seconds), 1),
            "ranker_step_s": events["ranker_step_s"], "pretraining_process": counters.get(events["pid"]),
            "last_valid_ndcg@10": epochs[-1]["valid_ndcg@10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="pretraining epochs of each run (no early stop)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per setting, the settings in turn")
    parser.add_argument("--after-epoch", type=int, default=3,
                        help="the summary's later epochs start after this one (the ranker trains beside the first)")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("RECALIGN_CACHE_DIR", ROOT / ".recalign" / "cache")),
                        help="where the MovieLens wheels are cached (linked into each run's home)")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args()

    from recmodels.runtime import available_cores, cpu_has_bf16_dot_products

    config = chain_config("movielens-100k", None)
    config["ops"]["pretrained_policy"]["config"].update(epochs=args.epochs, patience=args.epochs)
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs = []
    for round_ in range(args.rounds):
        for setting, retain in SETTINGS.items():
            run = run_until_pretrained(config, retain, args.cache_dir)
            runs.append({"round": round_ + 1, "setting": setting, **run})
    summary = {}
    for setting in SETTINGS:
        mine = [run for run in runs if run["setting"] == setting]
        summary[setting] = {
            "pretraining_s": [run["pretraining_s"] for run in mine],
            f"epochs_after_{args.after_epoch}_s": [round(sum(run["seconds_per_epoch"][args.after_epoch:]), 1)
                                                   for run in mine],
            "minor_faults": [run["pretraining_process"]["minor_faults"] for run in mine],
            "system_s": [run["pretraining_process"]["system_s"] for run in mine]}
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "epochs": args.epochs,
              "cores": available_cores(), "cpu_has_bf16_dot_products": cpu_has_bf16_dot_products(),
              "python": platform.python_version(),
              "load_avg_before": load_before, "summary": summary, "runs": runs}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
