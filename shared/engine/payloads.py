# intent_ref: platform.execution
"""Claim checks: a step output over the inline limit is stored as a blob and travels as a reference."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContainerClient, ContentSettings

from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine.steps import AttemptKey
from shared.modules.contract import StepFailed
from shared.storage.blob import StorageCall, artifacts_container, request_container, unbounded
from shared.tenants.offboarding import kept_for_tenant, tenant_blob_prefix

BLOB_REF = "$blob"
"""The one key of an output that was stored as a blob: {"$blob": {"container", "name", "size", "sha256"}}."""

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class StoredOutputError(ValueError):
    """A stored output cannot be trusted: its reference points outside the tenant's prefix, or its blob is missing
    or no longer holds the bytes the reference was made from."""


class TenantErasedError(StepFailed):
    """The tenant was erased while a step's output was stored: the blob is removed, and no retry can store it."""

    def __init__(self, tenant_id: UUID) -> None:
        """The error of `tenant_id`'s output, which is not stored."""
        super().__init__(f"tenant {tenant_id} was erased; the step's output was not stored", retryable=False)


def is_blob_ref(value: Any) -> bool:
    """Whether `value` is a stored output's reference rather than the output itself."""
    return isinstance(value, dict) and set(value) == {BLOB_REF}


OUTPUTS_FOLDER = ".outputs"
"""The folder of an execution's stored outputs, beside its steps' artifact folders (`<step>/`, artifact.write). The
dot keeps the two apart: no step id holds one (STEP_ID_PATTERN). It was `outputs/`, which a step named `outputs`
shared, so that its artifact could replace, pre-empt or (compensated) delete a stored output of its execution.
References made then still load: a reader checks the tenant's prefix and the digest, never the folder."""


def blob_name(tenant_id: UUID, execution_id: UUID, sha256: str, folder: str | None = None) -> str:
    """Where an output is stored: under the tenant's prefix (so erasure finds it), named by its content's digest,
    in a `folder` of its writer's own under the execution's outputs when it names one."""
    within = f"{folder}/" if folder else ""
    return f"{tenant_blob_prefix(tenant_id)}executions/{execution_id}/{OUTPUTS_FOLDER}/{within}sha256-{sha256}.json"


def claim_check(
    tenant_id: UUID,
    key: AttemptKey,
    output: Any,
    *,
    limit: int | None = None,
    container: ContainerClient | None = None,
    for_request: bool = False,
    within: StorageCall = unbounded,
    removal_within: StorageCall | None = None,
    look_within_s: Callable[[], float] | None = None,
    folder: str | None = None,
    written: Callable[[ContainerClient, dict[str, Any]], None] | None = None,
) -> Any:
    """`output` itself when its JSON fits in `limit` bytes (QP_PAYLOAD_INLINE_MAX_BYTES), else its blob reference
    (stored through the request's container, quick to give up, when a request waits on it: `for_request`).

    `within` bounds each storage call (the process's first container check, the upload, the look at a blob found
    under the name, an erased tenant's removal): the module worker passes its attempt's deadline, since under the
    SDK's own retries a store that was away held the module thread for minutes past it (ADR 0026). Its failure (a
    step failure) leaves the output unstored, and no reference to it is made. `removal_within` (default `within`)
    bounds an erased tenant's removal, which must be tried even when the upload spent the deadline. `folder` (under
    the execution's outputs) keeps the blob apart from every other writer's, so one whose output is then refused can
    remove it (`discard`): a digest's name alone may be another step's output too. `look_within_s`, called once the
    blob is written, answers how long the look at its tenant may wait for the tenant row and run (`kept_for_tenant`;
    it may raise a step failure instead, to leave the look undone); without it an erasure holding the row is waited
    for up to the statement timeout. `written`, called with the container and the reference once the blob is
    written, before that look: a caller whose look then fails may make the look alone again (`kept_reference`).

    The name is the content's digest and a blob holding these bytes is never overwritten, so a stored output never
    changes under a reference that points at it. A blob found under the name holding other bytes is replaced: no
    reference to it can be read (its digest names these bytes). TenantErasedError (a step failure, not retried) when
    the tenant was erased meanwhile: its blob is removed again.
    """
    body = json.dumps(output, separators=(",", ":"), ensure_ascii=False).encode()
    # An output shaped like a reference (a worker's, or a body an outside server chose) is stored as an oversized
    # one is: kept inline it would later be read as the platform's reference, splicing in the stored output it names.
    if not is_blob_ref(output) and len(body) <= (
        limit if limit is not None else get_settings().QP_PAYLOAD_INLINE_MAX_BYTES
    ):
        return output
    if container is not None:
        target = container
    elif for_request:
        target = request_container(get_settings())
    else:
        target = artifacts_container(get_settings(), within=within)
    digest = hashlib.sha256(body).hexdigest()
    name = blob_name(tenant_id, key.execution_id, digest, folder)
    settings = ContentSettings(content_type="application/json")
    what = f"the storing of the output {name!r}"
    try:
        within(
            what,
            lambda **options: target.upload_blob(name, body, overwrite=False, content_settings=settings, **options),
        )
    except ResourceExistsError:
        # Stored before (a redelivery, or another step with the same output), or not: the name alone does not say.
        if not _holds(target, name, body, within):
            within(
                what,
                lambda **options: target.upload_blob(name, body, overwrite=True, content_settings=settings, **options),
            )
    reference = {BLOB_REF: {"container": target.container_name, "name": name, "size": len(body), "sha256": digest}}
    if written is not None:
        written(target, reference)
    return kept_reference(tenant_id, target, reference, within=removal_within or within, look_within_s=look_within_s)


