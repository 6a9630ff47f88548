"""Keep a training run's best checkpoint in git, so that the run continues on another machine.

    python scripts/keep_checkpoint.py runs/v4/ckpt training_state/v4 [--newest]

Copies the best checkpoint of the run in the first folder (``best_model_checkpoint`` of its newest
``trainer_state.json``: the one the held-out check chose; the newest finished checkpoint when the run has
no held-out check yet) into the second folder as ``checkpoint-N``, replacing what was kept before. With
``--newest``, the newest finished checkpoint whatever the check said: the point to resume from when a session ends
between two checks, so that the steps since the last one are not lost with the machine (the held-out figures of
the best so far stay in MODEL.md; the next checks choose among later steps). Kept:
the adapter weights, the schedule and sampler state (``scheduler.pt``, ``rng_state*.pth``,
``trainer_state.json``), the config. Left out: the optimizer state (Adam's moments are about 6 times the
adapter here, too large for git; ``openrag train --resume_from_checkpoint`` on a kept folder starts them
afresh and keeps the learning-rate schedule) and ``training_args.bin`` (a pickle, never loaded on resume).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from openrag.model.layouts import newest_checkpoint
from openrag.training.checkpointing import save_finished

LEFT_OUT = ("optimizer.pt", "training_args.bin")


def best_checkpoint(run: Path, newest_only: bool = False) -> Path:
    newest = newest_checkpoint(run, save_finished)
    if newest is None:
        sys.exit(f"{run}: no finished checkpoint-N to keep")
    if newest_only:
        return newest
    best = json.loads((newest / "trainer_state.json").read_text()).get("best_model_checkpoint")
    if best and (run / Path(best).name).is_dir():
        return run / Path(best).name
    return newest


def main(run: str, kept: str, newest_only: bool = False) -> None:
    source, target = best_checkpoint(Path(run), newest_only), Path(kept)
    tmp = target / f".{source.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(*LEFT_OUT))
    for old in target.glob("checkpoint-*"):
        shutil.rmtree(old)
    tmp.rename(target / source.name)
    size = sum(f.stat().st_size for f in (target / source.name).rglob("*") if f.is_file())
    print(f"kept {source} as {target / source.name} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--newest"]
    if len(args) != 2 or any(a.startswith("-") for a in args):
        sys.exit(__doc__)
    main(args[0], args[1], newest_only="--newest" in sys.argv[1:])
