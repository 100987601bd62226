"""The byte-template Profile encoder (serving/profile_encoding.py) against the field-by-field message."""

from __future__ import annotations

import numpy as np
import pytest

from serving.profile_encoding import ProfileEncoder
from serving.proto_gen.apron.v1 import recommender_pb2 as pb

TAGS = ["rock", "jazz", "späti-pop", "", "x" * 300, "mood/calm"]  # unicode, empty, a multi-byte length
ITEMS = ["track-1", "", "track-ü", "t" * 200, "track-5", "track-6"]


def field_by_field(weight: np.ndarray, base: np.ndarray, length: int, edits: dict[str, pb.Edit]) -> pb.Profile:
    profile = pb.Profile(history_length=length)
    for k, (tag, item) in enumerate(zip(TAGS, ITEMS, strict=True)):
        entry = profile.weights.add(prototype=tag, weight=float(weight[k]), base_weight=float(base[k]), prototype_item_id=item)
        if tag in edits:
            entry.edit.CopyFrom(edits[tag])
    return profile


@pytest.mark.parametrize("seed", range(5))
def test_the_encoded_profile_is_the_field_by_field_message(seed: int) -> None:
    rng = np.random.default_rng(seed)
    encoder = ProfileEncoder(TAGS, ITEMS)
    weight, base = rng.dirichlet(np.ones(len(TAGS))), rng.dirichlet(np.ones(len(TAGS)))
    weight[seed % len(TAGS)] = 0.0  # a removed prototype: proto3 leaves a zero out of the bytes
    edits = {"jazz": pb.Edit(prototype="jazz", scale=0.0), "mood/calm": pb.Edit(prototype="mood/calm", weight=0.5)}
    edits = dict(list(edits.items())[: seed % 3])
    expected = field_by_field(weight, base, 17 + seed, edits)
    got = encoder.encode(weight, base, 17 + seed, edits)
    assert got == expected
    assert pb.Profile.FromString(got.SerializeToString()) == expected
    assert [e.weight for e in got.weights] == weight.tolist()  # exact doubles, no rounding


def test_edits_of_tags_the_model_lacks_are_not_shown() -> None:
    encoder = ProfileEncoder(TAGS, ITEMS)
    shares = np.full(len(TAGS), 1 / len(TAGS))
    got = encoder.encode(shares, shares, 3, {"gone": pb.Edit(prototype="gone", scale=2.0)})
    assert got == field_by_field(shares, shares, 3, {})


def test_a_fresh_message_every_call() -> None:
    encoder = ProfileEncoder(TAGS, ITEMS)
    ones, zeros = np.ones(len(TAGS)), np.zeros(len(TAGS))
    first = encoder.encode(ones, ones, 1, {})
    encoder.encode(zeros, zeros, 2, {})
    assert [e.weight for e in first.weights] == [1.0] * len(TAGS) and first.history_length == 1


@pytest.mark.parametrize("top_n", [1, 3, len(TAGS), len(TAGS) + 5])
def test_the_top_n_view_lists_the_largest_shares_first(top_n: int) -> None:
    encoder = ProfileEncoder(TAGS, ITEMS)
    weight = np.array([0.1, 0.3, 0.1, 0.0, 0.45, 0.05])  # ties (0.1) keep prototype order
    base = np.array([0.2, 0.2, 0.2, 0.1, 0.2, 0.1])
    edits = {"jazz": pb.Edit(prototype="jazz", scale=3.0), "": pb.Edit(prototype="", scale=0.0)}
    full = field_by_field(weight, base, 9, edits)
    order = [4, 1, 0, 2, 5, 3][:top_n]
    got = encoder.encode(weight, base, 9, edits, top_n=top_n)
    assert list(got.weights) == [full.weights[k] for k in order]  # edits follow their prototype
    assert got.history_length == 9
    assert pb.Profile.FromString(got.SerializeToString()) == got
