"""The load test's task mix, apart from Locust (importing locust monkey-patches the process with gevent,
so tests and tools that only need the mix import this module)."""

from __future__ import annotations

from typing import Any

# task -> (its weight option, default weight): mostly reads of cached profiles, as in production
TASKS = {
    "recommend-cached": ("weight_cached", 50.0),
    "recommend-fresh": ("weight_fresh", 20.0),
    "recommend-edit": ("weight_edit", 15.0),
    "edit-profile": ("weight_edit_profile", 5.0),
    "get-profile": ("weight_get_profile", 10.0),
}


def task_weights(options: Any) -> dict[str, float]:
    """The mix from the `--weight-*` options (a task with weight 0 never runs)."""
    weights = {name: getattr(options, option) for name, (option, _) in TASKS.items()}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"task weights must be >= 0 and not all 0, got {weights}")
    return weights
