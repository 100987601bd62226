"""MovieLens: the real ml-1m-implicit in ../shared/data, and every standard layout on small files."""

from pathlib import Path

import numpy as np
import pytest

from training.data.dataset import build_dataset
from training.data.movielens import DEFAULT_FILTERS, detect_layout, load_movielens
from training.data.raw import DataError, DataWarning
from training.data.splits import SplitConfig

ML1M = Path(__file__).parents[3].parent / "shared" / "data" / "ml-1m-implicit"


def test_real_ml1m_implicit_matches_the_data_readme() -> None:
    raw = load_movielens(ML1M)
    assert detect_layout(ML1M) == "ml-1m-implicit"
    assert len(raw.users) == 998_539 and len(np.unique(raw.users)) == 6040
    assert len(np.unique(raw.items)) == 3260
    assert len(raw.tag_names) == 18 and set(raw.tag_groups) == {"genre"}
    assert {"Drama", "Comedy", "Film-Noir", "Children's"} <= set(raw.tag_names)
    toy_story = raw.item_ids.index("1")
    assert raw.item_names[toy_story] == "Toy Story (1995)"
    assert raw.item_texts[toy_story].startswith('"Toy Story (1995)" is a pioneering animated film')
    assert sorted(raw.tag_names[k] for k in raw.item_tags[toy_story].indices) == [
        "Animation",
        "Children's",
        "Comedy",
    ]

    dataset, _ = build_dataset(raw, DEFAULT_FILTERS, SplitConfig())
    assert dataset.n_items == 3260 and dataset.n_tags == 18
    assert dataset.counts["filtered_users"] == 6040
    assert dataset.train.shape[0] + dataset.val_tr.shape[0] + dataset.test_tr.shape[0] == 6040
    heldout = (dataset.val_tr, dataset.val_te, dataset.test_tr, dataset.test_te)
    assert dataset.train.nnz + sum(m.nnz for m in heldout) == 998_539  # no item is only in val/test
    assert len(set(dataset.prototype_items.tolist())) == 18


# ----------------------------------------------------------------------------- small files

MOVIES = [
    (1, "Heat (1995)", ["Action", "Crime"]),
    (2, "Amélie (2001)", ["Comedy", "Romance"]),
    (3, "Odd (1990)", []),
]
# (user, movie, rating): ratings >= 4 are interactions
RATINGS = [(1, 1, 5), (1, 2, 4), (1, 3, 3), (2, 1, 2), (2, 2, 5), (2, 3, 4), (3, 1, 4)]
POSITIVE = {(1, 1), (1, 2), (2, 2), (2, 3), (3, 1)}


def _interactions(raw) -> set[tuple[int, int]]:
    return {(int(u), int(raw.item_ids[i])) for u, i in zip(raw.users, raw.items, strict=True)}


def _check(raw, expected: set[tuple[int, int]]) -> None:
    assert raw.item_ids == ["1", "2", "3"]
    assert raw.item_names[1] == "Amélie (2001)"
    assert _interactions(raw) == expected
    assert raw.play_counts.tolist() == [1.0] * len(expected)
    genres = {raw.item_ids[i]: sorted(raw.tag_names[k] for k in raw.item_tags[i].indices) for i in range(3)}
    assert genres == {"1": ["Action", "Crime"], "2": ["Comedy", "Romance"], "3": []}
    assert raw.item_texts[0] == "Heat (1995). Genres: Action, Crime."


