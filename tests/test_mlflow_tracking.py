"""The MLflow resource on a real sqlite store: steps that start together share one experiment per data set."""
from __future__ import annotations

from mlflow import MlflowClient

from assets.resources import MlflowTracking


def test_the_step_that_loses_the_race_to_create_the_experiment_uses_the_winners(tmp_path, monkeypatch):
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "art"))
    tracking.ensure_store()
    # This step looks the experiment up before the other step creates it, and creates it after: the store
    # refuses the second experiment of the same name.
    looked_up = MlflowClient.get_experiment_by_name
    calls: list[str] = []
    winner_id: list[str] = []

    def lookup_before_the_winner(client, name):
        calls.append(name)
        if len(calls) == 1:
            winner_id.append(MlflowClient(tracking.tracking_uri).create_experiment(name))
            return None
        return looked_up(client, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lookup_before_the_winner)

    assert tracking.experiment_id("simulator") == winner_id[0]
    monkeypatch.undo()
    names = [e.name for e in MlflowClient(tracking.tracking_uri).search_experiments()]
    assert names.count("recalign/simulator") == 1
