"""HetRec 2011 Last.fm 2K (Cantador, Brusilovsky, Kuflik): artists stand in for the paper's songs.

Files (tab-separated, one header line; UTF-8 except `tags.dat`, ISO-8859-1):
`user_artists.dat` (userID, artistID, weight = play count), `user_taggedartists.dat` (userID,
artistID, tagID, day, month, year), `tags.dat` (tagID, tagValue), `artists.dat` (id, name, url,
pictureURL) and `artist_descriptions.json` (artistID -> a description of the artist's sound).

Tags follow the APRON paper (Sec. 4, "the 80 most commonly used tags according to Last.fm"): the
`n_tags` tags with the most `user_taggedartists` rows over all artists; an artist's count for a tag
is how many users gave it that tag. The paper removed songs without audio before filtering; here
the descriptions play the audio's role, so by default only described artists are items.

`artist_descriptions.json` is an optional extra: GroupLens' zip (`apron prepare --dataset
lastfm-2k` downloads it, training/data/download.py) does not have it. Without it every named
artist is an item (the listener filter then keeps about the same artists), and an artist's text
is its name and its most given top tags ("Miles Davis. Tags: jazz, trumpet, ..."): text features
then carry the tags and nothing more, so controllability with `--kind text` is an upper bound;
`--kind collab` (from the listening matrix alone) needs no text at all.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from training.data.raw import (
    DataError,
    RawDataset,
    UnknownIds,
    parse_float,
    parse_int,
    read_rows,
    read_text_map,
    tag_matrix,
)
from training.data.splits import FilterConfig

# 5 listeners per artist keeps exactly the 2,813 described artists; 5 artists per user keeps
# 1,859 users (README). The paper's MSD thresholds (20 / 200) would leave almost nothing of 2K users.
DEFAULT_FILTERS = FilterConfig(min_user_interactions=5, min_item_users=5)
N_TAGS = 80

# The paper's four tag groups (Sec. 4: era, genre, mood, instrumentation) for Last.fm's top tags.
# Tags not listed are genres. Subjective tags ("favorites", "seen live") go with mood: they describe
# how a listener feels about the music, not what it is.
TAG_GROUPS: dict[str, str] = {
    **dict.fromkeys(["60s", "70s", "80s", "90s", "00s"], "era"),
    **dict.fromkeys(
        ["chillout", "mellow", "beautiful", "sexy", "love", "awesome", "amazing", "favorites", "seen live"],
        "mood",
    ),
    **dict.fromkeys(
        ["female vocalists", "female vocalist", "male vocalists", "instrumental", "acoustic", "piano"],
        "instrumentation",
    ),
}
DEFAULT_GROUP = "genre"


def tag_group(name: str) -> str:
    return TAG_GROUPS.get(name, DEFAULT_GROUP)


def load_lastfm(
    path: str | Path, n_tags: int = N_TAGS, require_description: bool = True, strict: bool = False
) -> RawDataset:
    """Read the Last.fm 2K directory `path` into the common raw form (artists are the items).

    Play counts of artists that `artists.dat` lacks are dropped with a DataWarning giving their
    count (`strict=True`: a DataError naming the first such line)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory: expected the HetRec Last.fm 2K files there")
    artists_file = root / "artists.dat"
    names: dict[int, str] = {}
    for line, fields in read_rows(
        artists_file, "the artists (id, name, url, pictureURL)", "\t", 4, header=True
    ):
        names[parse_int(fields[0], artists_file, line, "id")] = fields[1]
    descriptions_file = root / "artist_descriptions.json"
    described = descriptions_file.exists()  # absent from GroupLens' zip: texts from names + tags then
    descriptions = {
        parse_int(k, descriptions_file, None, "every key (an artistID)"): v
        for k, v in read_text_map(descriptions_file, "the artists' descriptions (artistID -> text)").items()
    } if described else {}  # fmt: skip

    item_ids = sorted(a for a in names if a in descriptions) if require_description and described else sorted(names)
    index = {artist: i for i, artist in enumerate(item_ids)}

    plays_file = root / "user_artists.dat"
    users, items, counts = [], [], []
    unknown = UnknownIds(plays_file, artists_file.name, "artistID", strict)
    for line, fields in read_rows(
        plays_file, "the play counts (userID, artistID, weight)", "\t", 3, header=True
    ):
        artist = parse_int(fields[1], plays_file, line, "artistID")
        if artist not in names:
            unknown.add(artist, line)
        elif artist in index:
            users.append(parse_int(fields[0], plays_file, line, "userID"))
            items.append(index[artist])
            counts.append(parse_float(fields[2], plays_file, line, "weight"))

    unknown.report()

    tagged_file = root / "user_taggedartists.dat"
    tagged_artists, tagged_tags = [], []
    for line, fields in read_rows(
        tagged_file, "the users' tags (userID, artistID, tagID, day, month, year)", "\t", 6, header=True
    ):
        tagged_artists.append(parse_int(fields[1], tagged_file, line, "artistID"))
        tagged_tags.append(parse_int(fields[2], tagged_file, line, "tagID"))
    tag_ids, tag_names = _top_tags(root, Counter(tagged_tags), n_tags)
    tag_column = {tag: k for k, tag in enumerate(tag_ids)}
    # The file tags ~390 artists that artists.dat lacks: they count for tag popularity only.
    pairs = [
        (index[artist], tag_column[tag])
        for artist, tag in zip(tagged_artists, tagged_tags, strict=True)
        if tag in tag_column and artist in index
    ]
    rows, cols = zip(*pairs, strict=True) if pairs else ((), ())
    item_tags = tag_matrix(list(rows), list(cols), [1.0] * len(rows), len(item_ids), len(tag_ids))
    texts = [descriptions.get(a) or _name_and_tags(names[a], item_tags[i], tag_names) for i, a in enumerate(item_ids)]

    return RawDataset(
        name="lastfm-2k",
        source=str(root),
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        play_counts=np.asarray(counts, dtype=np.float32),
        item_ids=[str(a) for a in item_ids],
        item_names=[names[a] for a in item_ids],
        item_texts=texts,
        item_tags=item_tags,
        tag_names=tag_names,
        tag_groups=[tag_group(name) for name in tag_names],
    )


def _name_and_tags(name: str, tag_row: Any, tag_names: list[str], n: int = 5) -> str:
    """An artist's text without a description: its name and its `n` most given top tags."""
    counts = tag_row.toarray().ravel()
    top = [tag_names[k] for k in np.argsort(-counts, kind="stable")[:n] if counts[k] > 0]
    return f"{name}. Tags: {', '.join(top)}." if top else name


def _top_tags(root: Path, usage: Counter[int], n_tags: int) -> tuple[list[int], list[str]]:
    """The `n_tags` most used tag ids (most rows of user_taggedartists.dat, ties by id) and names."""
    tags_file = root / "tags.dat"
    values: dict[int, str] = {}
    for line, fields in read_rows(
        tags_file, "the tag names (tagID, tagValue)", "\t", 2, header=True, encoding="iso-8859-1"
    ):
        values[parse_int(fields[0], tags_file, line, "tagID")] = fields[1].strip()
    top = sorted(usage, key=lambda tag: (-usage[tag], tag))[:n_tags]
    if len(top) < n_tags:
        raise DataError(
            f"{root / 'user_taggedartists.dat'}: only {len(top)} distinct tags are used, {n_tags} were asked for"
        )
    missing = [tag for tag in top if tag not in values]
    if missing:
        raise DataError(f"{tags_file}: tagID {missing[0]} (one of the {n_tags} most used tags) has no name")
    return top, [values[tag] for tag in top]
