"""The `Profile` message of a response, built from one byte template per model instead of 80
`PrototypeWeight` messages per call.

Every response carries the user's profile (K prototype entries: name, share, base share, the
prototype's item id, its edit). Building K messages field by field in Python costs ~0.2-0.3 ms per
response at K = 80, most of a cached Recommend's own CPU. Only two numbers per entry change between
calls, so the encoder serializes the K entries once with sentinel values and, per call, writes the
shares into the template's bytes (protobuf's wire format stores a `double` as 8 little-endian
bytes after its tag byte) and parses the result: one numpy scatter and one C-level parse.

A repeated field's bytes are its entries' bytes one after another, so a Recommend that asks for
the top n prototypes only (`ProfileSelection`, RecommendRequest.profile_view) gets the byte ranges
of those n entries, in share order, parsed the same way.

A kept profile copy's response profile is built once (`ProfileRecord.memo`) and sent many times, so
it is kept encoded too (`EncodedProfile`): a response that carries it (`Reply`) is its other fields,
serialized per call, followed by the profile's bytes as its field. A message's fields may come in
any order on the wire and every parser reads them alike, so grpc sends what a client would parse
from the whole message, without copying the K entries into each response and serializing them again
(`python -m benchmarks.reply_encoding`, K = 80, k = 10, the 2-core machine, 2026-12-04: 11.8 µs
per response that way, 5.6 µs as a Reply).
`tests/serving/test_profile_encoding.py` checks all of it against the field-by-field message.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import Message

from serving.proto_gen.apron.v1 import recommender_pb2 as pb

# Values that cannot be a share (shares are in [0, 1]), so their bytes only occur where they were put.
_WEIGHT_SENTINEL = -1234.5678125
_BASE_SENTINEL = -8765.4321875
_FIXED64 = 1  # wire type of a double
_LENGTH_DELIMITED = 2  # wire type of a message field


def _field_key(number: int) -> bytes:
    return bytes([number << 3 | _FIXED64])  # fields 2 and 3: one-byte keys


@dataclass(frozen=True)
class ProfileSelection:
    """Which prototypes a response's profile lists (RecommendRequest.profile_view)."""

    shown: bool  # False: no profile at all
    top_n: int | None = None  # None: every prototype in prototype order; n: the n largest shares, largest first


ALL_PROTOTYPES = ProfileSelection(True)
NO_PROFILE = ProfileSelection(False)


