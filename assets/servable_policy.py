"""The servable post-trained policy: an MLflow pyfunc model over a `{state_dict, config}` checkpoint.

Every registered version of `recalign-post-trained-policy` is this model. It bundles three things:
the policy checkpoint (artifact `checkpoint`), the item catalog that maps original item ids to the
policy's tokens (artifact `catalog`: `item_idx`, `item_id`, ...) and the decoding settings (the
model config: `k`, `mask_history`). The policy's tokenization (`recmodels.tokenization`) decodes its
recommendations: a semantic-ID policy also bundles its semantic IDs (artifact `semantic_ids`) and
recommends by beam search constrained to real items (exclusion of the history), its scores being the
policy's own probabilities of the generated items (which leave out the history's share, so they sum to less
than 1 over the unseen items; an atomic policy's are renormalized over them).
`recmodels` travels with it as code, so serving needs only torch, pandas, pyarrow, numpy and mlflow.

Request: a DataFrame (`{"dataframe_records": [...]}` over HTTP) with one row per user and a column
`recent_item_ids` (the user's original item ids, oldest first) and optionally `k`.
Response: one row per user with `item_ids` (the top-k original item ids, best first), `scores`
(their probabilities under the policy, over the catalog minus the user's history) and
`unknown_item_ids` (request ids the catalog does not hold: ignored, not an error).

MLflow loads this file as the model's code ("models from code"), hence the `set_model` at the end.
"""
from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

HISTORY_COLUMN = "recent_item_ids"
DEFAULT_DECODING = {"k": 10, "mask_history": True}


def _bad_request(message: str) -> MlflowException:
    """An error the scoring server answers with HTTP 400 and `message`."""
    return MlflowException.invalid_parameter_value(message)


def _item_key(value: Any) -> str:
    """Request ids compare to catalog ids as text; a JSON number like 12.0 means item "12"."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _as_id_list(value: Any, row: int) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        raise _bad_request(f"row {row}: column '{HISTORY_COLUMN}' must be a list of item ids, "
                           f"got {type(value).__name__} {value!r}")
    return [_item_key(v) for v in value]


def _as_k(value: Any, row: int, default: int) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return default
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise _bad_request(f"row {row}: column 'k' must be a positive integer, got {value!r}") from None
    if k < 1 or k != value:
        raise _bad_request(f"row {row}: column 'k' must be a positive integer, got {value!r}")
    return k


class ServablePolicy(PythonModel):
    """Top-k next items for users given their recent original item ids (history masked)."""

    def load_context(self, context) -> None:
        from recmodels.runtime import default_device
        from recmodels.storage.model_io import load_policy
        from recmodels.tokenization.items import load_item_codes, tokenization_for

        checkpoint = context.artifacts["checkpoint"]
        self.policy = load_policy(checkpoint).to(default_device())
        try:  # the item codes its tokenization reads (semantic IDs) travel as an artifact of the model
            self.tokenization = tokenization_for(self.policy, load_item_codes(context.artifacts, of=self.policy))
        except ValueError as exc:
            raise MlflowException(f"checkpoint {checkpoint}: {exc}") from exc
        catalog = pd.read_parquet(context.artifacts["catalog"], columns=["item_idx", "item_id"])
        n_items = self.tokenization.n_items(self.policy)
        idx = catalog["item_idx"].to_numpy()
        if len(catalog) != n_items or not np.array_equal(np.sort(idx), np.arange(1, n_items + 1)):
            raise MlflowException(f"catalog artifact {context.artifacts['catalog']} must hold item_idx 1..{n_items} "
                                  f"once each (the policy's vocabulary), got {len(catalog)} rows")
        self.item_ids = np.empty(n_items + 1, dtype=object)  # token -> original item id (0 is padding)
        self.item_ids[idx] = catalog["item_id"].astype(str).to_numpy()
        self.token = {item_id: int(i) for i, item_id in zip(idx, self.item_ids[idx])}
        self.decoding = {**DEFAULT_DECODING, **(context.model_config or {})}

    def encode(self, item_ids: list[str]) -> tuple[list[int], list[str]]:
        """Original item ids -> (the policy's tokens of the known ones, the unknown ids in request order)."""
        tokens = [self.token[i] for i in item_ids if i in self.token]
        return tokens, [i for i in item_ids if i not in self.token]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import torch

        if not isinstance(model_input, pd.DataFrame) or HISTORY_COLUMN not in model_input.columns:
            got = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
            raise _bad_request(f"the request needs a column '{HISTORY_COLUMN}' (a list of item ids per user); "
                               f"got {got}")
        default_k = int(self.decoding["k"])
        rows = model_input.reset_index(drop=True)
        ks = [_as_k(v, r, default_k) for r, v in enumerate(rows["k"])] if "k" in rows else [default_k] * len(rows)
        max_len = self.policy.cfg.max_len
        history = np.zeros((len(rows), max_len), np.int64)  # [B, T] left-padded tokens
        seen, unknown = [], []
        for r, value in enumerate(rows[HISTORY_COLUMN]):
            tokens, missing = self.encode(_as_id_list(value, r))
            recent = tokens[-max_len:]
            if recent:
                history[r, -len(recent):] = recent
            seen.append(np.unique(tokens) if self.decoding["mask_history"] else np.zeros(0, np.int64))
            unknown.append(missing)
        out = {"item_ids": [], "scores": [], "unknown_item_ids": unknown}
        if len(rows):
            for items, probs in self.tokenization.recommend(self.policy, torch.as_tensor(history), seen, ks):
                out["item_ids"].append([str(i) for i in self.item_ids[items]])
                out["scores"].append([round(float(p), 6) for p in probs])
        return pd.DataFrame(out)


mlflow.models.set_model(ServablePolicy())
