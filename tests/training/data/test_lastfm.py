"""Last.fm 2K: the real data in ../shared/data (present in CI) through `apron prepare`, and small
hand-written copies of its format for the error cases."""

import json
from pathlib import Path

import numpy as np
import pytest

import cli
from training.data.dataset import ProcessedDataset, build_dataset
from training.data.lastfm import DEFAULT_FILTERS, load_lastfm
from training.data.prototypes import main_tags
from training.data.raw import DataError, DataWarning
from training.data.splits import FilterConfig, SplitConfig

LASTFM = Path(__file__).parents[3].parent / "shared" / "data" / "lastfm-2k"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> ProcessedDataset:
    """`apron prepare --dataset lastfm-2k` with its defaults (the source path defaults to ../shared/data)."""
    out = tmp_path_factory.mktemp("lastfm") / "lastfm-2k"
    assert cli.main(["prepare", "--dataset", "lastfm-2k", "--out", str(out)]) == 0
    return ProcessedDataset.load(out, verify=True)


def test_real_lastfm_counts_match_the_data_readme(prepared: ProcessedDataset) -> None:
    # README: 2,813 described artists (all have >= 5 listeners), 71,340 of their user-artist
    # pairs, 1,859 users with >= 5 of them; 2,751 of the artists carry a top-80 tag.
    assert prepared.n_items == 2813
    assert prepared.counts["raw_interactions"] == 71_340
    assert prepared.counts["filtered_users"] == 1859
    assert prepared.counts["tagged_items"] == 2751
    assert prepared.n_tags == 80
    assert prepared.tag_names[:8] == [
        "rock",
        "pop",
        "alternative",
        "electronic",
        "indie",
        "female vocalists",
        "80s",
        "dance",
    ]
    assert {"jazz", "classical"} <= set(prepared.tag_names)
    groups = dict(zip(prepared.tag_names, prepared.tag_groups, strict=True))
    assert (groups["80s"], groups["female vocalists"], groups["chillout"], groups["jazz"]) == (
        "era",
        "instrumentation",
        "mood",
        "genre",
    )
    assert prepared.filters == {"min_user_interactions": 5, "min_item_users": 5}


def test_real_lastfm_split_has_disjoint_users_and_the_papers_proportions(prepared: ProcessedDataset) -> None:
    users = prepared.users
    train, val, test = (set(users[k].tolist()) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == 1859
    assert len(val) == len(test) == round(0.1 * 1859)
    assert prepared.train.shape == (len(train), 2813) and prepared.test_te.shape == (len(test), 2813)
    for fold_in, targets in ((prepared.val_tr, prepared.val_te), (prepared.test_tr, prepared.test_te)):
        assert fold_in.multiply(targets).nnz == 0
        share = targets.nnz / (fold_in.nnz + targets.nnz)
        assert 0.17 < share < 0.21  # floor(0.2 n), at least one
        assert (np.diff(targets.indptr) >= 1).all()
    # every item was listened to by some training user (Liang: items = train items)
    assert (prepared.train.getnnz(axis=0) > 0).all()


def test_real_lastfm_prototypes_are_distinct_most_listened_main_tag_items(prepared: ProcessedDataset) -> None:
    prototypes = prepared.prototype_items
    assert len(set(prototypes.tolist())) == 80
    carried = main_tags(prepared.item_tags, 0.5).toarray() > 0  # (N, K)
    listeners = prepared.train.getnnz(axis=0)
    taken = set(prototypes.tolist())
    for k, item in enumerate(prototypes):
        assert carried[item, k], prepared.tag_names[k]
        # any more-listened item carrying tag k is another tag's prototype
        better = np.flatnonzero(carried[:, k] & (listeners > listeners[item]))
        assert set(better.tolist()) <= taken - {int(item)}, prepared.tag_names[k]
    names = dict(zip(prepared.tag_names, (prepared.item_names[i] for i in prototypes), strict=True))
    assert names["classical"] == "Ludwig van Beethoven"
    assert names["thrash metal"] == "Megadeth"


def test_real_lastfm_loader_and_split_are_reproducible(prepared: ProcessedDataset, tmp_path: Path) -> None:
    raw = load_lastfm(LASTFM)
    again, _ = build_dataset(raw, DEFAULT_FILTERS, SplitConfig())
    assert again.fingerprint == prepared.fingerprint
    other, _ = build_dataset(raw, DEFAULT_FILTERS, SplitConfig(seed=1))
    assert other.fingerprint != prepared.fingerprint
    # stricter filters shrink the data, iterated until every user and item meets them
    strict, _ = build_dataset(raw, FilterConfig(min_user_interactions=20, min_item_users=20), SplitConfig())
    assert strict.n_items < prepared.n_items
    matrices = [strict.train, strict.val_tr + strict.val_te, strict.test_tr + strict.test_te]
    assert all(m.getnnz(axis=1).min() >= 2 for m in matrices)


# ----------------------------------------------------------------------------- small files


def write_lastfm(root: Path, **overrides: str) -> Path:
    """A 4-artist, 6-user Last.fm 2K directory; `overrides` replace whole files by name."""
    files = {
        "artists.dat": "id\tname\turl\tpictureURL\n1\tAlpha\tu\tp\n2\tBeta\tu\tp\n3\tGamma\tu\tp\n4\tDelta\tu\tp\n",
        "user_artists.dat": "userID\tartistID\tweight\n"
        + "".join(f"{u}\t{a}\t{10 * a + u}\n" for u in range(1, 7) for a in (1, 2, 3) if (u + a) % 4)
        + "1\t4\t3\n",
        "user_taggedartists.dat": "userID\tartistID\ttagID\tday\tmonth\tyear\n"
        + "1\t1\t10\t1\t1\t2009\n2\t1\t10\t1\t1\t2009\n3\t2\t11\t1\t1\t2009\n4\t3\t12\t1\t1\t2009\n",
        "artist_descriptions.json": json.dumps({str(a): f"artist {a} plays music" for a in (1, 2, 3)}),
    }
    files.update(overrides)
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "tags.dat").write_bytes(
        "tagID\ttagValue\n10\tjazz\n11\tfemale vocalists\n12\tcafé\n".encode("latin-1")
    )
    return root


