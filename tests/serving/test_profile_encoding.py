"""The byte-template Profile encoder and the replies that send its bytes (serving/profile_encoding.py)
against the field-by-field messages."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import Message

from serving.profile_encoding import EncodedProfile, ProfileEncoder, Reply, serialize
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


def heads() -> list[Message]:
    """One response of each kind that carries a profile, every other field set (some numbered
    after the profile's field, so the reply's bytes are not in field order)."""
    edits = [pb.Edit(prototype="jazz", scale=0.5), pb.Edit(prototype="gone", weight=0.2)]
    return [
        pb.RecommendResponse(
            items=[pb.ScoredItem(item_id="track-1", score=0.25, name="One"), pb.ScoredItem(item_id="t-ü", score=-1.5)],
            model_version=7, profile_from_cache=True, ignored_history_items=2, unapplied_edits=["gone"],
        ),
        pb.GetProfileResponse(stored_edits=edits, model_version=7, unapplied_edits=["gone"]),
        pb.EditProfileResponse(stored_edits=edits, model_version=7, unapplied_edits=["gone"]),
    ]  # fmt: skip


@pytest.mark.parametrize("kind", range(3))
@pytest.mark.parametrize("top_n", [None, 2])
def test_a_reply_sends_what_the_whole_message_would(kind: int, top_n: int | None) -> None:
    encoder = ProfileEncoder(TAGS, ITEMS)  # with "x" * 300 the profile's length takes two bytes
    weight = np.array([0.1, 0.3, 0.1, 0.0, 0.45, 0.05])
    profile = encoder.encode(weight, weight, 11, {"jazz": pb.Edit(prototype="jazz", scale=0.5)}, top_n=top_n)
    head = heads()[kind]
    whole = type(head)()
    whole.CopyFrom(head)
    whole.profile.CopyFrom(profile)
    reply = Reply(head, EncodedProfile(profile))
    data = serialize(reply)
    assert type(head).FromString(data) == whole
    assert reply.message() == whole
    assert data.startswith(head.SerializeToString())  # the head as it is, the profile after it
    assert not head.HasField("profile")  # the head is not changed
    assert serialize(whole) == whole.SerializeToString()  # a plain message goes out as before


def test_a_reply_without_a_profile_is_its_head_and_an_empty_profile_is_still_there() -> None:
    for head in heads():
        assert serialize(Reply(head, None)) == head.SerializeToString()
        assert not Reply(head, None).message().HasField("profile")
        empty = Reply(head, EncodedProfile(pb.Profile())).message()
        assert empty.HasField("profile") and empty.profile == pb.Profile()
