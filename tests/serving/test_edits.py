"""Edit semantics on (H, K) profile weights (serving/edits.py): pure functions, no server."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from serving.edits import EditError, EditSpec, apply_edits, check_applicable, mean_shares, merge_edits, shares

TAGS = {"jazz": 0, "rock": 1, "80s": 2, "ambient": 3}


def scale(tag: str, value: float) -> EditSpec:
    return EditSpec(tag, "scale", value)


def weight(tag: str, value: float) -> EditSpec:
    return EditSpec(tag, "weight", value)


@pytest.fixture
def weights() -> np.ndarray:
    return np.array([[4.0, 2.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])  # (H=2, K=4)


def test_no_edits_gives_the_shares(weights: np.ndarray) -> None:
    result = apply_edits(weights, {}, TAGS)
    np.testing.assert_allclose(result, [[0.5, 0.25, 0.125, 0.125], [0.25] * 4])
    np.testing.assert_allclose(mean_shares(result), [0.375, 0.25, 0.1875, 0.1875])


def test_scale_zero_removes_and_redistributes_proportionally(weights: np.ndarray) -> None:
    result = apply_edits(weights, {"jazz": scale("jazz", 0.0)}, TAGS)
    np.testing.assert_allclose(result[:, 0], 0.0)
    # the others keep their ratios: head 0 had 2 : 1 : 1 -> 0.5, 0.25, 0.25
    np.testing.assert_allclose(result[0], [0.0, 0.5, 0.25, 0.25])
    np.testing.assert_allclose(result[1], [0.0, 1 / 3, 1 / 3, 1 / 3])


def test_scale_multiplies_weight_before_normalising(weights: np.ndarray) -> None:
    result = apply_edits(weights, {"rock": scale("rock", 3.0)}, TAGS)
    np.testing.assert_allclose(result[0], np.array([4, 6, 1, 1]) / 12)
    np.testing.assert_allclose(result[1], np.array([1, 3, 1, 1]) / 6)


def test_scales_near_the_float64_limit_give_the_same_shares_as_small_ones(weights: np.ndarray) -> None:
    """Any finite scale is valid; two near 1.8e308 overflow a head's mass unless formed relative to
    each other (a fuzzed EditProfile once reported a NaN share)."""
    huge = apply_edits(weights, {"jazz": scale("jazz", 1e308), "rock": scale("rock", 5e307)}, TAGS)
    small = apply_edits(weights, {"jazz": scale("jazz", 2.0), "rock": scale("rock", 1.0)}, TAGS)
    assert np.isfinite(huge).all()
    np.testing.assert_allclose(huge.sum(-1), 1.0)
    np.testing.assert_allclose(huge[:, :2] / huge[:, :2].sum(-1, keepdims=True), small[:, :2] / small[:, :2].sum(-1, keepdims=True))
    assert huge[:, 2:].max() < 1e-300  # the unscaled ones keep their (vanishing) shares, not NaN


def test_weight_sets_the_share_in_every_head_and_rescales_the_others(weights: np.ndarray) -> None:
    result = apply_edits(weights, {"80s": weight("80s", 0.6)}, TAGS)
    np.testing.assert_allclose(result[:, 2], 0.6)
    np.testing.assert_allclose(result.sum(-1), 1.0)
    # others keep their ratios within each head (4 : 2 : 1 in head 0)
    np.testing.assert_allclose(result[0, [0, 1, 3]], 0.4 * np.array([4, 2, 1]) / 7)
    assert mean_shares(result)[2] == pytest.approx(0.6)


def test_scales_apply_before_weights(weights: np.ndarray) -> None:
    result = apply_edits(weights, {"jazz": scale("jazz", 0.0), "rock": weight("rock", 0.5)}, TAGS)
    np.testing.assert_allclose(result[0], [0.0, 0.5, 0.25, 0.25])
    np.testing.assert_allclose(result[1], [0.0, 0.5, 0.25, 0.25])


def test_removing_every_prototype_is_rejected(weights: np.ndarray) -> None:
    with pytest.raises(EditError, match="remove every prototype"):
        apply_edits(weights, {t: scale(t, 0.0) for t in TAGS}, TAGS)


def test_weights_that_cannot_be_filled_are_rejected(weights: np.ndarray) -> None:
    edits = {"jazz": scale("jazz", 0.0), "rock": scale("rock", 0.0), "80s": scale("80s", 0.0), "ambient": weight("ambient", 0.5)}
    with pytest.raises(EditError, match="no other prototype"):
        apply_edits(weights, edits, TAGS)
    with pytest.raises(EditError, match="sum to 1.2"):
        apply_edits(weights, {"jazz": weight("jazz", 0.7), "rock": weight("rock", 0.5)}, TAGS)


def test_weights_summing_to_one_zero_the_others(weights: np.ndarray) -> None:
    result = apply_edits(weights, {"jazz": weight("jazz", 0.7), "rock": weight("rock", 0.3)}, TAGS)
    np.testing.assert_allclose(result, [[0.7, 0.3, 0.0, 0.0]] * 2)


def test_edits_of_unknown_tags_are_skipped(weights: np.ndarray) -> None:
    """Stored edits outlive model versions: a tag the model lacks changes nothing."""
    np.testing.assert_allclose(apply_edits(weights, {"polka": scale("polka", 0.0)}, TAGS), shares(weights))


def test_one_off_edits_override_stored_ones_for_the_same_tag() -> None:
    merged = merge_edits({"jazz": scale("jazz", 0.0), "rock": scale("rock", 2.0)}, {"jazz": weight("jazz", 0.3)})
    assert merged == {"jazz": weight("jazz", 0.3), "rock": scale("rock", 2.0)}


def test_edit_json_round_trip_and_rejects_garbage() -> None:
    edit = weight("jazz", 0.25)
    assert EditSpec.from_json("jazz", edit.to_json()) == edit
    with pytest.raises(ValueError, match="not a valid edit"):
        EditSpec.from_json("jazz", '{"kind": "boost", "value": 1}')


@pytest.mark.parametrize("text", [
    "5", "[]", '"scale"', "null", "{", b"\xff\xfe", '{"kind": "scale"}', '{"kind": "scale", "value": true}',
    '{"kind": "scale", "value": "2"}', '{"kind": "scale", "value": ' + "9" * 400 + "}", "[" * 100_000 + "]" * 100_000,
    '{"kind": "scale", "value": NaN}', '{"kind": "scale", "value": Infinity}', '{"kind": "scale", "value": 1e999}',
    '{"kind": "scale", "value": -1}', '{"kind": "weight", "value": 1.5}', '{"kind": "weight", "value": -0.1}',
])  # fmt: skip
def test_a_stored_value_another_writer_made_is_a_value_error_whatever_it_holds(text: str | bytes) -> None:
    """Stored edits are read on every call: anything a request could not have stored is a
    ValueError (the store skips it), never another exception and never a NaN or negative scale."""
    with pytest.raises(ValueError, match="stored edit for 'jazz'"):
        EditSpec.from_json("jazz", text)


@settings(max_examples=200, deadline=None)
@given(
    w=arrays(np.float64, (3, 5), elements=st.floats(0.01, 100.0)),
    scales=st.lists(st.one_of(st.just(0.0), st.floats(0.01, 10.0)), min_size=5, max_size=5),
    target=st.floats(0.0, 0.9),
)
def test_edited_heads_are_distributions(w: np.ndarray, scales: list[float], target: float) -> None:
    tags = {f"t{k}": k for k in range(5)}
    edits = {f"t{k}": scale(f"t{k}", s) for k, s in enumerate(scales[:4])}
    edits["t4"] = weight("t4", target)
    try:
        result = apply_edits(w, edits, tags)
    except EditError:
        assert all(s == 0 for s in scales[:4]) and target < 1  # the only way to leave no mass here
        return
    assert np.all(result >= 0)
    np.testing.assert_allclose(result.sum(-1), 1.0, atol=1e-9)
    np.testing.assert_allclose(result[:, 4], target, atol=1e-9)
    for k, s in enumerate(scales[:4]):
        if s == 0:
            assert np.all(result[:, k] == 0)


def test_a_head_left_with_only_the_profile_floor_has_no_mass() -> None:
    """The profile model floors every prototype at 1e-30; removing a head's only real weight leaves
    floors alone, which count as no mass (the error, not a uniform profile of floors)."""
    floored = np.array([[2.0, 1e-30, 1e-30, 1e-30], [1.0, 1.0, 1e-30, 1e-30]])
    with pytest.raises(EditError, match="remove every prototype"):
        apply_edits(floored, {"jazz": scale("jazz", 0.0)}, TAGS)
    kept = apply_edits(floored, {"80s": scale("80s", 0.0)}, TAGS)
    assert kept[0, 0] == pytest.approx(1.0) and kept[0, 2] == 0.0


EDIT_CHOICES = st.one_of(
    st.none(),
    st.builds(scale, st.just(""), st.sampled_from([0.0, 1e-9, 0.5, 3.0])),
    st.builds(weight, st.just(""), st.sampled_from([0.0, 0.25, 0.5, 1.0])),
)


@settings(max_examples=300, deadline=None)
@given(choices=st.lists(EDIT_CHOICES, min_size=4, max_size=4))
def test_a_set_is_refused_without_a_profile_exactly_when_no_profile_takes_it(choices: list[EditSpec | None]) -> None:
    """check_applicable (EditProfile before the user has a profile) refuses a set exactly when
    apply_edits refuses it for every profile: tried on each profile with weight on one prototype
    only (the others at the model's floor), and on a uniform one, which between them take every
    set some profile takes."""
    edits = {tag: EditSpec(tag, edit.kind, edit.value) for tag, edit in zip(TAGS, choices, strict=True) if edit is not None}
    if sum(e.value for e in edits.values() if e.kind == "weight") > 1:
        return  # refused before either check (check_set_weights)
    profiles = [np.full((2, 4), 1e-30) + np.eye(4)[k] * 5.0 for k in range(4)] + [np.ones((2, 4))]
    errors = []
    for profile in profiles:
        try:
            apply_edits(profile, edits, TAGS)
        except EditError as error:
            errors.append(str(error))
    try:
        check_applicable(edits, TAGS)
    except EditError as error:
        assert len(errors) == len(profiles), f"{edits}: refused, but a profile takes it"
        assert str(error) in errors  # the message a user with a profile gets
    else:
        assert len(errors) < len(profiles), f"{edits}: accepted, but no profile takes it"


def test_the_reviewers_sets_are_refused_without_a_profile_and_a_full_set_weight_is_not() -> None:
    with pytest.raises(EditError, match="remove every prototype"):
        check_applicable({t: scale(t, 0.0) for t in TAGS}, TAGS)
    half = {t: scale(t, 0.0) for t in TAGS} | {"jazz": weight("jazz", 0.5)}
    with pytest.raises(EditError, match="no other prototype has weight left to take the remaining 0.5"):
        check_applicable(half, TAGS)
    check_applicable(half | {"jazz": weight("jazz", 1.0)}, TAGS)  # a profile with weight on jazz takes it
    with pytest.raises(EditError):  # a tag the model lacks keeps no weight...
        check_applicable(half | {"polka": scale("polka", 1.0)}, TAGS)
    check_applicable(half | {"rock": scale("rock", 1e-9)}, TAGS)  # ...a tiny scale does
