"""Audio features with MERT (Li et al. 2024), as in the APRON paper (Sec. 4: MERT-v1-330M, last layer).

The checkpoint is read from a LOCAL directory (`--mert-path`; nothing is downloaded) with
transformers' AutoModel and AutoFeatureExtractor (a Wav2Vec2FeatureExtractor for MERT). Each
item's audio is `<audio_dir>/<item_id>.wav`, read with scipy.io.wavfile (16/32-bit PCM, 8-bit, or
float), mixed to mono and resampled to the model's rate with scipy.signal.resample_poly
(torchaudio is not available). Long files are cut into `chunk_seconds` windows; the item's
feature is the mean over all frames of the average of the chosen hidden layers
(`layers`, a slice of the model's hidden states; index 0 is the CNN/embedding output).

MERT-v1 checkpoints ship their own model class (`MERTModel`), which transformers only loads with
`trust_remote_code=True`; it is off by default and must be asked for. Checkpoints of a built-in
type (HuBERT / wav2vec 2.0, e.g. MERT-v0) load without it; the tests use a tiny randomly
initialised `HubertModel` that they build and save themselves.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.io import wavfile
from scipy.signal import resample_poly
from tqdm import tqdm

from training.data.raw import DataError


@dataclass(frozen=True)
class AudioConfig:
    layers: tuple[int | None, int | None] = (-1, None)  # slice of hidden_states: (-1, None) = last layer
    chunk_seconds: float = 10.0  # MERT was trained on 5 s crops; long files are encoded window by window
    trust_remote_code: bool = False


def parse_layers(text: str) -> tuple[int | None, int | None]:
    """'-1' -> the last layer only; '4:8' -> layers 4..7; ':' -> all (Python slice syntax)."""
    try:
        if ":" not in text:
            index = int(text)
            return index, (index + 1 if index != -1 else None)
        start, stop = text.split(":")
        return (int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise ValueError(f"layers must be N or START:STOP, got {text!r}") from None


def load_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sampling rate."""
    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: not a readable WAV file ({error})") from None
    if data.dtype.kind == "i":
        samples = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    elif data.dtype.kind == "u":  # 8-bit WAV is unsigned, centred on 128
        samples = (data.astype(np.float32) - 128.0) / 128.0
    else:
        samples = data.astype(np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise DataError(f"{path}: the WAV file holds no samples")
    return samples, int(rate)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return samples
    divisor = math.gcd(rate, target_rate)
    return resample_poly(samples, target_rate // divisor, rate // divisor).astype(np.float32)


class AudioEncoder:
    """A local MERT-like checkpoint that maps a waveform to one [hidden_size] vector."""

    def __init__(self, model_path: str | Path, config: AudioConfig = AudioConfig(), device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoFeatureExtractor, AutoModel

        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise DataError(f"{self.model_path} is not a local transformers checkpoint (no config.json)")
        self.config = config
        self.device = device
        kwargs = {"local_files_only": True, "trust_remote_code": config.trust_remote_code}
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(self.model_path, **kwargs)
            self.model = AutoModel.from_pretrained(self.model_path, **kwargs).to(device).eval()
        except ValueError as error:
            hint = (
                "" if config.trust_remote_code else " (MERT-v1 needs trust_remote_code: --trust-remote-code)"
            )
            raise DataError(f"{self.model_path}: cannot load the audio model{hint}: {error}") from None
        self.sampling_rate = int(self.extractor.sampling_rate)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """float32 [hidden_size]: mean over frames of the chosen layers' average, for mono samples at
        `sampling_rate`."""
        window = max(1, int(self.config.chunk_seconds * self.sampling_rate))
        chunks = [samples[i : i + window] for i in range(0, len(samples), window)]
        if len(chunks) > 1 and len(chunks[-1]) < window // 4:
            chunks[-2] = np.concatenate(chunks[-2:])  # a short tail joins the previous window
            chunks.pop()
        total, n_frames = None, 0
        with torch.inference_mode():
            for chunk in chunks:
                inputs = self.extractor(chunk, sampling_rate=self.sampling_rate, return_tensors="pt").to(
                    self.device
                )
                hidden_states = self.model(
                    **inputs, output_hidden_states=True
                ).hidden_states  # L+1 x (1, T, H)
                chosen = hidden_states[slice(*self.config.layers)]
                if len(chosen) == 0:
                    raise ValueError(
                        f"layers {self.config.layers} select none of {len(hidden_states)} hidden states"
                    )
                frames = torch.stack(chosen).mean(dim=0)[0]  # (T, H)
                total = frames.sum(dim=0) if total is None else total + frames.sum(dim=0)
                n_frames += frames.shape[0]
        return (total / n_frames).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": getattr(self.model.config, "_name_or_path", "") or str(self.model_path),
            "model_type": self.model.config.model_type,
            "model_path": str(self.model_path),
            "sampling_rate": self.sampling_rate,
            **asdict(self.config),
        }


def audio_files(audio_dir: str | Path, item_ids: list[str]) -> list[Path]:
    """`<audio_dir>/<item_id>.wav` for every item; a DataError names the items without audio."""
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise DataError(f"{audio_dir} is not a directory: expected <item_id>.wav files there")
    paths = [audio_dir / f"{item_id}.wav" for item_id in item_ids]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"{audio_dir}: {len(missing)} of {len(paths)} items have no audio ({shown}); the paper drops such "
            "items before filtering: prepare the dataset without them"
        )
    return paths


def audio_features(
    item_ids: list[str],
    audio_dir: str | Path,
    model_path: str | Path,
    config: AudioConfig = AudioConfig(),
    device: str = "cpu",
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """float32 [n_items, hidden_size] features and their metadata for `write_features`."""
    paths = audio_files(audio_dir, item_ids)
    encoder = AudioEncoder(model_path, config, device)
    rows = []
    for path in tqdm(paths, desc="audio features", disable=not progress, unit="file"):
        samples, rate = load_wav(path)
        try:
            rows.append(encoder.encode(resample(samples, rate, encoder.sampling_rate)))
        except RuntimeError as error:  # e.g. shorter than the CNN's receptive field
            raise DataError(f"{path}: the audio model cannot encode it ({error})") from None
    return np.stack(rows).astype(np.float32), {**encoder.describe(), "audio_dir": str(audio_dir)}
