"""A fingerprint of what the chain computes, to show a refactor changed no number.

    python -m scripts.behaviour_fingerprint --out before.json     # on the old code
    python -m scripts.behaviour_fingerprint --out after.json      # on the new code
    diff before.json after.json                                     # empty: bit-identical

Materializes the whole chain twice on small simulated logs (tiny models, every post-training
variant, the champion), once per tokenization, each in a fresh Dagster instance and MLflow store,
and records the sha256 of every trained checkpoint's tensors, the report's numbers (every metric,
interval, paired difference and verdict sentence) and the champion decision. Paths, run ids and
timings are left out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

TOKENIZATIONS = ("atomic", "semantic")
VOLATILE_KEYS = {"seconds", "sequences_per_s", "steps_per_s", "wall_s", "report", "md", "json", "png"}


def tensors_digest(checkpoint: str) -> str:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def without_volatile(value):
    """The value with timings and paths dropped, recursively."""
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items()
                if k not in VOLATILE_KEYS and not k.endswith("_s") and "path" not in k}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def chain_fingerprint(tokenization: str, root: Path) -> dict:
    import dagster as dg

    from assets import ALL_ASSETS, ALL_CHECKS
    from assets.resources import MlflowTracking, RecalignHome
    from scripts.ui_check import SMALL_RUN_PARTITION, small_run_config

    config = small_run_config()
    config["ops"]["pretrained_policy"]["config"]["tokenization"] = tokenization
    resources = {"home": RecalignHome(root=str(root / "home")),
                 "mlflow": MlflowTracking(tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                                          artifact_root=str(root / "artifacts"))}
    with dg.instance_for_test(temp_dir=str(root)) as instance:
        result = dg.materialize([*ALL_ASSETS, *ALL_CHECKS], instance=instance, resources=resources,
                                run_config=config, raise_on_error=True, partition_key=SMALL_RUN_PARTITION)
    outputs = {a.key.to_user_string(): result.output_for_node(a.key.to_user_string()) for a in ALL_ASSETS}
    checkpoints = {name: tensors_digest(record.checkpoint) for name, record in sorted(outputs.items())
                   if getattr(record, "checkpoint", None)}  # the model records (a skipped variant's is None)
    report = json.loads(Path(outputs["evaluation_report"].json).read_text())
    decided = outputs["champion"]
    champion = {"decision": decided.decision, "champion_version": decided.champion_version,
                "challenger_variant": decided.challenger_variant, "reasons": decided.reasons}
    return {"checkpoints": checkpoints, "report": without_volatile(report), "champion": champion}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.behaviour_fingerprint", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    fingerprint = {}
    for tokenization in TOKENIZATIONS:
        with tempfile.TemporaryDirectory(prefix=f"recalign-fingerprint-{tokenization}-") as tmp:
            fingerprint[tokenization] = chain_fingerprint(tokenization, Path(tmp))
    args.out.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
    print(f"fingerprint of {len(TOKENIZATIONS)} chains: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
