"""ServedModel's history lookups (serving/catalog.py): remembered for a client that sends the same
history again, within a bound on the ids the remembered keys hold, whatever the histories sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.catalog import HISTORY_MEMO_IDS, History, HistoryMemo, ServedModel


def test_a_history_sent_again_is_looked_up_once(python_repository: Path) -> None:
    model = ServedModel.load(python_repository)
    ids = model.metadata.item_ids
    history = [ids[3], ids[1], "not-in-the-catalog", ids[3]]
    first = model.history(history)
    assert model.history(list(history)) is first
    assert first.indices.tolist() == [1, 3] and first.ignored == 1 and not first.indices.flags.writeable


def test_the_memo_holds_at_most_its_ids_and_entries_least_recent_out_first() -> None:
    found = History(np.zeros(0, np.int64), 0, "")
    memo = HistoryMemo(entries=3, ids=10)
    for name, length in (("a", 4), ("b", 4)):
        memo.put(tuple(f"{name}{i}" for i in range(length)), found)
    assert memo.get(tuple(f"a{i}" for i in range(4))) is found  # now the most recent
    memo.put(tuple(f"c{i}" for i in range(4)), found)  # 12 ids: b, the least recent, goes
    assert memo.held_ids == 8 and memo.get(tuple(f"b{i}" for i in range(4))) is None
    assert memo.get(tuple(f"a{i}" for i in range(4))) is found
    memo.put(tuple(f"d{i}" for i in range(11)), found)  # more than all the ids it may hold: not kept
    assert memo.held_ids == 8 and len(memo) == 2
    for name in "efg":
        memo.put((name,), found)
    assert len(memo) == 3 and memo.held_ids == 3  # 3 entries at most: c and then a went, e, f and g stay


def test_long_histories_from_a_client_pin_a_bounded_number_of_ids(python_repository: Path) -> None:
    model = ServedModel.load(python_repository)
    known = model.metadata.item_ids[0]
    for n in range(40):  # each one distinct, each far longer than a listener's history
        model.history([known, *(f"unknown-{n}-{i}" for i in range(5_000))])
    assert model._histories.held_ids <= HISTORY_MEMO_IDS and len(model._histories) <= HISTORY_MEMO_IDS // 5_000
