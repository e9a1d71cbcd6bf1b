"""The OpenAI-compatible app as a Ray Serve application: N replicas, each one engine.

    from ray import serve
    from qaflora_integrations.serve.ray_app import build_app
    serve.run(build_app("path/to/base", "adapters.yaml", num_replicas=2))

or, from Ray's own CLI and config files (``import_path`` + ``args``)::

    serve run qaflora_integrations.serve.ray_app:app_builder base=path/to/base catalog=adapters.yaml

Each replica is a Ray actor that loads its own engine (one model copy with every
adapter, its own batching worker) from paths in its constructor, then serves the
very app :func:`~qaflora_integrations.serve.create_app` builds over it, through
Ray Serve's FastAPI ingress (late-bound: the app needs the engine, which exists
only once the replica runs). The routes are not copied: a replica answers exactly
as ``qaflora serve`` does.

Requests are spread over replicas whole: no model multiplexing, because one batch of
ours mixes rows of different adapters and fusion weights by design, so every replica
can answer every model name and splitting traffic by adapter would only shrink batches.

Each response names the replica that answered in an ``x-qaflora-replica`` header, and
each replica's ``/metrics`` carries ``qaflora_replica_info{replica=...}``, so one can
see how requests were spread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from qaflora import FusionConfig, FusionEngine
from ray import serve
from ray.serve import Application

from .app import create_app
from .metrics import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

REPLICA_HEADER = "x-qaflora-replica"
DEPLOYMENT_NAME = "qaflora"
DEFAULT_APP_NAME = "qaflora"


class EngineSpec(BaseModel):
    """What a replica needs to build its engine: plain paths and options, sent to every replica.

    Paths, not a loaded model: a replica may run on another node, which loads the
    files itself (the paths must exist there, e.g. on shared storage).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str
    catalog: str
    model_name: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_batch_size: int = Field(default=16, ge=1)
    plan_ahead: bool = Field(default=False, description="Weigh newcomers on a planner thread.")
    fusion: dict[str, Any] = Field(default_factory=dict, description="FusionConfig fields (server defaults).")
    threads: int | None = Field(
        default=1,
        ge=1,
        description="torch intra-op threads per replica (None: torch's default). On CPU, one per "
        "replica lets N replicas share N cores without their OpenMP threads waiting on each other.",
    )

    @field_validator("fusion")
    @classmethod
    def _valid_fusion(cls, value: dict[str, Any]) -> dict[str, Any]:
        FusionConfig(**value)  # refuse bad options on the driver, not in every replica
        return value

    def load(self) -> FusionEngine:
        """Set the thread count, then load the engine (threads must be set before the model runs)."""
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        return FusionEngine.from_pretrained(
            self.base,
            self.catalog,
            config=FusionConfig(**self.fusion),
            device=self.device,
            dtype=self.dtype,
            progress=False,
            max_batch_size=self.max_batch_size,
            model_name=self.model_name,
            plan_ahead=self.plan_ahead,
        )


class ReplicaHeaderMiddleware:
    """Adds ``x-qaflora-replica: <id>`` to every response (plain ASGI: streams pass untouched)."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


def _replica_identity() -> tuple[str, str, str]:
    """(replica id, deployment, application) of the running replica."""
    context = serve.get_replica_context()
    return context.replica_tag, context.deployment, context.app_name


@serve.ingress()
class QafloraReplica:
    """One Ray Serve replica: one engine, and ``create_app``'s routes over it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = EngineSpec.model_validate(spec)
        self.replica, self.deployment, self.app_name = _replica_identity()
        self.engine = self.spec.load()
        logger.info("replica %s loaded %r", self.replica, self.engine)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        """Called by Ray Serve after the constructor: the app is built over this replica's engine."""
        app = create_app(self.engine, model_name=self.spec.model_name)
        from prometheus_client import Gauge

        info = Gauge(
            "qaflora_replica_info",
            "The Ray Serve replica that serves these metrics (always 1).",
            ["replica", "deployment", "application"],
            registry=app.state.metrics.registry,
        )
        info.labels(replica=self.replica, deployment=self.deployment, application=self.app_name).set(1)
        app.add_middleware(ReplicaHeaderMiddleware, replica=self.replica)
        return app

    def check_health(self) -> None:
        """Ray Serve's periodic probe: a closed engine answers nothing, so the replica is replaced."""
        if self.engine.closed:
            raise RuntimeError(f"replica {self.replica}: the engine is closed")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def default_actor_options(spec: EngineSpec) -> dict[str, Any]:
    """One CPU per intra-op thread, and one GPU when the engine is asked to run on CUDA."""
    options: dict[str, Any] = {"num_cpus": spec.threads or 1}
    if spec.device is not None and spec.device.startswith("cuda"):
        options["num_gpus"] = 1
    return options


def build_app(
    base: str | Path,
    catalog: str | Path,
    *,
    model_name: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    max_batch_size: int = 16,
    plan_ahead: bool = False,
    fusion: dict[str, Any] | None = None,
    threads: int | None = 1,
    num_replicas: int | None = None,
    autoscaling_config: dict[str, Any] | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    name: str = DEPLOYMENT_NAME,
    **deployment_options: Any,
) -> Application:
    """The Ray Serve application serving ``base`` with ``catalog``'s adapters, for ``serve.run``.

    ``num_replicas`` (default 1) or ``autoscaling_config`` (Ray Serve's, e.g.
    ``{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16}``) size it.
    ``ray_actor_options`` are merged over the defaults (``num_cpus`` = ``threads``,
    ``num_gpus=1`` for a CUDA device). ``max_ongoing_requests`` defaults to twice the
    batch size: enough that one batch fills while another runs, few enough that Ray's
    router, not one replica's queue, holds the overflow. Other keyword arguments go to
    ``serve.deployment`` as they are (``health_check_period_s``,
    ``graceful_shutdown_timeout_s``, ``max_queued_requests``, ...).
    """
    spec = EngineSpec(
        base=str(base),
        catalog=str(catalog),
        model_name=model_name,
        device=device,
        dtype=dtype,
        max_batch_size=max_batch_size,
        plan_ahead=plan_ahead,
        fusion=fusion or {},
        threads=threads,
    )
    options: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {**default_actor_options(spec), **(ray_actor_options or {})},
        "max_ongoing_requests": max_ongoing_requests or 2 * max_batch_size,
        **deployment_options,
    }
    if autoscaling_config is not None:
        if num_replicas is not None:
            raise ValueError("give num_replicas or autoscaling_config, not both")
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = 1 if num_replicas is None else num_replicas
    deployment = serve.deployment(QafloraReplica).options(**options)
    return deployment.bind(spec.model_dump())


class AppArgs(BaseModel):
    """``args`` of Ray's ``serve run``/``serve deploy``: strings from the command line or YAML values."""

    model_config = ConfigDict(extra="forbid")

    base: str
    catalog: str
    model_name: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_batch_size: int = 16
    plan_ahead: bool = False
    fusion: dict[str, Any] | None = None
    threads: int | None = 1
    num_replicas: int | None = None
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] | None = None
    max_ongoing_requests: int | None = None

    @field_validator("fusion", "autoscaling_config", "ray_actor_options", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        """``serve run ... fusion='{"top_k": 2}'`` passes text: read it as JSON."""
        return json.loads(value) if isinstance(value, str) else value


def app_builder(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder: ``import_path: qaflora_integrations.serve.ray_app:app_builder``."""
    return build_app(**AppArgs.model_validate(args).model_dump())
