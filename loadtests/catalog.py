"""Whether a prepared dataset's users can drive the gateway: its catalog must be the served model's.

Pure (no Locust, no gevent): `loadtests/locustfile.py` checks it once the gateway answers."""

from __future__ import annotations

DATASET_HINT = (
    "the simulated users must come from the processed dataset (`apron prepare`'s directory) of the model "
    "the gateway serves: `make loadtest` reads the demo's, artifacts/data/demo, which `make serve` writes "
    "when it builds the demo model; for a gateway serving another model pass LOADTEST_DATASET=DIR "
    "(locust --dataset DIR)"
)


def catalog_mismatch(dataset_items: set[str], prototype_items: list[str], version: int, dataset: str) -> str | None:
    """Why the served model cannot be this dataset's (its prototypes' items are not the dataset's
    items), or None. Pure."""
    missing = [item for item in prototype_items if item not in dataset_items]
    if not missing:
        return None
    return (
        f"the gateway serves a model (version {version}) trained on another catalog than {dataset}: "
        f"{len(missing)} of its {len(prototype_items)} prototype items (e.g. {missing[0]!r}) are not in the dataset, "
        f"so every history would be refused; {DATASET_HINT}"
    )
