"""Registry commands on the project's MLflow store (`MLFLOW_TRACKING_URI` or `<RECALIGN_HOME>/mlflow`).

Each data set has its own registered post-trained policy, `recalign-post-trained-policy.<data set>`:

    python -m pipelines.registry_cli status --dataset movielens-100k    # champion, challenger, history
    python -m pipelines.registry_cli rollback --dataset movielens-100k  # champion back to the previous one
    python -m pipelines.registry_cli uri --dataset movielens-100k       # models:/...@champion, for serving
    python -m pipelines.registry_cli datasets                           # the data sets that have a model

`make champion`, `make rollback` and `make serve` run them with `DATASET` (default movielens-100k).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from assets.model_runs import POST_TRAINED_MODEL, registered_model_name  # noqa: E402
from assets.registry import (CHALLENGER, CHAMPION, RegistryError, alias_version, champion_history,  # noqa: E402
                             promotion_lock, rollback)
from pipelines.resources import build_resources  # noqa: E402

DEFAULT_DATASET = "movielens-100k"


def status_lines(client, name: str) -> list[str]:
    lines = [f"model: {name}"]
    for alias in (CHAMPION, CHALLENGER):
        version = alias_version(client, name, alias)
        if version is None:
            lines.append(f"{alias}: none")
            continue
        tags = client.get_model_version(name, version).tags
        lines.append(f"{alias}: v{version} (variant {tags.get('variant', '?')}, status {tags.get('status', '?')})"
                     + (f" - {tags['promotion_reasons']}" if tags.get("promotion_reasons") else ""))
    lines.append(f"champion history (oldest first): {', '.join(champion_history(client, name)) or 'empty'}")
    return lines


def registered_datasets(client) -> list[str]:
    """The data sets that have a registered post-trained policy."""
    prefix = registered_model_name(POST_TRAINED_MODEL, "")
    return sorted(m.name[len(prefix):] for m in client.search_registered_models(f"name LIKE '{prefix}%'"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.registry_cli", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["status", "rollback", "uri", "datasets"])
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help=f"the data set whose post-trained policy to act on (default {DEFAULT_DATASET})")
    args = parser.parse_args(argv)
    resources = build_resources()
    tracking = resources["mlflow"]
    client = tracking.client()
    from mlflow.exceptions import MlflowException

    if args.command == "datasets":
        print("\n".join(registered_datasets(client)) or "no data set has a registered post-trained policy yet")
        return 0
    name = registered_model_name(POST_TRAINED_MODEL, args.dataset)
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = registered_datasets(client)
        print(f"no registered model {name!r} (data set {args.dataset!r}) in {tracking.tracking_uri}; "
              f"data sets with one: {', '.join(known) or 'none'}", file=sys.stderr)
        return 1
    if args.command == "uri":
        print(f"models:/{name}@{CHAMPION}")
        return 0
    if args.command == "rollback":
        try:
            with promotion_lock(resources["home"].lock_dir, name):
                dropped, restored = rollback(client, name)
        except RegistryError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{name}: champion rolled back from v{dropped} to v{restored}")
    print("\n".join(status_lines(client, name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
