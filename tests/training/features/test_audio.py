"""Audio features with a tiny randomly initialised HuBERT (MERT's architecture family) saved locally,
and WAV files the test writes."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from training.data.raw import DataError
from training.features.audio import (
    AudioConfig,
    AudioEncoder,
    audio_features,
    load_wav,
    parse_layers,
    resample,
)

RATE = 16_000


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
    )
    path = tmp_path_factory.mktemp("tiny-hubert")
    HubertModel(config).eval().save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, do_normalize=True).save_pretrained(path)
    return path


def _tone(seconds: float, rate: int, frequency: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def _manual_features(model_path: Path, samples: np.ndarray, layers: slice) -> np.ndarray:
    """What the encoder should compute for one window: layers averaged, then frames averaged."""
    from transformers import AutoFeatureExtractor, AutoModel

    extractor = AutoFeatureExtractor.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    with torch.no_grad():
        inputs = extractor(samples, sampling_rate=RATE, return_tensors="pt")
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    return torch.stack(hidden[layers]).mean(dim=0)[0].mean(dim=0).numpy()


def test_wav_formats_are_read_as_mono_floats_and_resampled(tmp_path: Path) -> None:
    stereo = (np.stack([_tone(0.5, 8000, 440), _tone(0.5, 8000, 440)], axis=1) * 32767).astype(np.int16)
    wavfile.write(tmp_path / "a.wav", 8000, stereo)
    samples, rate = load_wav(tmp_path / "a.wav")
    assert rate == 8000 and samples.shape == (4000,) and samples.dtype == np.float32
    np.testing.assert_allclose(samples, _tone(0.5, 8000, 440), atol=1e-4)
    upsampled = resample(samples, 8000, RATE)
    assert upsampled.shape == (8000,)
    np.testing.assert_allclose(upsampled[1000:7000], _tone(0.5, RATE, 440)[1000:7000], atol=1e-2)
    assert resample(samples, 44_100, 24_000).shape == (int(np.ceil(4000 * 24_000 / 44_100)),)

    (tmp_path / "b.wav").write_bytes(b"not a wav")
    with pytest.raises(DataError, match=r"b\.wav: not a readable WAV file"):
        load_wav(tmp_path / "b.wav")


def test_layers_parse_like_python_slices() -> None:
    assert parse_layers("-1") == (-1, None)
    assert parse_layers("2") == (2, 3)
    assert parse_layers("1:3") == (1, 3)
    assert parse_layers(":") == (None, None)
    with pytest.raises(ValueError, match="N or START:STOP"):
        parse_layers("last")


def test_encoder_averages_the_chosen_layers_over_time(tiny_model: Path) -> None:
    samples = _tone(1.0, RATE, 220)
    for text in ("-1", "1:3", ":"):
        layers = parse_layers(text)
        encoder = AudioEncoder(tiny_model, AudioConfig(layers=layers))
        features = encoder.encode(samples)
        assert features.shape == (16,)
        np.testing.assert_allclose(features, _manual_features(tiny_model, samples, slice(*layers)), atol=1e-5)
    assert encoder.sampling_rate == RATE
    assert encoder.describe()["model_type"] == "hubert"


def test_long_audio_is_encoded_window_by_window(tiny_model: Path) -> None:
    samples = np.concatenate([_tone(0.5, RATE, 220), _tone(0.5, RATE, 880)])
    windowed = AudioEncoder(tiny_model, AudioConfig(chunk_seconds=0.5)).encode(samples)
    halves = [
        _manual_features(tiny_model, half, slice(-1, None)) for half in (samples[:8000], samples[8000:])
    ]
    np.testing.assert_allclose(windowed, np.mean(halves, axis=0), atol=1e-5)  # equal windows: equal frames


def test_audio_features_for_every_item_and_missing_audio_named(tiny_model: Path, tmp_path: Path) -> None:
    wavfile.write(tmp_path / "7.wav", 8000, (_tone(0.6, 8000, 300) * 32767).astype(np.int16))
    wavfile.write(tmp_path / "9.wav", 22_050, _tone(0.4, 22_050, 600))  # float32 WAV
    features, meta = audio_features(["7", "9"], tmp_path, tiny_model, progress=False)
    assert features.shape == (2, 16) and features.dtype == np.float32
    assert not np.allclose(features[0], features[1])
    expected = AudioEncoder(tiny_model).encode(resample(load_wav(tmp_path / "9.wav")[0], 22_050, RATE))
    np.testing.assert_allclose(features[1], expected, atol=1e-6)
    assert meta["sampling_rate"] == RATE and meta["layers"] == (-1, None)

    with pytest.raises(DataError, match=r"1 of 3 items have no audio \(8\.wav\)"):
        audio_features(["7", "8", "9"], tmp_path, tiny_model, progress=False)
    with pytest.raises(DataError, match="not a local transformers checkpoint"):
        AudioEncoder(tmp_path)
