"""The real node's images, built and imported while the suite's first tests run.

Importing the operator and agent images into a fresh containerd takes some 20 s of unpacking that
needs nothing but the node: done at the first real-node test, it was the largest part of what the
real node adds to a run. The session's cluster fixture starts it in a thread as soon as the node is
up, where it overlaps the integration tests; the real-node tests wait for it (and import again
whatever a restarted node lost).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

from localcluster import images

_started: Future[images.ImageSet] | None = None


def start(containerd_socket: Path) -> None:
    """Build what is missing and import it into the node's containerd, in the background."""
    global _started  # one prefetch a session, shared by its fixtures
    if _started is not None:
        return
    done: Future[images.ImageSet] = Future()
    _started = done

    def log(message: str) -> None:
        print(f"[image prefetch] {message}")

    def prefetch() -> None:
        try:
            done.set_result(images.ensure_images(containerd_socket, log))
        except BaseException as exc:  # re-raised by the first real-node test
            done.set_exception(exc)

    threading.Thread(target=prefetch, name="image-prefetch", daemon=True).start()


def wait() -> images.ImageSet:
    """The project's images: the prefetch's (re-raising its failure), else built now."""
    started = time.monotonic()
    built = _started.result() if _started is not None else images.build_images(print)
    print(f"project images ready after {time.monotonic() - started:.1f}s of waiting: {built}")
    return built
