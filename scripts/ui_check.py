"""Check the Dagster UI and the MLflow UI the way a person sees them, in headless Chromium.

    python -m scripts.ui_check [--out .recalign/ui-check]      (or `make ui-check`)

1. Materializes a small `full_chain` run (simulated logs, tiny models) into a fresh home under
   `--out` with its own Dagster instance and MLflow store.
2. Starts `dagster dev` and `mlflow ui` on free ports of 127.0.0.1.
3. Opens in Chromium the asset lineage, the asset catalog, the checks of `interactions`, the
   `champion` asset and the registered model page; saves a PNG and the rendered DOM of each; asserts
   that the materialized assets, their passed checks, the promotion decision and the `champion`
   alias appear.
Exits non-zero when a page misses what it should show. Servers are always stopped.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from assets.model_runs import POST_TRAINED_MODEL, registered_model_name
from pipelines.run_config import full_chain_command, write_run_config
from scripts.local_servers import BIN, HOST, free_port, running, server_env

ROOT = Path(__file__).resolve().parents[1]
MODEL = registered_model_name(POST_TRAINED_MODEL, "simulator")  # the data set of the small run below
CHECKS = ("schema", "reward_not_null_and_finite", "reward_in_range", "reward_std_above_floor", "no_duplicate_events")
TINY_POST_TRAINING = {"steps": 4, "eval_every": 2, "batch_size": 16}


SMALL_RUN_PARTITION = "simulator"  # the data set partition of small_run_config


def small_run_config() -> dict:
    """Simulated logs and tiny models: the whole chain in about a minute on two cores (partition
    `SMALL_RUN_PARTITION`)."""
    from assets.post_training import VARIANTS

    ops = {"raw_logs": {"config": {"simulator": {
               "n_users": 60, "n_items": 40, "events_per_user": [6, 14], "seed": 3}}},
           "pretrained_policy": {"config": {"epochs": 3, "d_model": 16, "n_heads": 1, "n_layers": 1, "max_len": 10,
                                            "batch_size": 32}},
           "ranker_reward_model": {"config": {"epochs": 2, "batch_size": 64}}}
    ops |= {f"post_trained_{v}": {"config": TINY_POST_TRAINING} for v in VARIANTS}
    return {"ops": ops}


@dataclass
class Page:
    name: str
    url: str
    must_show: tuple[str, ...]  # words the page's visible text must hold
    must_match: tuple[str, ...] = ()  # regular expressions it must match
    window: str = "1600,1000"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise SystemExit("Chromium is not installed: `make ui-check` installs Debian's `chromium` with apt-get")


def render(browser: str, page: Page, out: Path, budget_ms: int = 20000) -> tuple[str, float]:
    """Screenshot `page` to out/<name>.png and return (its rendered DOM, seconds taken)."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ui-check-chromium-") as profile:
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
                 f"--window-size={page.window}", f"--virtual-time-budget={budget_ms}"]
        subprocess.run([*flags, f"--screenshot={out / (page.name + '.png')}", page.url], check=True,
                       capture_output=True, timeout=180)
        dom = subprocess.run([*flags, "--dump-dom", page.url], check=True, capture_output=True, text=True,
                             timeout=180).stdout
    (out / f"{page.name}.html").write_text(dom)
    return dom, time.monotonic() - start


