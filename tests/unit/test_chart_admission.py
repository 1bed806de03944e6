"""The chart's optional admission policy fences every reference a NewFuseAgent can make.

Whoever may create a NewFuseAgent may create pods, so the fence must cover every field that puts
a ServiceAccount, a Secret, a toleration or a node selector into an agent pod. The models are
walked for SecretKeyRef fields and the pod builder is run on a spec that sets all of them: a new
reference field that the policy does not fence fails here, not in a tenant's cluster. Whether the
API server really refuses is tests/integration/test_admission_policy.py's job.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from fence import (
    ALLOWED,
    EVERY_REFERENCE,
    POLICY_KINDS,
    TEMPLATE,
    allow_lists,
    fence_docs,
    fence_values,
    nfa,
    one,
    render,
    render_raw,
)
from newfuse.api.v1alpha1 import (
    GROUP,
    PLURAL,
    VERSION,
    NewFuseAgent,
    NewFuseAgentSpec,
    SecretKeyRef,
)
from newfuse.core.pods import AgentDefaults, build_pod

TENANT = "team-a"


@pytest.fixture(scope="module")
def fenced() -> list[dict[str, Any]]:
    return render(values=fence_values(TENANT))


def _expression(policy: dict[str, Any], variable: str) -> str:
    [expr] = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == variable]
    return str(expr)


def _models(annotation: Any) -> Iterator[tuple[bool, Any]]:
    """The types inside an annotation, each with whether it sits in a list or map."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _models(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models(arg)
    elif origin in (list, dict):
        for _, inner in _models(typing.get_args(annotation)[-1]):
            yield True, inner
    else:
        yield False, annotation


def secret_ref_paths(model: type[BaseModel], prefix: str = "spec") -> Iterator[str]:
    """Every SecretKeyRef field under a model, as 'spec.a.b' ('[]' after a list or map)."""
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or to_camel(name)}"
        for repeated, inner in _models(field.annotation):
            here = path + "[]" if repeated else path
            if inner is SecretKeyRef:
                yield here
            elif isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from secret_ref_paths(inner, here)


def test_it_is_off_by_default() -> None:
    docs = render()
    assert not fence_docs(docs)
    assert not render_raw("--show-only", TEMPLATE).stdout.strip()


def test_it_matches_newfuseagents_and_carries_its_allow_lists(
    fenced: list[dict[str, Any]],
) -> None:
    docs = fence_docs(fenced)
    assert sorted(d["kind"] for d in docs) == sorted(POLICY_KINDS)
    policy = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    spec = policy["spec"]
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert spec["failurePolicy"] == "Fail"
    [rule] = spec["matchConstraints"]["resourceRules"]
    assert rule == {
        "apiGroups": [GROUP],
        "apiVersions": [VERSION],
        "operations": ["CREATE", "UPDATE"],
        "resources": [PLURAL],
    }
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    # No params object: the lists are in the cluster-scoped policy, out of tenants' reach, and
    # clear of the built-in paramKind informer bug (kubernetes/kubernetes#133827).
    assert "paramKind" not in spec
    assert "paramRef" not in binding["spec"]
    assert binding["spec"]["matchResources"] == {"namespaceSelector": {}}
    assert all(v.get("reason") == "Forbidden" for v in spec["validations"])
    assert all("messageExpression" in v for v in spec["validations"])


def test_allow_lists_are_rendered_per_namespace(fenced: list[dict[str, Any]]) -> None:
    lists = allow_lists(one(fenced, "ValidatingAdmissionPolicy"))
    assert lists[TENANT] == ALLOWED
    # The chart's own signing Secret: every fleet's pods read it anyway.
    assert lists["_all"] == {
        "serviceAccounts": [],
        "secrets": ["nf-newfuse-operator-signing"],
        "tolerationKeys": [],
        "nodeSelectors": [],
    }


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["signing.agentsByDefault=false"], []),
        (["signing.enabled=false", "redis.agentSecret.name=redis-url"], ["redis-url"]),
        (
            ["admissionPolicy.allNamespaces.secrets={shared}"],
            ["nf-newfuse-operator-signing", "shared"],
        ),
    ],
    ids=["signing not by default", "agent redis secret", "plus allNamespaces"],
)
def test_secrets_every_agent_reads_anyway_are_allowed_everywhere(
    sets: list[str], expected: list[str]
) -> None:
    docs = render("admissionPolicy.enabled=true", *sets)
    policy = one(fence_docs(docs), "ValidatingAdmissionPolicy")
    assert allow_lists(policy)["_all"]["secrets"] == expected


