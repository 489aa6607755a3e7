"""`make run`'s two helpers: the run config it builds from its variables, and the summary it prints.

The summary is checked on real `full_chain` runs (tiny models) in a real Dagster instance and MLflow
store; CI runs `make run` itself on MovieLens-100k (`.ci/run`)."""
from __future__ import annotations

import json

import dagster as dg
import pytest
import yaml

from pipelines.definitions import defs
from pipelines.run_config import RunConfigError, full_chain_run_config, main, parse_columns
from recmodels.runtime import available_cores
from pipelines.run_summary import exit_code, latest_run, summary
from scripts.ui_check import small_run_config
from tests.synthetic import make_synthetic_logs

JOB = defs.resolve_job_def("full_chain")


@pytest.mark.parametrize("kwargs", [{}, {"source": "movielens-1m"}, {"source": "simulator"},
                                    {"tokenization": "semantic"}])
def test_every_documented_variant_is_a_valid_full_chain_config(kwargs):
    config = full_chain_run_config(**kwargs)
    assert dg.validate_run_config(JOB, config)
    assert "source" not in config["ops"]["raw_logs"]["config"]  # the source is the run's partition
    assert config["ops"]["pretrained_policy"]["config"]["tokenization"] == kwargs.get("tokenization", "atomic")
    assert config["execution"]["config"]["multiprocess"]["max_concurrent"] == available_cores()


@pytest.mark.parametrize("workers, expected", [("", None), ("1", 1), (" 3 ", 3), (2, 2)])
def test_workers_become_the_executors_max_concurrent(workers, expected):
    config = full_chain_run_config(workers=workers)
    assert dg.validate_run_config(JOB, config)
    multiprocess = config["execution"]["config"]["multiprocess"]
    assert multiprocess["max_concurrent"] == (expected or available_cores())
    assert "forkserver" in multiprocess["start_method"]  # the whole executor config, not only the count


def test_the_config_file_holds_the_workers_and_the_tags_the_partition(tmp_path, capsys):
    out, tags = tmp_path / "run_config.yaml", tmp_path / "run_tags.json"
    assert main(["--source", "simulator", "--workers", "1", "--out", str(out), "--tags-out", str(tags)]) == 0
    assert yaml.safe_load(out.read_text())["execution"]["config"]["multiprocess"]["max_concurrent"] == 1
    assert json.loads(tags.read_text()) == {"dagster/partition": "simulator"}
    assert main(["--workers", "many", "--out", str(out)]) == 2
    assert "make run: WORKERS='many'" in capsys.readouterr().err


def test_file_source_takes_an_absolute_path_and_the_column_mapping(tmp_path, monkeypatch):
    (tmp_path / "logs.csv").write_text("uid,movie_id,ts,rating\n1,2,1997-12-04 15:55:49,4\n")
    monkeypatch.chdir(tmp_path)
    config = full_chain_run_config("file", "logs.csv", "uid=user_id, movie_id=item_id,ts=timestamp")
    assert dg.validate_run_config(JOB, config)
    assert config["ops"]["raw_logs"]["config"] == {
        "path": str(tmp_path / "logs.csv"),
        "columns": {"uid": "user_id", "movie_id": "item_id", "ts": "timestamp"}}


@pytest.mark.parametrize("kwargs, named", [
    ({"source": "movielens-10m"}, "SOURCE='movielens-10m'"),
    ({"source": "file"}, "SOURCE=file needs LOGS"),
    ({"source": "file", "logs": "/no/such/logs.csv"}, "LOGS='/no/such/logs.csv': no such file"),
    ({"source": "simulator", "columns": "a=user_id"}, "LOGS and COLUMNS are for SOURCE=file"),
    ({"tokenization": "bpe"}, "TOKENIZATION='bpe'"),
    ({"workers": "0"}, "WORKERS='0'"),
    ({"workers": "-2"}, "WORKERS='-2'"),
    ({"workers": "two"}, "WORKERS='two'"),
    ({"workers": "1.5"}, "WORKERS='1.5'"),
])
def test_bad_variables_are_refused_naming_the_variable(kwargs, named):
    with pytest.raises(RunConfigError, match=named.replace("(", r"\(")):
        full_chain_run_config(**kwargs)


@pytest.mark.parametrize("text, named", [("movie_id", "'movie_id' is not FILE_COLUMN=CONTRACT_COLUMN"),
                                          ("a=item_id,a=user_id", "'a' is mapped twice"), ("=item_id", "'=item_id'")])
def test_malformed_column_mappings_are_refused(text, named):
    with pytest.raises(RunConfigError, match=named):
        parse_columns(text)


def run_chain(instance: dg.DagsterInstance, raw_logs_config: dict) -> dg.ExecuteInProcessResult:
    config = small_run_config()
    config["ops"]["raw_logs"] = {"config": raw_logs_config}
    return JOB.execute_in_process(run_config=config, instance=instance, raise_on_error=False, partition_key="file")


@pytest.mark.integration
def test_summary_of_a_successful_run_names_report_verdict_champion_and_next_commands(tmp_path):
    logs = tmp_path / "logs.parquet"
    make_synthetic_logs(n_users=50, n_items=30, seed=1).to_parquet(logs)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = run_chain(instance, {"path": str(logs)})
        assert result.success
        run = latest_run(instance)
        lines, report = summary(instance, run)
    text = "\n".join(lines)
    assert run.run_id == result.run_id and "SUCCESS" in lines[0]
    assert f"Report: {result.output_for_node('evaluation_report').md}" in text
    assert "history masked" in text and "unmasked (RecBole-comparable)" in text
    assert all(sentence in text for sentence in report["verdict"]) and report["verdict"]
    champion = result.output_for_node("champion")
    assert f"Champion: v{champion.champion_version} of models:/{champion.registered_model}@champion" in text
    assert champion.registered_model == f"recalign-post-trained-policy.{champion.dataset}"
    assert "make dev" in text and "make serve" in text
    masked = report["policies"]["pretrained"]["metrics"]["ndcg@10"]["mean"]
    assert exit_code(run, report, floor=None) == (0, None)
    assert exit_code(run, report, floor=masked) == (0, None)
    code, problem = exit_code(run, report, floor=masked + 0.01)
    assert code == 1 and "below the floor" in problem


@pytest.mark.integration
def test_summary_of_a_failed_run_names_the_failed_step_and_fails(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp,rating\n1,2,yesterday,4\n")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = run_chain(instance, {"path": str(bad)})
        assert not result.success
        run = latest_run(instance)
        lines, report = summary(instance, run)
    text = "\n".join(lines)
    assert "FAILURE" in lines[0] and "failed step raw_logs" in text and "'yesterday'" in text
    assert report is None and "make dev" in text
    assert exit_code(run, report, floor=None)[0] == 1
