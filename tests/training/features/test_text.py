"""Text features with the real bundled all-MiniLM-L6-v2 (offline)."""

import json
from pathlib import Path

import numpy as np

import cli
from training.data.dataset import ProcessedDataset
from training.features.text import default_model_path, encode_texts

TEXTS = [
    "A mellow jazz trio with brushed drums, upright bass and a soft piano.",
    "Heavy thrash metal with fast distorted guitar riffs and shouted vocals.",
    "Smooth jazz piano and double bass, played quietly in a late-night club.",
    "The quarterly tax report is due at the end of the month.",
    "Dark, aggressive metal band with pounding drums and screaming guitars.",
]


def test_similar_descriptions_are_closer_than_unrelated_ones() -> None:
    embeddings = encode_texts(TEXTS, batch_size=2, progress=False)
    assert embeddings.shape == (5, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 2] > similarity[0, 1] + 0.2  # jazz ~ jazz, not metal
    assert similarity[1, 4] > similarity[1, 0] + 0.2  # metal ~ metal, not jazz
    assert similarity[0, 2] > similarity[0, 3] + 0.3 and similarity[1, 4] > similarity[1, 3] + 0.3
    # batching sorts texts by length; every row must still belong to its own text
    single = np.concatenate([encode_texts([t], progress=False) for t in TEXTS[:3]])
    np.testing.assert_allclose(embeddings[:3], single, atol=1e-5)


def test_apron_features_text_writes_features_for_a_prepared_dataset(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    argv = ["prepare", "--dataset", "synthetic", "--out", str(out), "--n-items", "40", "--n-users", "300"]
    assert cli.main([*argv, "--n-tags", "4"]) == 0
    assert cli.main(["features", str(out), "--kind", "text", "--quiet"]) == 0
    dataset = ProcessedDataset.load(out)
    features = dataset.load_features("text")
    assert features.shape == (dataset.n_items, 384)
    np.testing.assert_allclose(features[0], encode_texts(dataset.texts[:1], progress=False)[0], atol=1e-5)
    meta = json.loads((out / "features" / "text.json").read_text())
    assert meta["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["model_path"] == str(default_model_path()) and meta["dim"] == 384


def test_apron_features_text_names_a_model_path_that_holds_no_encoder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "syn"
    assert cli.main(["prepare", "--dataset", "synthetic", "--out", str(out), "--n-items", "40", "--n-users", "300", "--n-tags", "4"]) == 0
    capsys.readouterr()
    for where in (tmp_path / "missing", out):  # nothing there; a directory of something else
        assert cli.main(["features", str(out), "--kind", "text", "--quiet", "--model-path", str(where)]) == 2
        assert f"no sentence encoder at {where}: expected a directory with its config.json" in capsys.readouterr().err
    assert not (out / "features" / "text.npy").exists()


def test_strip_tag_words_removes_tag_sentences_and_tag_names() -> None:
    from training.features.text import strip_tag_words

    tags = ["jazz", "synth pop", "80s", "female vocalists", "Sci-Fi"]
    texts = [
        "Nova is a Synth-Pop act from the 1980s. Their work has been tagged with labels such as 'jazz', "
        "'synth pop' and '80s', reflecting their range. Fans of Nova enjoy Duran Duran, who share similar tags. "
        "Their sound mixes JAZZ chords with synthpop hooks and female vocalists.",
        "A Sci-Fi thriller about jazzmen in space.",
        "No labels here.",
    ]
    stripped = strip_tag_words(texts, tags)
    assert stripped[0] == "Nova is a act from the 1980s. Their sound mixes chords with hooks and."
    assert "tagged" not in stripped[0] and "Duran" not in stripped[0]  # both tag sentences gone
    assert stripped[1] == "A thriller about jazzmen in space."  # whole words only: "jazzmen" stays
    assert stripped[2] == "No labels here."
    assert strip_tag_words(texts, []) == texts