def test_ml100k_layout(tmp_path: Path) -> None:
    genres = ["unknown", "Action", "Comedy", "Crime", "Romance"]
    (tmp_path / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
    (tmp_path / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t88125{u}\n" for u, m, r in RATINGS))
    lines = []
    for movie, title, movie_genres in MOVIES:
        flags = "|".join(
            "1" if g in movie_genres or (g == "unknown" and not movie_genres) else "0" for g in genres
        )
        lines.append(f"{movie}|{title}|01-Jan-1995||http://x|{flags}\n")
    (tmp_path / "u.item").write_bytes("".join(lines).encode("latin-1"))
    assert detect_layout(tmp_path) == "ml-100k"
    _check(load_movielens(tmp_path), POSITIVE)


def test_ml1m_layout_with_latin1_movies(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::97830{u}\n" for u, m, r in RATINGS))
    movies = "".join(f"{m}::{t}::{'|'.join(g)}\n" for m, t, g in MOVIES)
    (tmp_path / "movies.dat").write_bytes(movies.encode("latin-1"))
    assert detect_layout(tmp_path) == "ml-1m"
    _check(load_movielens(tmp_path), POSITIVE)
    _check(load_movielens(tmp_path, min_rating=5), {(1, 1), (2, 2)})


def test_ml20m_csv_layout_with_quoted_titles(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        + "".join(f"{u},{m},{r - 0.5 if r == 4 else float(r)},1\n" for u, m, r in RATINGS)
    )
    rows = [f'{m},"{t}",{"|".join(g) or "(no genres listed)"}\n' for m, t, g in MOVIES]
    rows[0] = '1,"Heat, The Movie (1995)",Action|Crime\n'
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n" + "".join(rows), encoding="utf-8")
    raw = load_movielens(tmp_path, min_rating=3.5)  # half-star ratings: 3.5 is Liang's ML-20M cut
    assert detect_layout(tmp_path) == "ml-20m"
    assert raw.item_names[0] == "Heat, The Movie (1995)"
    assert _interactions(raw) == POSITIVE
    assert "(no genres listed)" not in raw.tag_names and raw.item_tags[2].nnz == 0


def test_implicit_layout_with_descriptions(tmp_path: Path) -> None:
    (tmp_path / "interactions.tsv").write_text(
        "user_id\tmovie_id\n" + "".join(f"{u}\t{m}\n" for u, m in sorted(POSITIVE))
    )
    (tmp_path / "movies.dat").write_text(
        "".join(f"{m}::{t}::{'|'.join(g)}\n" for m, t, g in MOVIES), encoding="utf-8"
    )
    (tmp_path / "movie_descriptions.json").write_text('{"2": "A whimsical Parisian romance."}')
    raw = load_movielens(tmp_path)
    assert _interactions(raw) == POSITIVE
    assert raw.item_texts[1] == "A whimsical Parisian romance." and raw.item_texts[2] == "Odd (1990)."
    assert raw.tag_names == ["Action", "Comedy", "Crime", "Romance"]  # by movie count, then name


def test_movielens_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no MovieLens files: expected one of interactions.tsv"):
        load_movielens(tmp_path)
    (tmp_path / "ratings.dat").write_text("1::1::5::0\n1::2::x::0\n")
    (tmp_path / "movies.dat").write_text("1::A (1990)::Drama\n2::B (1991)::Drama\n")
    with pytest.raises(DataError, match=r"ratings\.dat line 2: rating must be a number, got 'x'"):
        load_movielens(tmp_path)
    (tmp_path / "ratings.dat").write_text("1::1::5::0\n1::7::5::0\n")
    with pytest.raises(DataError, match=r"ratings\.dat line 2: movie id 7 is not in movies\.dat"):
        load_movielens(tmp_path, strict=True)
    (tmp_path / "movies.dat").write_text("1::A (1990)::Drama\n2::B (1991)\n")
    with pytest.raises(DataError, match=r"movies\.dat line 2: expected 3 '::'-separated fields, got 2"):
        load_movielens(tmp_path)


@pytest.mark.parametrize("layout", ["ml-1m", "ml-100k", "ml-20m", "ml-1m-implicit"])
def test_ratings_of_movies_missing_from_the_movies_file_are_dropped_with_a_count(tmp_path: Path, layout: str) -> None:
    """Published copies sometimes rate ids their item file lacks: dropped and counted, or refused."""
    extra = [(1, 8, 5), (2, 8, 2), (3, 9, 4)]  # 3 rows, 2 unknown ids, one of them a low rating
    ratings = RATINGS + extra
    movies = "".join(f"{m}::{t}::{'|'.join(g)}\n" for m, t, g in MOVIES)
    if layout == "ml-1m":
        (tmp_path / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::0\n" for u, m, r in ratings))
        (tmp_path / "movies.dat").write_text(movies)
        item_file, data_file = "movies.dat", "ratings.dat"
    elif layout == "ml-1m-implicit":
        pairs = sorted(POSITIVE) + [(u, m) for u, m, _ in extra]
        (tmp_path / "interactions.tsv").write_text("user_id\tmovie_id\n" + "".join(f"{u}\t{m}\n" for u, m in pairs))
        (tmp_path / "movies.dat").write_text(movies)
        item_file, data_file = "movies.dat", "interactions.tsv"
    elif layout == "ml-20m":
        (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r},1\n" for u, m, r in ratings))
        (tmp_path / "movies.csv").write_text("movieId,title,genres\n" + "".join(f'{m},"{t}",{"|".join(g) or "Drama"}\n' for m, t, g in MOVIES))
        item_file, data_file = "movies.csv", "ratings.csv"
    else:
        (tmp_path / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t0\n" for u, m, r in ratings))
        flags = "|".join(["0"] * 19)
        (tmp_path / "u.item").write_text("".join(f"{m}|{t}|01-Jan-1995||http://x|{flags}\n" for m, t, _ in MOVIES))
        item_file, data_file = "u.item", "u.data"
    with pytest.warns(DataWarning, match=rf"{data_file}: dropped 3 rows whose movie.id \(2 distinct.*not in {item_file}"):
        raw = load_movielens(tmp_path)
    assert _interactions(raw) == POSITIVE
    with pytest.raises(DataError, match=rf"{data_file} line \d+: movie.id 8 is not in {item_file}"):
        load_movielens(tmp_path, strict=True)
