"""The base of every post-training method's knob model (docs/design.md §4).

A method's knobs are a pydantic model: unknown keys are rejected (`extra="forbid"`), values are
checked strictly (no "0.3" for a float, no 1 for a bool), ranges and enumerations are declared on
the fields (`Field(gt=0)`, `Literal[...]`) and alternative key names are `validation_alias=
AliasChoices(name, alias)`. The model's `title` is its method's name, so a bad value names both
the method and the knob. A field's `title` is the label the report shows for it (λ, α, ...).
"""
from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# a number that may be infinite but not NaN (NaN fails every comparison, so also `>= -inf`)
NotNaN = Annotated[float, Field(ge=-math.inf)]


class MethodKnobs(BaseModel):
    """A post-training method's knobs: subclasses declare them as fields and set `title` to the method's name."""

    model_config = ConfigDict(extra="forbid", strict=True)
