"""Request validation: pure functions that raise `InvalidArgument` with a message naming the field.

They take plain values (no protobuf, no gRPC), so they are unit-tested directly; the servicer
converts messages and calls them before anything touches Redis or a model.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence

from serving.edits import EDIT_KINDS, EditSpec, value_problem
from serving.errors import InvalidArgument
from serving.profile_encoding import ALL_PROTOTYPES, NO_PROFILE, ProfileSelection

MAX_USER_ID_BYTES = 256
# The longest catalog item id (a history entry) and prototype (tag) name: a model whose catalog holds
# longer ones is refused at load (`check_catalog_names`), so these bound every valid request's size.
MAX_ITEM_ID_BYTES = 128
MAX_PROTOTYPE_NAME_BYTES = 128
# Listing every valid prototype name is helpful for a few dozen tags and useless for thousands.
MAX_NAMES_LISTED = 100
# recommender.proto's ProfileView numbers (tests/serving/test_validation.py checks them against it)
PROFILE_VIEWS = {"PROFILE_VIEW_UNSPECIFIED": 0, "PROFILE_VIEW_ALL": 1, "PROFILE_VIEW_TOP": 2, "PROFILE_VIEW_NONE": 3}


# Unicode's control characters (category Cc: C0, DEL and C1), as one compiled class: every call's user_id
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def validate_user_id(user_id: str) -> str:
    if not user_id or not user_id.strip():
        raise InvalidArgument("user_id is required (got an empty string)")
    if len(user_id.encode()) > MAX_USER_ID_BYTES:
        raise InvalidArgument(f"user_id is {len(user_id.encode())} bytes; at most {MAX_USER_ID_BYTES} are allowed")
    if CONTROL_CHARACTERS.search(user_id):
        raise InvalidArgument("user_id must not contain control characters")
    if user_id[0] == "}":  # the Redis keys hold the id as their hash tag, `{<id>}`: this one would be empty
        raise InvalidArgument("user_id must not begin with '}' (a Redis Cluster store places a user's keys by the id between braces)")
    return user_id


def validate_k(k: int, k_max: int) -> int:
    if not 1 <= k <= k_max:
        raise InvalidArgument(f"k must be in [1, {k_max}] (the served model's k_max), got {k}")
    return k


def validate_history(history: Sequence[str], max_history: int) -> Sequence[str]:
    if len(history) > max_history:
        raise InvalidArgument(f"history has {len(history)} items; at most {max_history} are allowed per request")
    if history and max(map(len, history)) * 4 > MAX_ITEM_ID_BYTES:  # UTF-8 takes at most 4 bytes a character
        for index, item in enumerate(history):
            if len(item.encode()) > MAX_ITEM_ID_BYTES:
                raise InvalidArgument(
                    f"history[{index}] is {len(item.encode())} bytes; catalog item ids have at most {MAX_ITEM_ID_BYTES}"
                )
    return history


def check_catalog_names(item_ids: Iterable[str], tag_names: Iterable[str]) -> None:
    """ValueError unless every catalog id and prototype name fits the request limits above (a model
    with longer ones could not be asked for them, and the message size limit would not hold)."""
    for what, names, limit in (("item id", item_ids, MAX_ITEM_ID_BYTES), ("prototype name", tag_names, MAX_PROTOTYPE_NAME_BYTES)):
        longest = max(names, key=lambda name: len(name.encode()), default="")
        if len(longest.encode()) > limit:
            raise ValueError(f"the model's {what} {longest[:40]!r}... is {len(longest.encode())} bytes; at most {limit} are served")


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field_bytes(payload_bytes: int) -> int:
    """A length-delimited field numbered below 16: its tag byte, the length varint, the payload."""
    return 1 + _varint_bytes(payload_bytes) + payload_bytes


INT32_FIELD_BYTES = 1 + 10  # the tag, and a varint of any int32 (a negative one takes 10 bytes)
DOUBLE_FIELD_BYTES = 1 + 8


def largest_request_bytes(max_history: int, max_edits: int) -> int:
    """The serialized size of the largest request validation can accept: a RecommendRequest (the
    largest message of every service) with the longest user id, `max_history` ids of the longest
    item id, `max_edits` edits of the longest prototype name, and every scalar at its widest. The
    gateway's default gRPC receive limit (`--max-message-bytes 0`): 1.35 MB with the defaults."""
    edit = _field_bytes(MAX_PROTOTYPE_NAME_BYTES) + DOUBLE_FIELD_BYTES
    return (
        _field_bytes(MAX_USER_ID_BYTES)  # user_id
        + max_history * _field_bytes(MAX_ITEM_ID_BYTES)  # history
        + INT32_FIELD_BYTES  # k
        + max_edits * _field_bytes(edit)  # edits
        + 2  # include_heard
        + INT32_FIELD_BYTES  # profile_view (an enum is an int32 on the wire)
        + INT32_FIELD_BYTES  # profile_top_n
    )


