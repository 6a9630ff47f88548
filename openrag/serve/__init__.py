"""``openrag serve``: an HTTP API (its own and OpenAI's chat format) and a page that shows the reasoning.

    from openrag.serve import create_app, ServeSettings
    app = create_app(OpenRAG.from_pretrained("default"), ServeSettings(api_key="..."))

app.py holds the routes, error handling and the Host and body checks, batcher.py the bounded queue that
batches concurrent requests, schemas.py the request bodies and their limits, limits.py the token budget,
deadlines, cancellation and memory release, connections.py the uvicorn server with its connection limits
(``make_server``), page.html the page served at ``/``.
"""

from .app import API_KEY_ENV, ServeSettings, create_app
from .batcher import Batcher, QueueFull

__all__ = ["API_KEY_ENV", "Batcher", "QueueFull", "ServeSettings", "create_app"]
