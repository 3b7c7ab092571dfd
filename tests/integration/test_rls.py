# intent_ref: platform.tenant-isolation
"""Row-level security at SQL level, through the app's own login and tenant_transaction."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.db.roles import OWNER_ROLE, RUNTIME_ROLE
from shared.db.session import platform_transaction, runtime_transaction, tenant_transaction
from shared.tenants.offboarding import TENANT_TABLES

pytestmark = pytest.mark.integration

_DELETE_POLICIES = {("delete_pinned_tenant_read", "SELECT"), ("delete_pinned_tenant", "DELETE")}
# The tables whose rows the app deletes through one owner function each (migration 0046), with the owner's policies
# each needs; UPDATE where the function locks the rows it takes (FOR UPDATE SKIP LOCKED).
DELETE_FUNCTION_POLICIES = {
    "tenant_policies": _DELETE_POLICIES,
    "audit_outbox": _DELETE_POLICIES | {("delete_pinned_tenant_lock", "UPDATE")},
    "webhook_subscriptions": _DELETE_POLICIES,
    # And the retention timer's, which lock what they delete (migration 0073).
    "webhook_deliveries": _DELETE_POLICIES | {("delete_pinned_tenant_lock", "UPDATE")},
    "outbox": _DELETE_POLICIES | {("delete_pinned_tenant_lock", "UPDATE")},
    "idempotency_keys": _DELETE_POLICIES | {("delete_pinned_tenant_lock", "UPDATE")},
}


def _assert_delete_function_policies(conn: psycopg.Connection[Any], name: str) -> None:
    """The owner's policies for the table's delete function are exactly those, each bound to the pinned tenant."""
    policies = conn.execute(
        "SELECT policyname, cmd, qual, with_check FROM pg_policies WHERE schemaname = 'app'"
        " AND tablename = %s AND roles = ARRAY[%s]::name[] AND starts_with(policyname, 'delete_pinned_tenant')",
        (name, OWNER_ROLE),
    ).fetchall()
    assert {(p[0], p[1]) for p in policies} == DELETE_FUNCTION_POLICIES[name], name
    for _, _, qual, with_check in policies:
        assert "current_tenant_id()" in qual and (with_check is None or "current_tenant_id()" in with_check), name


@pytest.fixture(scope="module")
def tenants(pg) -> dict[str, uuid.UUID]:  # type: ignore[no-untyped-def]
    """Two tenants, each with one intent and one version, inserted by the owner inside each tenant's context."""
    ids = {"a": uuid.uuid4(), "b": uuid.uuid4()}
    # Each through its own login: the control plane's provisions the tenant, the app's writes its data.
    with (
        psycopg.connect(pg.control_url, autocommit=True) as control,
        psycopg.connect(pg.app_url, autocommit=True) as conn,
    ):
        for key, tenant_id in ids.items():
            with control.transaction():
                control.execute("SET LOCAL ROLE qp_platform")
                control.execute(
                    "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
                    (tenant_id, f"rls-{key}-{tenant_id.hex[:6]}", uuid.uuid4()),
                )
            with conn.transaction():
                conn.execute("SET LOCAL ROLE qp_runtime")
                conn.execute("SELECT app.pin_tenant(%s)", (tenant_id,))
                intent_id = conn.execute(
                    "INSERT INTO app.intents (tenant_id, name, created_by) VALUES (%s, %s, 'test') RETURNING id",
                    (tenant_id, f"intent-{key}"),
                ).fetchone()[0]
                conn.execute(
                    "INSERT INTO app.intent_versions (tenant_id, intent_id, version, definition, definition_sha256,"
                    " created_by) VALUES (%s, %s, 1, '{}', 'x', 'test')",
                    (tenant_id, intent_id),
                )
    return ids


def _intent_names(conn: psycopg.Connection[Any]) -> list[str]:
    return [row["name"] for row in conn.execute("SELECT name FROM app.intents ORDER BY name").fetchall()]


