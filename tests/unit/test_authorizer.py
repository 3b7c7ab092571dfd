# intent_ref: platform.access-control
"""The Authorizer: the role × action × target × ownership matrix, isolation, suspension and tenant policies."""

from __future__ import annotations

import gc
import itertools
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import pytest

from shared.auth.principal import (
    INTENT_APPROVER,
    INTENT_AUTHOR,
    INTENT_DEPLOYER,
    INTENT_EXECUTOR,
    INTENT_READER,
    MODULE_WORKER,
    PLATFORM_ADMIN,
    TENANT_ADMIN,
    Principal,
)
from shared.policy.actions import Action
from shared.policy.authorizer import (
    DECISION_CACHE_SIZE,
    TENANT_SLOTS,
    Authorizer,
    Decision,
    PolicyLoadError,
    Reason,
    Resource,
    TenantFacts,
    get_authorizer,
    refusal_detail,
)
from shared.policy.policy_text import (
    LIKE_COST,
    MAX_CONSTRUCTOR_LITERAL_CHARS,
    MAX_POLICY_CLAUSES,
    MAX_TENANT_POLICY_COST,
    MAX_TENANT_POLICY_TOTAL_CHARS,
    SET_COMPARISON_COST,
    policy_cost,
)
from shared.registry import model as registry_model

TENANT = uuid.UUID("00000000-0000-4000-8000-00000000000a")
OTHER_TENANT = uuid.UUID("00000000-0000-4000-8000-00000000000b")
FACTS = TenantFacts(TENANT, "active", frozenset({"production", "staging"}), frozenset({"http"}))
OTHER_REQUESTER = "11111111-1111-4111-8111-111111111111/22222222-2222-4222-8222-222222222222"

# ---------------------------------------------------------------------------------------------------------------
# The expected matrix, written from the role descriptions of DESIGN.md §8 and issue 3, not from the policies.
# ---------------------------------------------------------------------------------------------------------------

ROLES = (
    PLATFORM_ADMIN,
    TENANT_ADMIN,
    INTENT_READER,
    INTENT_AUTHOR,
    INTENT_EXECUTOR,
    INTENT_DEPLOYER,
    INTENT_APPROVER,
    MODULE_WORKER,
)
READER_AND_ABOVE = frozenset(
    {INTENT_READER, INTENT_AUTHOR, INTENT_EXECUTOR, INTENT_DEPLOYER, INTENT_APPROVER, TENANT_ADMIN}
)

# Actions whose outcome depends on the role only.
ROLES_ALLOWED: dict[Action, frozenset[str]] = {
    **dict.fromkeys(
        [
            Action.TENANT_CREATE,
            Action.TENANT_READ,
            Action.TENANT_UPDATE,
            Action.TENANT_LIST,
            Action.TENANT_EXPORT,
            Action.TENANT_ERASE,
        ],
        frozenset({PLATFORM_ADMIN}),
    ),
    **dict.fromkeys(
        [
            Action.TENANT_SETTINGS_READ,
            Action.TENANT_SETTINGS_UPDATE,
            Action.POLICY_READ,
            Action.POLICY_CREATE,
            Action.POLICY_DELETE,
            Action.AUDIT_READ,
            Action.MODULE_REGISTER,
            Action.WEBHOOK_READ,
            Action.WEBHOOK_MANAGE,
        ],
        frozenset({TENANT_ADMIN}),
    ),
    **dict.fromkeys(
        [
            Action.INTENT_READ,
            Action.INTENT_LIST,
            Action.BLUEPRINT_READ,
            Action.BLUEPRINT_LIST,
            Action.EXECUTION_READ,
            Action.EXECUTION_LIST,
            Action.MODULE_READ,
            Action.MODULE_LIST,
            Action.INGRESS_REJECTION_LIST,
        ],
        READER_AND_ABOVE,
    ),
    # A tenant's daemon worker takes its remote work and reads nothing else; its queue is visible to readers too.
    **dict.fromkeys([Action.WORK_LEASE, Action.WORK_HEARTBEAT], frozenset({MODULE_WORKER})),
    Action.WORK_LIST: READER_AND_ABOVE | {MODULE_WORKER},
    **dict.fromkeys(
        [
            Action.INTENT_CREATE,
            Action.INTENT_UPDATE,
            Action.INTENT_ARCHIVE,
            Action.INTENT_ROLLBACK,
            Action.BLUEPRINT_CREATE,
            Action.BLUEPRINT_UPDATE,
            Action.BLUEPRINT_ARCHIVE,
            Action.BLUEPRINT_ROLLBACK,
        ],
        frozenset({INTENT_AUTHOR}),
    ),
}


def expected(role: str, action: Action, production: bool, own: bool) -> tuple[bool, str]:
    """The spec: (allowed, reason) for one principal holding exactly `role`."""
    if action is Action.INTENT_EXECUTE:
        if production:
            return (True, "allowed") if role == INTENT_DEPLOYER else (False, "production_requires_deployer")
        return (True, "allowed") if role in {INTENT_EXECUTOR, INTENT_DEPLOYER} else (False, "role_required")
    if action is Action.EXECUTION_CANCEL:
        may_cancel = role in {INTENT_EXECUTOR, INTENT_DEPLOYER} or (own and role in READER_AND_ABOVE)
        return (True, "allowed") if may_cancel else (False, "role_required")
    if action is Action.EXECUTION_APPROVE:
        if own:  # nobody approves what they requested, whatever their roles
            return False, "self_approval"
        return (True, "allowed") if role == INTENT_APPROVER else (False, "role_required")
    return (True, "allowed") if role in ROLES_ALLOWED[action] else (False, "role_required")


def test_the_spec_covers_every_action() -> None:
    special = {Action.INTENT_EXECUTE, Action.EXECUTION_CANCEL, Action.EXECUTION_APPROVE}
    assert set(ROLES_ALLOWED) | special == set(Action)


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def principal(*roles: str, tenant_id: UUID = TENANT, app_only: bool = False) -> Principal:
    return Principal(
        tenant_id=tenant_id,
        entra_tenant_id=uuid.uuid4(),
        object_id=uuid.uuid4(),
        roles=frozenset(roles),
        scopes=frozenset(),
        app_only=app_only,
    )


def resource_for(action: Action, *, who: Principal, production: bool, own: bool, tenant_id: UUID = TENANT) -> Resource:
    """The resource an API route would build for `action`."""
    target = "production" if production else "staging"
    labels = {"team": "web"}
    kind = action.value.split(".")[0]
    if kind == "tenant" and action.value.count(".") == 1:
        return Resource.platform()
    if action.value.endswith(".list") or kind in ("tenant", "work", "webhook"):
        return Resource.tenant(tenant_id)
    requested_by = who.id if own else OTHER_REQUESTER
    match kind:
        case "intent":
            return Resource("Intent", "i-1", tenant_id, {"target": target, "labels": labels})
        case "blueprint":
            return Resource("Blueprint", "b-1", tenant_id, {"labels": labels})
        case "execution":
            return Resource(
                "Execution", "e-1", tenant_id, {"target": target, "requested_by": requested_by, "labels": labels}
            )
        case "policy":
            return Resource("Policy", "p-1", tenant_id)
        case "audit":
            return Resource("AuditLog", str(tenant_id), tenant_id)
        case "module":
            return Resource("Module", "http", tenant_id)
    raise AssertionError(f"no resource for {action}")


@pytest.fixture(scope="module")
def authz() -> Authorizer:
    return get_authorizer()


@dataclass(frozen=True)
class Cell:
    role: str
    action: Action
    production: bool
    own: bool


CELLS = [Cell(*combo) for combo in itertools.product(ROLES, list(Action), (False, True), (False, True))]


