"""Profile edits on `[H, K]` prototype weights (pure functions; semantics in recommender.proto).

The scorer only sees shares (each head's weights divided by their sum over K, DESIGN.md section 2),
so every edit is defined on shares:

- `scale: s` multiplies prototype k's weight in every head by s, before shares are formed; the
  other prototypes absorb the difference in proportion to their shares. s = 0 removes k.
- `weight: w` sets k's share to w in every head; the other prototypes are rescaled by
  (1 - sum of set shares) / (their current sum), so each head still sums to 1 and their ratios
  are kept.

Scales go first, then shares are formed, then set weights. The reported share of a prototype is
the mean over heads of its per-head shares (so reported shares also sum to 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

EditKind = Literal["scale", "weight"]
EDIT_KINDS: tuple[str, ...] = ("scale", "weight")
# Below this a head's remaining mass counts as none: float64 shares of removed prototypes are exact
# zeros, so only a genuinely empty head falls under it.
MIN_MASS = 1e-12


class EditError(ValueError):
    """The edits would leave a head with no mass, or ask for more than the whole head."""


@dataclass(frozen=True)
class EditSpec:
    prototype: str  # tag name: stored edits survive model upgrades that renumber prototypes
    kind: EditKind
    value: float

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "value": self.value}, allow_nan=False)

    @classmethod
    def from_json(cls, prototype: str, text: str | bytes) -> EditSpec:
        """A stored edit; ValueError for anything `to_json` would not have written (another writer's
        value): not JSON, not an object, an unknown kind, or a value a request could not set."""
        try:
            data = json.loads(text)
            kind, value = (data.get("kind"), data.get("value")) if isinstance(data, dict) else (None, None)
            if kind not in EDIT_KINDS or isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("not an edit")
            value = float(value)
        except (ValueError, TypeError, OverflowError, RecursionError):  # JSON and UTF-8 errors are ValueErrors
            raise ValueError(f"stored edit for {prototype!r} is not a valid edit: {text[:80]!r}") from None
        problem = value_problem(kind, value)
        if problem is not None:
            raise ValueError(f"stored edit for {prototype!r}: its {kind} {problem}")
        return cls(prototype, kind, value)


def value_problem(kind: str, value: float) -> str | None:
    """Why `value` cannot be a `kind` edit's value, or None: the one rule for a request's edits
    (validation.validate_edit) and for stored ones (`EditSpec.from_json`)."""
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if kind == "scale" and value < 0:
        return f"must be >= 0 (0 removes the prototype), got {value:g}"
    if kind == "weight" and not 0 <= value <= 1:
        return f"is a share and must be in [0, 1], got {value:g}"
    return None


def shares(weights: np.ndarray) -> np.ndarray:
    """(H, K) weights -> (H, K) shares; a head without mass keeps zero shares. A head's mass below
    MIN_MASS is none: the profile model floors every prototype at 1e-30 (export/served_model.py
    PROFILE_FLOOR), so a head whose real weight an edit removed holds only those floors."""
    weights = np.asarray(weights, dtype=np.float64)
    totals = weights.sum(axis=-1, keepdims=True)  # (H, 1)
    if totals.min() > MIN_MASS:  # the usual case, without the masked divide's cost (a per-request path)
        return weights / totals
    return np.divide(weights, totals, out=np.zeros_like(weights), where=totals > MIN_MASS)


def mean_shares(head_shares: np.ndarray) -> np.ndarray:
    """(H, K) per-head shares -> (K,) reported shares (mean over heads)."""
    return np.asarray(head_shares, dtype=np.float64).mean(axis=0)


def merge_edits(stored: Mapping[str, EditSpec], one_off: Mapping[str, EditSpec]) -> dict[str, EditSpec]:
    """Stored edits with one-off edits taking the place of the stored edit for the same prototype."""
    return {**stored, **one_off}


def check_set_weights(edits: Iterable[EditSpec]) -> float:
    """The sum of the shares `weight` edits set; EditError above 1 (no profile needed to tell)."""
    set_weights = [edit for edit in edits if edit.kind == "weight"]
    total = sum(edit.value for edit in set_weights)
    if total > 1 + 1e-9:
        names = ", ".join(f"{edit.prototype}={edit.value:g}" for edit in set_weights)
        raise EditError(f"set weights sum to {total:g} > 1 ({names})")
    return total


NOTHING_LEFT = "these edits remove every prototype that has weight in the profile"


def _nothing_takes_the_rest(target_total: float, remaining: float) -> str:
    return (
        f"set weights sum to {target_total:g} < 1, but no other prototype has weight left to take "
        f"the remaining {remaining:g}"
    )


def check_applicable(edits: Mapping[str, EditSpec], tag_index: Mapping[str, int]) -> None:
    """EditError, with `apply_edits`' message, when the edits cannot apply to any profile of a model
    with these tags (EditProfile of a user without a profile: stored, such a set would refuse every
    later call until a reset).

    Edits act alike in every head. A prototype with no edit or a scale > 0 (a tiny one too: some
    profile's weight outlasts it) keeps its weight, so a profile with weight there passes both of
    `apply_edits`' checks. Without one, only the set prototypes keep weight: no profile survives
    when the set weights leave a share for the others to fill (no set weight: all of it), and one
    with weight on the set prototypes does when they fill the whole head."""
    known = [edit for edit in edits.values() if edit.prototype in tag_index]
    removed = {edit.prototype for edit in known if edit.kind == "scale" and edit.value == 0}
    set_weights = [edit for edit in known if edit.kind == "weight"]
    set_tags = {edit.prototype for edit in set_weights}
    if any(tag not in removed and tag not in set_tags for tag in tag_index):
        return
    if not set_weights:
        raise EditError(NOTHING_LEFT)
    target_total = check_set_weights(set_weights)
    remaining = max(0.0, 1.0 - target_total)
    if remaining > MIN_MASS:
        raise EditError(_nothing_takes_the_rest(target_total, remaining))


def apply_edits(weights: np.ndarray, edits: Mapping[str, EditSpec], tag_index: Mapping[str, int]) -> np.ndarray:
    """(H, K) profile weights + edits by tag name -> (H, K) edited shares (float64, heads sum to 1).

    Edits naming tags this model does not have are skipped (stored edits outlive model versions;
    requests are validated against `tag_index` before they get here). Raises EditError when a
    head would be left without mass."""
    weights = np.asarray(weights, dtype=np.float64)  # (H, K)
    if not (weights.min() >= 0 and math.isfinite(weights.max())):  # NaN fails the first test, inf the second
        raise ValueError("profile weights must be finite and non-negative")
    known = [(tag_index[e.prototype], e) for e in edits.values() if e.prototype in tag_index]
    scales = {k: edit.value for k, edit in known if edit.kind == "scale"}
    if scales:
        scale = np.ones(weights.shape[-1])
        scale[list(scales)] = list(scales.values())
        with np.errstate(over="ignore"):
            scaled = weights * scale
            overflowed = ~np.isfinite(scaled.sum(axis=-1))  # (H,)
        if overflowed.any():
            # scales near float64's limit (validation allows any finite one) overflow a head's mass;
            # its shares do not change with a common factor, so such a head (a huge mass, never
            # "none") is formed from the scales relative to the largest, over its largest term
            relative = weights[overflowed] * (scale / scale.max())
            scaled[overflowed] = relative / relative.max(axis=-1, keepdims=True)
        weights = scaled
    edited = shares(weights)  # (H, K)
    if np.any(edited.sum(axis=-1) < MIN_MASS):
        raise EditError(NOTHING_LEFT)

    targets = {k: edit.value for k, edit in known if edit.kind == "weight"}
    if not targets:
        return edited
    set_mask = np.zeros(weights.shape[-1], dtype=bool)
    set_mask[list(targets)] = True
    target_total = check_set_weights([edit for _, edit in known])
    rest = edited[:, ~set_mask].sum(axis=-1, keepdims=True)  # (H, 1): mass of the prototypes not set
    remaining = max(0.0, 1.0 - target_total)
    if remaining > MIN_MASS and np.any(rest < MIN_MASS):
        raise EditError(_nothing_takes_the_rest(target_total, remaining))
    # (Eq. of the proto comment) others keep their ratios and fill what the set shares leave.
    factor = np.divide(remaining, rest, out=np.zeros_like(rest), where=rest >= MIN_MASS)  # (H, 1)
    result = edited * factor
    result[:, set_mask] = np.array([targets[k] for k in np.flatnonzero(set_mask)])
    if np.any(result.sum(axis=-1) < MIN_MASS):
        raise EditError("these edits leave the profile with no weight at all")
    return result / result.sum(axis=-1, keepdims=True)  # exact sums despite rounding
