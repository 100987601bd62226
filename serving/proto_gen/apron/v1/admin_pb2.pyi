from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadModelRequest(_message.Message):
    __slots__ = ("version", "pin", "candidate_version", "candidate_share")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SHARE_FIELD_NUMBER: _ClassVar[int]
    version: int
    pin: bool
    candidate_version: int
    candidate_share: float
    def __init__(self, version: _Optional[int] = ..., pin: _Optional[bool] = ..., candidate_version: _Optional[int] = ..., candidate_share: _Optional[float] = ...) -> None: ...

class GetModelStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServedVersion(_message.Message):
    __slots__ = ("version", "role", "share")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    version: int
    role: str
    share: float
    def __init__(self, version: _Optional[int] = ..., role: _Optional[str] = ..., share: _Optional[float] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("serving", "pinned", "available_versions", "last_error", "backend")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    serving: _containers.RepeatedCompositeFieldContainer[ServedVersion]
    pinned: bool
    available_versions: _containers.RepeatedScalarFieldContainer[int]
    last_error: str
    backend: str
    def __init__(self, serving: _Optional[_Iterable[_Union[ServedVersion, _Mapping]]] = ..., pinned: _Optional[bool] = ..., available_versions: _Optional[_Iterable[int]] = ..., last_error: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...
