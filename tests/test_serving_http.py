"""`mlflow models serve -m models:/recalign-post-trained-policy.<data set>@champion` answers real HTTP requests.

A tiny policy is registered and promoted in a temporary MLflow sqlite store, then served on
127.0.0.1 with the project's environment (`--env-manager local`) and queried with item ids.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from assets.model_runs import POST_TRAINED_MODEL, log_servable_policy, registered_model_name
from assets.registry import promote
from assets.resources import MlflowTracking
from recmodels.storage.checkpoints import save_checkpoint
from recmodels.models.policy import GenerativePolicy, PolicyConfig
from scripts.local_servers import HOST, free_port, post_json, running, serve_command, server_env

pytestmark = pytest.mark.integration

ITEM_IDS = [f"tt{i:03d}" for i in range(1, 13)]
MODEL = registered_model_name(POST_TRAINED_MODEL, "serving")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    tmp = tmp_path_factory.mktemp("serving")
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_root=str(tmp / "artifacts"))
    torch.manual_seed(0)
    cfg = PolicyConfig(vocab_size=len(ITEM_IDS) + 1, max_len=5, d_model=8, n_heads=1, n_layers=1)
    checkpoint = save_checkpoint(tmp / "policy.pt", GenerativePolicy(cfg), cfg)
    catalog = tmp / "catalog.parquet"
    pd.DataFrame({"item_idx": np.arange(1, len(ITEM_IDS) + 1, dtype=np.int32), "item_id": ITEM_IDS}).to_parquet(catalog)
    tracking.client()  # points the fluent API at the store
    with mlflow.start_run(experiment_id=tracking.experiment_id("serving")) as run:
        info = log_servable_policy(checkpoint, catalog)
    version = tracking.register_logged_model(run, info, MODEL, tags={"status": "challenger"})
    promote(tracking.client(), MODEL, version)
    return tmp, tracking


def test_the_champion_answers_over_http(store):
    tmp, tracking = store
    port = free_port()
    env = server_env(MLFLOW_TRACKING_URI=tracking.tracking_uri)
    with running(serve_command(f"models:/{MODEL}@champion", port), f"http://{HOST}:{port}/ping",
                 tmp / "serve.log", timeout_s=120, env=env) as startup_s:
        status, body = post_json(f"http://{HOST}:{port}/invocations", {"dataframe_records": [
            {"recent_item_ids": ["tt001", "tt002", "not-an-item"], "k": 4},
            {"recent_item_ids": ["tt012"]}]})
        bad_status, bad_body = post_json(f"http://{HOST}:{port}/invocations",
                                         {"dataframe_records": [{"recent_item_ids": ["tt001"], "k": -1}]})
    print(f"scoring server healthy after {startup_s:.1f} s")
    assert status == 200, body
    first, second = body["predictions"]
    assert len(first["item_ids"]) == 4 and set(first["item_ids"]) <= set(ITEM_IDS) - {"tt001", "tt002"}
    assert first["unknown_item_ids"] == ["not-an-item"]
    assert len(second["item_ids"]) == 10 and "tt012" not in second["item_ids"]  # the default k
    assert second["scores"] == sorted(second["scores"], reverse=True)
    assert bad_status == 400 and "column 'k' must be a positive integer" in bad_body["message"]