def kept_reference(
    tenant_id: UUID,
    container: ContainerClient,
    reference: dict[str, Any],
    *,
    within: StorageCall = unbounded,
    look_within_s: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """`reference`, to the tenant's blob just written in `container`, once the look at its tenant
    (`kept_for_tenant`) finds it still there; TenantErasedError, the blob removed (`within` bounds the removal), when
    it was erased meanwhile. The last part of `claim_check`; alone, the look again of a store whose look the
    database stopped after its blob was written (`claim_check(written=...)`): the blob is neither uploaded nor
    compared again."""
    look_s = look_within_s() if look_within_s is not None else None
    if not kept_for_tenant(tenant_id, container, reference[BLOB_REF]["name"], within=within, look_within_s=look_s):
        raise TenantErasedError(tenant_id)
    return reference


def discard(tenant_id: UUID, reference: Any, container: ContainerClient) -> None:
    """Remove the blob of an output that was stored and then refused, so no reference to it was recorded (only for
    a blob in a folder of its writer's own, `claim_check(folder=...)`). A failure is logged: the blob is the tenant's
    and goes with its erasure."""
    name, _, _ = _checked_reference(tenant_id, reference)
    try:
        container.delete_blob(name)
    except ResourceNotFoundError:
        pass  # a copy of the same refused request removed it first
    except AzureError as exc:
        logger.warning("the refused output %s was not removed: %s", name, exc)


def _holds(container: ContainerClient, name: str, body: bytes, within: StorageCall = unbounded) -> bool:
    """Whether the blob `name` holds exactly `body` (False when it is gone)."""
    try:
        # One byte more than `body` is enough to tell a longer blob, without reading all of it; the whole read is
        # one bounded call, as a large blob's later chunks are fetched by `readall`.
        return bool(
            within(
                f"the check of the stored output {name!r}",
                lambda **options: container.download_blob(name, offset=0, length=len(body) + 1, **options).readall(),
            )
            == body
        )
    except ResourceNotFoundError:
        return False


def _checked_reference(tenant_id: UUID, value: dict[str, Any]) -> tuple[str, int, str]:
    """The name, size and digest of a reference that may be read for `tenant_id`; StoredOutputError otherwise."""
    ref = value[BLOB_REF]
    if not isinstance(ref, dict):
        raise StoredOutputError("the stored output's reference is malformed")
    name, size, digest = ref.get("name"), ref.get("size"), ref.get("sha256")
    # Dot segments or backslashes could be resolved into another tenant's prefix on the way to the store, and a
    # segment ending with a dot ('...', 'a.') may be trimmed of it there (Azure's naming rules say none should end
    # so): the platform names no stored output that way, so such a reference is refused.
    if (
        not isinstance(name, str)
        or not name.startswith(tenant_blob_prefix(tenant_id))
        or "\\" in name
        or any(segment == "" or segment.endswith(".") for segment in name.split("/"))
    ):
        raise StoredOutputError("the stored output is not under the tenant's prefix")
    if (
        not isinstance(size, int)
        or isinstance(size, bool)
        or size < 0
        or not isinstance(digest, str)
        or not _SHA256.match(digest)
    ):
        raise StoredOutputError(f"the stored output {name} has no usable size and sha256 in its reference")
    return name, size, digest


def load(value: Any, tenant_id: UUID, *, container: ContainerClient | None = None) -> Any:
    """The output a reference stands for (or `value` itself when it is not a reference), read from `tenant_id`'s
    prefix only and only when its bytes are the ones the reference was made from."""
    if not is_blob_ref(value):
        return value
    name, size, digest = _checked_reference(tenant_id, value)
    target = container or artifacts_container(get_settings())
    try:
        # One byte more than the reference says is enough to tell a grown blob, without reading all of it.
        body = target.download_blob(name, offset=0, length=size + 1).readall()
    except ResourceNotFoundError:
        raise StoredOutputError(f"the stored output {name} is missing") from None
    if len(body) != size or hashlib.sha256(body).hexdigest() != digest:
        raise StoredOutputError(
            f"the stored output {name} does not match its sha256: it was altered after it was stored, and is not used"
        )
    return json.loads(body)


def project(output: Any, paths: Iterable[tuple[str, ...]]) -> Any:
    """The parts of `output` that `paths` point at, in their places (what references read of a stored output).

    An empty path, or an output that is not an object, gives the whole output. A list on the way is taken whole,
    since an index into a thinned-out list would point at another element.
    """
    ordered = sorted(set(paths), key=len)
    if not isinstance(output, dict) or not ordered or ordered[0] == ():
        return output
    parts: dict[str, Any] = {}
    for path in ordered:
        _copy_path(output, parts, path)
    return parts


def _copy_path(source: dict[str, Any], target: dict[str, Any], path: tuple[str, ...]) -> None:
    head, rest = path[0], path[1:]
    if head not in source:
        return  # absent stays absent: the reference resolves (or `when` reads it) as it would on the whole
    value = source[head]
    if not rest or not isinstance(value, dict):
        target[head] = value
        return
    child = target.setdefault(head, {})
    if child is not value:  # a shorter path took the whole object already
        _copy_path(value, child, rest)


MAX_NESTED_LOAD_BYTES = 8 * 1024 * 1024
"""What the stored outputs inside one output (a child execution's, each step's own) may come to when loaded."""

_Trie = dict[str | None, "_Trie"]
"""The paths into an output, merged by their common heads; the None member marks where a path ends."""

_PARENT = "SELECT parent_execution_id, parent_step_id FROM app.executions WHERE id = %s"


def load_parts(
    tenant_id: UUID,
    reference: Any,
    paths: Iterable[tuple[str, ...]],
    *,
    child: bool = True,
    container: ContainerClient | None = None,
) -> Any:
    """The referenced parts of a stored output, read from the tenant's own prefix only.

    An output holding stored outputs inside it (a child execution's, one per step) has those read where the paths
    lead, at most MAX_NESTED_LOAD_BYTES of them (StoredOutputError beyond). Only a child's step outputs are read
    there (`outputs.<step>`, and so on down its own children's), and only when the output is a child's (`child`) and
    the database says so (`_NestedLoad`): anything else inside an output is what its step gave, read as it is."""
    wanted = sorted(set(paths), key=len)
    trie: _Trie = {}
    for path in wanted:
        node = trie
        for head in path:
            node = node.setdefault(head, {})
        node[None] = {}
    value = load(reference, tenant_id, container=container)
    nested = _NestedLoad(tenant_id, container)
    top = nested.child_of(reference, value) if child else None
    return project(nested.along(value, trie, child=top), wanted)


def _named_execution(value: Any) -> UUID | None:
    """The execution a child's output names (`{"execution_id", "outputs": {...}}`), if it is shaped as one."""
    if not isinstance(value, dict) or not isinstance(value.get("outputs"), dict):
        return None
    named = value.get("execution_id")
    try:
        execution_id = UUID(named) if isinstance(named, str) else None
    except ValueError:
        return None
    return execution_id if execution_id is not None and str(execution_id) == named else None


class _NestedLoad:
    """Reads the stored outputs a child's output holds, along the paths and wholly beneath their ends, within a byte
    budget; each position is read at most once, so an output read from a blob is never taken for a reference.

    What is a child's output is the database's to say, never the output's: an output shaped as one may be any step's
    (a worker's, a response body), naming another execution's stored outputs. The top output's execution must be a
    child of the execution whose folder holds the output's blob (any child, for an inline output: only an intent
    step's is loaded inline, `holds_stored_outputs`); beneath it, a step's output is a grandchild's only when that
    execution was started by that very step of the child, so only intent.run steps are descended into. A child's
    step outputs are read from its own folder only (where every store of its steps puts them)."""

    def __init__(self, tenant_id: UUID, container: ContainerClient | None) -> None:
        self._tenant_id = tenant_id
        self._container = container
        self._left = MAX_NESTED_LOAD_BYTES

    def child_of(self, reference: Any, value: Any) -> UUID | None:
        """The child execution whose output `value` (read from `reference`) is, or None when it is none."""
        named = _named_execution(value)
        parent = None if named is None else self._parent(named)
        if parent is None:
            return None
        if is_blob_ref(reference) and _folder_execution(self._tenant_id, reference) != parent[0]:
            return None
        return named

    def along(self, value: Any, trie: _Trie, *, child: UUID | None) -> Any:
        """`value` with the stored outputs `trie` leads through read; `child` is the execution whose output `value`
        is, when it is one (its `outputs` map holds its steps')."""
        if None in trie:
            return self._beneath(value, child)
        if isinstance(value, dict):
            return {
                key: self._member(key, item, trie[key], child) if key in trie else item for key, item in value.items()
            }
        if isinstance(value, list):
            return [
                self.along(item, trie[str(index)], child=None) if str(index) in trie else item
                for index, item in enumerate(value)
            ]
        return value

    def _member(self, key: str, value: Any, trie: _Trie, child: UUID | None) -> Any:
        if child is not None and key == "outputs" and isinstance(value, dict):
            # The child's steps: each may be a stored output, or a grandchild's output in turn (a path ending here
            # takes them all).
            whole = None in trie
            return {
                step: self._step(child, step, output, trie if whole else trie[step])
                if whole or step in trie
                else output
                for step, output in value.items()
            }
        return self.along(value, trie, child=None)

    def _beneath(self, value: Any, child: UUID | None) -> Any:
        if child is None or not isinstance(value, dict) or not isinstance(value.get("outputs"), dict):
            return value
        steps = {step: self._step(child, step, output, {None: {}}) for step, output in value["outputs"].items()}
        return {**value, "outputs": steps}

    def _step(self, child: UUID, step: str, output: Any, trie: _Trie) -> Any:
        """A step's output of `child`, read, and its own child's outputs beneath it when the step started one."""
        value = self._read(output, child)
        named = _named_execution(value)
        grandchild = named if named is not None and self._parent(named) == (child, step) else None
        return self.along(value, trie, child=grandchild)

    def _parent(self, execution_id: UUID) -> tuple[UUID, str | None] | None:
        """The execution and step that started `execution_id` (None: it is no child of the tenant's)."""
        with tenant_transaction(self._tenant_id) as conn:
            row = conn.execute(_PARENT, (execution_id,)).fetchone()
        if row is None or row["parent_execution_id"] is None:
            return None
        return row["parent_execution_id"], row["parent_step_id"]

    def _read(self, value: Any, child: UUID) -> Any:
        if not is_blob_ref(value):
            return value
        name, size, _ = _checked_reference(self._tenant_id, value)
        if _folder_execution(self._tenant_id, value) != child:
            raise StoredOutputError(f"the stored output {name} is not in the folder of child execution {child}")
        self._left -= size
        if self._left < 0:
            raise StoredOutputError(
                f"the stored outputs read for one reference come to more than {MAX_NESTED_LOAD_BYTES} bytes (at {name})"
            )
        return load(value, self._tenant_id, container=self._container)


def _folder_execution(tenant_id: UUID, reference: Any) -> UUID | None:
    """The execution whose folder holds a stored output (`blob_name`), or None when its name has none."""
    ref = reference.get(BLOB_REF) if isinstance(reference, dict) else None
    name = ref.get("name") if isinstance(ref, dict) else None
    prefix = f"{tenant_blob_prefix(tenant_id)}executions/"
    if not isinstance(name, str) or not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split("/", 1)[0]
    try:
        execution_id = UUID(head)
    except ValueError:
        return None
    return execution_id if str(execution_id) == head else None
