"""The variants table: every post-trained policy of the chain by name, a method with fixed knobs (docs/design.md §4).

Built from the method specs of registry.py, in registry order: every method once with its default
knobs, named after the method (unless its sweep replaces the defaults), then every method's default
sweep, one variant per value, named `<method>_<label>_<value>` (`exp_rw_sft_lambda_0_3`). The assets
(one `post_trained_<variant>` each), the report (a variant's knobs) and the studies read it.

A study selects from the same specs with a sweep override (`swept_variants`): each swept method at
the study's values (named by the same rule), then the other methods it names with their defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from recmodels.post_training.registry import METHODS, get_method


@dataclass(frozen=True)
class Variant:
    """A post-training method with fixed knobs, trained and evaluated under `name`."""

    name: str
    method: str
    method_params: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)  # PostTrainConfig fields of this variant (a study's lr)


def knob_suffix(value: float) -> str:
    """0.3 -> "0_3": a knob value in a variant name."""
    return f"{value:g}".replace(".", "_").replace("-", "m")


def sweep_variants(method: str, values: Sequence[float] | None = None) -> tuple[Variant, ...]:
    """`method` once per value of its swept knob (default: its spec's sweep), `<method>_<label>_<value>`."""
    sweep = get_method(method).sweep
    if sweep is None:
        raise ValueError(f"post-training method {method!r} has no swept knob")
    return tuple(Variant(f"{method}_{sweep.label}_{knob_suffix(v)}", method, {sweep.knob: float(v)})
                 for v in (sweep.values if values is None else values))


def variants_table() -> dict[str, Variant]:
    """The chain's variants by name: every method with its defaults (unless its sweep replaces them), then the
    default sweeps; both in registry order."""
    defaults = [Variant(name, name) for name, spec in METHODS.items() if spec.sweep is None or spec.sweep.with_default]
    swept = [v for name, spec in METHODS.items() if spec.sweep is not None for v in sweep_variants(name)]
    return {v.name: v for v in (*defaults, *swept)}


def swept_variants(methods: Sequence[str], sweeps: Mapping[str, Sequence[float]]) -> tuple[Variant, ...]:
    """A study's selection: each method of `sweeps` at its values (in the order given), then every other
    method of `methods` once with its defaults. A method with no values in `sweeps` runs with its defaults."""
    sweeps = {m: tuple(values) for m, values in sweeps.items() if len(values)}
    out = [v for method, values in sweeps.items() for v in sweep_variants(method, values)]
    return (*out, *(Variant(m, m) for m in methods if m not in sweeps))


def variant_knobs(name: str) -> dict[str, Any]:
    """The fixed knobs of the chain's variant `name` ({} for a name that is not in the table)."""
    variant = variants_table().get(name)
    return dict(variant.method_params) if variant is not None else {}


VARIANTS = variants_table()
