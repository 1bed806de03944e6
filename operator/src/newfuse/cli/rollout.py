"""`newfuse rollout ...`: watch and steer a fleet's phased rollout through the Kubernetes API.

These commands talk to the API server, not to Redis: every control action is a patch of the
NewFuseAgent (an annotation, or spec.rollout.paused), stamped with who asked, so the operator acts
on it once and GitOps and the audit trail both see it.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Annotated, Any

import typer
from rich.table import Table

from newfuse.api.rollout import RolloutAction
from newfuse.cli.common import DEFAULT_NAMESPACE, Fleet, Namespace, app, console, errors

rollout_app = typer.Typer(help="Watch and steer a fleet's phased rollout.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")
Kubeconfig = Annotated[
    str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig of the cluster.")
]


def api_client(kubeconfig: str | None) -> Any:
    """An API client from the kubeconfig, or one clear line and exit code 1."""
    from kubernetes import config as k8s_config

    try:
        return k8s_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (k8s_config.ConfigException, OSError) as exc:
        errors.print(f"[red]error:[/] no usable kubeconfig ({exc}); set --kubeconfig or KUBECONFIG")
        raise typer.Exit(1) from None


def _custom(kubeconfig: str | None) -> Any:
    from kubernetes import client as k8s_client

    return k8s_client.CustomObjectsApi(api_client(kubeconfig))


def whoami(kubeconfig: str | None) -> str:
    """The identity the API server sees for this kubeconfig (SelfSubjectReview), for audit."""
    from kubernetes import client as k8s_client

    api = api_client(kubeconfig)
    try:
        review: Any = k8s_client.AuthenticationV1Api(api).create_self_subject_review(
            k8s_client.V1SelfSubjectReview()
        )
        return str(review.status.user_info.username)
    except Exception:
        # An old or locked-down API server cannot say who we are: attribute to the local user
        # (marked as such) rather than fail the control action itself.
        return f"{os.environ.get('USER', 'unknown')} (local user; API identity unavailable)"


def _audit_stamp(kubeconfig: str | None) -> str:
    return f"{whoami(kubeconfig)}@{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}"


def _fleet_call(
    kubeconfig: str | None, namespace: str, fleet: str, patch: dict[str, Any] | None = None
) -> dict[str, Any]:
    """GET (or merge-PATCH) the fleet, with one clear line on any API error."""
    from kubernetes.client.exceptions import ApiException

    from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION

    custom = _custom(kubeconfig)
    try:
        if patch is None:
            body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, fleet)
        else:
            body = custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, fleet, patch
            )
    except ApiException as exc:
        what = "not found" if exc.status == 404 else f"refused: {exc.reason}"
        errors.print(f"[red]error:[/] fleet {fleet!r} in namespace {namespace!r}: {what}")
        raise typer.Exit(1) from None
    return dict(body)


def _action(fleet: str, verb: RolloutAction, namespace: str, kubeconfig: str | None) -> None:
    from newfuse.core.naming import ROLLOUT_ACTION_ANNOTATION, ROLLOUT_ACTION_BY_ANNOTATION

    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    patch = {
        "metadata": {
            "annotations": {
                ROLLOUT_ACTION_ANNOTATION: f"{verb}@{stamp}",
                ROLLOUT_ACTION_BY_ANNOTATION: _audit_stamp(kubeconfig),
            }
        }
    }
    _fleet_call(kubeconfig, namespace, fleet, patch)
    console.print(f"{verb} requested for {namespace}/{fleet}")


def _rollout_table(body: dict[str, Any]) -> Table:
    status = body.get("status") or {}
    rollout = status.get("rollout")
    name = body["metadata"]["name"]
    if not rollout:
        strategy = (body["spec"].get("rollout") or {}).get("strategy", "Replace")
        table = Table(title=f"{name}: no phased rollout (strategy {strategy})")
        table.add_column("phase")
        table.add_row(str(status.get("phase", "-")))
        return table
    verdict = rollout.get("lastVerdict") or {}
    measured = verdict.get("measured") or {}
    title = (
        f"{name}: {rollout['phase']} - {rollout['stage']} step {rollout['step']}, "
        f"{rollout['canaryAgents']}/{body['spec'].get('replicas')} agents on "
        f"{rollout['canaryRevision']} "
        f"(stable {rollout['stableRevision']})"
    )
    table = Table(title=title, caption=rollout.get("message") or None)
    for column in (
        "when",
        "stage",
        "step",
        "canary",
        "event",
        "verdict",
        "tasks",
        "error rate",
        "p95 ms",
        "detail",
    ):
        table.add_column(column)
    for entry in (rollout.get("history") or [])[-15:]:
        v = entry.get("verdict") or {}
        m = v.get("measured") or {}
        error_rate = m.get("errorRate")
        table.add_row(
            str(entry["at"])[11:19],
            entry["stage"],
            str(entry["step"]),
            str(entry["canaryAgents"]),
            entry["reason"],
            v.get("result", ""),
            str(m.get("tasks", "")),
            "" if error_rate is None else f"{error_rate:.1%}",
            "" if m.get("p95LatencyMs") is None else f"{m['p95LatencyMs']:.1f}",
            (entry.get("message") or "")[:60],
        )
    if verdict:
        table.add_section()
        table.add_row(
            "last",
            "",
            "",
            "",
            "gate",
            verdict.get("result", ""),
            str(measured.get("tasks", "")),
            "" if measured.get("errorRate") is None else f"{measured['errorRate']:.1%}",
            "",
            verdict.get("reason", "")[:60],
        )
    return table


@rollout_app.command("status")
def rollout_status(
    fleet: Fleet,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep updating until Ctrl-C.")
    ] = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Phase, step, gate numbers and history of the fleet's rollout."""
    if not watch:
        console.print(_rollout_table(_fleet_call(kubeconfig, namespace, fleet)))
        return
    import time

    from rich.live import Live

    with Live(
        _rollout_table(_fleet_call(kubeconfig, namespace, fleet)),
        console=console,
        refresh_per_second=2,
    ) as live:
        try:
            while True:
                time.sleep(1)
                live.update(_rollout_table(_fleet_call(kubeconfig, namespace, fleet)))
        except KeyboardInterrupt:
            return


