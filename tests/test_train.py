"""openrag train: a tiny random Llama trained a few steps on a tiny built dataset (CPU, seconds)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openrag import load_model
from openrag.model import load_pretrained
from openrag.model.layouts import ADAPTER_CONFIG, ADAPTER_WEIGHTS

from .train_helpers import losses, run_train, train_argv, write_base, write_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """12 steps with LoRA (on embed_tokens and lm_head too: the tiny model is untied), weight decay on,
    a save every 6 steps, and the released layout as well."""
    root = tmp_path_factory.mktemp("train")
    base, data, out = write_base(root / "base"), write_dataset(root / "data.jsonl"), root / "out"
    argv = train_argv(base, data, out, "--max_steps", "12", "--save_steps", "6", "--weight_decay", "0.1", "--save_official_layout", "True")
    return run_train(argv), base, out


def _base_name(name: str) -> str:
    """A trained model's parameter name -> the dense base checkpoint's name."""
    name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
    return name.replace(".mlp.dense_mlp.", ".mlp.")


def test_loss_falls(trained):
    trainer, _, _ = trained
    by_step = losses(trainer)
    assert sorted(by_step) == list(range(1, 13))
    first, last = [by_step[s] for s in (1, 2, 3)], [by_step[s] for s in (10, 11, 12)]
    assert sum(last) / 3 < 0.8 * sum(first) / 3, by_step


def test_frozen_weights_stay_bit_identical(trained):
    trainer, base, _ = trained
    setup = trainer.setup
    base_weights = load_file(str(base / "model.safetensors"))
    n = setup.num_base_tokens
    seen = set()
    for name, param in setup.model.named_parameters():
        if ".moe_adapter." in name or "lora_" in name:
            continue
        key = _base_name(name)
        expected = base_weights[key]
        if "embed_tokens" in key or "lm_head" in key:
            assert torch.equal(param[:n], expected), f"{key}: a base vocabulary row moved"
            assert param.shape[0] > n and not torch.equal(param[n:], param[n:].mean(0).expand_as(param[n:])), "new rows did not learn"
        else:
            assert torch.equal(param, expected), f"{key} changed"
        seen.add(key)
    assert seen == set(base_weights), set(base_weights) ^ seen


def test_experts_routers_and_lora_learned(trained):
    trainer, _, _ = trained
    named = dict(trainer.setup.model.named_parameters())
    ups = [p for n, p in named.items() if n.endswith("adapter_up.weight")]
    assert ups and all(p.abs().sum() > 0 for p in ups), "adapter_up starts at zero and must move"
    lora_b = [p for n, p in named.items() if "lora_B" in n or "lora_embedding_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_logs_have_speed_and_expert_load(trained):
    trainer, _, _ = trained
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    assert entry["tokens_per_second"] > 0
    for layer in range(2):
        shares = [entry[f"expert_load/layer_{layer:02d}/expert_{e}"] for e in range(4)]
        assert sum(shares) == pytest.approx(1.0)


def test_checkpoints_are_small_and_load_directly(trained):
    trainer, _, out = trained
    for folder in (out / "checkpoint-6", out / "checkpoint-12", out):
        assert (folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_WEIGHTS).is_file()
        assert (folder / "lora" / "adapter_model.safetensors").is_file()
        assert (folder / "adapter_model" / "adapter_model.safetensors").is_file() and (folder / "moe_model.bin").is_file()
        assert not list(folder.glob("model*.safetensors")), "a checkpoint must not copy the base"
    assert all(k.startswith(("model.layers.", "new_token_rows.")) for k in load_file(str(out / ADAPTER_WEIGHTS)))
    assert not any("embed_tokens.base_layer" in k for k in load_file(str(out / "lora" / "adapter_model.safetensors")))
    moe_bin = torch.load(out / "moe_model.bin", weights_only=True)
    assert moe_bin and all(".moe_adapter." in k for k in moe_bin)
    released = load_file(str(out / "adapter_model" / "adapter_model.safetensors"))
    assert not any("dense_mlp" in k for k in released) and any(".mlp.gate_proj." in k for k in released)

    model = trainer.setup.model.eval()
    ids = torch.tensor([[5, 9, 3, 17, 8, 2, 30]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        loaded, _ = load_model(str(out), device="cpu")
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)


def test_save_from_a_gathered_state_dict_matches(trained, tmp_path):
    """FSDP/DeepSpeed hand _save a full state dict; it must give the same files as the parameters."""
    from openrag.training.checkpointing import save_checkpoint

    setup = trained[0].setup
    save_checkpoint(setup, tmp_path / "params")
    save_checkpoint(setup, tmp_path / "gathered", state_dict=setup.model.state_dict())
    for rel in (ADAPTER_WEIGHTS, "lora/adapter_model.safetensors"):
        a, b = load_file(str(tmp_path / "params" / rel)), load_file(str(tmp_path / "gathered" / rel))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


def test_loss_on_target_positions_equals_transformers(trained):
    """Logits only at trained positions must give exactly the loss transformers computes on all of them."""
    trainer, _, _ = trained
    model = trainer.setup.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(5)])
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        reference = model(**batch).loss
    assert torch.allclose(ours, reference, atol=1e-6)


def test_resume_after_kill_gives_the_same_later_losses(tmp_path):
    """A run killed while saving step 6 resumes from its step-3 save and equals the run that never stopped."""
    base, data = write_base(tmp_path / "base"), write_dataset(tmp_path / "data.jsonl")
    common = ("--max_steps", "6", "--save_steps", "3", "--lora_dropout", "0.1")
    full = run_train(train_argv(base, data, tmp_path / "full", *common))
    # The killed run left its step-3 checkpoint (what the full run wrote at step 3) and a step-6 save cut short
    # before the optimizer and the trainer state were written.
    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "killed" / "checkpoint-3")
    shutil.copytree(tmp_path / "full" / "checkpoint-6", tmp_path / "killed" / "checkpoint-6",
                    ignore=shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"))
    resumed = run_train(train_argv(base, data, tmp_path / "killed", *common, "--resume_from_checkpoint", "True"))
    before, after = losses(full), losses(resumed)
    assert sorted(after) == [1, 2, 3, 4, 5, 6]  # 1-3 come back with the checkpoint's trainer state
    for step in (4, 5, 6):
        assert after[step] == pytest.approx(before[step], abs=1e-6), (step, before, after)
    a = load_file(str(tmp_path / "full" / ADAPTER_WEIGHTS))
    b = load_file(str(tmp_path / "killed" / ADAPTER_WEIGHTS))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_torchrun_two_cpu_processes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this python")
    base, data, out = write_base(tmp_path / "base"), write_dataset(tmp_path / "data.jsonl"), tmp_path / "out"
    argv = train_argv(base, data, out, "--max_steps", "2", "--save_steps", "2", "--ddp_backend", "gloo", "--use_cpu", "True")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "openrag", "train", *argv]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    state = (out / "checkpoint-2" / "trainer_state.json").read_text()
    assert '"global_step": 2' in state
    model, _ = load_model(str(out / "checkpoint-2"), device="cpu")
    assert model.config.num_experts == 4


# --- set-up and flags -----------------------------------------------------------------------------


def test_tied_embeddings_get_no_lora_but_new_rows_train(tmp_path):
    from openrag.training.args import ModelArguments, MoEArguments
    from openrag.training.setup import build_model

    base = write_base(tmp_path / "base", tie_word_embeddings=True)
    setup = build_model(ModelArguments(str(base), lora_r=4), MoEArguments(4, 2, 8))
    names = [n for n, _ in setup.model.named_parameters()]
    assert not any("embed_tokens.lora" in n or "lm_head.lora" in n for n in names)
    embed = setup.model.get_input_embeddings().weight
    assert embed.requires_grad and embed is setup.model.get_output_embeddings().weight
    setup.model(input_ids=torch.tensor([[3, 4, 5]])).logits.sum().backward()
    assert embed.grad[: setup.num_base_tokens].abs().sum() == 0 and embed.grad[setup.num_base_tokens :].abs().sum() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bf16_on_a_cpu_without_native_bf16_trains_in_float32(monkeypatch):
    from .train_helpers import parse_train_args

    monkeypatch.setenv("OPENRAG_CPU_BF16", "0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        *_, args = parse_train_args(["--data_path", "x.jsonl", "--bf16", "True", "--tf32", "True", "--evaluation_strategy", "no"])
    assert not args.bf16 and not args.tf32
    assert any("OPENRAG_CPU_BF16=0" in str(w.message) and "training in float32" in str(w.message) for w in caught)
    assert args.eval_strategy == "no"
    *_, args = parse_train_args(["--data_path", "x.jsonl", "--group_by_length", "False"])  # the pre-v5 flag
    assert args.train_sampling_strategy == "random"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bf16_on_a_cpu_with_native_bf16_keeps_autocast_and_fp16_falls_back(monkeypatch):
    from .train_helpers import parse_train_args

    monkeypatch.setenv("OPENRAG_CPU_BF16", "1")
    *_, args = parse_train_args(["--data_path", "x.jsonl", "--bf16", "True"])
    assert args.bf16 and args.use_cpu and args.mixed_precision == "bf16"
    assert "bf16 autocast" in args.cpu_precision  # the sentence the run logs when it starts
    assert type(args).cpu_precision is None  # a run that decides nothing (a GPU) reads None and logs no sentence
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        *_, args = parse_train_args(["--data_path", "x.jsonl", "--fp16", "True"])
    assert not args.fp16 and not args.bf16
    assert any("--fp16 on the CPU" in str(w.message) for w in caught)


def test_a_bf16_autocast_step_is_close_to_float32(tmp_path):
    """One training step's loss and gradients under CPU bf16 autocast against the same step in float32:
    the float32 step is the reference; bf16 keeps 8 bits of mantissa, so agreement is to about 1e-2."""
    from openrag.training.args import ModelArguments, MoEArguments
    from openrag.training.data import Collator, tokenize_instances
    from openrag.training.setup import build_model
    from openrag.training.trainer import target_loss

    from .train_helpers import instances

    base = write_base(tmp_path / "base", hidden_size=64, intermediate_size=128)
    setup = build_model(ModelArguments(str(base), lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules="q_proj,v_proj,up_proj"),
                        MoEArguments(4, 2, 8, 0.25, 0.0))
    torch.manual_seed(0)
    for p in setup.model.parameters():  # zero-initialised expert up-projections and LoRA B would give no gradient to their partners
        if p.requires_grad and p.dim() == 2 and p.abs().sum() == 0:
            p.data.normal_(0, 0.05)
    dataset = tokenize_instances(setup.tokenizer, instances(8), 256)
    batch = Collator(setup.tokenizer.pad_token_id)([dataset[i] for i in range(8)])
    trained = [(n, p) for n, p in setup.model.named_parameters() if p.requires_grad]

    def step(autocast: bool):
        setup.model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss_sum, count, _ = target_loss(setup.model, dict(batch))
            loss = loss_sum / count
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in trained}

    loss32, grads32 = step(False)
    loss16, grads16 = step(True)
    assert all(p.dtype == torch.float32 for _, p in trained)  # master weights stay float32
    assert all(g.dtype == torch.float32 for g in grads16.values())
    assert abs(loss16 - loss32) / loss32 < 2e-2
    for name, g32 in grads32.items():
        g16 = grads16[name]
        if g32.norm() == 0:
            continue
        relative = ((g16 - g32).norm() / g32.norm()).item()
        cosine = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0).item()
        assert relative < 0.1 and cosine > 0.99, f"{name}: relative error {relative:.3f}, cosine {cosine:.4f}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bf16_training_on_the_cpu_runs_under_autocast_and_saves_float32(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENRAG_CPU_BF16", "1")  # the code path a CPU with native bf16 takes (slow elsewhere, still right)
    caplog.set_level(logging.INFO, logger="openrag")
    base, data, out = write_base(tmp_path / "base"), write_dataset(tmp_path / "data.jsonl"), tmp_path / "out"
    trainer = run_train(train_argv(base, data, out, "--max_steps", "8", "--bf16", "True", "--save_steps", "8"))
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.accelerator.native_amp
    assert any(r.getMessage().startswith("precision: bf16 autocast") for r in caplog.records)  # the run says what it chose
    seen = []
    hook = trainer.setup.inner.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.compute_loss(trainer.model_wrapped, dict(batch))  # the forward accelerate wrapped in autocast
    hook.remove()
    assert seen == [torch.bfloat16]
    steps = losses(trainer)
    assert all(torch.isfinite(torch.tensor(v)) for v in steps.values()) and steps[8] < steps[1]
    saved = load_file(out / ADAPTER_WEIGHTS)
    assert saved and all(t.dtype == torch.float32 for t in saved.values())


def test_seed_command_line_parses():
    """Every flag of the train command of docs/method.md section 8 is accepted with its meaning."""
    from .train_helpers import parse_train_args

    argv = (
        "--model_name_or_path meta-llama/Llama-2-7b-hf --data_path shayekh/openrag_train_data --data_subset moe "
        "--output_dir ./checkpoints/ --bf16 True --tf32 True --fp16 False --model_max_length 4096 --num_train_epochs 2 "
        "--gradient_accumulation_steps 8 --per_device_train_batch_size 4 --evaluation_strategy no --save_strategy epoch "
        "--logging_strategy steps --report_to tensorboard --logging_steps 1 --learning_rate 2e-4 --adam_beta2 0.999 "
        "--lr_scheduler_type constant_with_warmup --max_grad_norm 0.3 --weight_decay 0.0 --warmup_steps 200 "
        "--adapter_dim 512 --moe_scaling 0.25 --num_experts 8 --topk 2"
    ).split()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_args, moe_args, data_args, args = parse_train_args(argv)
    assert (moe_args.num_experts, moe_args.topk, moe_args.adapter_dim, moe_args.moe_scaling) == (8, 2, 512, 0.25)
    assert data_args.data_subset == "moe" and data_args.model_max_length == 4096
    assert args.gradient_accumulation_steps == 8 and args.max_grad_norm == 0.3 and args.warmup_steps == 200
    assert str(args.save_strategy.value) == "epoch" and args.report_to == ["tensorboard"]
    assert model_args.lora_r == 64 and model_args.lora_alpha == 16 and "embed_tokens" in model_args.lora_targets


def test_training_a_merged_checkpoint_is_refused(tmp_path):
    from openrag.training.args import ModelArguments, MoEArguments
    from openrag.training.setup import build_model

    base = write_base(tmp_path / "base")
    cfg = (base / "config.json").read_text().replace("{", '{"num_experts": 4, "topk": 2, "adapter_dim": 8, "moe_scaling": 0.25,', 1)
    (base / "config.json").write_text(cfg)
    with pytest.raises(ValueError, match="already has experts"):
        build_model(ModelArguments(str(base), lora_r=0), MoEArguments(4, 2, 8))


def test_load_balancing_loss_option_trains_and_logs(tmp_path):
    base, data = write_base(tmp_path / "base"), write_dataset(tmp_path / "data.jsonl")
    trainer = run_train(train_argv(base, data, tmp_path / "out", "--max_steps", "2", "--router_aux_loss_coef", "0.01"))
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    assert 0.5 < entry["aux_loss"] < 4.0  # E * sum_e f_e P_e: 1 when balanced, at most E = 4


def test_no_experts_is_a_lora_only_baseline(tmp_path):
    base, data = write_base(tmp_path / "base"), write_dataset(tmp_path / "data.jsonl")
    trainer = run_train(train_argv(base, data, tmp_path / "out", "--max_steps", "2", "--num_experts", "0"))
    assert not any(".moe_adapter." in n for n, _ in trainer.setup.model.named_parameters())
    loaded = load_pretrained(str(tmp_path / "out"), device="cpu")
    assert getattr(loaded.model.config, "num_experts", None) is None
    assert loaded.prompt_format == "training"  # answered in the format it learned (openrag.answer.prompts)


def test_lora_only_run_resumes(tmp_path):
    """A killed run without experts resumes from its checkpoint (it once failed looking for expert modules)."""
    base, data = write_base(tmp_path / "base"), write_dataset(tmp_path / "data.jsonl")
    common = ("--max_steps", "4", "--save_steps", "2", "--num_experts", "0")
    full = run_train(train_argv(base, data, tmp_path / "full", *common))
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "killed" / "checkpoint-2")
    resumed = run_train(train_argv(base, data, tmp_path / "killed", *common, "--resume_from_checkpoint", "True"))
    before, after = losses(full), losses(resumed)
    for step in (3, 4):
        assert after[step] == pytest.approx(before[step], abs=1e-6), (step, before, after)


def test_resume_refuses_a_save_that_did_not_finish(tmp_path, monkeypatch):
    from openrag.model.layouts import CheckpointError
    from openrag.training.checkpointing import resume_folder

    first = tmp_path / "checkpoint-20"  # killed during its first save
    first.mkdir()
    (first / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"no finished checkpoint-N in {tmp_path}.*start without --resume_from_checkpoint"):
        resume_folder("True", tmp_path)
    with pytest.raises(CheckpointError, match=f"--resume_from_checkpoint {first}: its save did not finish.*give an earlier"):
        resume_folder(str(first), tmp_path)
    (first / "trainer_state.json").write_text('{"global_step": 2')  # cut short while being written
    with pytest.raises(CheckpointError, match="no finished checkpoint-N"):
        resume_folder("last", tmp_path)
    (first / "trainer_state.json").write_text('{"global_step": 20}')
    assert resume_folder("last", tmp_path) == str(first)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun: rank 0 wrote the state before rank 1 wrote its RNG file
    (first / "rng_state_0.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no finished checkpoint-N"):
        resume_folder("True", tmp_path)
    (first / "rng_state_1.pth").write_bytes(b"")
    assert resume_folder("True", tmp_path) == str(first)


def test_held_out_check_reports_loss_and_critique_and_keeps_the_best(tmp_path):
    """Every --eval_steps: the held-out loss equals the mean weighted target loss computed directly, the critique AUCs
    come from the reflection-token pairs, and the Trainer records the best checkpoint by --metric_for_best_model."""
    from openrag.training.trainer import target_loss

    base, data, out = write_base(tmp_path / "base"), write_dataset(tmp_path / "data.jsonl"), tmp_path / "out"
    held = write_dataset(tmp_path / "held.jsonl", n=12)
    trainer = run_train(train_argv(base, data, out, "--max_steps", "6", "--save_steps", "3", "--eval_strategy", "steps",
                                   "--eval_steps", "3", "--eval_data_path", str(held), "--metric_for_best_model", "loss",
                                   "--reflection_loss_weight", "2"))
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [3, 6]
    assert all(0.0 <= e["eval_relevance_auc"] <= 1.0 and 0.0 <= e["eval_retrieval_auc"] <= 1.0 for e in evals)
    assert evals[-1]["eval_relevance_n"] == 12  # held.jsonl: 4 instances with one [Relevant], 4 with [Irrelevant] and [Relevant]
    best = min(evals, key=lambda e: e["eval_loss"])
    assert trainer.state.best_model_checkpoint == str(out / f"checkpoint-{best['step']}")
    # the final model's held-out loss, recomputed here from target_loss over the whole held-out set at once
    model = trainer.setup.model.eval()
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))])
    batch.pop("token_mask", None)
    with torch.no_grad():
        total, count, _ = target_loss(model, batch, trainer._target_weights)
    assert abs(trainer.evaluate()["eval_loss"] - float(total) / count) < 1e-4


def test_eval_strategy_without_held_out_data_is_refused_before_the_model(tmp_path):
    from .train_helpers import parse_train_args
    from openrag.training.run import run_training

    with pytest.raises(ValueError, match="--eval_data_path"):
        run_training(*parse_train_args(["--data_path", "x.jsonl", "--model_name_or_path", str(tmp_path / "nothing"),
                                        "--output_dir", str(tmp_path / "out"), "--eval_strategy", "steps", "--eval_steps", "5"]))


def test_a_checkpoint_kept_without_optimizer_state_resumes_its_schedule(tmp_path):
    """scripts/keep_checkpoint.py's folder: the run goes on at the kept step with the kept learning rate."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("keep_checkpoint", Path(__file__).parents[1] / "scripts" / "keep_checkpoint.py")
    keep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(keep)
    base, data, out = write_base(tmp_path / "base"), write_dataset(tmp_path / "data.jsonl"), tmp_path / "out"
    common = ("--lr_scheduler_type", "cosine", "--max_steps", "8", "--save_steps", "4")
    first = run_train(train_argv(base, data, out, *common))
    keep.main(str(out), str(tmp_path / "kept"))
    kept = tmp_path / "kept" / "checkpoint-8"
    assert kept.is_dir() and not (kept / "optimizer.pt").exists() and not (kept / "training_args.bin").exists()
    shutil.rmtree(kept)
    shutil.copytree(out / "checkpoint-4", kept, ignore=shutil.ignore_patterns("optimizer.pt", "training_args.bin"))
    again = run_train(train_argv(base, data, tmp_path / "out2", *common, "--resume_from_checkpoint", str(kept)))
    lr = {e["step"]: e["learning_rate"] for e in first.state.log_history if "learning_rate" in e}
    lr_again = {e["step"]: e["learning_rate"] for e in again.state.log_history if "learning_rate" in e}
    assert again.state.global_step == 8 and sum(1 for e in again.state.log_history if "loss" in e) == 8  # 1-4 kept, 5-8 new
    assert all(abs(lr_again[s] - lr[s]) < 1e-9 for s in range(5, 9))  # the schedule went on at step 5, not from warm-up