def visible_text(dom: str) -> str:
    """The DOM without scripts, styles and tags (what a person can read), whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def materialize_small_run(home: Path, env: dict[str, str], log: Path) -> float:
    start = time.monotonic()
    config = write_run_config(home / "small_run.yaml", small_run_config())
    with open(log, "w") as out:
        subprocess.run(full_chain_command(BIN / "dagster", config, SMALL_RUN_PARTITION), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=True,
                       timeout=900)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.ui_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".recalign" / "ui-check")
    args = parser.parse_args(argv)
    browser = chromium()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    home, logs = out / "home", out / "logs"
    (home / "dagster").mkdir(parents=True)
    logs.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    (home / "dagster" / ".nux").mkdir()
    (home / "dagster" / ".nux" / "nux.yaml").write_text("seen: 1\n")  # the community pop-up, already skipped
    env = server_env(RECALIGN_HOME=str(home), DAGSTER_HOME=str(home / "dagster"),
                     RECALIGN_WATCH_DIR=str(home / "incoming"), DAGSTER_DISABLE_TELEMETRY="yes")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_ARTIFACT_ROOT", None)
    summary: dict = {"small_run_s": round(materialize_small_run(home, env, logs / "small_run.log"), 1)}
    print(f"small run materialized in {summary['small_run_s']} s", flush=True)

    dagster_port, mlflow_port = free_port(), free_port()
    dagster_url, mlflow_url = f"http://{HOST}:{dagster_port}", f"http://{HOST}:{mlflow_port}"
    store = home / "mlflow"
    dagster_cmd = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", HOST, "-p", str(dagster_port)]
    mlflow_cmd = [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                  "--default-artifact-root", str(store / "artifacts"), "-h", HOST, "-p", str(mlflow_port)]
    from assets import ALL_ASSETS

    asset_names = tuple(a.key.to_user_string() for a in ALL_ASSETS)
    shown_groups = ",".join(f"global@global:{g}" for g in ("data", "models", "evaluation", "promotion"))
    all_checks_passed = r"(\d+) / \1 Passed"
    pages = [
        # one of the chain's data set partitions materialized: "Partitions 25% filled" on each shown node, and
        # in the catalog "1 3 0 0 4 partitions" (materialized, missing, failed, in progress, of 4) per asset
        Page("dagster_asset_graph", f"{dagster_url}/asset-groups?expanded={shown_groups}",
             ("raw_logs", "interactions", "pretrained_policy", "ranker_reward_model", "post_training",
              "evaluation_report", "champion"), (all_checks_passed, r"(?:.*?Partitions 25% filled){7}"),
             window="2400,1400"),
        Page("dagster_asset_catalog", f"{dagster_url}/assets", asset_names,
             (f"(?:.*?1 3 0 0 4 partitions){{{len(asset_names)}}}",), window="1600,1400"),
        Page("dagster_interactions_checks", f"{dagster_url}/assets/interactions?view=checks",
             (*CHECKS, "Succeeded"), (r"Checks \(\d+\)",)),
        Page("dagster_champion_asset", f"{dagster_url}/assets/champion",
             ("decision", "promoted", "gates", "blocking_data_checks", "beats_champion"), window="1600,1400"),
        Page("mlflow_registered_model", f"{mlflow_url}/#/models/{MODEL}",
             (MODEL, "champion", "challenger", "champion_history"), (r"@\s*champion",), window="1800,1200"),
    ]
    failures = []
    with running(dagster_cmd, f"{dagster_url}/server_info", logs / "dagster_dev.log", timeout_s=240, cwd=ROOT,
                 env=env) as dagster_s, \
            running(mlflow_cmd, f"{mlflow_url}/health", logs / "mlflow_ui.log", timeout_s=240, env=env) as mlflow_s:
        summary |= {"dagster_dev_ready_s": round(dagster_s, 1), "mlflow_ui_ready_s": round(mlflow_s, 1), "pages": {}}
        print(f"dagster dev answered after {dagster_s:.1f} s, mlflow ui after {mlflow_s:.1f} s", flush=True)
        for page in pages:
            dom, seconds = render(browser, page, out)
            text = visible_text(dom)
            missing = [word for word in page.must_show if word not in text]
            missing += [f"/{pattern}/" for pattern in page.must_match if not re.search(pattern, text)]
            summary["pages"][page.name] = {"url": page.url, "png": str(out / f"{page.name}.png"),
                                           "seconds": round(seconds, 1), "missing": missing}
            print(f"{page.name}: {'ok' if not missing else 'MISSING ' + ', '.join(missing)} ({seconds:.1f} s)",
                  flush=True)
            if missing:
                failures.append(f"{page.name} ({page.url}) does not show {missing}")
    (out / "ui_check.json").write_text(json.dumps(summary, indent=2))
    if failures:
        print("UI check failed:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    print(f"UI check passed; screenshots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
