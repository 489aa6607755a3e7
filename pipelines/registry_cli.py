"""Registry commands on the project's MLflow store (`MLFLOW_TRACKING_URI` or `<RECALIGN_HOME>/mlflow`).

    python -m pipelines.registry_cli status            # champion, challenger, champion history
    python -m pipelines.registry_cli rollback          # move `champion` back to the previous champion

`make rollback` and `make champion` run them.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from assets.model_runs import POST_TRAINED_MODEL  # noqa: E402
from assets.registry import CHALLENGER, CHAMPION, RegistryError, alias_version, champion_history, rollback  # noqa: E402
from pipelines.resources import build_resources  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.registry_cli", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["status", "rollback"])
    parser.add_argument("--model", default=POST_TRAINED_MODEL, help="registered model name")
    args = parser.parse_args(argv)
    tracking = build_resources()["mlflow"]
    client = tracking.client()
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(args.model)
    except MlflowException:
        print(f"no registered model {args.model!r} in {tracking.tracking_uri}", file=sys.stderr)
        return 1
    if args.command == "rollback":
        try:
            dropped, restored = rollback(client, args.model)
        except RegistryError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{args.model}: champion rolled back from v{dropped} to v{restored}")
    print("\n".join(status_lines(client, args.model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