# ---------------------------------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell",
    CELLS,
    ids=[
        f"{c.role}-{c.action.value}-{'prod' if c.production else 'staging'}-{'own' if c.own else 'other'}"
        for c in CELLS
    ],
)
def test_matrix(authz: Authorizer, cell: Cell) -> None:
    who = principal(cell.role)
    decision = authz.decide(
        who, cell.action, resource_for(cell.action, who=who, production=cell.production, own=cell.own), tenant=FACTS
    )
    assert (decision.allowed, decision.reason) == expected(cell.role, cell.action, cell.production, cell.own)
    if decision.allowed:
        assert decision.policies and all(p.startswith("permit.") for p in decision.policies)


def test_combined_roles_still_cannot_self_approve(authz: Authorizer) -> None:
    who = principal(INTENT_EXECUTOR, INTENT_APPROVER, TENANT_ADMIN)
    decision = authz.decide(
        who,
        Action.EXECUTION_APPROVE,
        resource_for(Action.EXECUTION_APPROVE, who=who, production=False, own=True),
        tenant=FACTS,
    )
    assert decision == Decision(False, "self_approval", ("forbid.self_approval",))


def test_no_roles_is_denied_everything(authz: Authorizer) -> None:
    who = principal()
    for action in Action:
        for own in (False, True):
            decision = authz.decide(who, action, resource_for(action, who=who, production=False, own=own), tenant=FACTS)
            assert not decision.allowed, action
            assert decision.reason in {"role_required", "self_approval"}


# ---------------------------------------------------------------------------------------------------------------
# Isolation and suspension
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action", [a for a in Action if not a.value.startswith("tenant.") or a.value.startswith("tenant.settings")]
)
def test_other_tenants_resource_is_cross_tenant(authz: Authorizer, action: Action) -> None:
    who = principal(*ROLES)  # every role: only the tenant boundary can deny
    decision = authz.decide(
        who, action, resource_for(action, who=who, production=False, own=False, tenant_id=OTHER_TENANT), tenant=FACTS
    )
    assert decision == Decision(False, "cross_tenant", ("forbid.cross_tenant",))


@pytest.mark.parametrize("action", list(Action))
def test_suspended_tenant_is_denied_everything(authz: Authorizer, action: Action) -> None:
    who = principal(*ROLES)
    suspended = TenantFacts(TENANT, "suspended", FACTS.allowed_targets, FACTS.allowed_modules)
    decision = authz.decide(who, action, resource_for(action, who=who, production=False, own=False), tenant=suspended)
    assert not decision.allowed
    assert decision.reason == "tenant_suspended"
    assert "forbid.tenant_suspended" in decision.policies


def test_unknown_status_counts_as_not_active(authz: Authorizer) -> None:
    who = principal(INTENT_READER)
    facts = TenantFacts(TENANT, "Active ", FACTS.allowed_targets, FACTS.allowed_modules)
    assert authz.decide(who, Action.INTENT_LIST, Resource.tenant(TENANT), tenant=facts).reason == "tenant_suspended"


@pytest.mark.parametrize(
    "action", [a for a in Action if not a.value.startswith("tenant.") or a.value.startswith("tenant.settings")]
)
def test_platform_admin_sees_no_tenant_data(authz: Authorizer, action: Action) -> None:
    who = principal(PLATFORM_ADMIN)
    for tenant_id in (TENANT, OTHER_TENANT):
        decision = authz.decide(
            who, action, resource_for(action, who=who, production=False, own=False, tenant_id=tenant_id), tenant=FACTS
        )
        assert not decision.allowed
        assert decision.reason in {"role_required", "cross_tenant"}


# ---------------------------------------------------------------------------------------------------------------
# Failing closed
# ---------------------------------------------------------------------------------------------------------------


def test_facts_of_another_tenant_fail_closed(authz: Authorizer) -> None:
    who = principal(INTENT_READER)
    other_facts = TenantFacts(OTHER_TENANT, "active", frozenset(), frozenset())
    decision = authz.decide(who, Action.INTENT_LIST, Resource.tenant(OTHER_TENANT), tenant=other_facts)
    assert decision == Decision(False, "policy_error", ())


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("intent.frobnicate", Resource.tenant(TENANT)),  # unknown action
        (
            Action.INTENT_READ,
            Resource(
                "Execution",
                "e-1",
                TENANT,  # wrong resource type for the action
                {"target": "staging", "requested_by": OTHER_REQUESTER},
            ),
        ),
        (Action.INTENT_READ, Resource("Intent", "i-1", TENANT, {})),  # missing target
        (Action.INTENT_READ, Resource("Intent", "i-1", TENANT, {"target": 1})),  # mistyped target
        (Action.INTENT_READ, Resource("Intent", "i-1", TENANT, {"target": "x", "labels": "team=web"})),
        (Action.INTENT_READ, Resource("Intent", "i-1", None, {"target": "x"})),  # no tenant
        (Action.INTENT_READ, Resource("Widget", "w-1", TENANT, {})),
        # Longer than any stored attribute: what a tenant policy may cost assumes it (a `like` against a target of a
        # million characters from a request body cost 2 s a decision).
        (Action.INTENT_READ, Resource("Intent", "i-1", TENANT, {"target": "t" * 257})),
        (Action.INTENT_READ, Resource("Intent", "i-1", TENANT, {"target": "x", "labels": {"k": "v" * 400}})),
        (
            Action.INTENT_READ,
            Resource("Intent", "i-1", TENANT, {"target": "x", "labels": {f"k{i}": "v" for i in range(65)}}),
        ),
        (Action.MODULE_READ, Resource("Module", "m" * 257, TENANT, {})),  # a module named by its id
    ],
)
def test_bad_requests_fail_closed(authz: Authorizer, action: str, resource: Resource) -> None:
    decision = authz.decide(principal(*ROLES), action, resource, tenant=FACTS)
    assert decision == Decision(False, "policy_error", ())


def test_the_largest_labels_a_model_stores_are_decided_on() -> None:
    # The Authorizer fails closed past the stored bounds; the largest labels the registry model accepts must pass.
    key_chars = 63  # LabelKey's pattern: 1 + up to 61 + 1
    labels = {f"{i:02d}" + "k" * (key_chars - 2): "v" * 256 for i in range(registry_model.MAX_LABELS)}
    assert (
        registry_model.IntentDefinitionIn.model_validate(
            {
                "name": "largest-labels",
                "definition": {"steps": [{"id": "a", "action": "wait", "seconds": 1}]},
                "labels": labels,
            }
        ).labels
        == labels
    )
    authz = Authorizer()
    intent = Resource("Intent", "i-1", TENANT, {"target": "t" * 128, "labels": labels})
    assert authz.decide(principal(INTENT_READER), Action.INTENT_READ, intent, tenant=FACTS).allowed


def test_labels_accept_mapping_or_strings(authz: Authorizer) -> None:
    who = principal(INTENT_READER)
    forbid = (
        'forbid (principal, action == QP::Action::"intent.read", resource) '
        'when { resource.labels.contains("data=secret") };'
    )
    for labels in ({"data": "secret"}, ["data=secret"], frozenset({"data=secret"})):
        intent = Resource("Intent", "i-1", TENANT, {"target": "staging", "labels": labels})
        decision = authz.decide(who, Action.INTENT_READ, intent, tenant=FACTS, tenant_policies=[forbid])
        assert decision.reason == "denied_by_tenant_policy", labels


# ---------------------------------------------------------------------------------------------------------------
# Tenant policies
# ---------------------------------------------------------------------------------------------------------------

NO_SECRET_PRODUCTION = """
@id("no-secret-in-production")
forbid (principal, action in [QP::Action::"intent.execute", QP::Action::"intent.read"], resource is QP::Intent)
when { resource.labels.contains("data=secret") && resource.target == "production" };
"""


