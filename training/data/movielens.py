"""MovieLens in its standard layouts; genres are the tags (one group, "genre").

`load_movielens(directory)` detects which files the directory holds:

| layout | interactions | movies |
| --- | --- | --- |
| ml-1m-implicit (../shared/data) | `interactions.tsv`: user_id, movie_id (header) | `movies.dat` |
| ml-100k | `u.data`: user, item, rating, timestamp (tabs) | `u.item`: 24 `|` fields, ISO-8859-1, 19 genre flags (`u.genre` names them) |
| ml-1m / ml-10m | `ratings.dat`: `user::movie::rating::timestamp` | `movies.dat`: `id::title::genre|genre` |
| ml-20m / ml-25m | `ratings.csv`: userId,movieId,rating,timestamp (header) | `movies.csv`: movieId,title,genres (header, quoted) |

Explicit ratings are binarised as in Liang et al. 2018: a rating >= 4 is an interaction, lower
ratings are dropped. `movie_descriptions.json` (movie id -> text), where present, gives the texts;
otherwise "title. Genres: ...". "unknown" / "(no genres listed)" are not tags.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from training.data.raw import (
    DataError,
    RawDataset,
    UnknownIds,
    parse_float,
    parse_int,
    read_rows,
    read_text_map,
    require_file,
    tag_matrix,
)
from training.data.splits import FilterConfig

# Liang et al. 2018 on ML-20M: users with >= 5 positive ratings, no item threshold.
DEFAULT_FILTERS = FilterConfig(min_user_interactions=5, min_item_users=0)
MIN_RATING = 4.0
NOT_GENRES = frozenset({"unknown", "(no genres listed)"})
# u.item's flag order, used when u.genre is absent (it is part of the ml-100k archive).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
LAYOUTS = {
    "ml-1m-implicit": ("interactions.tsv", "movies.dat"),
    "ml-100k": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
    "ml-20m": ("ratings.csv", "movies.csv"),
}

Movies = dict[int, tuple[str, list[str]]]  # movie id -> (title, genres)
Interactions = tuple[list[int], list[int]]  # users, movie ids


def detect_layout(root: Path) -> str:
    for layout, files in LAYOUTS.items():
        if all((root / name).is_file() for name in files):
            return layout
    expected = "; ".join(" + ".join(files) for files in LAYOUTS.values())
    raise DataError(f"{root} holds no MovieLens files: expected one of {expected}")


def load_movielens(
    path: str | Path, min_rating: float = MIN_RATING, name: str | None = None, strict: bool = False
) -> RawDataset:
    """Read a MovieLens directory of any layout above into the common raw form.

    Interactions with a movie id the movies file lacks are dropped with a DataWarning giving their
    count (`strict=True`: a DataError naming the first such line)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory: expected MovieLens files there")
    layout = detect_layout(root)
    if layout == "ml-1m-implicit":
        movies = _read_movies_dat(root / "movies.dat")
        users, movie_ids = _read_interactions_tsv(root / "interactions.tsv", movies, strict)
    elif layout == "ml-100k":
        movies = _read_u_item(root / "u.item", _ml100k_genres(root / "u.genre"))
        users, movie_ids = _read_ratings(root / "u.data", "\t", movies, min_rating, strict, "u.item")
    elif layout == "ml-1m":
        movies = _read_movies_dat(root / "movies.dat")
        users, movie_ids = _read_ratings(root / "ratings.dat", "::", movies, min_rating, strict, "movies.dat")
    else:
        movies = _read_movies_csv(root / "movies.csv")
        users, movie_ids = _read_ratings(root / "ratings.csv", ",", movies, min_rating, strict, "movies.csv")

    descriptions_file = root / "movie_descriptions.json"
    descriptions = (
        read_text_map(descriptions_file, "the movies' descriptions (movie id -> text)")
        if descriptions_file.is_file()
        else {}
    )
    item_ids = sorted(movies)
    index = {movie: i for i, movie in enumerate(item_ids)}
    genre_counts = Counter(g for _, genres in movies.values() for g in genres if g not in NOT_GENRES)
    tag_names = sorted(genre_counts, key=lambda g: (-genre_counts[g], g))
    column = {genre: k for k, genre in enumerate(tag_names)}
    rows, cols = [], []
    for movie in item_ids:
        for genre in set(movies[movie][1]) - NOT_GENRES:
            rows.append(index[movie])
            cols.append(column[genre])
    return RawDataset(
        name=name or root.name,
        source=str(root),
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray([index[m] for m in movie_ids], dtype=np.int64),
        play_counts=np.ones(len(users), dtype=np.float32),
        item_ids=[str(m) for m in item_ids],
        item_names=[movies[m][0] for m in item_ids],
        item_texts=[descriptions.get(str(m)) or _fallback_text(*movies[m]) for m in item_ids],
        item_tags=tag_matrix(rows, cols, [1.0] * len(rows), len(item_ids), len(tag_names)),
        tag_names=tag_names,
        tag_groups=["genre"] * len(tag_names),
    )


