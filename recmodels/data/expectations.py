"""Great Expectations plumbing shared by the data checks (`data/quality.py`) and the semantic-ID
bijection check (`tokenization/quality.py`): an in-memory context, and plain Python values out of
its results. GX is imported here, lazily (it costs seconds)."""
from __future__ import annotations

from typing import Any

import numpy as np


def gx_context():
    """(the great_expectations module, an ephemeral in-memory context without analytics or progress bars)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig)

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False))
    return gx, gx.get_context(mode="ephemeral", project_config=config)


def plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so observed values serialize as metadata."""
    return value.item() if isinstance(value, np.generic) else value