def test_tenant_forbid_denies_what_the_platform_allowed(authz: Authorizer) -> None:
    assert authz.validate_tenant_policy(NO_SECRET_PRODUCTION) == []
    deployer = principal(INTENT_DEPLOYER)
    secret = Resource("Intent", "i-1", TENANT, {"target": "production", "labels": {"data": "secret"}})
    plain = Resource("Intent", "i-2", TENANT, {"target": "production", "labels": {"data": "public"}})

    assert authz.decide(deployer, Action.INTENT_EXECUTE, secret, tenant=FACTS).allowed
    assert authz.decide(
        deployer, Action.INTENT_EXECUTE, plain, tenant=FACTS, tenant_policies=[NO_SECRET_PRODUCTION]
    ).allowed
    decision = authz.decide(
        deployer, Action.INTENT_EXECUTE, secret, tenant=FACTS, tenant_policies=[NO_SECRET_PRODUCTION]
    )
    assert decision == Decision(False, "denied_by_tenant_policy", ("tenant:no-secret-in-production",))


def test_a_remembered_decision_is_reused_only_for_exactly_the_same_inputs() -> None:
    authz = Authorizer()  # its own decision cache, empty
    deployer = principal(INTENT_DEPLOYER)
    secret = Resource("Intent", "i-1", TENANT, {"target": "production", "labels": {"data": "secret"}})
    first = authz.decide(deployer, Action.INTENT_EXECUTE, secret, tenant=FACTS)
    assert first.allowed
    # The same request again (a route's permission check, then its `authorize`): answered from the cache.
    assert authz.decide(deployer, Action.INTENT_EXECUTE, secret, tenant=FACTS) == first
    assert authz._decisions.cache_info().hits == 1
    # Any input that changes: evaluated, and decided as it must be.
    variants = [
        (principal(INTENT_EXECUTOR), secret, FACTS, ()),  # the roles
        (deployer, Resource("Intent", "i-1", TENANT, {"target": "production", "labels": {"data": "x"}}), FACTS, ()),
        (deployer, secret, TenantFacts(TENANT, "suspended", FACTS.allowed_targets, FACTS.allowed_modules), ()),
        (deployer, secret, FACTS, (NO_SECRET_PRODUCTION,)),  # the tenant's policies
    ]
    decided = [
        authz.decide(who, Action.INTENT_EXECUTE, what, tenant=facts, tenant_policies=policies)
        for who, what, facts, policies in variants
    ]
    assert [(d.allowed, d.reason) for d in decided] == [
        (False, "production_requires_deployer"),
        (True, "allowed"),
        (False, "tenant_suspended"),
        (False, "denied_by_tenant_policy"),
    ]
    assert authz._decisions.cache_info().misses == 5
    # A request that fails is denied and never remembered.
    broken = Resource("Intent", "i-1", TENANT, {"target": "production"})
    for _ in range(2):
        assert authz.decide(deployer, Action.INTENT_EXECUTE, broken, tenant=FACTS, tenant_policies=["permit"]) == (
            Decision(False, "policy_error", ())
        )
    assert authz._decisions.cache_info().currsize == 5


FORBID_ONE_EXECUTION = """
@id("not-that-one")
forbid (principal, action == QP::Action::"execution.read", resource == QP::Execution::"e-1");
"""


def test_resources_no_policy_names_by_id_share_their_remembered_decisions() -> None:
    authz = Authorizer()  # its own decision cache, empty
    reader = principal(INTENT_READER)
    attributes = {"target": "staging", "requested_by": OTHER_REQUESTER, "labels": {}}
    first, second = (Resource("Execution", f"e-{n}", TENANT, attributes) for n in (1, 2))
    # No policy names an execution by id: the second execution with the same attributes is decided from the first.
    assert authz.decide(reader, Action.EXECUTION_READ, first, tenant=FACTS).allowed
    assert authz.decide(reader, Action.EXECUTION_READ, second, tenant=FACTS).allowed
    assert authz._decisions.cache_info().hits == 1
    # Attributes still count: another target is another decision.
    production = Resource("Execution", "e-3", TENANT, {**attributes, "target": "production"})
    authz.decide(reader, Action.EXECUTION_READ, production, tenant=FACTS)
    assert authz._decisions.cache_info().misses == 2
    # A tenant policy that names one execution: each is decided by its own id, and only that one is refused.
    named = (FORBID_ONE_EXECUTION,)
    assert authz.validate_tenant_policy(FORBID_ONE_EXECUTION) == []
    refused = authz.decide(reader, Action.EXECUTION_READ, first, tenant=FACTS, tenant_policies=named)
    assert refused == Decision(False, "denied_by_tenant_policy", ("tenant:not-that-one",))
    assert authz.decide(reader, Action.EXECUTION_READ, second, tenant=FACTS, tenant_policies=named).allowed
    # A module's `name` attribute defaults to its id, so a policy on the name still tells modules apart.
    no_http = (
        """@id("no-http") forbid (principal, action == QP::Action::"module.read", resource)
        when { resource.name == "http" };""",
    )
    assert authz.validate_tenant_policy(no_http[0]) == []
    decided = [
        authz.decide(
            reader, Action.MODULE_READ, Resource("Module", name, TENANT), tenant=FACTS, tenant_policies=no_http
        )
        for name in ("http", "event.emit")
    ]
    assert [d.allowed for d in decided] == [False, True]


def test_platform_forbid_names_the_reason_over_a_tenant_forbid(authz: Authorizer) -> None:
    executor = principal(INTENT_EXECUTOR)
    secret = Resource("Intent", "i-1", TENANT, {"target": "production", "labels": {"data": "secret"}})
    decision = authz.decide(
        executor, Action.INTENT_EXECUTE, secret, tenant=FACTS, tenant_policies=[NO_SECRET_PRODUCTION]
    )
    assert decision.reason == "production_requires_deployer"
    assert set(decision.policies) == {"forbid.production_requires_deployer", "tenant:no-secret-in-production"}


def test_tenant_policy_cannot_pose_as_a_platform_policy(authz: Authorizer) -> None:
    spoof = '@id("forbid.self_approval") forbid (principal, action == QP::Action::"intent.read", resource);'
    assert authz.validate_tenant_policy(spoof) == []
    decision = authz.decide(
        principal(INTENT_READER),
        Action.INTENT_READ,
        Resource("Intent", "i-1", TENANT, {"target": "staging"}),
        tenant=FACTS,
        tenant_policies=[spoof],
    )
    assert decision == Decision(False, "denied_by_tenant_policy", ("tenant:forbid.self_approval",))


def test_a_stored_permit_fails_closed_but_never_locks_out_policy_admin(authz: Authorizer) -> None:
    widening = 'permit (principal, action == QP::Action::"intent.execute", resource);'
    reader = principal(INTENT_READER, TENANT_ADMIN)
    decision = authz.decide(
        reader,
        Action.INTENT_EXECUTE,
        Resource("Intent", "i-1", TENANT, {"target": "staging"}),
        tenant=FACTS,
        tenant_policies=[widening],
    )
    assert decision == Decision(False, "policy_error", ())
    # The admin can still delete the row that broke the tenant: tenant policies never apply to policy.*.
    assert authz.decide(
        reader, Action.POLICY_DELETE, Resource("Policy", "p-1", TENANT), tenant=FACTS, tenant_policies=[widening]
    ).allowed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('forbid (principal, action == QP::Action::"intent.read", resource', "syntax error"),
        (
            'forbid (principal, action == QP::Action::"intent.read", resource is QP::Intent) '
            'when { resource.lables.contains("x") };',
            "attribute `lables`",
        ),
        (
            'forbid (principal, action == QP::Action::"intent.read", resource is QP::Intent) '
            'when { principal.role.contains("x") };',
            "attribute `role`",
        ),
        ('forbid (principal, action == QP::Action::"intent.reed", resource);', "intent.reed"),
        ('permit (principal, action == QP::Action::"intent.execute", resource);', "only `forbid`"),
        (
            'permit (principal, action == QP::Action::"intent.read", resource) '
            "when { principal.tenant == resource.tenant };",
            "only `forbid`",
        ),
        ("forbid (principal, action, resource) when { principal.app_only };", "name the actions"),
        ('forbid (principal, action == QP::Action::"policy.delete", resource);', "policy.delete"),
        ('forbid (principal, action == QP::Action::"tenant.create", resource);', "tenant.create"),
        ('forbid (principal == ?principal, action == QP::Action::"intent.read", resource);', "templates"),
        (
            'forbid (principal, action == QP::Action::"intent.read", resource);\n'
            'forbid (principal, action == QP::Action::"intent.list", resource);',
            "exactly one policy",
        ),
        ("", "exactly one policy"),
        ("// " + "x" * 10_001, "at most"),
    ],
)
def test_invalid_tenant_policies_are_rejected(authz: Authorizer, text: str, fragment: str) -> None:
    errors = authz.validate_tenant_policy(text)
    assert errors
    assert any(fragment in error for error in errors), errors


