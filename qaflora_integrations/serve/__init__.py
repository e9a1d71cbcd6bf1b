"""An OpenAI-compatible HTTP server over a qaflora FusionEngine (``qaflora serve``).

    from qaflora_integrations.serve import create_app, run_server
    app = create_app(engine)            # a FastAPI app: /v1/chat/completions, /v1/completions,
    run_server(engine, port=8000)       # /v1/models, /health, /metrics

Needs the ``serve`` extra (``pip install qaflora[serve]``).
"""

from .app import create_app
from .server import BackgroundServer, run_server

__all__ = ["BackgroundServer", "create_app", "run_server"]
