from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProfileView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROFILE_VIEW_UNSPECIFIED: _ClassVar[ProfileView]
    PROFILE_VIEW_ALL: _ClassVar[ProfileView]
    PROFILE_VIEW_TOP: _ClassVar[ProfileView]
    PROFILE_VIEW_NONE: _ClassVar[ProfileView]
PROFILE_VIEW_UNSPECIFIED: ProfileView
PROFILE_VIEW_ALL: ProfileView
PROFILE_VIEW_TOP: ProfileView
PROFILE_VIEW_NONE: ProfileView

class Edit(_message.Message):
    __slots__ = ("prototype", "scale", "weight")
    PROTOTYPE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    prototype: str
    scale: float
    weight: float
    def __init__(self, prototype: _Optional[str] = ..., scale: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "history", "k", "edits", "include_heard", "profile_view", "profile_top_n")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HEARD_FIELD_NUMBER: _ClassVar[int]
    PROFILE_VIEW_FIELD_NUMBER: _ClassVar[int]
    PROFILE_TOP_N_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history: _containers.RepeatedScalarFieldContainer[str]
    k: int
    edits: _containers.RepeatedCompositeFieldContainer[Edit]
    include_heard: bool
    profile_view: ProfileView
    profile_top_n: int
    def __init__(self, user_id: _Optional[str] = ..., history: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., edits: _Optional[_Iterable[_Union[Edit, _Mapping]]] = ..., include_heard: _Optional[bool] = ..., profile_view: _Optional[_Union[ProfileView, str]] = ..., profile_top_n: _Optional[int] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "name")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    name: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., name: _Optional[str] = ...) -> None: ...

class PrototypeWeight(_message.Message):
    __slots__ = ("prototype", "weight", "base_weight", "prototype_item_id", "edit")
    PROTOTYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BASE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPE_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EDIT_FIELD_NUMBER: _ClassVar[int]
    prototype: str
    weight: float
    base_weight: float
    prototype_item_id: str
    edit: Edit
    def __init__(self, prototype: _Optional[str] = ..., weight: _Optional[float] = ..., base_weight: _Optional[float] = ..., prototype_item_id: _Optional[str] = ..., edit: _Optional[_Union[Edit, _Mapping]] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("weights", "history_length")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.RepeatedCompositeFieldContainer[PrototypeWeight]
    history_length: int
    def __init__(self, weights: _Optional[_Iterable[_Union[PrototypeWeight, _Mapping]]] = ..., history_length: _Optional[int] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "profile", "model_version", "profile_from_cache", "ignored_history_items", "unapplied_edits")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    IGNORED_HISTORY_ITEMS_FIELD_NUMBER: _ClassVar[int]
    UNAPPLIED_EDITS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    profile: Profile
    model_version: int
    profile_from_cache: bool
    ignored_history_items: int
    unapplied_edits: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., profile: _Optional[_Union[Profile, _Mapping]] = ..., model_version: _Optional[int] = ..., profile_from_cache: _Optional[bool] = ..., ignored_history_items: _Optional[int] = ..., unapplied_edits: _Optional[_Iterable[str]] = ...) -> None: ...

class EditProfileRequest(_message.Message):
    __slots__ = ("user_id", "edits", "reset")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    edits: _containers.RepeatedCompositeFieldContainer[Edit]
    reset: bool
    def __init__(self, user_id: _Optional[str] = ..., edits: _Optional[_Iterable[_Union[Edit, _Mapping]]] = ..., reset: _Optional[bool] = ...) -> None: ...

class EditProfileResponse(_message.Message):
    __slots__ = ("profile", "stored_edits", "model_version", "unapplied_edits")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    STORED_EDITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNAPPLIED_EDITS_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    stored_edits: _containers.RepeatedCompositeFieldContainer[Edit]
    model_version: int
    unapplied_edits: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ..., stored_edits: _Optional[_Iterable[_Union[Edit, _Mapping]]] = ..., model_version: _Optional[int] = ..., unapplied_edits: _Optional[_Iterable[str]] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetProfileResponse(_message.Message):
    __slots__ = ("profile", "stored_edits", "model_version", "unapplied_edits")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    STORED_EDITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNAPPLIED_EDITS_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    stored_edits: _containers.RepeatedCompositeFieldContainer[Edit]
    model_version: int
    unapplied_edits: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ..., stored_edits: _Optional[_Iterable[_Union[Edit, _Mapping]]] = ..., model_version: _Optional[int] = ..., unapplied_edits: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPrototypesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Prototype(_message.Message):
    __slots__ = ("name", "group", "item_id", "item_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    group: str
    item_id: str
    item_name: str
    def __init__(self, name: _Optional[str] = ..., group: _Optional[str] = ..., item_id: _Optional[str] = ..., item_name: _Optional[str] = ...) -> None: ...

class ListPrototypesResponse(_message.Message):
    __slots__ = ("prototypes", "model_version", "k_max")
    PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    K_MAX_FIELD_NUMBER: _ClassVar[int]
    prototypes: _containers.RepeatedCompositeFieldContainer[Prototype]
    model_version: int
    k_max: int
    def __init__(self, prototypes: _Optional[_Iterable[_Union[Prototype, _Mapping]]] = ..., model_version: _Optional[int] = ..., k_max: _Optional[int] = ...) -> None: ...

class SearchItemsRequest(_message.Message):
    __slots__ = ("query", "limit")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    query: str
    limit: int
    def __init__(self, query: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class CatalogItem(_message.Message):
    __slots__ = ("item_id", "name")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    name: str
    def __init__(self, item_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SearchItemsResponse(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CatalogItem]
    model_version: int
    def __init__(self, items: _Optional[_Iterable[_Union[CatalogItem, _Mapping]]] = ..., model_version: _Optional[int] = ...) -> None: ...
