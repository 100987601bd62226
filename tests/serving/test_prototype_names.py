"""Prototype names in a real gateway's edits: another case resolves to the model's spelling (what
is stored and reported), an unknown name gets INVALID_ARGUMENT with the closest names."""

from __future__ import annotations

import grpc
import pytest

from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from tests.serving.conftest import Gateway


async def test_prototype_names_ignore_case_and_suggest(ort_gateway: Gateway, user_id: str) -> None:
    stub = ort_gateway.stub
    edited = await stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True, edits=[pb.Edit(prototype="TAG1", scale=0.5)]))
    assert [edit.prototype for edit in edited.stored_edits] == ["tag1"]
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tagg1", scale=0.5)]))
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "did you mean 'tag1'" in unknown.value.details()