def test_keep_checkpoint_keeps_the_best_or_with_newest_the_newest(tmp_path):
    """scripts/keep_checkpoint.py: the checkpoint the held-out check chose, or the newest one (--newest: the resume
    point when a session ends between two checks); a save that did not finish is never kept."""
    from .conftest import load_script

    keep = load_script("keep_checkpoint")
    run = tmp_path / "run"
    for step in (200, 350, 400):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "adapter.safetensors").write_bytes(b"weights")
        (run / f"checkpoint-{step}" / "optimizer.pt").write_bytes(b"moments")
    state = {"best_model_checkpoint": str(run / "checkpoint-200"), "global_step": 350}
    for step in (200, 350):
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(state))
    # checkpoint-400 has no trainer_state.json: its save did not finish
    assert keep.best_checkpoint(run).name == "checkpoint-200"
    assert keep.best_checkpoint(run, newest_only=True).name == "checkpoint-350"
    keep.main(str(run), str(tmp_path / "kept"), newest_only=True)
    kept = tmp_path / "kept" / "checkpoint-350"
    assert kept.is_dir() and not (kept / "optimizer.pt").exists() and (kept / "adapter.safetensors").read_bytes() == b"weights"
    keep.main(str(run), str(tmp_path / "kept"))
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["checkpoint-200"]  # what was kept before is replaced
