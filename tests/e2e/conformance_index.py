# intent_ref: platform.devhost
"""The conformance app indexed once per test process, for tests that run devhost components in-process."""

from __future__ import annotations

from functools import lru_cache

from devhost.child import PROJECT_ROOT
from devhost.loader import FunctionIndex, load_function_app

CONFORMANCE_APP = PROJECT_ROOT / "tests" / "conformance_app"


@lru_cache(maxsize=1)
def conformance_index() -> FunctionIndex:
    """The app's index; cached because get_functions() may run only once per app object."""
    return load_function_app(CONFORMANCE_APP / "function_app.py")
