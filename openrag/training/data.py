"""Training data as the Trainer sees it: tokenised instances in two flat int32 arrays, and a collator.

150k instances of ~1k tokens are ~600 MB as int32 but many GB as Python lists, so the token ids and
labels of all instances are kept as one array each plus offsets. The arrays are cached under the
output folder, keyed by data, tokenizer and length, so that a resumed run does not tokenise again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.tokenize import IGNORE_INDEX, load_training_instances, tokenize_instance
from ..outputs import write_atomic

log = logging.getLogger(__name__)


class TokenizedDataset(Dataset):
    """Instance i is ``input_ids[offsets[i]:offsets[i+1]]`` with its labels (-100 where masked)."""

    def __init__(self, input_ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray):
        if not (input_ids.shape == labels.shape and offsets[0] == 0 and offsets[-1] == len(input_ids)):
            raise ValueError("input_ids, labels and offsets do not describe the same instances")
        self.input_ids, self.labels, self.offsets = input_ids, labels, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return {"input_ids": torch.from_numpy(self.input_ids[a:b]), "labels": torch.from_numpy(self.labels[a:b])}

    @property
    def lengths(self) -> list[int]:
        return np.diff(self.offsets).tolist()

    def save(self, path: Path) -> None:
        with write_atomic(path, "wb") as f:
            np.savez(f, input_ids=self.input_ids, labels=self.labels, offsets=self.offsets)

    @classmethod
    def load(cls, path: Path) -> "TokenizedDataset":
        with np.load(path) as f:
            return cls(f["input_ids"], f["labels"], f["offsets"])


def tokenize_instances(tokenizer, instances: list[dict], max_length: int) -> TokenizedDataset:
    """Tokenise ``{input, output}`` instances; those left with no trained token are dropped (and counted)."""
    from tqdm.auto import tqdm

    ids_parts, label_parts, lengths = [], [], []
    truncated = dropped = 0
    for instance in tqdm(instances, desc="tokenising", unit="instance", mininterval=2.0):
        tok = tokenize_instance(tokenizer, instance["input"], instance["output"], max_length, instance.get("train_decision", True))
        if all(label == IGNORE_INDEX for label in tok.labels):
            dropped += 1
            continue
        truncated += tok.truncated
        ids_parts.append(np.asarray(tok.input_ids, dtype=np.int32))
        label_parts.append(np.asarray(tok.labels, dtype=np.int32))
        lengths.append(len(tok.input_ids))
    if not lengths:
        raise ValueError(f"none of the {len(instances)} instances has a token to train on; check the data's outputs")
    if truncated or dropped:
        log.info("%d instances shortened to %d tokens; %d dropped (no target left)", truncated, max_length, dropped)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedDataset(np.concatenate(ids_parts), np.concatenate(label_parts), offsets)


def _fingerprint(data_path: str, data_subset: str | None, tokenizer, max_length: int) -> str:
    path = Path(data_path).expanduser()
    source = {"path": str(path.resolve()), "size": path.stat().st_size, "mtime": path.stat().st_mtime_ns} if path.exists() else {"hub": data_path}
    vocab = tokenizer.get_vocab()
    key = {
        "source": source,
        "subset": data_subset,
        "max_length": max_length,
        "tokenizer": [tokenizer.name_or_path, len(vocab), hashlib.sha1(json.dumps(sorted(vocab.items())).encode()).hexdigest()],
        "format": 2,
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_tokenized(data_path: str, data_subset: str | None, tokenizer, max_length: int, cache_dir: Path | None) -> TokenizedDataset:
    """Read, tokenise (or fetch from ``cache_dir``) the training set."""
    cache = cache_dir / f"{_fingerprint(data_path, data_subset, tokenizer, max_length)}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        log.info("tokenised data from %s", cache)
        return TokenizedDataset.load(cache)
    instances = load_training_instances(data_path, data_subset)
    if not instances:
        raise ValueError(f"{data_path} holds no training instances")
    dataset = tokenize_instances(tokenizer, instances, max_length)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        dataset.save(cache)
    return dataset


class Collator:
    """Right-pads a batch: input ids with the pad token, labels with -100, and an attention mask."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(f["input_ids"])
            labels[row, :n] = torch.as_tensor(f["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class PackingCollator:
    """Packs a batch's instances into as few rows of at most ``max_length`` tokens as first-fit-decreasing
    finds, padding only each row's end. Position ids restart at 0 for every instance and no attention mask
    is passed, so transformers builds a block-diagonal causal mask: each instance attends only to itself,
    as in a padded batch. ``token_mask`` marks real tokens (the trainer counts them; the model never sees it).
    An instance's first label is masked so that no target crosses from one instance into the next."""

    def __init__(self, pad_token_id: int, max_length: int):
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def rows(self, lengths: list[int]) -> list[list[int]]:
        """Instance indices per row (first-fit decreasing); an instance longer than a row gets its own."""
        rows: list[list[int]] = []
        room: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
            if row is None:
                rows.append([])
                room.append(max(self.max_length, lengths[i]))
                row = len(rows) - 1
            rows[row].append(i)
            room[row] -= lengths[i]
        return rows

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        rows = self.rows(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # [R, W]
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # [R, W]
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)  # [R, W]
        token_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [R, W] 1 = a real token
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                n, end = lengths[i], start + lengths[i]
                input_ids[r, start:end] = torch.as_tensor(features[i]["input_ids"])
                labels[r, start:end] = torch.as_tensor(features[i]["labels"])
                labels[r, start] = IGNORE_INDEX
                position_ids[r, start:end] = torch.arange(n)
                token_mask[r, start:end] = 1
                start = end
            position_ids[r, start:] = torch.arange(width - start)  # the padding tail is one more sequence
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "token_mask": token_mask}