def _fallback_text(title: str, genres: list[str]) -> str:
    genres = [g for g in genres if g not in NOT_GENRES]
    return f"{title}. Genres: {', '.join(genres)}." if genres else f"{title}."


def _encoding(path: Path) -> str:
    """UTF-8 if the whole file decodes as UTF-8, else ISO-8859-1 (GroupLens' older files)."""
    try:
        require_file(path, "the movies (id, title, genres)").read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "iso-8859-1"
    return "utf-8"


def _read_movies_dat(path: Path) -> Movies:
    movies: Movies = {}
    for line, (movie, title, genres) in read_rows(
        path, "the movies (MovieID::Title::Genres)", "::", 3, header=False, encoding=_encoding(path)
    ):
        movies[parse_int(movie, path, line, "MovieID")] = (title, genres.split("|") if genres else [])
    return movies


def _read_movies_csv(path: Path) -> Movies:
    require_file(path, "the movies (movieId,title,genres)")
    movies: Movies = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        try:
            next(reader, None)  # header
            for fields in reader:
                line = reader.line_num
                if not fields:
                    continue
                if len(fields) != 3:
                    raise DataError(
                        f"{path} line {line}: expected 3 comma-separated fields, got {len(fields)}"
                    )
                movie, title, genres = fields
                movies[parse_int(movie, path, line, "movieId")] = (title, genres.split("|") if genres else [])
        except UnicodeDecodeError as error:
            raise DataError(
                f"{path} line {reader.line_num + 1}: not valid utf-8 text ({error.reason})"
            ) from None
    return movies


def _ml100k_genres(path: Path) -> list[str]:
    if not path.is_file():
        return list(ML100K_GENRES)
    pairs = [(parse_int(g_id, path, line, "genre id"), name) for line, (name, g_id) in read_rows(
        path, "the genre names (name|id)", "|", 2, header=False, encoding="iso-8859-1"
    )]  # fmt: skip
    return [name for _, name in sorted(pairs)]


def _read_u_item(path: Path, genre_names: list[str]) -> Movies:
    movies: Movies = {}
    n_fields = 5 + len(genre_names)
    for line, fields in read_rows(
        path,
        "the movies (id|title|release|video release|url|genre flags)",
        "|",
        n_fields,
        False,
        "iso-8859-1",
    ):
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataError(f"{path} line {line}: genre flags must be 0 or 1, got {'|'.join(flags)}")
        genres = [g for g, flag in zip(genre_names, flags, strict=True) if flag == "1"]
        movies[parse_int(fields[0], path, line, "movie id")] = (fields[1], genres)
    return movies


def _read_interactions_tsv(path: Path, movies: Movies, strict: bool) -> Interactions:
    users, movie_ids = [], []
    unknown = UnknownIds(path, "movies.dat", "movie_id", strict)
    for line, (user, movie) in read_rows(path, "the interactions (user_id, movie_id)", "\t", 2, header=True):
        user_id, movie_id = parse_int(user, path, line, "user_id"), parse_int(movie, path, line, "movie_id")
        if movie_id not in movies:
            unknown.add(movie_id, line)
            continue
        users.append(user_id)
        movie_ids.append(movie_id)
    unknown.report()
    return users, movie_ids


def _read_ratings(
    path: Path, sep: str, movies: Movies, min_rating: float, strict: bool, movies_file: str
) -> Interactions:
    """Users and movies of the ratings >= min_rating (Liang et al.'s binarisation); ratings of
    movies that `movies_file` lacks are dropped and counted (any rating: the file is at fault)."""
    users, movie_ids = [], []
    header = path.suffix == ".csv"
    unknown = UnknownIds(path, movies_file, "movie id", strict)
    for line, (user, movie, rating, _) in read_rows(
        path, "the ratings (user, movie, rating, timestamp)", sep, 4, header=header
    ):
        user_id = parse_int(user, path, line, "user id")
        movie_id = parse_int(movie, path, line, "movie id")
        positive = parse_float(rating, path, line, "rating") >= min_rating
        if movie_id not in movies:
            unknown.add(movie_id, line)
        elif positive:
            users.append(user_id)
            movie_ids.append(movie_id)
    unknown.report()
    return users, movie_ids