def test_small_lastfm_reads_latin1_tags_and_drops_undescribed_artists(tmp_path: Path) -> None:
    raw = load_lastfm(write_lastfm(tmp_path / "lfm"), n_tags=3)
    assert raw.tag_names == ["jazz", "female vocalists", "café"]
    assert raw.tag_groups == ["genre", "instrumentation", "genre"]
    assert raw.item_ids == ["1", "2", "3"]  # artist 4 has no description
    assert raw.item_tags.toarray().tolist() == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert raw.item_texts[0] == "artist 1 plays music"
    assert set(raw.play_counts.tolist()) >= {11.0, 21.0}
    with_all = load_lastfm(tmp_path / "lfm", n_tags=3, require_description=False)
    assert with_all.item_ids == ["1", "2", "3", "4"] and with_all.item_texts[3] == "Delta"


def test_missing_file_names_the_file_and_its_purpose(tmp_path: Path) -> None:
    root = write_lastfm(tmp_path / "lfm")
    (root / "user_artists.dat").unlink()
    with pytest.raises(DataError, match=r"user_artists\.dat not found: it should hold the play counts"):
        load_lastfm(root, n_tags=3)


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    root = write_lastfm(tmp_path / "lfm")
    lines = (root / "user_artists.dat").read_text().splitlines()
    lines[2] = "2\t1"  # line 3 of the file
    (root / "user_artists.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"user_artists\.dat line 3: expected 3 tab-separated fields, got 2"):
        load_lastfm(root, n_tags=3)
    lines[2] = "2\tone\t5"
    (root / "user_artists.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"user_artists\.dat line 3: artistID must be an integer, got 'one'"):
        load_lastfm(root, n_tags=3)


def test_unknown_artist_and_bad_json_are_located(tmp_path: Path) -> None:
    root = write_lastfm(tmp_path / "lfm", **{"artist_descriptions.json": '{"1": "x",\n "2": }'})
    with pytest.raises(DataError, match=r"artist_descriptions\.json line 2: invalid JSON"):
        load_lastfm(root, n_tags=3)


def test_plays_of_artists_missing_from_artists_dat_are_dropped_with_a_count_or_refused(tmp_path: Path) -> None:
    root = write_lastfm(tmp_path / "lfm")
    clean = load_lastfm(root, n_tags=3)
    with (root / "user_artists.dat").open("a") as handle:
        handle.write("5\t99\t1\n6\t99\t4\n6\t98\t2\n")
    first_line = len((root / "user_artists.dat").read_text().splitlines()) - 2
    with pytest.warns(DataWarning, match=r"user_artists\.dat: dropped 3 rows whose artistID \(2 distinct, first at "
                      rf"line {first_line}\) is not in artists\.dat"):  # fmt: skip
        raw = load_lastfm(root, n_tags=3)
    assert _pairs(raw) == _pairs(clean)  # the known artists' plays are all kept
    with pytest.raises(
        DataError, match=rf"user_artists\.dat line {first_line}: artistID 99 is not in artists\.dat"
    ):
        load_lastfm(root, n_tags=3, strict=True)


def _pairs(raw) -> list[tuple[int, int, float]]:
    return sorted(zip(raw.users.tolist(), raw.items.tolist(), raw.play_counts.tolist(), strict=True))


def test_a_tag_left_without_items_is_named(tmp_path: Path) -> None:
    # tag 12 ('café') only tags artist 4, which has no description, so no item carries it
    tagged = "userID\tartistID\ttagID\tday\tmonth\tyear\n1\t1\t10\t1\t1\t2009\n1\t4\t12\t1\t1\t2009\n"
    raw = load_lastfm(write_lastfm(tmp_path / "lfm", **{"user_taggedartists.dat": tagged}), n_tags=2)
    with pytest.raises(DataError, match="tag 'café' has no items in"):
        build_dataset(raw, FilterConfig(1, 1), SplitConfig(heldout_fraction=0.2))