def test_the_binding_covers_the_watched_namespaces_unless_told_otherwise() -> None:
    def scope(*sets: str) -> dict[str, Any]:
        docs = render("admissionPolicy.enabled=true", *sets)
        binding = one(fence_docs(docs), "ValidatingAdmissionPolicyBinding")
        return dict(binding["spec"]["matchResources"]["namespaceSelector"])

    watched = scope("watchNamespaces={team-a,team-b}")
    assert watched["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]
    assert scope(
        "watchNamespaces={team-a}", "admissionPolicy.namespaceSelector.matchLabels.fenced=yes"
    ) == {"matchLabels": {"fenced": "yes"}}
    assert scope() == {}


def test_warn_mode_reaches_the_binding() -> None:
    docs = render("admissionPolicy.enabled=true", "admissionPolicy.validationActions={Warn,Audit}")
    binding = one(fence_docs(docs), "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["validationActions"] == ["Warn", "Audit"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"validationActions": ["Deny", "Warn"]}, "validationActions"),
        ({"validationActions": ["Block"]}, "validationActions"),
        ({"namespaces": {"Team_A": {}}}, "Team_A"),
        ({"namespaces": {"team-a": {"secrets": ["a,b"]}}}, "secrets"),
        ({"allNamespaces": {"nodeSelectors": ["pool=a b"]}}, "nodeSelectors"),
        ({"namespaces": {"team-a": {"configMaps": ["x"]}}}, "configMaps"),
    ],
    ids=["deny with warn", "unknown action", "bad namespace", "comma", "space", "unknown list"],
)
def test_bad_fence_values_are_refused_by_the_schema(values: dict[str, Any], message: str) -> None:
    result = render_raw(values={"admissionPolicy": {"enabled": True, **values}})
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_every_secret_reference_of_the_spec_is_fenced(fenced: list[dict[str, Any]]) -> None:
    paths = sorted(secret_ref_paths(NewFuseAgentSpec))
    assert paths == [
        "spec.encryption.acceptKeySecretRef",
        "spec.encryption.keySecretRef",
        "spec.env[].valueFrom.secretKeyRef",
        "spec.gateway.credentialsSecretRef",
        "spec.memory.postgres.urlSecretRef",
        "spec.redis.caSecretRef",
        "spec.redis.urlSecretRef",
        "spec.signing.acceptKeySecretRef",
        "spec.signing.keySecretRef",
    ], "a SecretKeyRef field was added or moved: fence it in admission-policy.yaml, then here"
    refs = _expression(one(fenced, "ValidatingAdmissionPolicy"), "secretRefs")
    for path in paths:
        # The message names the field, as a quoted literal: 'spec.signing.keySecretRef.name', or
        # 'spec.env[' + <index> + '].valueFrom.secretKeyRef.name' inside a list.
        pieces = f"'{path}.name'".split("[]")
        quoted = [pieces[0]] if len(pieces) == 1 else [pieces[0] + "[", "]" + pieces[-1]]
        for piece in quoted:
            assert piece in refs, f"{path} is not fenced ({piece} is not in secretRefs)"
        assert "object." + path.replace("[]", "").removesuffix(".valueFrom.secretKeyRef") in refs


def test_the_reference_spec_sets_every_secret_reference() -> None:
    """EVERY_REFERENCE, which the integration test sends, really exercises each fenced path."""
    spec: Any = EVERY_REFERENCE
    for path in secret_ref_paths(NewFuseAgentSpec):
        node = spec
        for part in path.removeprefix("spec.").split("."):
            key = part.removesuffix("[]")
            node = node[key]
            if part.endswith("[]"):
                node = next(item for item in node if "valueFrom" in item)
        assert node["name"] in ALLOWED["secrets"], path


def _secret_names(node: Any) -> set[str]:
    """Every Secret a pod manifest names (env secretKeyRef, envFrom, secret volumes)."""
    if isinstance(node, list):
        return set().union(*(_secret_names(item) for item in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found: set[str] = set()
    for key, value in node.items():
        if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
            found.add(value["name"])
        elif key == "secret" and isinstance(value, dict):
            found.add(value["secretName"])
        elif key == "imagePullSecrets":
            found |= {item["name"] for item in value}
        found |= _secret_names(value)
    return found


def test_what_the_spec_adds_to_a_pod_is_exactly_what_the_policy_fences() -> None:
    defaults = AgentDefaults(
        redis_url="redis://r:6379/0",
        redis_secret=SecretKeyRef(name="chart-redis", key="url"),
        signing_secret=SecretKeyRef(name="chart-signing", key="key"),
    )
    bare = NewFuseAgent.model_validate(
        {**nfa("f", TENANT), "spec": {"image": EVERY_REFERENCE["image"]}}
    )
    full = NewFuseAgent.model_validate(nfa("f", TENANT))
    bare_pod = build_pod(bare, "rev", 0, defaults)["spec"]
    full_pod = build_pod(full, "rev", 0, defaults)["spec"]
    # Pod-level fields the spec adds: each one is fenced by the policy.
    assert set(full_pod) - set(bare_pod) == {"serviceAccountName", "tolerations", "nodeSelector"}
    # Secrets the spec adds (the operator's own cancel out): exactly the allowed references.
    added = _secret_names(full_pod) - _secret_names(bare_pod)
    assert added == set(ALLOWED["secrets"])


def test_policy_checks_the_pod_level_fields(fenced: list[dict[str, Any]]) -> None:
    policy = one(fenced, "ValidatingAdmissionPolicy")
    assert "object.spec.serviceAccountName" in _expression(policy, "deniedServiceAccounts")
    assert "object.spec.tolerations" in _expression(policy, "deniedTolerations")
    assert "object.spec.nodeSelector" in _expression(policy, "deniedNodeSelectors")
    # Metadata-only updates (the operator's finalizer) are never refused.
    [condition] = policy["spec"]["matchConditions"]
    assert condition["expression"] == (
        "request.operation == 'CREATE' || object.spec != oldObject.spec"
    )
