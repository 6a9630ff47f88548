"""openrag train's CPU speed and warm-start options: --packing, --reflection_loss_weight, --init_from."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from openrag import load_model
from openrag.data.tokenize import IGNORE_INDEX
from openrag.model.layouts import CheckpointError
from openrag.training.args import ModelArguments, MoEArguments
from openrag.training.checkpointing import warm_start
from openrag.training.data import Collator, PackingCollator
from openrag.training.setup import build_model

from .train_helpers import run_train, train_argv, write_base, write_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 steps of a packed experts-only run with the reflection tokens weighted, saved at the end."""
    root = tmp_path_factory.mktemp("packed")
    base, data, out = write_base(root / "base"), write_dataset(root / "data.jsonl"), root / "out"
    argv = train_argv(base, data, out, "--max_steps", "4", "--packing", "True", "--model_max_length", "64",
                      "--reflection_loss_weight", "3", "--lora_r", "0")
    return run_train(argv), base, out


def _features(trainer, n: int = 7) -> list[dict]:
    return [trainer.train_dataset[i] for i in range(n)]


def test_packed_rows_hold_every_instance_once_within_the_row_length():
    collator = PackingCollator(pad_token_id=0, max_length=10)
    lengths = [7, 3, 6, 4, 2, 12, 1]
    rows = collator.rows(lengths)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:
        assert sum(lengths[i] for i in row) <= 10 or (len(row) == 1 and lengths[row[0]] > 10)
    assert len(rows) == 4  # 12 | 7+3 | 6+4 | 2+1 (first-fit decreasing)


def test_packed_batch_positions_and_masks():
    features = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7])},
                {"input_ids": torch.tensor([8, 9]), "labels": torch.tensor([8, 9])}]
    batch = PackingCollator(pad_token_id=0, max_length=6)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["token_mask"].tolist() == [[1, 1, 1, 1, 1]]
    # no target crosses from the first instance into the second: the second's first label is masked
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert "attention_mask" not in batch


def test_packed_loss_equals_the_padded_loss(trained):
    """Packing changes the layout, not the loss: transformers' loss on the padded batch (mean over the
    same targets) equals the packed batch's, so each packed instance attends only to itself."""
    trainer, _, _ = trained
    model = trainer.setup.model.eval()
    features = _features(trainer)
    for f in features:  # the packed collator masks each instance's first label; the prompt's first token is never trained
        assert f["labels"][0] == IGNORE_INDEX
    padded = Collator(pad_token_id=0)(features)
    packed = PackingCollator(pad_token_id=0, max_length=64)(features)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0], "the test must pack several instances into a row"
    packed.pop("token_mask")
    with torch.no_grad():
        reference = model(**padded).loss
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits  # [R, W, V]
    targets = packed["labels"][:, 1:]
    ours = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_reflection_weight_is_applied_to_the_new_tokens_only(trained):
    """compute_loss with --reflection_loss_weight 3 = a weighted mean computed here from the logits."""
    trainer, _, _ = trained
    model = trainer.setup.model.eval()
    batch = Collator(pad_token_id=0)(_features(trainer))
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, T, V]
    targets = batch["labels"][:, 1:].flatten()
    keep = targets != IGNORE_INDEX
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1)[keep], targets[keep], reduction="none")
    weights = torch.where(targets[keep] >= trainer.setup.num_base_tokens, 3.0, 1.0)
    assert (weights == 3.0).any() and (weights == 1.0).any()
    assert torch.allclose(ours, (per_token * weights).sum() / keep.sum(), atol=1e-5)


def test_packed_run_trains_and_counts_real_tokens(trained):
    trainer, _, out = trained
    entries = [e for e in trainer.state.log_history if "loss" in e]
    assert len(entries) == 4 and all(e["tokens_per_second"] > 0 for e in entries)
    assert (out / "openrag_config.json").is_file()


def test_warm_start_begins_as_the_checkpoint(trained, tmp_path):
    """A LoRA run warm-started from the (experts-only) packed run's checkpoint gives that checkpoint's logits
    before any step: experts and token rows come from the checkpoint, the fresh LoRA adds nothing yet."""
    _, base, out = trained
    args = ModelArguments(model_name_or_path=str(base), lora_r=2, lora_alpha=4, lora_target_modules="q_proj,v_proj")
    setup = build_model(args, MoEArguments(num_experts=4, topk=2, adapter_dim=8, expert_dropout=0.0))
    ids = torch.tensor([[5, 9, 3, 17, 8, 2, 30]])
    with torch.no_grad():
        before = setup.model.eval()(input_ids=ids).logits
        warm_start(setup, str(out))
        after = setup.model(input_ids=ids).logits
        expected = load_model(str(out), device="cpu")[0](input_ids=ids).logits
    assert not torch.allclose(before, expected, atol=1e-3)
    assert torch.allclose(after, expected, atol=1e-5)


def test_warm_start_from_other_experts_is_refused(trained):
    _, base, out = trained
    setup = build_model(ModelArguments(model_name_or_path=str(base), lora_r=0), MoEArguments(num_experts=2, topk=1, adapter_dim=8))
    with pytest.raises(CheckpointError, match="experts"):
        warm_start(setup, str(out))


def test_packed_lora_run_and_warm_start_of_its_lora(tmp_path):
    """Packing through PEFT trains; a warm start loads a LoRA of the same rank, alpha and targets and
    refuses one of another scale (same shapes, different alpha)."""
    base, data, out = write_base(tmp_path / "base"), write_dataset(tmp_path / "data.jsonl"), tmp_path / "out"
    run_train(train_argv(base, data, out, "--max_steps", "2", "--packing", "True", "--model_max_length", "64",
                         "--lora_target_modules", "q_proj,v_proj"))
    moe = MoEArguments(num_experts=4, topk=2, adapter_dim=8)
    same = build_model(ModelArguments(model_name_or_path=str(base), lora_r=4, lora_alpha=8, lora_target_modules="q_proj,v_proj"), moe)
    ids = torch.tensor([[5, 9, 3, 17, 8, 2, 30]])
    warm_start(same, str(out))
    with torch.no_grad():
        assert torch.allclose(same.model.eval()(input_ids=ids).logits, load_model(str(out), device="cpu")[0](input_ids=ids).logits, atol=1e-5)
    other = build_model(ModelArguments(model_name_or_path=str(base), lora_r=4, lora_alpha=16, lora_target_modules="q_proj,v_proj"), moe)
    with pytest.raises(CheckpointError, match="lora_alpha"):
        warm_start(other, str(out))
