# intent_ref: platform.devhost
"""Invoke an indexed function as the Python worker does: Datum in, azure.functions converters, Datum out."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
import traceback
import typing
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, Protocol

import azure.functions as func
from azure.functions import meta
from azure.functions._abc import RetryContext, RpcException, TraceContext

from devhost.loader import function_name, trigger_of

logger = logging.getLogger(__name__)

_REGISTRY: Any = meta.get_binding_registry()  # type: ignore[no-untyped-call]


class FunctionInvocationError(Exception):
    """The user function raised; the message is the worker's `"<ExcType>: <message>"` form."""

    def __init__(self, function_name: str, exc: BaseException, *, friendly: str | None = None) -> None:
        self.function_name = function_name
        self.exc = exc
        self.friendly = friendly or f"{type(exc).__name__}: {exc}"
        super().__init__(self.friendly)

    def stack(self) -> str:
        """The formatted traceback of what the function raised (a worker process's own, when it ran there)."""
        return getattr(self.exc, "remote_traceback", None) or "".join(traceback.format_exception(self.exc))


class _GenericBinding:
    """The worker's generic binding: the Datum's value as it is (used for str/bytes parameters)."""

    @staticmethod
    def decode(datum: meta.Datum | None, *, trigger_metadata: Any) -> Any:  # noqa: ARG004
        return None if datum is None else datum.value

    @staticmethod
    def has_trigger_support() -> bool:
        return False


class _TraceContext(TraceContext):
    def __init__(self, trace_parent: str = "", trace_state: str = "") -> None:
        self._parent, self._state = trace_parent, trace_state

    @property
    def trace_state(self) -> str:
        return self._state

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class Retry(NamedTuple):
    """Which run of an invocation this is, as `context.retry_context` tells the function."""

    retry_count: int = 0
    """0 for the first run, 1 for the first retry, and so on."""
    max_retry_count: int = 0
    """The policy's retries (-1: without end); 0 without a policy."""


class _RetryContext(RetryContext):
    def __init__(self, retry: Retry) -> None:
        self._count, self._max = retry

    @property
    def retry_count(self) -> int:
        return self._count

    @property
    def max_retry_count(self) -> int:
        return self._max

    @property
    def exception(self) -> RpcException:
        raise AttributeError("no exception in a first attempt")


class InvocationContext(func.Context):
    """A real `func.Context` for one invocation."""

    def __init__(
        self, function_name: str, function_directory: str, trace_parent: str = "", retry: Retry | None = None
    ) -> None:
        self._invocation_id = str(uuid.uuid4())
        self._function_name = function_name
        self._function_directory = function_directory
        self._trace = _TraceContext(trace_parent)
        self._retry = _RetryContext(retry or Retry())
        self._thread_local = threading.local

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return self._thread_local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> TraceContext:
        return self._trace

    @property
    def retry_context(self) -> RetryContext:
        return self._retry


class _Out(func.Out[Any]):
    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


def _converter(binding_type: str) -> Any:
    return _REGISTRY.get(binding_type) or _GenericBinding


def has_implicit_output(binding_type: str) -> bool:
    """Whether the trigger's converter returns a value without a `$return` binding (durable triggers)."""
    conv = _REGISTRY.get(binding_type)
    if conv is None:
        return binding_type != "durableClient"
    return bool(conv.has_implicit_output())


class FunctionRunner(Protocol):
    """Runs a triggered function: in this process (Invoker) or in a worker process (devhost/workers.py)."""

    async def invoke(
        self,
        function: func.Function,
        inputs: dict[str, meta.Datum],
        trigger_metadata: dict[str, meta.Datum] | None = None,
        *,
        trace_parent: str = "",
        retry: Retry | None = None,
    ) -> meta.Datum | None:
        """Call `function` with `inputs`; its encoded output, if any. Raises FunctionInvocationError."""


