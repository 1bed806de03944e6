"""`newfuse golden add --from-review`: a reviewer's approved answer becomes a golden task.

Review feedback is the cheapest source of known-good answers: a person already read the output
and approved it (or edited it into shape). The case lands in the ConfigMap the fleet's golden gate
reads (spec.rollout.analysis.goldenTasks), with the approved output as its exact expectation, so
the next rollout is judged on it. The review is read as `newfuse review show` reads it (RBAC on the
fleet's reviews, or through --server); the ConfigMap is written with optimistic concurrency.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from newfuse.api.analysis import GoldenTasksSpec
from newfuse.cli.common import (
    DEFAULT_NAMESPACE,
    DEFAULT_REDIS,
    Fleet,
    Namespace,
    RedisUrl,
    app,
    console,
    fail,
    run,
)
from newfuse.cli.reviews import read_review, refused
from newfuse.cli.rollout import Kubeconfig, api_client
from newfuse.core.golden import GoldenCasesError, case_from_review, with_case

DEFAULT_KEY = GoldenTasksSpec.model_fields["key"].default
golden_app = typer.Typer(help="Golden tasks: cases a rollout's gate judges.", no_args_is_help=True)
app.add_typer(golden_app, name="golden")


def _target(kubeconfig: str | None, namespace: str, fleet: str, config_map: str | None) -> Any:
    """The ConfigMap and key the fleet's golden gate reads (or the one named)."""
    from kubernetes import client as k8s_client

    from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION

    api = api_client(kubeconfig)
    if config_map is not None:
        return api, config_map, None
    body: Any = k8s_client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, fleet
    )
    spec: Any = body.get("spec", {}).get("rollout", {}).get("analysis", {}).get("goldenTasks")
    if not spec:
        fail(f"{namespace}/{fleet} has no spec.rollout.analysis.goldenTasks: pass --config-map")
        raise typer.Exit(1)
    return api, spec["configMap"], spec.get("key")


def _append(api: Any, namespace: str, name: str, key: str, case: Any) -> None:
    from kubernetes import client as k8s_client
    from kubernetes.client.exceptions import ApiException

    core = k8s_client.CoreV1Api(api)
    where = f"ConfigMap {namespace}/{name} key {key!r}"
    try:
        found = core.read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        body = k8s_client.V1ConfigMap(
            metadata=k8s_client.V1ObjectMeta(name=name, namespace=namespace),
            data={key: with_case(None, case, where)},
        )
        core.create_namespaced_config_map(namespace, body)
        return
    data = dict(found.data or {})
    data[key] = with_case(data.get(key), case, where)
    found.data = data
    # The read resourceVersion rides along: a concurrent edit makes this a 409, not a lost case.
    core.replace_namespaced_config_map(name, namespace, found)


@golden_app.command("add")
@run
async def add(
    fleet: Fleet,
    from_review: Annotated[str, typer.Option("--from-review", help="An approved review's id.")],
    name: Annotated[str | None, typer.Option("--name", help="The case's name.")] = None,
    config_map: Annotated[
        str | None, typer.Option("--config-map", help="Default: the fleet's goldenTasks one.")
    ] = None,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Add an approved review's input and output as a golden case of the fleet."""
    review = await read_review(redis_url, namespace, fleet, kubeconfig, from_review)
    api, target, key = _target(kubeconfig, namespace, fleet, config_map)
    try:
        case = case_from_review(review, name)
        _append(api, namespace, target, key or DEFAULT_KEY, case)
    except GoldenCasesError as exc:
        refused(exc)
    console.print(f"added golden case {case.name!r} to ConfigMap {namespace}/{target}")