def test_each_tenant_sees_only_its_rows(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    with tenant_transaction(tenants["a"], pool=app_pool) as conn:
        assert _intent_names(conn) == ["intent-a"]
        assert [r["id"] for r in conn.execute("SELECT id FROM app.tenants").fetchall()] == [tenants["a"]]
        assert conn.execute("SELECT count(*) AS n FROM app.intent_versions").fetchone()["n"] == 1
    with tenant_transaction(tenants["b"], pool=app_pool) as conn:
        assert _intent_names(conn) == ["intent-b"]


def test_no_tenant_means_zero_rows(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    with runtime_transaction(pool=app_pool) as conn:
        for table in ("app.tenants", "app.intents", "app.intent_versions"):
            assert conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 0
    assert tenants  # both tenants have rows; they are invisible without a tenant context


def test_tenant_setting_does_not_leak_to_the_next_borrower(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    with tenant_transaction(tenants["a"], pool=app_pool) as conn:
        assert _intent_names(conn) == ["intent-a"]
    with app_pool.connection() as conn:
        row = conn.execute("SELECT current_setting('app.tenant_id', true) AS t, current_user AS u").fetchone()
        assert row["t"] in (None, "")
        assert row["u"] != RUNTIME_ROLE  # SET LOCAL ROLE ended with the transaction


def test_cross_tenant_insert_is_refused(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        with tenant_transaction(tenants["a"], pool=app_pool) as conn:
            conn.execute(
                "INSERT INTO app.intents (tenant_id, name, created_by) VALUES (%s, 'sneaky', 'x')", (tenants["b"],)
            )


def test_cross_tenant_update_and_move_are_refused(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    with tenant_transaction(tenants["a"], pool=app_pool) as conn:
        # B's rows are invisible, so the update matches nothing.
        cur = conn.execute("UPDATE app.intents SET description = 'hacked' WHERE tenant_id = %s", (tenants["b"],))
        assert cur.rowcount == 0
    # The runtime may not set tenant_id at all (its UPDATE is by column, migration 0044); row-level security's
    # WITH CHECK stands behind that.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table intents"):
        with tenant_transaction(tenants["a"], pool=app_pool) as conn:
            conn.execute("UPDATE app.intents SET tenant_id = %s", (tenants["b"],))
    with tenant_transaction(tenants["b"], pool=app_pool) as conn:
        assert conn.execute("SELECT description FROM app.intents").fetchone()["description"] == ""


def test_reference_to_another_tenants_row_is_refused(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    with tenant_transaction(tenants["b"], pool=app_pool) as conn:
        b_intent = conn.execute("SELECT id FROM app.intents").fetchone()["id"]
    # The composite key means a version of tenant A can never point at B's intent.
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        with tenant_transaction(tenants["a"], pool=app_pool) as conn:
            conn.execute(
                "INSERT INTO app.intent_versions (tenant_id, intent_id, version, definition, definition_sha256,"
                " created_by) VALUES (%s, %s, 2, '{}', 'x', 'x')",
                (tenants["a"], b_intent),
            )


def test_versions_are_immutable_for_the_runtime(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    for statement in ("UPDATE app.intent_versions SET definition = '{}'", "DELETE FROM app.intent_versions"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with tenant_transaction(tenants["a"], pool=app_pool) as conn:
                conn.execute(statement)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "column",
    [
        "status = 'active'",
        "quotas = '{}'",
        "allowed_targets = '{production}'",
        "entra_tenant_id = gen_random_uuid()",
        "erasing_since = NULL",  # its erasure's mark, which only the control plane sets (migration 0066)
    ],
)
def test_a_tenants_own_transaction_changes_its_settings_and_nothing_else_of_its_row(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID], column: str
) -> None:
    # Row-level security limits rows, not columns: the whole row was the runtime's to update, its own suspension,
    # quotas, gates and Entra tenant included, which only the control plane decides.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        with tenant_transaction(tenants["a"], pool=app_pool) as conn:
            conn.execute(f"UPDATE app.tenants SET {column}")  # type: ignore[arg-type]
    with tenant_transaction(tenants["a"], pool=app_pool) as conn:
        changed = conn.execute(
            "UPDATE app.tenants SET settings = settings || '{}', updated_at = clock_timestamp()"
        ).rowcount
    assert changed == 1


def test_runtime_role_is_not_owner_superuser_or_bypassrls(pg) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        role = conn.execute(
            "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = %s", (RUNTIME_ROLE,)
        ).fetchone()
        assert role == (False, False, False)
        owned = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = %s",
            (RUNTIME_ROLE,),
        ).fetchall()
        assert owned == []
        for login in ("qp_app", "qp_control"):
            flags = conn.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (login,)).fetchone()
            assert flags == (False, False), login


def test_runtime_role_has_no_truncate_or_references(pg) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        grants = conn.execute(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = %s AND privilege_type IN ('TRUNCATE', 'REFERENCES', 'TRIGGER')",
            (RUNTIME_ROLE,),
        ).fetchall()
    assert grants == []


def test_every_app_table_has_forced_rls_with_tenant_policies(pg) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        tables = conn.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'app' AND c.relkind IN ('r', 'p') AND c.relname <> 'schema_migrations'"
        ).fetchall()
        assert len(tables) >= 4
        for name, enabled, forced in tables:
            assert (name, enabled, forced) == (name, True, True)
            policies = conn.execute(
                "SELECT policyname, permissive, roles::text[], qual, with_check FROM pg_policies"
                " WHERE schemaname = 'app' AND tablename = %s",
                (name,),
            ).fetchall()
            runtime = [p for p in policies if p[2] == [RUNTIME_ROLE]]
            assert {p[1] for p in runtime} == {"PERMISSIVE", "RESTRICTIVE"}, name
            for _, _, _, qual, with_check in runtime:
                assert "current_tenant_id()" in qual and "current_tenant_id()" in with_check, name
            # Anyone else is the control plane: all of the tenants table, and on tenant tables only an
            # erasure's DELETE bound to the tenant context (so it never reads tenant data).
            others = {(p[0], tuple(p[2])) for p in policies if p[2] != [RUNTIME_ROLE]}
            if name in TENANT_TABLES:
                # The erasure's batches (migration 0078): the owner's functions read and delete the pinned tenant's
                # rows of every tenant table, under policies bound to the pinned tenant, as the app's are.
                batch = {(p[0], p[3]) for p in policies if p[0] in ("erase_batch_read", "erase_batch")}
                assert {policy for policy, _ in batch} == {"erase_batch_read", "erase_batch"}, name
                assert all("current_tenant_id()" in qual for _, qual in batch), name
                assert others >= {("erase_batch_read", (OWNER_ROLE,)), ("erase_batch", (OWNER_ROLE,))}, name
                others -= {("erase_batch_read", (OWNER_ROLE,)), ("erase_batch", (OWNER_ROLE,))}
            if name == "tenants":
                assert others == {("platform_control_plane", ("qp_platform",))}
            elif name == "outbox":
                # The owner (never the app) reads which tenants have events waiting, for the relay (migration 0013),
                # and which have events published long ago, for the retention timer, which deletes them through
                # functions bound to the pinned tenant (migration 0073).
                assert others == {
                    ("platform_erase", ("qp_platform",)),
                    ("relay_pending_tenants", (OWNER_ROLE,)),
                    ("retention_due_tenants", (OWNER_ROLE,)),
                } | {(policy, (OWNER_ROLE,)) for policy, _ in DELETE_FUNCTION_POLICIES[name]}
                _assert_delete_function_policies(conn, name)
                relay = conn.execute(
                    "SELECT policyname, cmd, qual FROM pg_policies WHERE schemaname = 'app'"
                    " AND tablename = 'outbox' AND policyname IN ('relay_pending_tenants', 'retention_due_tenants')"
                    " ORDER BY policyname"
                ).fetchall()
                assert relay == [
                    ("relay_pending_tenants", "SELECT", "(published_at IS NULL)"),
                    ("retention_due_tenants", "SELECT", "(published_at IS NOT NULL)"),
                ]
            elif name == "executions":
                # The owner (never the app) reads which tenants have unfinished executions, for the stuck-execution
                # sweeper (migration 0014).
                assert others == {("platform_erase", ("qp_platform",)), ("sweeper_stuck_tenants", (OWNER_ROLE,))}
                sweeper = conn.execute(
                    "SELECT cmd, qual FROM pg_policies WHERE schemaname = 'app' AND tablename ="
                    " 'executions' AND policyname = 'sweeper_stuck_tenants'"
                ).fetchone()
                assert sweeper == (
                    "SELECT",
                    "(status = ANY (ARRAY['pending'::text, 'running'::text, 'waiting'::text, 'compensating'::text]))",
                )
            elif name in (
                "work_items",
                "step_attempts",
                "webhook_deliveries",
                "idempotency_keys",
                "audit_outbox",
                "webhook_subscriptions",
                "task_token_keys",
            ):
                # The owner (never the app) reads which tenants have a lease that ran out, for the sweeper
                # (migration 0018), a webhook delivery due (migration 0019) or an expired idempotency key (migration
                # 0025) or an audit record waiting for its store (migration 0027) or a secret to seal (migration
                # 0031): SELECT only.
                owner_policy = {
                    "work_items": "sweeper_leased_items",
                    "step_attempts": "sweeper_open_attempts",
                    "webhook_deliveries": "webhook_due_tenants",
                    "idempotency_keys": "expired_key_tenants",
                    "audit_outbox": "audit_relay_tenants",
                    "webhook_subscriptions": "secrets_to_seal",
                    "task_token_keys": "secrets_to_seal",
                }[name]
                expected = {("platform_erase", ("qp_platform",)), (owner_policy, (OWNER_ROLE,))}
                if name == "audit_outbox":
                    # The control plane queues its records about tenants in its own transaction (migration 0028).
                    expected.add(("platform_tenant_records", ("qp_platform",)))
                if name == "webhook_deliveries":
                    # And which tenants have deliveries delivered long ago, for the retention timer (migration 0073).
                    expected.add(("retention_due_tenants", (OWNER_ROLE,)))
                    delivered = conn.execute(
                        "SELECT cmd, qual FROM pg_policies WHERE schemaname = 'app'"
                        " AND tablename = 'webhook_deliveries' AND policyname = 'retention_due_tenants'"
                    ).fetchone()
                    assert delivered == ("SELECT", "(state = 'delivered'::text)")
                if name == "step_attempts":
                    # And which tenants have a verdict still to hand over, for the sweeper (migration 0064).
                    expected.add(("sweeper_raising_verdicts", (OWNER_ROLE,)))
                    raising = conn.execute(
                        "SELECT cmd, qual FROM pg_policies WHERE schemaname = 'app' AND tablename = 'step_attempts'"
                        " AND policyname = 'sweeper_raising_verdicts'"
                    ).fetchone()
                    assert raising == ("SELECT", "(delivery = 'raising'::text)")
                if name in DELETE_FUNCTION_POLICIES:
                    # The owner deletes what the app removes of the pinned tenant through a function (migration
                    # 0046), under policies bound to the pinned tenant, as the app's are.
                    expected |= {(policy, (OWNER_ROLE,)) for policy, _ in DELETE_FUNCTION_POLICIES[name]}
                    _assert_delete_function_policies(conn, name)
                assert others == expected, name
                cmd = conn.execute(
                    "SELECT cmd FROM pg_policies WHERE schemaname = 'app' AND tablename = %s AND policyname = %s",
                    (name, owner_policy),
                ).fetchone()
                assert cmd == ("SELECT",), name
            elif name == "ingress_rejections":
                # The owner (never the app) trims the pinned tenant's record through app.trim_ingress_rejections
                # (migration 0026) and records a rejection through app.record_ingress_rejection (migration 0068),
                # replacing an earlier hub's row at its place, and makes a trimmed row its event may still need a
                # marker (migration 0079): its policies are bound to the pinned tenant, as the
                # app's are.
                assert others == {
                    ("platform_erase", ("qp_platform",)),
                    ("trim_pinned_tenant_read", (OWNER_ROLE,)),
                    ("trim_pinned_tenant", (OWNER_ROLE,)),
                    ("record_pinned_tenant", (OWNER_ROLE,)),
                    ("trim_pinned_tenant_mark", (OWNER_ROLE,)),
                }
                trim = conn.execute(
                    "SELECT policyname, cmd, coalesce(qual, with_check) FROM pg_policies WHERE schemaname = 'app'"
                    " AND tablename = 'ingress_rejections' AND roles = ARRAY[%s]::name[]"
                    " AND NOT starts_with(policyname, 'erase_batch') ORDER BY policyname",
                    (OWNER_ROLE,),
                ).fetchall()
                assert [(p[0], p[1]) for p in trim] == [
                    ("record_pinned_tenant", "INSERT"),
                    ("trim_pinned_tenant", "DELETE"),
                    ("trim_pinned_tenant_mark", "UPDATE"),
                    ("trim_pinned_tenant_read", "SELECT"),
                ]
                assert all("current_tenant_id()" in p[2] for p in trim)
            elif name in ("work_pollers", "modules"):
                # The owner trims the pinned tenant's pollers whose action is no longer registered through
                # app.trim_work_pollers (migration 0045): it reads the tenant's modules and deletes its pollers, under
                # policies bound to the pinned tenant, as the app's are.
                trim_policies = (
                    {("trim_pinned_tenant_read", "SELECT"), ("trim_pinned_tenant", "DELETE")}
                    if name == "work_pollers"
                    else {("trim_pollers_pinned_tenant_read", "SELECT")}
                )
                assert others == {("platform_erase", ("qp_platform",))} | {
                    (policy, (OWNER_ROLE,)) for policy, _ in trim_policies
                }, name
                trim = conn.execute(
                    "SELECT policyname, cmd, qual FROM pg_policies WHERE schemaname = 'app'"
                    " AND tablename = %s AND roles = ARRAY[%s]::name[]"
                    " AND NOT starts_with(policyname, 'erase_batch')",
                    (name, OWNER_ROLE),
                ).fetchall()
                assert {(p[0], p[1]) for p in trim} == trim_policies, name
                assert all("current_tenant_id()" in p[2] for p in trim), name
            elif name == "tenant_policies":
                # A Tenant.Admin's delete of a policy goes through the owner's app.delete_tenant_policy (migration
                # 0046): its policies are bound to the pinned tenant, as the app's are.
                assert others == {("platform_erase", ("qp_platform",))} | {
                    (policy, (OWNER_ROLE,)) for policy, _ in DELETE_FUNCTION_POLICIES[name]
                }
                _assert_delete_function_policies(conn, name)
            elif name == "audit_events":
                # Erasure, and the control plane's records about tenants, added in its own transaction (migration
                # 0028): INSERT only, of resource type Tenant; it reads no trail.
                assert others == {("platform_erase", ("qp_platform",)), ("platform_tenant_records", ("qp_platform",))}
                record = conn.execute(
                    "SELECT cmd, qual, with_check FROM pg_policies WHERE schemaname = 'app'"
                    " AND tablename = 'audit_events' AND policyname = 'platform_tenant_records'"
                ).fetchone()
                assert record == ("INSERT", None, "(resource_type = 'Tenant'::text)")
            else:
                assert others == {("platform_erase", ("qp_platform",))}, name
                erase = conn.execute(
                    "SELECT cmd, qual FROM pg_policies WHERE schemaname = 'app' AND tablename = %s"
                    " AND policyname = 'platform_erase'",
                    (name,),
                ).fetchone()
                assert erase[0] == "DELETE" and "current_tenant_id()" in erase[1], name


def test_control_plane_sees_tenants_and_no_tenant_data(
    control_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    with platform_transaction(pool=control_pool) as conn:
        seen = {r["id"] for r in conn.execute("SELECT id FROM app.tenants").fetchall()}
        assert set(tenants.values()) <= seen
    for statement in ("SELECT count(*) FROM app.intents", "SELECT count(*) FROM app.intent_versions"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with platform_transaction(pool=control_pool) as conn:
                conn.execute(statement)  # type: ignore[arg-type]


def test_runtime_role_cannot_become_the_owner(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    for role in ("qp_owner", "postgres"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with tenant_transaction(tenants["a"], pool=app_pool) as conn:
                conn.execute(f"SET ROLE {role}")  # type: ignore[arg-type]


def test_a_transaction_cannot_switch_tenants(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    # Setting the GUC is harmless: the policies read the transaction's pin, not the setting.
    with tenant_transaction(tenants["a"], pool=app_pool) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenants["b"]),))
        assert _intent_names(conn) == ["intent-a"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pinned to another tenant"):
        with tenant_transaction(tenants["a"], pool=app_pool) as conn:
            conn.execute("SELECT app.pin_tenant(%s)", (tenants["b"],))
    for statement in (
        "INSERT INTO pg_temp.tenant_pin VALUES (gen_random_uuid())",
        "DELETE FROM pg_temp.tenant_pin",
        "UPDATE pg_temp.tenant_pin SET tenant_id = tenant_id",
        "CREATE TEMPORARY TABLE mine (x int)",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with tenant_transaction(tenants["a"], pool=app_pool) as conn:
                conn.execute(statement)  # type: ignore[arg-type]
    # The pin ends with its transaction: the next one on the same pooled connection starts with none.
    with runtime_transaction(pool=app_pool) as conn:
        assert _intent_names(conn) == []


def test_a_discarded_pin_cannot_be_replaced_within_its_transaction(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    # DISCARD TEMP drops every temporary table of the session, whoever owns it, so SQL running in a tenant's
    # transaction can remove the pin table. The policies then see no tenant, and no other tenant can be pinned in
    # that transaction: the pin table is only ever created in a transaction that has written nothing yet.
    with tenant_transaction(tenants["a"], pool=app_pool) as conn:
        conn.execute("DISCARD TEMP")
        assert _intent_names(conn) == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="discarded"), conn.transaction():
            conn.execute("SELECT app.pin_tenant(%s)", (tenants["b"],))
        assert _intent_names(conn) == []
    # The same even for the tenant it had: the transaction is pinned to none for the rest of it.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="discarded"):
        with tenant_transaction(tenants["a"], pool=app_pool) as conn:
            conn.execute("DISCARD TEMP")
            conn.execute("SELECT app.pin_tenant(%s)", (tenants["a"],))
    # The next transactions on the same connections pin as usual (a new table, before anything is written).
    for _ in range(app_pool.max_size + 1):
        with tenant_transaction(tenants["b"], pool=app_pool) as conn:
            assert _intent_names(conn) == ["intent-b"]
