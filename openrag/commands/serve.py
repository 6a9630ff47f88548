"""``openrag serve``: the HTTP API and the page, on uvicorn.

    openrag serve                                    # the bundled model on http://127.0.0.1:8000
    openrag serve --model_name ./merged --index docs.index --mode adaptive_retrieval --threshold 0.5
    OPENRAG_API_KEY=secret openrag serve --host 0.0.0.0 --port 8080

The answering flags (``--mode``, ``--ndocs``, ``--max_new_tokens``, ...) set the defaults a request may override.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from ..bundled_names import DEFAULT_NAME
from ..precision import DTYPE_HELP, DTYPES

LOOPBACK_NAMES = ("localhost",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openrag.answer.backends import add_backend_flags
    from openrag.answer.options import AnswerOptions
    from openrag.flags import add_field_flags
    from openrag.serve.app import API_KEY_ENV, LOOPBACK_HOSTS, ServeSettings

    server = parser.add_argument_group("server")
    server.add_argument("--model_name", default=DEFAULT_NAME, help="checkpoint folder, hub name, or 'default' (the bundled model)")
    server.add_argument("--index", default=None, metavar="DIR",
                        help="an index folder from `openrag index`, searched for questions that come without passages")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--api_key", default=None,
                        help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV}; prefer the variable, "
                             "a flag shows in the process list)")
    server.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    server.add_argument("--dtype", default=None, choices=DTYPES,
                        help=DTYPE_HELP)
    add_field_flags(server, ServeSettings.flag_fields("server"))
    limits = parser.add_argument_group("limits (README, Security)")
    add_field_flags(limits, ServeSettings.flag_fields("limits"))
    limits.add_argument("--allowed_hosts", default=None, metavar="NAMES",
                        help="comma-separated names the Host header may carry ('*': any; '*.example.org': its "
                             f"subdomains); others get 400 (DNS rebinding). Default: {','.join(LOOPBACK_HOSTS)} "
                             "when --host is a loopback address, else any")
    server.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, one per core; on a busy shared machine 1 "
                             "avoids threads spinning against each other)")
    server.add_argument("--log_level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    AnswerOptions.add_arguments(parser, "serve")
    add_backend_flags(parser)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(flag: str | None, host: str) -> tuple[str, ...]:
    """The Host names to answer: the flag's, else the loopback names when bound to loopback, else any."""
    from openrag.serve.app import LOOPBACK_HOSTS

    if flag is not None:
        return tuple(name for name in flag.split(",") if name.strip())
    return LOOPBACK_HOSTS if is_loopback(host) else ("*",)


def resolve_api_key(flag: str | None) -> str | None:
    """The key from ``--api_key``, else from the environment variable, else None (no key required)."""
    from openrag.serve.app import API_KEY_ENV

    return flag or os.environ.get(API_KEY_ENV) or None


def settings_from(args: argparse.Namespace):
    """The server's :class:`~openrag.serve.app.ServeSettings` from ``openrag serve``'s flags."""
    from openrag.serve.app import ServeSettings

    return ServeSettings(model_name=args.model_name, api_key=resolve_api_key(args.api_key),
                         allowed_hosts=allowed_hosts(args.allowed_hosts, args.host),
                         **{f.name: getattr(args, f.name) for f in ServeSettings.flag_fields()})


def run(args: argparse.Namespace) -> int:
    from openrag.answer import AnswerOptions, OpenRAG
    from openrag.answer.backends import backend_options
    from openrag.serve import API_KEY_ENV, create_app
    from openrag.serve.connections import make_server

    settings = settings_from(args)
    api_key = settings.api_key
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    if not is_loopback(args.host) and api_key is None:
        print(f"openrag serve: warning: listening on {args.host} without an API key: anyone who can reach this "
              f"machine can use the model (set ${API_KEY_ENV} or --api_key)", file=sys.stderr)
    options = AnswerOptions.from_args(args, "serve")
    backend = backend_options(args, batches=True)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)

    retriever = None
    if args.index:
        from openrag.retrieval import open_index

        retriever = open_index(args.index)
        print(f"index: {args.index} ({retriever.kind}, {len(retriever)} passages)")
    rag = OpenRAG.from_pretrained(args.model_name, device=args.device, dtype=args.dtype, retriever=retriever, backend=backend,
                                  **vars(options))
    for note in rag.notes:
        print(f"openrag serve: note: {note}", file=sys.stderr)

    app = create_app(rag, settings)
    print(f"openrag serve: {args.model_name} on http://{args.host}:{args.port}/ "
          f"(batches of up to {settings.max_batch}, queue {settings.queue_size}"
          f"{', API key required' if api_key else ''})", flush=True)
    make_server(app, settings, args.host, args.port, args.log_level).run()
    return 0
