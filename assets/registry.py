"""The post-trained policy's registry life: challenger, champion, history and rollback.

Each data set has its own registered model, `recalign-post-trained-policy.<data set>`
(assets.model_runs.registered_model_name), and every post-trained variant of a run on that data
set registers into it. A challenger is therefore only ever compared with a champion trained on the
same data set, and a run on one data set never moves another data set's champion. An MLflow alias
names one version, so:
- every new version carries the version tag `status=challenger` when it is registered;
- the `champion` asset points the alias `challenger` at this run's best version on valid, compares
  it with the version under the alias `champion` and either moves `champion` to it
  (`status=champion`, the former one `status=former_champion`) or leaves the champion in place and
  writes why on the challenger (`status=rejected`, `promotion_reasons`); the run's other versions
  get `status=not_selected`;
- the registered model's tag `champion_history` lists every champion version, oldest first, so
  `rollback` can move the alias back to the previous one (`python -m pipelines.registry_cli rollback`).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

# mlflow (~2.5 s to import) is imported where it is used: loading the code location does not import it.

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
HISTORY_KEPT = 100  # versions kept in the history tag (its value is limited in length)


PROMOTION_LOCK_TIMEOUT_S = 600.0


class RegistryError(RuntimeError):
    """The registry is not in a state that allows the requested change (e.g. nothing to roll back to)."""


@contextmanager
def promotion_lock(lock_dir: str | Path, name: str, timeout_s: float = PROMOTION_LOCK_TIMEOUT_S) -> Iterator[None]:
    """One promotion (read the champion, judge the challenger, move the alias) or rollback at a time for the
    registered model `name`, across the processes that share `lock_dir`: two concurrent `champion` steps
    cannot both judge against the same old champion and leave the alias on the one that lost."""
    path = Path(lock_dir, f"{name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout_s):
        yield


def alias_version(client, name: str, alias: str) -> str | None:
    """The version under `alias`, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_history(client, name: str) -> list[str]:
    """Champion versions, oldest first (the last one is the current champion)."""
    tags = client.get_registered_model(name).tags
    return [v for v in tags.get(HISTORY_TAG, "").split(",") if v]


def _set_history(client, name: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[-HISTORY_KEPT:]))


def tag_version(client, name: str, version: str, **tags: Any) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def promote(client, name: str, version: str, **tags: Any) -> str | None:
    """Move the `champion` alias to `version`; return the former champion (None on the first promotion)."""
    version = str(version)
    previous = alias_version(client, name, CHAMPION)
    history = champion_history(client, name)
    if previous and (not history or history[-1] != previous):  # the alias was moved by hand: keep it in history
        history.append(previous)
    if previous == version:
        return previous
    client.set_registered_model_alias(name, CHAMPION, version)
    _set_history(client, name, [*history, version])
    tag_version(client, name, version, status="champion", **tags)
    if previous:
        tag_version(client, name, previous, status="former_champion")
    return previous


def reject(client, name: str, version: str, reasons: list[str], **tags: Any) -> None:
    """Leave the champion in place and write on `version` why it lost."""
    tag_version(client, name, str(version), status="rejected", promotion_reasons="; ".join(reasons), **tags)


def rollback(client, name: str) -> tuple[str, str]:
    """Move `champion` back to the previous champion; return (rolled-back version, restored version)."""
    history = champion_history(client, name)
    current = alias_version(client, name, CHAMPION)
    if current and (not history or history[-1] != current):
        history.append(current)
    if len(history) < 2:
        raise RegistryError(f"model {name!r} has no previous champion to roll back to "
                            f"(champion history: {history or 'empty'})")
    dropped, restored = history[-1], history[-2]
    client.set_registered_model_alias(name, CHAMPION, restored)
    _set_history(client, name, history[:-1])
    tag_version(client, name, dropped, status="rolled_back")
    tag_version(client, name, restored, status="champion")
    return dropped, restored


def download_policy_artifacts(name: str, version: str, dst: str | Path) -> dict[str, Path]:
    """Download a registered servable policy; return its local artifacts: checkpoint, catalog and, for a
    semantic-ID policy, semantic_ids."""
    import mlflow
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))
    artifacts = Model.load(str(local / "MLmodel")).flavors["python_function"].get("artifacts", {})
    missing = {"checkpoint", "catalog"} - set(artifacts)
    if missing:
        raise RegistryError(f"{name} v{version} is not a servable policy: its model lacks the artifacts "
                            f"{sorted(missing)}")
    return {key: local / value["path"] for key, value in artifacts.items()}
