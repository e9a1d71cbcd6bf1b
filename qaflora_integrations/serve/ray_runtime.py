"""Starting (or joining) a Ray runtime and serving the app on it until a signal: ``qaflora serve --replicas``.

A runtime started here is a single-node one kept on loopback: Ray otherwise binds its
processes to this machine's network address. Joining a cluster (``address``, from
``ray start --head`` on one machine and ``ray start --address`` on the others) leaves
Ray's networking to that cluster's settings.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# Set before Ray is imported (Ray reads them at import time, and its processes inherit them):
# a single-node runtime on 127.0.0.1 (Ray's switch for machines that must not form clusters),
# token authentication on without its start-up notice, no usage-statistics notice.
LOCAL_RUNTIME_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def prepare_local_runtime_env() -> None:
    """Environment for a local runtime; must run before ``import ray`` to keep it on loopback."""
    for key, value in LOCAL_RUNTIME_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> Any:
    """Start a local Ray runtime (``address=None``) or connect to a running one; quiet either way.

    Returns Ray's context. The local one listens on loopback only, and refuses to start if
    Ray was imported before its environment could be set.
    """
    if address is None:
        already_imported = "ray" in sys.modules
        prepare_local_runtime_env()
    import ray

    context = ray.init(
        address=address,
        num_cpus=num_cpus if address is None else None,
        num_gpus=num_gpus if address is None else None,
        include_dashboard=False,
        log_to_driver=False,  # replicas' logs stay in Ray's log files, not in this process's output
        logging_level=logging.WARNING,
    )
    quiet_serve_logs()
    if address is None and context.address_info["node_ip_address"] != LOOPBACK:
        ray.shutdown()
        hint = " (ray was imported before init_ray could set its environment)" if already_imported else ""
        raise RuntimeError(f"the local Ray runtime did not bind to {LOOPBACK}{hint}")
    return context


def quiet_serve_logs() -> None:
    """Ray Serve logs every deployment step at INFO on the driver's stderr; keep warnings only."""
    from ray import serve  # noqa: F401  (configures the "ray.serve" logger)

    logging.getLogger("ray.serve").setLevel(logging.WARNING)


@contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGINT or SIGTERM while the block runs.

    The first signal also puts the previous handlers back, so a second Ctrl-C or
    SIGTERM during the drain stops the process the usual way.
    """
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def handler(signum: int, _frame: Any) -> None:
        stop.set()
        restore()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        restore()


def run_bounded(work: Callable[[], Any], timeout_s: float) -> bool:
    """Run ``work`` in a daemon thread for at most ``timeout_s``; False if it had not finished.

    Ray calls wait forever on a runtime whose processes died (a terminal's Ctrl-C reaches
    its whole process group); the shutdown path must end anyway.
    """
    thread = threading.Thread(target=work, name="qaflora-ray-drain", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


def serve_on_ray(
    app_options: dict[str, Any],
    *,
    host: str = LOOPBACK,
    port: int = 8000,
    address: str | None = None,
    app_name: str = "qaflora",
    drain_timeout_s: float = 30.0,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Deploy ``build_app(**app_options)`` on Ray, serve HTTP on ``host:port``, stop on SIGINT/SIGTERM.

    On a signal the application is deleted, which drains its replicas (Ray Serve lets
    in-flight requests finish, up to the deployment's ``graceful_shutdown_timeout_s``,
    20 s by default; this waits ``drain_timeout_s`` at most); a runtime started here
    is then shut down with Serve's controller and proxy in it, one joined is left
    running (with Serve, for its other applications).
    """
    replicas = app_options.get("num_replicas") or 1
    threads = app_options.get("threads") or 1
    device = app_options.get("device") or ""
    num_cpus = None
    if address is None and not device.startswith("cuda"):
        num_cpus = max(replicas * threads, os.cpu_count() or 1)
    init_ray(address, num_cpus=num_cpus)
    import ray
    from ray import serve

    from .ray_app import build_app

    try:
        with stop_signals() as stop:
            serve.start(http_options={"host": host, "port": port})
            serve.run(build_app(**app_options), name=app_name, route_prefix="/")
            if on_ready is not None:
                on_ready()
            while not stop.wait(0.5):
                pass
            # drains: replicas finish their in-flight requests first
            if not run_bounded(lambda: serve.delete(app_name), drain_timeout_s):
                logger.warning("the application did not drain in %.0f s; stopping anyway", drain_timeout_s)
    finally:
        if address is None:
            run_bounded(ray.shutdown, drain_timeout_s)
