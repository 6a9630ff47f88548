"""The ``openrag`` command: one table from subcommand to the module that implements it.

Each module has ``add_arguments(parser)`` and ``run(args) -> int``; heavy imports stay inside ``run``
so that ``openrag --help`` is instant. Errors the user can fix are printed as one line, not a traceback; so is
any other error, with a note that it is a bug to report (``OPENRAG_TRACEBACK=1`` shows where it happened).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .outputs import OutputBusy

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("openrag.commands.info", "print a model's architecture, expert settings and parameter counts"),
    "data": ("openrag.commands.data", "build reflection-token training data from QA datasets; describe a training file"),
    "index": ("openrag.commands.index", "build a BM25, dense or hybrid index over your own documents"),
    "eval": ("openrag.commands.eval", "evaluate on a task (the seed's flags); `eval sweep`: thresholds vs retrieval; `eval combine`: shards"),
    "report": ("openrag.commands.report", "put several eval metrics files into one markdown table and a bar chart"),
    "ask": ("openrag.commands.ask", "answer a question with adaptive retrieval; show the answer and the scored evidence"),
    "serve": ("openrag.commands.serve", "an HTTP API (also OpenAI's chat format) and a web page that shows the model's reasoning"),
    "train": ("openrag.commands.train", "train the experts, routers, LoRA and reflection tokens (torchrun for many GPUs)"),
    "merge": ("openrag.commands.merge", "fold a trained checkpoint's LoRA into its base: one standalone model"),
}

# Errors that come from the user's input or machine (a path, a checkpoint, a flag, a full disk, a missing
# optional package, another run writing the same output), reported as one line.
USER_ERRORS = (OSError, ValueError, KeyError, ImportError, OutputBusy)


def describe_error(err: BaseException) -> str:
    """One line: an OSError of the system as ``file: reason`` (not ``[Errno 21] ...``), others as raised."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        names = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else f"{err.filename}"
        return f"{names}: {err.strerror}"
    return str(err) or type(err).__name__


def build_parser(with_flags: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommands in ``with_flags`` (all when None) get their flags, the others are
    just listed, so that running one command never imports another's modules (``train`` builds its flags
    from transformers)."""
    parser = argparse.ArgumentParser(prog="openrag", description="Open-RAG: train, merge, evaluate, ask, index and serve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if with_flags is None or name in with_flags:
            importlib.import_module(module).add_arguments(sub_parser)
    return parser


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, sharding notes) hides our own output on the console."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes (which peft imports) on a CPU with avx512_bf16 tries to fetch an optional 4-bit kernel from the
    # hub at import, and warns when it cannot; its own CPU code then serves. Nothing a user can act on.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # peft reads transformers' deprecated `is_gradient_checkpointing` on every load (transformers 5.2x).
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(with_flags=[argv[0]] if argv and argv[0] in COMMANDS else [])
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    _quiet_libraries()
    try:
        code = module.run(args)
    except USER_ERRORS as err:
        print(f"openrag {args.command}: error: {describe_error(err)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"openrag {args.command}: interrupted", file=sys.stderr)
        code = 130
    except Exception as err:
        if os.environ.get("OPENRAG_TRACEBACK"):
            raise
        print(f"openrag {args.command}: internal error: {type(err).__name__}: {err} (a bug, or an input openrag does "
              "not check: please report it; OPENRAG_TRACEBACK=1 shows where it happened)", file=sys.stderr)
        code = 1
    sys.exit(code or 0)
