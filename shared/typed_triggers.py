# intent_ref: platform.execution
"""Typed views of the Functions SDKs' untyped trigger decorators, so the app stays under strict type checking."""

from collections.abc import Callable
from typing import Any, TypeVar, cast

Function = TypeVar("Function", bound=Callable[..., Any])


def typed(decorator: Any) -> Callable[[Function], Function]:
    """The SDK decorator as one that keeps the function's type (it registers the function, the type is unchanged)."""
    return cast(Callable[[Function], Function], decorator)
