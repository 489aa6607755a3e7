"""What the forkserver of `full_chain`'s step processes loads once, so that each step process, forked from
it, starts with it instead of loading it again (pipelines/run_config.py `executor_config`, preloaded with
Dagster's multiprocess executor option `start_method: forkserver: preload_modules`).

Measured per step process on the small chain (2 cores): importing the code location with torch
(about 4 s), mlflow and its sqlalchemy stores (about 4 s), GX for the data checks (3.5 s), torch._dynamo,
which an optimizer's first step imports (1.4 s), and MLflow's map of the installed packages, which
logging a model builds to check its pip requirements (1.5 s).

Nothing here opens a file, a connection or a thread: the forked processes share only what was imported.
"""
from __future__ import annotations

import great_expectations  # noqa: F401
import mlflow  # noqa: F401
import mlflow.pyfunc  # noqa: F401
import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
import torch._dynamo  # noqa: F401

import pipelines.definitions  # noqa: F401


def _warm_mlflow_package_map() -> None:
    """Build MLflow's module -> installed package map (`mlflow.pyfunc.log_model` reads it) once, here."""
    try:
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map
    except ImportError:  # another MLflow version: each step process builds it when it logs a model
        return
    _init_packages_to_modules_map()


_warm_mlflow_package_map()