def _valid_names(tag_names: Iterable[str]) -> str:
    names = list(tag_names)
    listed = ", ".join(names[:MAX_NAMES_LISTED])
    more = f" (and {len(names) - MAX_NAMES_LISTED} more; see ListPrototypes)" if len(names) > MAX_NAMES_LISTED else ""
    return listed + more


def resolve_prototype(where: str, prototype: str, tag_index: Mapping[str, int]) -> str:
    """The model's own spelling of `prototype`: itself, or the one tag that differs from it only in
    case ("Jazz" -> "jazz"); none or several: InvalidArgument naming the closest names."""
    if prototype in tag_index:
        return prototype
    folded = prototype.casefold()
    same = [tag for tag in tag_index if tag.casefold() == folded]
    if len(same) == 1:
        return same[0]
    if same:
        raise InvalidArgument(f"{where}.prototype {prototype!r} is ambiguous: the model has {', '.join(map(repr, same))}; use one of them")
    by_folded = {tag.casefold(): tag for tag in tag_index}
    close = [by_folded[name] for name in difflib.get_close_matches(folded, list(by_folded), n=3, cutoff=0.6)]
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise InvalidArgument(f"{where}.prototype {prototype!r} is not a prototype of this model; {hint}valid names: {_valid_names(tag_index)}")


def validate_edit(index: int, prototype: str, kind: str | None, value: float, tag_index: Mapping[str, int]) -> EditSpec:
    """One edit; `index` is its position in the request's `edits` (for the message)."""
    where = f"edits[{index}]"
    if not prototype:
        raise InvalidArgument(f"{where}.prototype is required; valid names: {_valid_names(tag_index)}")
    if len(prototype) * 4 > MAX_PROTOTYPE_NAME_BYTES and len(prototype.encode()) > MAX_PROTOTYPE_NAME_BYTES:
        raise InvalidArgument(f"{where}.prototype is {len(prototype.encode())} bytes; prototype names have at most {MAX_PROTOTYPE_NAME_BYTES}")
    prototype = resolve_prototype(where, prototype, tag_index)
    if kind not in EDIT_KINDS:
        raise InvalidArgument(f"{where} ({prototype}) must set `scale` or `weight`")
    problem = value_problem(kind, value)
    if problem is not None:
        raise InvalidArgument(f"{where}.{kind} ({prototype}) {problem}")
    return EditSpec(prototype, kind, float(value))  # type: ignore[arg-type]


def validate_edits(
    edits: Sequence[tuple[str, str | None, float]], tag_index: Mapping[str, int], max_edits: int
) -> dict[str, EditSpec]:
    """(prototype, kind, value) triples -> edits by tag name; one edit per prototype per request."""
    if len(edits) > max_edits:
        raise InvalidArgument(f"{len(edits)} edits in one request; at most {max_edits} are allowed")
    result: dict[str, EditSpec] = {}
    for index, (prototype, kind, value) in enumerate(edits):
        edit = validate_edit(index, prototype, kind, value, tag_index)
        if edit.prototype in result:
            raise InvalidArgument(f"edits[{index}]: prototype {prototype!r} is edited twice in one request")
        result[edit.prototype] = edit
    total = sum(e.value for e in result.values() if e.kind == "weight")
    if total > 1 + 1e-9:
        raise InvalidArgument(f"the `weight` edits sum to {total:g}; shares can sum to at most 1")
    return result


def validate_profile_view(view: int, top_n: int) -> ProfileSelection:
    """RecommendRequest's (profile_view, profile_top_n) -> which prototypes the response lists."""
    if view not in PROFILE_VIEWS.values():
        raise InvalidArgument(f"profile_view {view} is not one of {', '.join(f'{n} ({v})' for n, v in PROFILE_VIEWS.items())}")
    if view == PROFILE_VIEWS["PROFILE_VIEW_TOP"]:
        if top_n < 1:
            raise InvalidArgument(f"profile_top_n must be at least 1 with PROFILE_VIEW_TOP, got {top_n}")
        return ProfileSelection(True, top_n)
    if top_n != 0:
        raise InvalidArgument(f"profile_top_n ({top_n}) only applies with profile_view PROFILE_VIEW_TOP; leave it 0")
    return NO_PROFILE if view == PROFILE_VIEWS["PROFILE_VIEW_NONE"] else ALL_PROTOTYPES