def test_valid_tenant_policies(authz: Authorizer) -> None:
    for text in [
        NO_SECRET_PRODUCTION,
        'forbid (principal, action == QP::Action::"execution.approve", resource) when { principal.app_only };',
        'forbid (principal, action in [QP::Action::"module.register"], resource is QP::Module) '
        'when { resource.name like "legacy-*" };',
        'forbid (principal, action == QP::Action::"intent.execute", resource) '
        "unless { principal.tenant.allowed_targets.contains(resource.target) };",
    ]:
        assert authz.validate_tenant_policy(text) == [], text


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def test_get_authorizer_is_cached() -> None:
    assert get_authorizer() is get_authorizer()


def _files() -> tuple[str, dict[str, str]]:
    from shared.policy.authorizer import _read_platform_files

    return _read_platform_files()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            lambda p: {
                **p,
                "typo.cedar": '@id("permit.x") permit (principal, action, resource) '
                'when { principal.rolez.contains("x") };',
            },
            "invalid platform policies",
        ),
        (lambda p: {**p, "noid.cedar": "forbid (principal, action, resource) when { false };"}, "has no @id"),
        (
            lambda p: {
                **p,
                "dup.cedar": '@id("forbid.cross_tenant") forbid (principal, action, resource) when { false };',
            },
            "duplicate",
        ),
        (
            lambda p: {
                **p,
                "reason.cedar": '@id("forbid.because") forbid (principal, action, resource) when { false };',
            },
            "no known reason",
        ),
        (
            lambda p: {**p, "prefix.cedar": '@id("allow.all") permit (principal, action, resource) when { false };'},
            "must start with",
        ),
    ],
)
def test_invalid_platform_policies_fail_loudly(
    change: Callable[[dict[str, str]], dict[str, str]], fragment: str
) -> None:
    schema, policies = _files()
    with pytest.raises(PolicyLoadError, match=fragment):
        Authorizer(schema, change(policies))


def test_schema_and_action_enum_must_agree() -> None:
    schema, policies = _files()
    extra = schema.replace('action "audit.read"', 'action "audit.export", "audit.read"')
    with pytest.raises(PolicyLoadError, match="audit.export"):
        Authorizer(extra, policies)
    with pytest.raises(PolicyLoadError, match="invalid Cedar schema"):
        Authorizer("namespace QP {", policies)


def test_a_refusal_says_why_in_words_about_the_caller_only() -> None:
    executor, approver = principal(INTENT_EXECUTOR), principal(INTENT_APPROVER)
    production = Resource("Intent", "i-1", TENANT, {"target": "production", "labels": {}})
    own = Resource("Execution", "e-1", TENANT, {"target": "staging", "requested_by": approver.id, "labels": {}})
    theirs = Resource("Intent", "i-2", OTHER_TENANT, {"target": "production", "labels": {"secret": "x"}})
    suspended = TenantFacts(TENANT, "suspended", FACTS.allowed_targets, FACTS.allowed_modules)
    cases = [
        (executor, Action.INTENT_EXECUTE, production, FACTS, ": production targets need the Intent.Deployer role."),
        (approver, Action.EXECUTION_APPROVE, own, FACTS, ": an approver may not approve an execution they requested."),
        (approver, Action.INTENT_CREATE, production, FACTS, ": none of the caller's roles allows it."),
        (executor, Action.INTENT_READ, production, suspended, ": the caller's tenant is suspended."),
        # Nothing about another tenant's resource beyond the code: not its target, not that it exists.
        (executor, Action.INTENT_READ, theirs, FACTS, "."),
    ]
    for who, action, what, facts, why in cases:
        decision = get_authorizer().decide(who, action, what, tenant=facts)
        assert refusal_detail(action, decision.reason) == f"Not allowed to {action.value}{why}", decision
    assert refusal_detail("intent.read", "denied_by_tenant_policy") == (
        "Not allowed to intent.read: a policy of the caller's tenant forbids it."
    )
    assert refusal_detail("intent.read", "policy_error").startswith("Not allowed to intent.read: the policies could")
    assert refusal_detail("intent.read", "no_such_reason") == "Not allowed to intent.read."
    # Every code a refusal can carry but cross_tenant has its words.
    said = {reason for reason in Reason if refusal_detail("x", reason) != "Not allowed to x."}
    assert said == set(Reason) - {Reason.ALLOWED, Reason.CROSS_TENANT}


def test_a_role_refusal_names_the_roles_that_would_allow_it() -> None:
    needs = (INTENT_EXECUTOR, INTENT_DEPLOYER)
    assert refusal_detail("intent.execute", "role_required", needs=needs) == (
        "Not allowed to intent.execute: none of the caller's roles allows it"
        " (it needs one of the roles Intent.Deployer, Intent.Executor)."
    )
    assert refusal_detail("tenant.create", "role_required", needs=[PLATFORM_ADMIN]) == (
        "Not allowed to tenant.create: none of the caller's roles allows it (it needs the Platform.Admin role)."
    )
    # Roles name only what role_required lacks; another reason is said as it is.
    assert refusal_detail("execution.approve", "self_approval", needs=[INTENT_APPROVER]) == (
        "Not allowed to execution.approve: an approver may not approve an execution they requested."
    )


# ---------------------------------------------------------------------------------------------------------------
# What a tenant's policies may cost
# ---------------------------------------------------------------------------------------------------------------


def _slow_forbid(index: int) -> str:
    """A valid-looking forbid whose one `like` cost Cedar ~10 ms with the GIL held (a long literal, a long pattern)."""
    return (
        'forbid (principal, action in [QP::Action::"execution.read", QP::Action::"intent.read"], resource) '
        f'when {{ "{"a" * 7300}" like "*{"a" * 2470}b" }} when {{ resource != QP::Execution::"x{index}" }};'
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (_slow_forbid(0), "string literal"),
        (
            'forbid (principal, action == QP::Action::"module.read", resource) '
            f'when {{ resource.name like "{"a" * 257}" }};',
            "at most 256 characters",
        ),
        (
            'forbid (principal, action == QP::Action::"module.read", resource) '
            f'when {{ resource.name == "{"a" * 257}" }};',
            "at most 256 characters",
        ),
        ('forbid (principal, action == QP::Action::"module.read", resource) when { "ab" like "*b" };', "not a string"),
    ],
)
def test_a_policy_whose_matching_would_cost_is_refused(authz: Authorizer, text: str, fragment: str) -> None:
    errors = authz.validate_tenant_policy(text)
    assert any(fragment in error for error in errors), errors


