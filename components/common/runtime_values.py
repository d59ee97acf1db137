"""Execution properties that may be run-time parameters (TFX ``RuntimeParameter``, resolved by Kubeflow when
the run starts) instead of values. Component constructors validate the compile-time default and pass the
parameter itself on to their ComponentSpec; the executor then receives the run's value.

No tfx import: TFX itself recognises a RuntimeParameter by its class name, and so does this module.
"""

from __future__ import annotations

from typing import Any, Callable, Optional


def is_runtime_parameter(value: Any) -> bool:
    """True for a TFX ``RuntimeParameter`` (a Kubeflow pipeline parameter)."""
    return type(value).__name__ == "RuntimeParameter" and hasattr(value, "ptype")


def compile_time_value(value: Any) -> Any:
    """The value to validate when the pipeline is built: a RuntimeParameter's default, else the value."""
    return value.default if is_runtime_parameter(value) else value


def as_property(value: Any, convert: Callable[[Any], Any]) -> Optional[Any]:
    """``convert(value)`` for a plain value (None stays None); a RuntimeParameter passes through unchanged
    (Kubeflow substitutes the run's value, typed by the parameter's ptype)."""
    if value is None or is_runtime_parameter(value):
        return value
    return convert(value)
