"""kopf registrations: feed watch events to the controller, and start and stop it.

Only `on.event` handlers are used: they carry no kopf progress state, add no kopf finalizers and
write nothing to the objects, so the operator's only writes are pods, status, its own finalizer and
Events. The decisions all live in newfuse.core, reached through the controller.

Every handler is a coroutine: kopf runs a sync handler in a thread pool, and the controller's caches
and work queue are asyncio-only (the queue refuses a caller off its loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

import kopf

from newfuse.adapters.kube import KubeClient, credentials_of, load_config
from newfuse.adapters.lease import LeaseClient
from newfuse.adapters.redis_store import RedisStore
from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION
from newfuse.config import OperatorConfig
from newfuse.core import naming
from newfuse.core.leader import ElectionTimings
from newfuse.observability import LEADER
from newfuse.runtime.controller import Controller
from newfuse.runtime.leader import LeaderElector, run_as_leader

log = logging.getLogger("newfuse.operator")
POD_SELECTOR = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"


def tune(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Kopf settings for scale and for surviving silent watch-stream freezes.

    Every non-default value, and why:
    - watching.server_timeout=300: the API server closes each watch after at most 5 minutes, so a
      stream that froze without closing is replaced on schedule.
    - watching.client_timeout=330: the client gives up on a request the server should have ended.
    - watching.connect_timeout=10: a dead API server endpoint is noticed in seconds.
    - watching.inactivity_timeout=90: no event, not even a bookmark (sent every ~60 s), for 90 s
      means the stream is dead; reconnect while the server still has the events cached.
    - watching.label_selectors[pods]: watch only the operator's pods, server-side, so memory does
      not grow with unrelated pods in the cluster.
    - posting.level=WARNING: kopf's own Events only for problems; the controller posts lifecycle
      Events itself.
    - queueing.worker_limit=64: bounds kopf's per-object event workers (events are cheap here: they
      only update caches and queue keys).
    - queueing.idle_timeout=0.1: a worker gives its slot back 0.1 s after its object's last event,
      not kopf's 5 s. With every slot held for 5 s, an object whose worker had exited waited for
      a slot: about 13 objects a second for 64 slots, which at 10,000 fleets (and their pods)
      held the watch back for minutes.
    - batching of API writes is the controller's job (one status patch per changed fleet), and
      networking.request_timeout=30 bounds every non-watch request of kopf itself.
    - kopf.objects logs at WARNING unless NEWFUSE_LOG_LEVEL is DEBUG: kopf writes an INFO line
      "Handler ... succeeded" for every watch event, two JSON lines per fleet and pod change that
      say nothing (at 10,000 fleets, ~100,000 lines and a measurable share of the CPU). A handler
      that fails still logs at ERROR.
    - scanning.disabled when NEWFUSE_NAMESPACES lists namespaces: kopf's namespace observer stops
      watching a namespace as soon as it is marked for deletion, so the operator would never see
      its fleets being deleted, and the namespace would wait for ever on their finalizers. The
      listed namespaces are then watched as exact names (no glob patterns) for the life of the
      process, and the CRD must exist when the operator starts (it must anyway).
    """
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = 90
    settings.watching.label_selectors["v1", "pods"] = POD_SELECTOR
    settings.posting.level = logging.WARNING
    settings.queueing.worker_limit = 64
    settings.queueing.idle_timeout = 0.1
    settings.networking.request_timeout = 30
    if config.log_level.upper() != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if config.namespaces:
        settings.scanning.disabled = True


def election_identity(config: OperatorConfig) -> str:
    """A unique identity per process (client-go's hostname_uuid), readable in the Lease."""
    return f"{config.pod_name or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def exit_on_lost_lease() -> None:
    """Stop the process at once: another replica may already be reconciling."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


def build_registry(
    config: OperatorConfig, state: dict[str, Any] | None = None
) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator (nothing global).

    ``state`` holds what the startup handler builds ("controller", clients); tests pass one with
    a controller in it to drive the watch handlers the way kopf does.
    """
    registry = kopf.OperatorRegistry()
    state = {} if state is None else state

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf's watches use exactly the credentials of the controller's client (kubeconfig from
        # NEWFUSE_KUBECONFIG, or the pod's service account).
        found = credentials_of(load_config(config.kubeconfig, pool_size=1))
        return kopf.ConnectionInfo(
            server=found.server,
            ca_path=found.ca_path,
            insecure=found.insecure,
            scheme=found.scheme,
            token=found.token,
            certificate_path=found.certificate_path,
            private_key_path=found.private_key_path,
        )

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        tune(settings, config)
        api = load_config(config.kubeconfig, config.api_threads)
        kube = KubeClient(api, config.api_threads)
        redis = RedisStore(
            config.redis_url,
            timeout=config.redis_timeout_seconds,
            signing_key=config.signing_key_bytes,
            ca_file=config.redis_ca_file,
            backoff=config.redis_backoff_seconds,
        )
        controller = Controller(config, kube, redis)
        state["controller"] = controller
        state["kube"], state["redis"] = kube, redis
        if config.leader_election:
            timings = ElectionTimings(
                config.lease_duration_seconds,
                config.renew_deadline_seconds,
                config.retry_period_seconds,
            )
            leases = LeaseClient(
                api,
                config.leader_election_namespace,
                config.leader_election_name,
                request_timeout=timings.retry_period,
            )
            elector = LeaderElector(leases, election_identity(config), timings)
            work = run_as_leader(elector, controller.run, exit_on_lost_lease)
            state["task"] = asyncio.create_task(work, name="leader-election")
        else:
            LEADER.set(1)
            state["task"] = asyncio.create_task(controller.run(), name="controller")
        log.info(
            "controller ready with %d workers (leader election: %s)",
            config.workers,
            "on" if config.leader_election else "off",
        )

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        task = state.get("task")
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if "redis" in state:
            await state["redis"].close()
        if "kube" in state:
            state["kube"].close()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def fleet_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        state["controller"].observe_fleet(type, body)

    @kopf.on.event(
        "v1", "pods", labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY}, registry=registry
    )
    async def pod_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        state["controller"].observe_pod(type, body)

    return registry