def test_a_pattern_of_the_longest_length_on_an_attribute_is_accepted(authz: Authorizer) -> None:
    text = (
        'forbid (principal, action == QP::Action::"module.read", resource) '
        f'when {{ resource.name like "{"a" * 256}" }};'
    )
    assert authz.validate_tenant_policy(text) == []


def _engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at each call of the Cedar engine, from now to the test's end."""
    import cedarpy

    calls: list[int] = []
    real = cedarpy.is_authorized

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cedarpy, "is_authorized", counted)
    return calls


def test_stored_costly_policies_never_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    # Saved before the bound (or behind the API): the tenant's decisions fail closed, and Cedar never matches them.
    authz = Authorizer()
    calls = _engine_calls(monkeypatch)
    slow = tuple(_slow_forbid(index) for index in range(50))
    execution = Resource("Execution", "e-1", TENANT, {"target": "staging", "requested_by": OTHER_REQUESTER})
    for _ in range(3):
        decision = authz.decide(
            principal(INTENT_READER), Action.EXECUTION_READ, execution, tenant=FACTS, tenant_policies=slow
        )
        assert decision == Decision(False, "policy_error", ())
    assert calls == []
    # The admin can still remove them.
    policy = Resource("Policy", "p-1", TENANT)
    assert authz.decide(
        principal(TENANT_ADMIN), Action.POLICY_DELETE, policy, tenant=FACTS, tenant_policies=slow
    ).allowed


# ---------------------------------------------------------------------------------------------------------------
# What the remembered decisions keep
# ---------------------------------------------------------------------------------------------------------------


def _tenant_forbids(count: int) -> tuple[str, ...]:
    """`count` distinct valid forbids of about 2,000 characters each."""
    padding = ", ".join(f'"t{n:04d}"' for n in range(250))
    return tuple(
        f'@id("f{index}") forbid (principal, action == QP::Action::"intent.read", resource is QP::Intent) '
        f'when {{ [{padding}, "only-{index}"].contains(resource.target) }};'
        for index in range(count)
    )


def _fresh_copy(texts: tuple[str, ...]) -> tuple[str, ...]:
    """Equal texts in new string objects, as reading them from the database again gives."""
    return tuple("".join(list(text)) for text in texts)


def test_texts_read_again_are_kept_once_however_often_they_change() -> None:
    authz = Authorizer()
    base = _tenant_forbids(10)
    extra = (
        '@id("no-staging") forbid (principal, action == QP::Action::"intent.read", resource) '
        'when { resource.target == "staging" };'
    )
    staging = Resource("Intent", "i-1", TENANT, {"target": "staging"})
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for cycle in range(60):
            # Read again each time (a new caller's decision after the texts' TTL), changed every tenth time.
            with_extra = cycle // 10 % 2 == 1
            texts = _fresh_copy(base + (extra,) if with_extra else base)
            decision = authz.decide(
                principal(INTENT_READER), Action.INTENT_READ, staging, tenant=FACTS, tenant_policies=texts
            )
            # Correct after each change: the added forbid takes effect, the removed one stops applying.
            assert decision.allowed is not with_extra, cycle
        gc.collect()  # what is garbage is not kept
        growth = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    # 60 fresh copies of ~24 KB of texts, each held by a remembered decision, would be ~1.4 MB; kept once, the texts
    # are 24 KB and the 60 remembered decisions themselves ~100 KB.
    assert growth < 600_000, growth
    assert len(authz._tenant_slots) == 1
    # Each remembered decision is keyed by a digest of its policy set, request and entities, never by the texts.
    keys = authz._decisions.keys()
    assert len(keys) == 60 and all(isinstance(key, bytes) and len(key) == 32 for key in keys)


def test_each_tenant_keeps_its_own_parsed_set() -> None:
    authz = Authorizer()
    staging = Resource("Intent", "i-1", TENANT, {"target": "staging"})
    forbid = 'forbid (principal, action == QP::Action::"intent.read", resource) when { resource.target == "staging" };'
    assert not authz.decide(
        principal(INTENT_READER), Action.INTENT_READ, staging, tenant=FACTS, tenant_policies=(forbid,)
    ).allowed
    kept = authz._tenant_slots[TENANT]
    other_facts = TenantFacts(OTHER_TENANT, "active", FACTS.allowed_targets, FACTS.allowed_modules)
    other_item = Resource("Intent", "i-2", OTHER_TENANT, {"target": "staging"})
    for index in range(300):  # another tenant editing its policies again and again
        edit = (
            'forbid (principal, action == QP::Action::"intent.read", resource) '
            f'when {{ resource.target == "e{index}" }};'
        )
        authz.decide(
            principal(INTENT_READER, tenant_id=OTHER_TENANT),
            Action.INTENT_READ,
            other_item,
            tenant=other_facts,
            tenant_policies=(edit,),
        )
    assert authz._tenant_slots[TENANT] is kept
    assert len(authz._tenant_slots) == 2


def test_stored_policies_past_the_total_bound_fail_closed() -> None:
    # Saved before the bound (or behind the API): every decision would evaluate all of them.
    authz = Authorizer()
    texts = _tenant_forbids(40)
    within = texts[: max(n for n in range(len(texts)) if sum(map(len, texts[:n])) <= MAX_TENANT_POLICY_TOTAL_CHARS)]
    past = texts[: len(within) + 1]
    assert sum(map(len, past)) > MAX_TENANT_POLICY_TOTAL_CHARS
    staging = Resource("Intent", "i-1", TENANT, {"target": "staging"})
    reader = principal(INTENT_READER)
    assert authz.decide(reader, Action.INTENT_READ, staging, tenant=FACTS, tenant_policies=within).allowed
    decision = authz.decide(reader, Action.INTENT_READ, staging, tenant=FACTS, tenant_policies=past)
    assert decision == Decision(False, "policy_error", ())


def test_parsed_sets_are_kept_for_the_most_recent_tenants_only() -> None:
    authz = Authorizer()
    forbid = 'forbid (principal, action == QP::Action::"intent.read", resource) when { resource.target == "staging" };'
    tenants = [uuid.UUID(int=index + 1) for index in range(TENANT_SLOTS + 1)]

    def decide(tenant_id: UUID) -> Decision:
        facts = TenantFacts(tenant_id, "active", FACTS.allowed_targets, FACTS.allowed_modules)
        staging = Resource("Intent", "i-1", tenant_id, {"target": "staging"})
        return authz.decide(
            principal(INTENT_READER, tenant_id=tenant_id),
            Action.INTENT_READ,
            staging,
            tenant=facts,
            tenant_policies=(forbid,),
        )

    for tenant_id in tenants:
        assert decide(tenant_id).reason == "denied_by_tenant_policy"
    assert len(authz._tenant_slots) == TENANT_SLOTS
    assert tenants[0] not in authz._tenant_slots  # the least recent one
    authz._decisions = type(authz._decisions)(DECISION_CACHE_SIZE)  # decided again, not remembered
    assert decide(tenants[0]).reason == "denied_by_tenant_policy"  # rebuilt
    assert len(authz._tenant_slots) == TENANT_SLOTS and tenants[0] in authz._tenant_slots


def test_policy_texts_are_kept_for_the_most_recent_tenants_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import nullcontext

    from shared.policy import tenant_policies

    monkeypatch.setattr(tenant_policies, "held_transaction", lambda tenant_id: None)
    monkeypatch.setattr(tenant_policies, "tenant_transaction", lambda tenant_id: nullcontext(tenant_id))
    monkeypatch.setattr(tenant_policies, "_read_texts", lambda conn: (f"texts of {conn}",))
    cache = tenant_policies._PolicyCache()
    tenants = [uuid.UUID(int=index + 1) for index in range(tenant_policies._CACHED_TENANTS + 1)]
    for tenant_id in tenants:
        assert cache.get(tenant_id) == (f"texts of {tenant_id}",)
        cache.forget(tenant_id)  # a change: the last tuple read stays, the entry goes
    assert len(cache._last) == tenant_policies._CACHED_TENANTS
    assert tenants[0] not in cache._last and tenants[0] not in cache._entries
    assert cache.get(tenants[0]) == (f"texts of {tenants[0]}",)
    assert len(cache._last) == tenant_policies._CACHED_TENANTS