def _set_paused(fleet: str, namespace: str, kubeconfig: str | None, *, paused: bool) -> None:
    from newfuse.core.naming import PAUSED_BY_ANNOTATION

    patch = {
        "metadata": {"annotations": {PAUSED_BY_ANNOTATION: _audit_stamp(kubeconfig)}},
        "spec": {"rollout": {"paused": paused}},
    }
    _fleet_call(kubeconfig, namespace, fleet, patch)
    console.print(
        f"{namespace}/{fleet}: rollout {'paused' if paused else 'resumed'} "
        f"(spec.rollout.paused={str(paused).lower()})"
    )


@rollout_app.command(RolloutAction.PAUSE.value)
def rollout_pause(
    fleet: Fleet, namespace: Namespace = DEFAULT_NAMESPACE, kubeconfig: Kubeconfig = None
) -> None:
    """Hold the rollout where it is (sets spec.rollout.paused, so GitOps sees it)."""
    _set_paused(fleet, namespace, kubeconfig, paused=True)


@rollout_app.command(RolloutAction.RESUME.value)
def rollout_resume(
    fleet: Fleet, namespace: Namespace = DEFAULT_NAMESPACE, kubeconfig: Kubeconfig = None
) -> None:
    """Continue a paused rollout."""
    _set_paused(fleet, namespace, kubeconfig, paused=False)


@rollout_app.command(RolloutAction.PROMOTE.value)
def rollout_promote(
    fleet: Fleet,
    full: Annotated[
        bool, typer.Option("--full", help="Skip every remaining step: cut over now.")
    ] = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Pass the current gate (or, with --full, every remaining one)."""
    verb = RolloutAction.PROMOTE_FULL if full else RolloutAction.PROMOTE
    _action(fleet, verb, namespace, kubeconfig)


@rollout_app.command(RolloutAction.ABORT.value)
def rollout_abort(
    fleet: Fleet, namespace: Namespace = DEFAULT_NAMESPACE, kubeconfig: Kubeconfig = None
) -> None:
    """Send every agent back to the stable revision."""
    _action(fleet, RolloutAction.ABORT, namespace, kubeconfig)


@rollout_app.command(RolloutAction.RETRY.value)
def rollout_retry(
    fleet: Fleet, namespace: Namespace = DEFAULT_NAMESPACE, kubeconfig: Kubeconfig = None
) -> None:
    """Start an aborted or rolled-back rollout again from stage 1."""
    _action(fleet, RolloutAction.RETRY, namespace, kubeconfig)
