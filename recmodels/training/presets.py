"""Pretraining settings measured for one built-in data set, which the chain takes where its run config leaves a
knob empty.

The library's defaults (`PretrainConfig`, `PolicyConfig`) were chosen on MovieLens-100k. On MovieLens-1M they
under-fit and are slow: 10 epochs took 15.5 minutes on 2 cores and scored unmasked test NDCG@10 0.168, because
dropout 0.2 slows a policy that sees a million interactions in few epochs. Dropout 0 for 8 epochs, with bf16
matmuls on a CPU that multiplies bf16 natively, scored 0.178 in 6.1 minutes on the same 2 cores
(docs/experiments-pretraining.md, "the goal run"). The settings were measured with atomic item tokens; the
semantic-ID policy keeps the library defaults.
"""
from __future__ import annotations

from typing import Any

from recmodels.runtime import cpu_has_bf16_dot_products
from recmodels.tokenization.atomic_items import AtomicItems

# data set -> {PretrainConfig or PolicyConfig field: value}; `cpu_bf16: True` asks for bf16 on the CPU where it has
# bf16 dot products (elsewhere bf16 would be emulated, slower than fp32)
PRETRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "movielens-1m": {"dropout": 0.0, "epochs": 8, "cpu_bf16": True},
}


def pretrain_preset(dataset: str, tokenization: str) -> dict[str, Any]:
    """The measured settings of `dataset` for a policy of `tokenization` ({} where none were measured), with
    `cpu_bf16` resolved for this machine."""
    if tokenization != AtomicItems.name:
        return {}
    preset = dict(PRETRAIN_PRESETS.get(dataset, {}))
    if preset.get("cpu_bf16"):
        preset["cpu_bf16"] = cpu_has_bf16_dot_products()
    return preset