@pytest.mark.parametrize(
    "left",
    [
        f'(if true then "{"a" * 256}" else "")',
        f'{{a: "{"a" * 256}"}}.a',
        '"ab"',
    ],
)
def test_a_like_over_anything_but_a_request_attribute_is_refused(authz: Authorizer, left: str) -> None:
    text = f'forbid (principal, action == QP::Action::"intent.read", resource) when {{ {left} like "*{"a" * 200}b" }};'
    errors = authz.validate_tenant_policy(text)
    assert any("`like` must match an attribute" in error for error in errors), errors


def test_a_like_over_a_request_attribute_is_accepted(authz: Authorizer) -> None:
    text = 'forbid (principal, action == QP::Action::"intent.read", resource) when { resource.target like "*x" };'
    assert authz.validate_tenant_policy(text) == []


def test_decisions_at_once_after_a_change_build_the_set_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    authz = Authorizer()
    builds: list[int] = []
    real_build = authz._build_policy_set

    def slow_build(texts: tuple[str, ...]) -> object:
        builds.append(1)
        time.sleep(0.05)  # a large set takes long to build; the others arrive meanwhile
        return real_build(texts)

    monkeypatch.setattr(authz, "_build_policy_set", slow_build)
    forbid = 'forbid (principal, action == QP::Action::"intent.read", resource) when { resource.target == "staging" };'
    start = threading.Barrier(8)
    reasons: list[str] = []

    def decide(index: int) -> None:
        staging = Resource("Intent", f"i-{index}", TENANT, {"target": "staging"})
        start.wait()
        decision = authz.decide(
            principal(INTENT_READER), Action.INTENT_READ, staging, tenant=FACTS, tenant_policies=(forbid,)
        )
        reasons.append(decision.reason)

    threads = [threading.Thread(target=decide, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reasons == ["denied_by_tenant_policy"] * 8
    assert builds == [1]
    assert authz._building == {}


def test_a_broken_stored_set_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    authz = Authorizer()
    widening = 'permit (principal, action == QP::Action::"intent.read", resource);'
    with caplog.at_level("WARNING", logger="shared.policy.authorizer"):
        for index in range(5):
            decision = authz.decide(
                principal(INTENT_READER),
                Action.INTENT_READ,
                Resource("Intent", f"i-{index}", TENANT, {"target": "staging"}),
                tenant=FACTS,
                tenant_policies=(widening,),
            )
            assert decision == Decision(False, "policy_error", ())
    assert len(caplog.records) == 1, [record.getMessage() for record in caplog.records]
    assert caplog.records[0].exc_info is None


# ---------------------------------------------------------------------------------------------------------------
# What a tenant's policies may cost a decision, counted on the parsed tree
# ---------------------------------------------------------------------------------------------------------------

_HEAD = 'forbid (principal, action == QP::Action::"execution.read", resource) when { resource != QP::Execution::"x" }'


def _filled(item: str, probe: str, size: int = 10_000) -> str:
    """A forbid of at most `size` characters whose set literal repeats `item` as often as fits, probed by `probe`."""
    shell = len(f"{_HEAD} when {{ [].contains({probe}) }};")
    count = (size - shell + 1) // (len(item) + 1)
    return f"{_HEAD} when {{ [{','.join([item] * count)}].contains({probe}) }};"


def _clauses(count: int) -> str:
    """A forbid of `count` + 1 clauses, each of which lets it apply."""
    return _HEAD + "unless{false}" * count + ";"


@pytest.mark.parametrize(
    "text",
    [
        _filled("[[[1]]]", "[[[2]]]"),  # the review's: 5 ms a decision at 31,968 characters
        _filled("[[1]]", "[[2]]", 200),
        _filled("[{a:[1]}]", "[{a:[2]}]", 200),
        _filled("[1]", "[2]", 200),
        f"{_HEAD} when {{ {{a: {{b: 1}}}}.a.b == 1 }};",
        f"{_HEAD} when {{ [{{a: 1}}.a].contains(1) }};",
    ],
)
def test_collection_literals_inside_collection_literals_are_refused(authz: Authorizer, text: str) -> None:
    errors = authz.validate_tenant_policy(text)
    assert any("may not hold another set or record literal" in error for error in errors), errors


def test_flat_collection_literals_are_accepted(authz: Authorizer) -> None:
    for text in [
        f'{_HEAD} when {{ ["a", "b"].contains(resource.target) }};',
        f'{_HEAD} when {{ resource.labels.containsAny(["team=web", "team=api"]) }};',
        f"{_HEAD} when {{ {{a: 1, b: 2}}.b == 2 }};",
        *_tenant_forbids(2),
    ]:
        assert authz.validate_tenant_policy(text) == [], text


def test_a_policy_costing_more_than_the_budget_is_refused(authz: Authorizer) -> None:
    # 10,000 characters of `1,` are ~4,950 expression nodes, every one evaluated on every decision.
    flat = _filled("1", "0")
    assert policy_cost(flat) > MAX_TENANT_POLICY_COST
    errors = authz.validate_tenant_policy(flat)
    assert any(f"at most {MAX_TENANT_POLICY_COST} expression nodes" in error for error in errors), errors
    # Set comparisons in a set literal count for what they compare (each element SET_COMPARISON_COST): 41 of them
    # are past the budget, 2 are not.
    compare = 'resource.labels.containsAll(["a=b"])'
    many = f"{_HEAD} when {{ [{', '.join([compare] * 41)}].contains(false) }};"
    assert any("expression nodes" in error for error in authz.validate_tenant_policy(many))
    assert authz.validate_tenant_policy(f"{_HEAD} when {{ {compare} && {compare} }};") == []


def test_stored_policies_past_the_cost_budget_fail_closed_without_reaching_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    authz = Authorizer()
    calls = _engine_calls(monkeypatch)
    # Each valid on its own, 9,300 characters in all, and ~4,500 nodes together: saved before the budget.
    texts = tuple(_filled(str(index), "-1", 3_100) for index in range(3))
    assert all(authz.validate_tenant_policy(text) == [] for text in texts)
    assert sum(map(policy_cost, texts)) > MAX_TENANT_POLICY_COST >= sum(map(policy_cost, texts[:2]))
    execution = Resource("Execution", "e-1", TENANT, {"target": "staging", "requested_by": OTHER_REQUESTER})
    reader = principal(INTENT_READER)
    assert authz.decide(reader, Action.EXECUTION_READ, execution, tenant=FACTS, tenant_policies=texts[:2]).allowed
    assert calls == [1]
    decision = authz.decide(reader, Action.EXECUTION_READ, execution, tenant=FACTS, tenant_policies=texts)
    assert decision == Decision(False, "policy_error", ())
    assert calls == [1]


def test_more_clauses_than_the_engine_evaluates_on_any_stack_are_refused(authz: Authorizer) -> None:
    # 760 of them fit in 10,000 characters, and Cedar reached its recursion limit on them on 512 KiB and 2 MiB
    # thread stacks (not on 8 MiB): the decision depended on the thread that made it first.
    errors = authz.validate_tenant_policy(_clauses(760))
    assert any(f"at most {MAX_POLICY_CLAUSES} `when` / `unless` clauses" in error for error in errors), errors
    assert authz.validate_tenant_policy(_clauses(MAX_POLICY_CLAUSES)) != []
    assert authz.validate_tenant_policy(_clauses(MAX_POLICY_CLAUSES - 1)) == []


def test_the_most_clauses_evaluate_alike_on_a_small_thread_stack() -> None:
    import threading

    # The deepest bodies accepted, in as many clauses as accepted, on the smallest stack the bounds are measured on.
    body = "!(" * 15 + "true" + ")" * 15
    text = _HEAD + f" unless {{ {body} }}" * (MAX_POLICY_CLAUSES - 1) + ";"
    authz = Authorizer()
    assert authz.validate_tenant_policy(text) == []
    reasons: list[str] = []
    execution = Resource("Execution", "e-1", TENANT, {"target": "staging", "requested_by": OTHER_REQUESTER})

    def decide() -> None:
        decision = authz.decide(
            principal(INTENT_READER), Action.EXECUTION_READ, execution, tenant=FACTS, tenant_policies=(text,)
        )
        reasons.append(decision.reason)

    previous = threading.stack_size(512 * 1024)
    try:
        thread = threading.Thread(target=decide)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(previous)
    assert reasons == ["denied_by_tenant_policy"]


def _set_of(item: str, size: int = 10_000) -> str:
    """The review's forbid: a set literal repeating `item` as often as fits in `size` characters, tested for emptiness
    (which Cedar answers only after building it)."""
    shell = len(f"{_HEAD} when {{ [].isEmpty() }};")
    return f"{_HEAD} when {{ [{','.join([item] * ((size - shell + 1) // (len(item) + 1)))}].isEmpty() }};"


@pytest.mark.parametrize(
    "text",
    [
        _set_of("resource.labels"),  # 10,000 characters, 2-3 nodes an element before
        _set_of("principal.tenant.allowed_modules"),
        _set_of("resource.labels", 41 * len("resource.labels,") + len(f"{_HEAD} when {{ [].isEmpty() }};")),
        f"{_HEAD} when {{ {{{', '.join(f'a{n}: resource.labels' for n in range(41))}}}.a0.isEmpty() }};",
    ],
)
def test_a_collection_literal_of_the_tenants_sets_costs_what_building_it_compares(authz: Authorizer, text: str) -> None:
    # Cedar orders a set's elements as it builds it, comparing whole sets when they are sets: 490 `resource.labels`
    # against 64 labels of ~320 characters cost a decision ~2 ms more, 500 modules ~7 ms more.
    errors = authz.validate_tenant_policy(text)
    assert any(f"at most {MAX_TENANT_POLICY_COST} expression nodes" in error for error in errors), errors


def test_a_collection_literal_of_scalars_costs_its_nodes_alone(authz: Authorizer) -> None:
    for condition in [
        '["a", "b", "c"].contains(resource.target)',
        "[-1, 2, -(-3)].contains(1)",
        "[true, false].contains(principal.app_only)",
        '[QP::Execution::"e", QP::Execution::"f"].contains(resource)',
        '[decimal("1.5"), decimal("-2.5")].contains(decimal("1.5"))',
        '[ip("10.0.0.1"), ip("10.0.0.2")].contains(ip("10.0.0.1"))',
        '{a: "x", b: -1, c: decimal("1.5")}.a == resource.target',
    ]:
        text = f"{_HEAD} when {{ {condition} }};"
        assert authz.validate_tenant_policy(text) == [], text
        assert policy_cost(text) < 20, text
    # Anything else in a literal counts SET_COMPARISON_COST, however cheap it looks.
    for element in ["resource.target", "resource.labels", 'if true then "a" else "b"', '"a" + ""']:
        assert policy_cost(f"{_HEAD} when {{ [{element}].isEmpty() }};") >= SET_COMPARISON_COST, element
    assert policy_cost(f'{_HEAD} when {{ {{a: resource.target}}.a == "x" }};') >= SET_COMPARISON_COST


def test_stored_sets_of_the_tenants_sets_fail_closed_without_reaching_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The review's: four such policies filling 31,992 characters, each within the old budget, against the largest
    # labels (64 of ~320 characters), saved before the element count or behind the API.
    texts = tuple(_set_of("resource.labels", size).replace('"x"', f'"x{n}"') for n, size in enumerate([10_000] * 3))
    texts += (_set_of("resource.labels", MAX_TENANT_POLICY_TOTAL_CHARS - sum(map(len, texts))),)
    assert sum(map(len, texts)) <= MAX_TENANT_POLICY_TOTAL_CHARS
    authz = Authorizer()
    calls = _engine_calls(monkeypatch)
    labels = {f"k{label:02d}": "v" * 316 for label in range(64)}
    execution = Resource(
        "Execution", "e-1", TENANT, {"target": "staging", "requested_by": OTHER_REQUESTER, "labels": labels}
    )
    decision = authz.decide(
        principal(INTENT_READER), Action.EXECUTION_READ, execution, tenant=FACTS, tenant_policies=texts
    )
    assert decision == Decision(False, "policy_error", ())
    assert calls == []


def test_a_set_comparison_with_a_literal_side_costs_the_literal(authz: Authorizer) -> None:
    # Cedar compares the lengths and walks the smaller set: against a literal of two labels, ~1 µs however large the
    # tenant's sets; only two sets of the tenant's data compare at a cost of their size (~21-27 µs for 500 modules).
    honest = f'{_HEAD} when {{ resource.labels.containsAny(["team=web", "freeze=true"]) }};'
    assert authz.validate_tenant_policy(honest) == []
    assert policy_cost(honest) < 20
    assert policy_cost(f'{_HEAD} when {{ ["a", "b"].containsAll(principal.tenant.allowed_modules) }};') < 20
    both = f"{_HEAD} when {{ resource.labels.containsAll(principal.tenant.allowed_targets) }};"
    assert policy_cost(both) >= SET_COMPARISON_COST
    # Forty of those are past the budget.
    many = _HEAD + " when { resource.labels.containsAll(principal.tenant.allowed_targets) }" * 20
    assert sum(map(policy_cost, [many + ";", many + ";"])) > MAX_TENANT_POLICY_COST


def _filling(clause: str) -> tuple[str, ...]:
    """Policies of `_HEAD` and up to 31 more copies of `clause`, filling MAX_TENANT_POLICY_TOTAL_CHARS."""
    texts: list[str] = []
    room = MAX_TENANT_POLICY_TOTAL_CHARS
    while room >= len(_HEAD) + len(clause) + 1:
        count = min(MAX_POLICY_CLAUSES - 1, (min(room, 10_000) - len(_HEAD) - 1) // len(clause))
        texts.append(f"{_HEAD}{clause * count};".replace('"x"', f'"x{len(texts)}"'))
        room -= len(texts[-1])
    return tuple(texts)


@pytest.mark.parametrize("constructor", ["duration", "decimal", "datetime", "ip"])
def test_a_constructor_literal_longer_than_any_honest_one_is_refused(authz: Authorizer, constructor: str) -> None:
    # Parsed again on every decision: 31,887 characters of `duration("<240 zeros>1ms")` counted 425 nodes and cost a
    # decision +1.44 ms.
    padded = "0" * 240 + {"duration": "1ms", "decimal": "1.5", "datetime": "2026-12-07", "ip": "10.0.0.1"}[constructor]
    text = f'{_HEAD} when {{ {constructor}("{padded}") == {constructor}("{padded}") || true }};'
    errors = authz.validate_tenant_policy(text)
    assert any(f"at most {MAX_CONSTRUCTOR_LITERAL_CHARS} characters" in error for error in errors), errors
    # The longest honest ones still save.
    for honest in [
        'datetime("2026-12-07T10:00:00.000+0100") < datetime("2026-12-08")',
        'ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128").isIpv6()',
        'decimal("-922337203685477.5808").lessThan(decimal("1.5"))',
        'duration("-365d23h59m59s999ms") < duration("1h30m")',
    ]:
        assert authz.validate_tenant_policy(f"{_HEAD} when {{ {honest} }};") == [], honest


@pytest.mark.parametrize(
    "clause",
    [
        f' when {{ duration("{"0" * 240}1ms") > duration("{"0" * 240}2ms") || true }}',
        f' when {{ decimal("{"0" * 240}1.5").lessThan(decimal("{"0" * 240}2.5")) || true }}',
    ],
)
def test_stored_long_constructor_literals_fail_closed_without_reaching_the_engine(
    monkeypatch: pytest.MonkeyPatch, clause: str
) -> None:
    # The review's: literals of 243 characters filling the character bound, within the node budget before.
    texts = _filling(clause)
    assert sum(map(len, texts)) > MAX_TENANT_POLICY_TOTAL_CHARS - 1_000
    calls = _engine_calls(monkeypatch)
    execution = Resource("Execution", "e-1", TENANT, {"target": "staging", "requested_by": OTHER_REQUESTER})
    decision = Authorizer().decide(
        principal(INTENT_READER), Action.EXECUTION_READ, execution, tenant=FACTS, tenant_policies=texts
    )
    assert decision == Decision(False, "policy_error", ())
    assert calls == []


def test_a_duration_literal_counts_its_characters(authz: Authorizer) -> None:
    # Within the length bound a `duration` still parses at ~45-60 ns a character: 496 of 40 characters cost +1.5 ms.
    padded = f'{_HEAD} when {{ duration("{"0" * 45}1ms") > duration("1ms") }};'
    assert policy_cost(padded) >= 24
    assert sum(map(policy_cost, _filling(f' unless {{ duration("{"0" * 45}1ms") > duration("1ms") }}'))) > (
        MAX_TENANT_POLICY_COST
    )
    assert policy_cost(f'{_HEAD} when {{ duration("1h30m") > duration("1ms") }};') < 20


def test_a_like_counts_what_its_backtracking_costs(authz: Authorizer) -> None:
    # Against a 128-character repetitive target a `like` took ~6 µs: 31,976 characters of them counted 2,102 nodes and
    # cost a decision +1.63 ms.
    clause = ' when { resource.target like "*ttttttttttttttttttttttttttttttx" }'
    assert policy_cost(f"{_HEAD}{clause};") >= LIKE_COST
    assert sum(map(policy_cost, _filling(clause))) > MAX_TENANT_POLICY_COST
    # Fifty honest policies of one `like` each still fit.
    honest = (
        'forbid (principal, action == QP::Action::"intent.create", resource) when { resource.target like "prod-*" };'
    )
    assert authz.validate_tenant_policy(honest) == []
    assert 50 * policy_cost(honest) <= MAX_TENANT_POLICY_COST


@pytest.mark.parametrize(
    "condition",
    [
        "principal.tenant.allowed_modules == principal.tenant.allowed_targets",
        "resource.labels != principal.roles",
        "(if principal.app_only then resource.labels else principal.roles) == resource.labels",
    ],
)
def test_an_equality_of_the_tenants_sets_costs_a_set_comparison(condition: str) -> None:
    # Two equal sets compare element by element: 100 names of 128 characters, ~3,000 nodes, +2.2-2.4 ms a decision.
    assert policy_cost(f"{_HEAD} when {{ {condition} }};") >= SET_COMPARISON_COST
    assert sum(map(policy_cost, _filling(f" when {{ {condition} }}"))) > MAX_TENANT_POLICY_COST


def test_an_equality_with_a_literal_side_costs_its_nodes(authz: Authorizer) -> None:
    for condition in [
        'resource.labels == ["team=web"]',
        'resource.labels != ["team=api", "freeze=true"]',
        'resource.target == "production"',
        'principal.tenant == resource.tenant && resource.target != "x"',
    ]:
        text = f"{_HEAD} when {{ {condition} }};"
        assert authz.validate_tenant_policy(text) == [], text
        assert policy_cost(text) < 20, text


def test_a_remembered_decision_keeps_a_digest_not_the_entities() -> None:
    # The largest entities a decision sends: 64 labels of ~320 characters (an Intent.Author sets them) and a tenant's
    # longest allow-lists (500 modules, 100 targets of 128 characters). Kept in the key, each entry held ~100 KB.
    facts = TenantFacts(
        TENANT,
        "active",
        frozenset(f"t{index:03d}" + "t" * 124 for index in range(100)),
        frozenset(f"module-{index:03d}" + "m" * 100 for index in range(500)),
    )
    authz = Authorizer()
    reader = principal(INTENT_READER)
    count = 100
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for index in range(count):
            labels = {f"k{label:02d}": f"{index:04d}" + "v" * 312 for label in range(64)}
            execution = Resource(
                "Execution",
                f"e-{index}",
                TENANT,
                {"target": "staging", "requested_by": OTHER_REQUESTER, "labels": labels},
            )
            assert authz.decide(reader, Action.EXECUTION_READ, execution, tenant=facts).allowed
        gc.collect()
        growth = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert authz._decisions.cache_info().currsize == count
    assert growth < count * 1_000, growth
    assert all(isinstance(key, bytes) and len(key) == 32 for key in authz._decisions.keys())


def test_the_same_request_of_two_tenants_is_remembered_apart() -> None:
    authz = Authorizer()
    other = TenantFacts(OTHER_TENANT, "suspended", FACTS.allowed_targets, FACTS.allowed_modules)
    shared_id = "11111111-1111-4111-8111-111111111111/33333333-3333-4333-8333-333333333333"
    decided = []
    for facts in (FACTS, other):
        who = Principal(
            tenant_id=facts.id,
            entra_tenant_id=uuid.UUID(int=1),
            object_id=uuid.UUID(int=2),
            roles=frozenset({INTENT_READER}),
            scopes=frozenset(),
            app_only=False,
        )
        assert (
            who.id
            == Principal(
                tenant_id=TENANT,
                entra_tenant_id=uuid.UUID(int=1),
                object_id=uuid.UUID(int=2),
                roles=frozenset(),
                scopes=frozenset(),
                app_only=False,
            ).id
        )  # one caller id in both tenants: only the tenant tells the requests apart
        resource = Resource("Intent", "i-1", facts.id, {"target": "staging", "requested_by": shared_id})
        decided.append(authz.decide(who, Action.INTENT_READ, resource, tenant=facts).reason)
    assert decided == ["allowed", "tenant_suspended"]
    assert authz._decisions.cache_info().currsize == 2


def test_texts_read_before_a_change_are_not_kept_past_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from contextlib import nullcontext

    from shared.policy import tenant_policies

    monkeypatch.setattr(tenant_policies, "held_transaction", lambda tenant_id: None)
    monkeypatch.setattr(tenant_policies, "tenant_transaction", lambda tenant_id: nullcontext(tenant_id))
    stored = ["before"]
    read, resume = threading.Event(), threading.Event()

    def read_texts(conn: object) -> tuple[str, ...]:
        texts = (stored[0],)
        if not read.is_set():  # the first read pauses once it has read, before it is kept
            read.set()
            assert resume.wait(10)
        return texts

    monkeypatch.setattr(tenant_policies, "_read_texts", read_texts)
    cache = tenant_policies._PolicyCache()
    answers: list[tuple[str, ...]] = []
    reader = threading.Thread(target=lambda: answers.append(cache.get(TENANT)))
    reader.start()
    assert read.wait(10)
    stored[0] = "after"  # a forbid's create commits
    cache.forget(TENANT)  # and its after-commit forget runs
    resume.set()
    reader.join(10)
    assert answers == [("before",)]  # that decision began before the change
    # The next one reads the change instead of the texts from before it for the TTL.
    assert cache.get(TENANT) == ("after",)
