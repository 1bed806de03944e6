"""Callers of the fleet API in tests: ServiceAccounts with RBAC, their tokens, an OIDC issuer."""

# The kubernetes client takes plain dicts as bodies, though its annotations name only its models.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from helm_chart import render
from localcluster.binaries import Binaries

AUDIENCE = "newfuse-gateway"
SUBMITTER = "nf-newfuse-operator-task-submitter"
VIEWER = "nf-newfuse-operator-viewer"
REVIEWER = "nf-newfuse-operator-reviewer"
CHART_ROLES = (SUBMITTER, VIEWER, REVIEWER)


def apply_chart_roles(api: k8s.ApiClient) -> None:
    """Create the chart's fleet API ClusterRoles (release `nf`), as `helm install` would."""
    rbac = k8s.RbacAuthorizationV1Api(api)
    for doc in render(Binaries.ensure()):
        if doc["kind"] == "ClusterRole" and doc["metadata"]["name"] in CHART_ROLES:
            try:
                rbac.create_cluster_role(doc)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                rbac.replace_cluster_role(doc["metadata"]["name"], doc)


def service_account(
    api: k8s.ApiClient, namespace: str, name: str, *, cluster_role: str | None = None,
    fleets: list[str] | None = None, audience: str = AUDIENCE,
    rules: list[dict[str, Any]] | None = None,
) -> str:  # fmt: skip
    """A ServiceAccount bound to ``cluster_role`` (namespace-wide), to a Role that may create
    and get the tasks of ``fleets`` only, or to a Role of ``rules``; returns a token for
    ``audience``."""
    core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    role_ref = {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role,
    }
    if fleets is not None:
        rules = [{"apiGroups": ["newfuse.io"], "resources": ["newfuseagents/tasks"],
                  "verbs": ["create", "get"], "resourceNames": fleets}]  # fmt: skip
    if rules is not None:
        rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
        role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    rbac.create_namespaced_role_binding(
        namespace, {"metadata": {"name": name}, "roleRef": role_ref, "subjects": [subject]}
    )
    return token_for(api, namespace, name, audience)


def token_for(
    api: k8s.ApiClient, namespace: str, name: str, audience: str | None = AUDIENCE
) -> str:
    """A fresh token of the ServiceAccount for ``audience`` (TokenRequest, 10 minutes).

    ``audience`` None: the API server's own (a token for a kubeconfig).
    """
    audiences = [audience] if audience is not None else None
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=audiences, expiration_seconds=600)
    )
    reply = k8s.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
    assert reply.status is not None
    return str(reply.status.token)


def bind_user(api: k8s.ApiClient, namespace: str, user: str, cluster_role: str) -> None:
    """Bind ``cluster_role`` to the user ``user`` in ``namespace``."""
    k8s.RbacAuthorizationV1Api(api).create_namespaced_role_binding(namespace, {
        "metadata": {"name": f"user-{uuid.uuid4().hex[:6]}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": cluster_role},
        "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
    })  # fmt: skip


class OidcIssuer:
    """An OIDC issuer on loopback: its discovery document, its JWKS, and tokens it signs."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:8]

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def token(self, sub: str, audience: str, *, expires_in: float = 300, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.url, "sub": sub, "aud": audience, "iat": now,
                "exp": now + int(expires_in), **claims}  # fmt: skip
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})


@contextmanager
def oidc_issuer() -> Iterator[OidcIssuer]:
    """Serve an issuer's discovery document and JWKS from a thread until the block ends."""
    holder: dict[str, OidcIssuer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            issuer = holder["issuer"]
            documents = {
                "/.well-known/openid-configuration": {
                    "issuer": issuer.url, "jwks_uri": issuer.url + "/jwks.json"
                },
                "/jwks.json": issuer.jwks(),
            }  # fmt: skip
            body = json.dumps(documents.get(self.path, {})).encode()
            self.send_response(200 if self.path in documents else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["issuer"] = OidcIssuer(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder["issuer"]
    finally:
        server.shutdown()