class Invoker:
    """Runs functions: async ones on the loop, sync ones on a bounded thread pool (like the worker)."""

    def __init__(self, function_directory: str, max_threads: int = 16) -> None:
        self._directory = function_directory
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="devhost-fn")
        self.durable_binding: Callable[[], str] | None = None
        """The durableClient binding JSON for functions whose caller does not supply one (any trigger type)."""

    def shutdown(self) -> None:
        """Stop the thread pool (running calls finish)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def invoke(
        self,
        function: func.Function,
        inputs: dict[str, meta.Datum],
        trigger_metadata: dict[str, meta.Datum] | None = None,
        *,
        trace_parent: str = "",
        retry: Retry | None = None,
    ) -> meta.Datum | None:
        """Call `function` with its bindings decoded from `inputs`; return its encoded output, if any.

        Raises FunctionInvocationError when the user code raises.
        """
        result = await self.call(function, inputs, trigger_metadata, trace_parent=trace_parent, retry=retry)
        trigger_type = str(trigger_of(function).type)
        return_type = next((str(b.type) for b in function.get_bindings() if b.name == "$return"), None)
        if return_type is None and has_implicit_output(trigger_type):
            return_type = trigger_type
        if return_type is None:
            return None
        hints = type_hints(function.get_user_function())
        encoded: meta.Datum = _converter(return_type).encode(result, expected_type=hints.get("return"))
        return encoded

    async def call(
        self,
        function: func.Function,
        inputs: dict[str, meta.Datum],
        trigger_metadata: dict[str, meta.Datum] | None = None,
        *,
        trace_parent: str = "",
        native: dict[str, Any] | None = None,
        retry: Retry | None = None,
    ) -> Any:
        """Call `function` and return what it returned, unencoded; `native` holds bindings passed as they are (an
        HTTP-stream function's request object, as the worker passes it).

        Raises FunctionInvocationError when the user code raises.
        """
        user_function = function.get_user_function()
        hints = type_hints(user_function)
        parameters = inspect.signature(user_function).parameters
        kwargs: dict[str, Any] = {}
        outs: dict[str, tuple[str, _Out]] = {}
        name = function_name(function)
        for binding in function.get_bindings():
            if binding.name == "$return":
                continue
            if native is not None and binding.name in native:
                kwargs[binding.name] = native[binding.name]
                continue
            if binding.direction == 1:  # OUT: a func.Out the function sets
                out = _Out()
                outs[binding.name] = (str(binding.type), out)
                kwargs[binding.name] = out
                continue
            binding_type = str(binding.type)
            if binding_type == "durableClient" and binding.name not in inputs and self.durable_binding is not None:
                # The real host fills this input binding for every trigger, not only HTTP.
                inputs = {**inputs, binding.name: meta.Datum(self.durable_binding(), "string")}
            if hints.get(binding.name) in (str, bytes) and not has_implicit_output(binding_type):
                binding_type = "generic"
            conv = _converter(binding_type)
            is_trigger = binding_type != "generic" and bool(conv.has_trigger_support())
            kwargs[binding.name] = conv.decode(
                inputs.get(binding.name), trigger_metadata=(trigger_metadata or {}) if is_trigger else {}
            )
        if "context" in parameters and "context" not in kwargs:
            kwargs["context"] = InvocationContext(name, self._directory, trace_parent, retry)
        try:
            if inspect.iscoroutinefunction(user_function):
                result = await user_function(**kwargs)
            else:
                loop = asyncio.get_running_loop()
                call = functools.partial(contextvars.copy_context().run, user_function, **kwargs)
                result = await loop.run_in_executor(self._pool, call)
        except Exception as exc:
            raise FunctionInvocationError(name, exc) from exc
        for out_type, out in outs.values():
            if out.get() is not None:
                _converter(out_type).encode(out.get(), expected_type=None)
        return result


@functools.cache
def type_hints(fn: Any) -> dict[str, Any]:
    """The function's resolved annotations, once per function (read them, never change them)."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: the worker falls back to raw annotations
        return dict(getattr(fn, "__annotations__", {}))
