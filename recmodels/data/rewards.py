"""Reward labeling: one configurable affine map from a logged feedback signal to a reward."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recmodels.data.raw_logs import DataContractError


@dataclass
class RewardSpec:
    """r = (signal - center) / scale, declared to lie in [low, high].

    MovieLens default: ratings 1..5 -> (rating - 3) / 2 in [-1, 1].
    Clicks: RewardSpec("click", center=0.0, scale=1.0, low=0.0, high=1.0).
    """

    signal: str = "rating"
    center: float = 3.0
    scale: float = 2.0
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.scale == 0 or not np.isfinite(self.scale):
            raise ValueError(f"RewardSpec.scale must be finite and non-zero, got {self.scale}")
        if not self.low < self.high:
            raise ValueError(f"RewardSpec needs low < high, got low={self.low}, high={self.high}")


def label_rewards(logs: pd.DataFrame, spec: RewardSpec) -> pd.Series:
    """float32 reward per row of `logs` (same index), named "reward". NaN / inf pass through."""
    if spec.signal not in logs.columns:
        raise DataContractError(
            f"reward spec: signal column {spec.signal!r} is not in the logs "
            f"(columns present: {list(logs.columns)})")
    signal = logs[spec.signal]
    if not pd.api.types.is_numeric_dtype(signal):
        raise DataContractError(
            f"reward spec: signal column {spec.signal!r} must be numeric, got dtype {signal.dtype}")
    values = (signal.to_numpy(np.float64) - spec.center) / spec.scale
    return pd.Series(values.astype(np.float32), index=logs.index, name="reward")
