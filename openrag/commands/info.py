"""``openrag info MODEL``: architecture, expert settings and parameter counts of a checkpoint."""

from __future__ import annotations

import argparse

from ..bundled_names import DEFAULT_NAME


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=DEFAULT_NAME, help="checkpoint folder, hub name, 'smollm2' (the bare base) or 'default' (the bundled model, the default)")
    parser.add_argument("--json", action="store_true", help="print the facts as one JSON object")


def describe(model, tokenizer) -> dict:
    from ..model.loading import parameter_counts
    from ..model.experts import moe_config_of
    from ..model.reflection import REFLECTION_TOKENS
    from ..precision import dtype_name

    cfg = model.config
    moe = moe_config_of(model)
    vocab = tokenizer.get_vocab()
    return {
        "architecture": type(model).__name__,
        "model_type": cfg.model_type,
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": model.get_input_embeddings().weight.shape[0],
        "tied_embeddings": model.get_output_embeddings().weight is model.get_input_embeddings().weight,
        "dtype": dtype_name(next(model.parameters()).dtype),
        "experts": moe.to_dict() if moe else None,
        "reflection_tokens": sum(t in vocab for t in REFLECTION_TOKENS),
        "parameters": parameter_counts(model),
    }


def run(args: argparse.Namespace) -> int:
    import json

    from ..model.loading import load_model

    model, tokenizer = load_model(args.model, device="cpu")
    facts = describe(model, tokenizer)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    params = facts.pop("parameters")
    experts = facts.pop("experts")
    for key, value in facts.items():
        print(f"{key:>18}: {value}")
    print(f"{'experts':>18}: " + (", ".join(f"{k}={v}" for k, v in experts.items()) if experts else "none (dense)"))
    for key, value in params.items():
        print(f"{'params.' + key:>18}: {value:,}")
    return 0
