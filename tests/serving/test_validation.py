"""Request validation (serving/validation.py): every mistake names its field."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.edits import EditSpec
from serving.errors import InvalidArgument
from serving.profile_encoding import ALL_PROTOTYPES, NO_PROFILE, ProfileSelection
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.topk import select_top_k
from serving.validation import (
    MAX_ITEM_ID_BYTES,
    MAX_PROTOTYPE_NAME_BYTES,
    MAX_USER_ID_BYTES,
    PROFILE_VIEWS,
    check_catalog_names,
    largest_request_bytes,
    validate_edits,
    validate_history,
    validate_k,
    validate_profile_view,
    validate_user_id,
)

TAGS = {"jazz": 0, "rock": 1}


@pytest.mark.parametrize(
    ("user_id", "match"), [("", "user_id is required"), ("   ", "user_id is required"), ("a" * 300, "300 bytes"), ("a\nb", "control"), ("a\x7fb", "control"), ("a\x85b", "control"), ("}alice", "must not begin with '}'")]
)
def test_bad_user_ids(user_id: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        validate_user_id(user_id)


def test_k_range() -> None:
    assert validate_k(1, 10) == 1 and validate_k(10, 10) == 10
    for k in (0, -3, 11):
        with pytest.raises(InvalidArgument, match=r"k must be in \[1, 10\]"):
            validate_k(k, 10)


def test_history_size_limit() -> None:
    validate_history(["a"] * 5, 5)
    with pytest.raises(InvalidArgument, match="6 items; at most 5"):
        validate_history(["a"] * 6, 5)
    validate_history(["a" * MAX_ITEM_ID_BYTES, "é" * (MAX_ITEM_ID_BYTES // 2)], 5)
    with pytest.raises(InvalidArgument, match=rf"history\[1\] is {MAX_ITEM_ID_BYTES + 2} bytes"):
        validate_history(["a", "é" * (MAX_ITEM_ID_BYTES // 2 + 1)], 5)


@pytest.mark.parametrize(("max_history", "max_edits"), [(10_000, 256), (64, 8), (0, 0), (1, 1)])
def test_largest_request_bytes_is_the_largest_valid_request(max_history: int, max_edits: int) -> None:
    """The default message size limit: exactly the size of the largest request validation accepts
    (every scalar at its widest encoding), so no valid request is refused by size."""
    edits = [pb.Edit(prototype="p" * MAX_PROTOTYPE_NAME_BYTES, scale=1.0) for _ in range(max_edits)]
    largest = pb.RecommendRequest(
        user_id="u" * MAX_USER_ID_BYTES, history=["i" * MAX_ITEM_ID_BYTES] * max_history, k=-1, edits=edits,
        include_heard=True, profile_view=-1, profile_top_n=-1,
    )  # fmt: skip
    assert largest.ByteSize() == largest_request_bytes(max_history, max_edits)
    for other in (pb.EditProfileRequest(user_id=largest.user_id, edits=edits, reset=True), pb.GetProfileRequest(user_id=largest.user_id)):
        assert other.ByteSize() <= largest_request_bytes(max_history, max_edits)


def test_catalog_names_must_fit_the_request_limits() -> None:
    check_catalog_names(["i" * MAX_ITEM_ID_BYTES], ["t" * MAX_PROTOTYPE_NAME_BYTES])
    with pytest.raises(ValueError, match="item id"):
        check_catalog_names(["i" * (MAX_ITEM_ID_BYTES + 1)], ["t"])
    with pytest.raises(ValueError, match="prototype name"):
        check_catalog_names(["i"], ["é" * MAX_PROTOTYPE_NAME_BYTES])


def test_valid_edits() -> None:
    edits = validate_edits([("jazz", "scale", 0.0), ("rock", "weight", 0.4)], TAGS, 8)
    assert edits == {"jazz": EditSpec("jazz", "scale", 0.0), "rock": EditSpec("rock", "weight", 0.4)}


def test_prototype_names_match_regardless_of_case_when_unambiguous() -> None:
    edits = validate_edits([("Jazz", "scale", 0.5), ("ROCK", "weight", 0.2)], TAGS, 8)
    assert edits == {"jazz": EditSpec("jazz", "scale", 0.5), "rock": EditSpec("rock", "weight", 0.2)}  # the model's spelling
    with pytest.raises(InvalidArgument, match=r"edits\[1\]: prototype 'JAZZ' is edited twice"):
        validate_edits([("jazz", "scale", 0.5), ("JAZZ", "scale", 0.2)], TAGS, 8)
    both = {"Rock": 0, "rock": 1, "jazz": 2}
    assert validate_edits([("rock", "scale", 0.5)], both, 8) == {"rock": EditSpec("rock", "scale", 0.5)}  # exact wins
    with pytest.raises(InvalidArgument, match=r"'ROCK' is ambiguous: the model has 'Rock', 'rock'"):
        validate_edits([("ROCK", "scale", 0.5)], both, 8)


def test_an_unknown_prototype_gets_the_closest_names() -> None:
    tags = {"jazz": 0, "rock": 1, "hip-hop": 2, "Hard Rock": 3}
    with pytest.raises(InvalidArgument, match=r"'hiphop' is not a prototype of this model; did you mean 'hip-hop'\? valid names"):
        validate_edits([("hiphop", "scale", 1.0)], tags, 8)
    with pytest.raises(InvalidArgument, match=r"'hard-rock' .*did you mean 'Hard Rock'"):
        validate_edits([("hard-rock", "scale", 1.0)], tags, 8)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (("polka", "scale", 1.0), r"edits\[0\]\.prototype 'polka' is not a prototype.*valid names: jazz, rock"),
        (("", "scale", 1.0), r"edits\[0\]\.prototype is required"),
        (("jazz", None, math.nan), "must set `scale` or `weight`"),
        (("jazz", "scale", math.nan), "finite"),
        (("jazz", "scale", math.inf), "finite"),
        (("jazz", "scale", -0.5), r"scale \(jazz\) must be >= 0"),
        (("jazz", "weight", 1.5), r"weight \(jazz\) is a share and must be in \[0, 1\]"),
        (("jazz", "weight", -0.1), r"must be in \[0, 1\]"),
    ],
)
def test_bad_edits(edit: tuple, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        validate_edits([edit], TAGS, 8)


def test_edit_set_rules() -> None:
    with pytest.raises(InvalidArgument, match="edited twice"):
        validate_edits([("jazz", "scale", 1.0), ("jazz", "weight", 0.2)], TAGS, 8)
    with pytest.raises(InvalidArgument, match="sum to 1.3"):
        validate_edits([("jazz", "weight", 0.8), ("rock", "weight", 0.5)], TAGS, 8)
    with pytest.raises(InvalidArgument, match="3 edits in one request; at most 2"):
        validate_edits([("jazz", "scale", 1.0)] * 3, TAGS, 2)


def test_top_k_drops_excluded_and_cuts() -> None:
    ids = np.array([5, 3, 9, 1, 0])
    scores = np.array([-1.0, -2.0, -3.0, -np.inf, -np.inf], dtype=np.float32)
    got_ids, got_scores = select_top_k(ids, scores, 4)
    assert got_ids.tolist() == [5, 3, 9] and np.isfinite(got_scores).all()
    assert select_top_k(ids, scores, 2)[0].tolist() == [5, 3]


def test_profile_views_are_the_protos() -> None:
    assert {value.name: value.number for value in pb.ProfileView.DESCRIPTOR.values} == PROFILE_VIEWS


def test_profile_view() -> None:
    assert validate_profile_view(pb.PROFILE_VIEW_UNSPECIFIED, 0) == ALL_PROTOTYPES  # today's behaviour
    assert validate_profile_view(pb.PROFILE_VIEW_ALL, 0) == ALL_PROTOTYPES
    assert validate_profile_view(pb.PROFILE_VIEW_NONE, 0) == NO_PROFILE
    assert validate_profile_view(pb.PROFILE_VIEW_TOP, 5) == ProfileSelection(True, 5)
    for view, top_n, match in [
        (4, 0, "profile_view 4 is not one of"),
        (-1, 0, "profile_view -1 is not one of"),
        (pb.PROFILE_VIEW_TOP, 0, "profile_top_n must be at least 1"),
        (pb.PROFILE_VIEW_TOP, -2, "profile_top_n must be at least 1"),
        (pb.PROFILE_VIEW_ALL, 3, "only applies with profile_view PROFILE_VIEW_TOP"),
        (pb.PROFILE_VIEW_UNSPECIFIED, 1, "only applies with profile_view PROFILE_VIEW_TOP"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            validate_profile_view(view, top_n)
