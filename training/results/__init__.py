"""`make results` (`python -m training.results`): see `training.results.runner` for the parts.

- `catalogue`: what is run (settings per dataset, ablations, sweeps, tuning options, jobs);
- `selection`: choosing on validation users and the protocol that keeps test out of the choice;
- `stats`: aggregates over seeds and the paired per-user comparison;
- `runner`: training, evaluation and the JSON records (the command line);
- `report`: RESULTS.md from the records.
"""

from training.results.runner import main

__all__ = ["main"]