class ProfileEncoder:
    """`encode(weight, base, history_length, edits)` -> `pb.Profile` for one model's prototypes
    (distinct tag names, as the export guarantees)."""

    def __init__(self, tag_names: Sequence[str], prototype_item_ids: Sequence[str]):
        self._index = {tag: k for k, tag in enumerate(tag_names)}
        entries = [
            pb.Profile(
                weights=[pb.PrototypeWeight(prototype=tag, weight=_WEIGHT_SENTINEL, base_weight=_BASE_SENTINEL, prototype_item_id=item)]
            ).SerializeToString()
            for tag, item in zip(tag_names, prototype_item_ids, strict=True)
        ]  # each entry with its field key and length: the template is their concatenation
        template = b"".join(entries)
        lengths = [len(entry) for entry in entries]
        ends = np.cumsum(lengths).tolist()
        self._ranges = [(end - length, end) for end, length in zip(ends, lengths, strict=True)]  # each entry's bytes
        weight_field = pb.PrototypeWeight.DESCRIPTOR.fields_by_name["weight"].number
        base_field = pb.PrototypeWeight.DESCRIPTOR.fields_by_name["base_weight"].number
        weight_at = _offsets(template, _field_key(weight_field) + struct.pack("<d", _WEIGHT_SENTINEL))
        base_at = _offsets(template, _field_key(base_field) + struct.pack("<d", _BASE_SENTINEL))
        if len(weight_at) != len(self._index) or len(base_at) != len(self._index):
            raise RuntimeError("profile template: the sentinel values were not found once per prototype")
        byte = np.arange(8)
        self._weight_bytes = (np.asarray(weight_at) + 1)[:, None] + byte  # (K, 8) positions of each double
        self._base_bytes = (np.asarray(base_at) + 1)[:, None] + byte  # (K, 8)
        self._template = np.frombuffer(template, dtype=np.uint8)

    def encode(
        self, weight: np.ndarray, base: np.ndarray, history_length: int, edits: Mapping[str, pb.Edit], top_n: int | None = None
    ) -> pb.Profile:
        """weight, base: (K,) shares in prototype order; `edits`: the edit shown on each edited
        prototype, by tag name (tags this model lacks are skipped); `top_n`: list only the n
        prototypes with the largest `weight`, largest first (equal shares in prototype order)."""
        encoded = self._template.copy()
        encoded[self._weight_bytes] = np.ascontiguousarray(weight, dtype="<f8").view(np.uint8).reshape(-1, 8)
        encoded[self._base_bytes] = np.ascontiguousarray(base, dtype="<f8").view(np.uint8).reshape(-1, 8)
        data = encoded.tobytes()
        position = self._index  # tag -> its entry in the message
        if top_n is not None:
            order = np.argsort(-np.asarray(weight), kind="stable")[:top_n].tolist()
            data = b"".join([data[self._ranges[k][0] : self._ranges[k][1]] for k in order])
            shown = {k: i for i, k in enumerate(order)}
            position = {tag: shown[k] for tag, k in self._index.items() if k in shown}
        profile = pb.Profile.FromString(data)
        profile.history_length = history_length
        for tag, edit in edits.items():
            i = position.get(tag)
            if i is not None:
                profile.weights[i].edit.CopyFrom(edit)
        return profile


def _offsets(data: bytes, pattern: bytes) -> list[int]:
    found, start = [], data.find(pattern)
    while start >= 0:
        found.append(start)
        start = data.find(pattern, start + 1)
    return found


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class EncodedProfile:
    """A response's profile as a message (what HTTP/JSON and the field-by-field checks read) and as
    the bytes of its serialization, built once per kept copy, edits and view; never changed."""

    __slots__ = ("_fields", "data", "message")

    def __init__(self, message: pb.Profile):
        self.message = message
        self.data = message.SerializeToString()
        self._fields: dict[int, bytes] = {}

    def as_field(self, number: int) -> bytes:
        """The profile as field `number` of a response: its key, its length, its bytes."""
        field = self._fields.get(number)
        if field is None:
            field = self._fields[number] = _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(self.data)) + self.data
        return field


# the number of the field `profile` in each response that can carry one (a Reply's head)
PROFILE_FIELD = {
    kind: kind.DESCRIPTOR.fields_by_name["profile"].number
    for kind in (pb.RecommendResponse, pb.GetProfileResponse, pb.EditProfileResponse)
}


class Reply:
    """A response (RecommendResponse, GetProfileResponse, EditProfileResponse) whose profile is
    already encoded: `head` holds every other field, `profile` (None: no profile) goes out after
    them as the response's field `profile`. `SerializeToString` is what grpc sends
    (`serialize`, the servicer's response serializer); `message()` is the whole response as one
    message."""

    __slots__ = ("head", "profile")

    def __init__(self, head: Message, profile: EncodedProfile | None):
        self.head = head
        self.profile = profile

    def SerializeToString(self) -> bytes:  # noqa: N802  # the name grpc and protobuf use
        data = self.head.SerializeToString()
        if self.profile is None:
            return data
        return data + self.profile.as_field(PROFILE_FIELD[type(self.head)])

    def message(self) -> Message:
        return type(self.head).FromString(self.SerializeToString())


def serialize(response: Message | Reply) -> bytes:
    """grpc's response serializer for the gateway's methods: a message, or a Reply."""
    return response.SerializeToString()
