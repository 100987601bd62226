"""`apron` subcommands of the training stage: prepare, features, train, evaluate, results.

Each subcommand is registered by its own `_add_*` function, listed in `COMMANDS` (read by the root
`cli.py`, which builds only the parser of the command being run).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import sys
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import UserFacingError

# ----------------------------------------------------------------------------- prepare


# each command's one-line help: also `apron --help`'s overview, which builds no command's parser
HELP = {
    "prepare": "read a dataset, filter, split users (Liang et al. 2018), choose prototypes, write DIR",
    "features": "compute content features/<kind>.npy for a processed dataset",
    "train": "train a model on a processed dataset and save a checkpoint",
    "evaluate": "Recall@20/50, NDCG@100 and Δ@20 / %%Δ@20 (served, intrinsic γ = 0, unlabelled items) of a checkpoint, as JSON",
    "results": "train + evaluate all models on both datasets, write RESULTS.md",
}


def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    from training.data.sources import SOURCES
    from training.data.splits import SplitConfig
    from training.data.synthetic import SyntheticConfig

    split, generator = SplitConfig(), SyntheticConfig()

    parser = subparsers.add_parser(
        "prepare",
        help=HELP["prepare"],
        description="Writes the processed dataset directory of DESIGN.md section 1. Filters default to "
        "each dataset's own (lastfm-2k: 5/5, MovieLens and synthetic: 5/0; the paper's MSD used 20/200).",
    )
    parser.add_argument("--dataset", required=True, choices=sorted(SOURCES))
    parser.add_argument(
        "--path",
        type=Path,
        help="source directory (default: ../shared/data/<dataset> beside the repo; lastfm-2k: else a copy "
        "downloaded earlier into artifacts/downloads/, else a download from GroupLens)",
    )
    parser.add_argument(
        "--url", help="lastfm-2k: download the HetRec 2011 zip from URL (file:// works) instead of using a local copy"
    )
    parser.add_argument(
        "--sha256", help="lastfm-2k: the zip's expected SHA-256 (default: GroupLens' zip's, for the default URL)"
    )
    parser.add_argument("--out", type=Path, help="output directory (default: artifacts/data/<name>)")
    parser.add_argument("--min-user-interactions", type=int, help="keep users with at least N items")
    parser.add_argument("--min-item-users", type=int, help="keep items with at least N users")
    parser.add_argument(
        "--heldout-fraction", type=float, default=split.heldout_fraction, help="users for validation and for test, each"
    )
    parser.add_argument(
        "--target-fraction", type=float, default=split.target_fraction, help="of a val/test user's items held out"
    )
    parser.add_argument("--seed", type=int, default=split.seed, help="split seed")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse interactions whose item id the item file lacks (default: drop them with a warning giving the count)",
    )
    parser.add_argument(
        "--min-tag-share",
        type=float,
        default=0.5,
        help="a prototype's count for its tag must be at least this share of its most given tag's (0: any)",
    )
    synthetic = parser.add_argument_group("synthetic dataset (--dataset synthetic)")
    synthetic.add_argument("--n-items", type=int, default=generator.n_items)
    synthetic.add_argument("--n-users", type=int, default=generator.n_users)
    synthetic.add_argument("--n-tags", type=int, default=generator.n_tags)
    synthetic.add_argument("--feature-dim", type=int, default=generator.feature_dim)
    synthetic.add_argument("--generator-seed", type=int, default=generator.seed)
    parser.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from common.files import NotOurs, check_replaceable
    from training.data.raw import DataError
    from training.data.sources import SOURCES, prepare
    from training.data.splits import FilterConfig, SplitConfig
    from training.data.synthetic import SyntheticConfig

    if args.dataset == "movielens" and args.path is None:
        raise UserFacingError("--dataset movielens needs --path DIR, a directory of MovieLens files")
    defaults = SOURCES[args.dataset].default_filters
    try:
        filters = FilterConfig(
            min_user_interactions=defaults.min_user_interactions
            if args.min_user_interactions is None
            else args.min_user_interactions,
            min_item_users=defaults.min_item_users if args.min_item_users is None else args.min_item_users,
        )
        split = SplitConfig(heldout_fraction=args.heldout_fraction, target_fraction=args.target_fraction, seed=args.seed)
        synthetic = SyntheticConfig(
            n_items=args.n_items,
            n_users=args.n_users,
            n_tags=args.n_tags,
            feature_dim=args.feature_dim,
            seed=args.generator_seed,
        )
        name = args.path.name if args.dataset == "movielens" and args.path else args.dataset
        out = args.out or Path("artifacts") / "data" / name
        check_replaceable(out, "dataset.json")  # before the work: an --out that is not a dataset stays
        dataset = prepare(
            args.dataset, out, args.path, filters, split, args.min_tag_share, synthetic, strict=args.strict,
            url=args.url, sha256=args.sha256,
        )
    except (DataError, ValueError, NotOurs) as error:
        raise UserFacingError(str(error)) from error
    c = dataset.counts
    print(
        f"wrote {out}: {dataset.n_items:,} items, {dataset.n_tags} tags, users train/val/test "
        f"{c['train_users']:,}/{c['val_users']:,}/{c['test_users']:,}, fingerprint {dataset.fingerprint[:12]}"
    )
    return 0


# ----------------------------------------------------------------------------- features


def _add_features(subparsers: argparse._SubParsersAction) -> None:
    from training.features.kinds import COLLAB_DEFAULT_DIM

    parser = subparsers.add_parser("features", help=HELP["features"])
    parser.add_argument("dataset", metavar="DATASET_DIR", type=Path, help="a directory written by `apron prepare`")
    parser.add_argument("--kind", required=True, choices=["text", "audio", "collab"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per batch (text)")
    parser.add_argument("--model-path", type=Path, help="sentence encoder directory (text; default: the bundled MiniLM)")
    parser.add_argument("--audio-dir", type=Path, help="directory of <item_id>.wav files (audio)")
    parser.add_argument("--mert-path", type=Path, help="local MERT checkpoint directory (audio)")
    parser.add_argument("--layers", default="-1", help="hidden layers to average, N or START:STOP (audio; default last)")
    parser.add_argument("--chunk-seconds", type=float, default=10.0, help="audio window length (audio)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own code (MERT-v1)")
    parser.add_argument(
        "--strip-tags",
        action="store_true",
        help="text: remove the tag names and the sentences about tags ('tagged with ...') before embedding; "
        "writes features/text-stripped (train with --features text-stripped)",
    )
    parser.add_argument("--dim", type=int, default=COLLAB_DEFAULT_DIM,
                        help=f"SVD rank (collab; other than {COLLAB_DEFAULT_DIM} writes features/collab-<dim>)")
    parser.add_argument("--seed", type=int, default=0, help="SVD start vector seed (collab)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    from training.data.dataset import ProcessedDataset, write_features
    from training.data.raw import DataError

    try:
        dataset = ProcessedDataset.load(args.dataset)
        kind = args.kind
        if args.strip_tags and kind != "text":
            raise UserFacingError("--strip-tags applies to --kind text only")
        if kind == "text":
            from training.features.kinds import STRIPPED_KIND
            from training.features.text import text_features

            strip = dataset.tag_names if args.strip_tags else None
            features, meta = text_features(
                dataset.texts, args.model_path, args.batch_size, args.device, not args.quiet, strip_tags=strip
            )
            kind = STRIPPED_KIND if args.strip_tags else kind
        elif args.kind == "audio":
            from training.features.audio import AudioConfig, audio_features, parse_layers

            if args.audio_dir is None or args.mert_path is None:
                raise UserFacingError("--kind audio needs --audio-dir and --mert-path")
            config = AudioConfig(parse_layers(args.layers), args.chunk_seconds, args.trust_remote_code)
            features, meta = audio_features(
                dataset.item_ids, args.audio_dir, args.mert_path, config, args.device, not args.quiet
            )
        else:
            from training.features.collab import collab_features
            from training.features.kinds import collab_kind

            features, meta = collab_features(dataset.train, args.dim, args.seed)
            kind = collab_kind(args.dim)
        path = write_features(args.dataset, kind, features, meta, dataset.fingerprint, dataset.n_items)
    except (DataError, ValueError) as error:
        raise UserFacingError(str(error)) from error
    print(f"wrote {path}: {features.shape[0]:,} items x {features.shape[1]} dims")
    return 0


# ----------------------------------------------------------------------------- train


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from training.data.hidden_labels import DEFAULT_HIDDEN_SHARE
    from training.features.kinds import feature_kind
    from training.models.apron import PRESETS
    from training.models.registry import MODELS

    parser = subparsers.add_parser("train", help=HELP["train"])
    parser.add_argument("dataset", metavar="DATASET_DIR", help="a directory written by `apron prepare`")
    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="model to train")
    parser.add_argument("--out", required=True, metavar="CHECKPOINT", help="where to write the checkpoint (.pt)")
    parser.add_argument(
        "--features",
        default="text",
        type=feature_kind,
        help="content features for apron / sem-macridvae: text (default), text-stripped (`apron features --kind text "
        "--strip-tags`), audio, collab, collab-<dim> (`apron features --kind collab --dim <dim>`), synthetic",
    )
    parser.add_argument("--epochs", type=at_least(1), default=50)
    parser.add_argument("--batch-size", type=at_least(1), default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=at_least(0), default=10, help="epochs without a better validation NDCG@100")
    parser.add_argument("--anneal-steps", type=int, default=None, help="updates to reach the β cap (default: 80%% of training)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model hyperparameter, e.g. --set n_heads=8 --set hidden_dims=600,300 (repeatable)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="apron only: named hyperparameters (training/models/apron.py PRESETS; --set overrides them); "
        "controllable = every head reads all features, tag-supervised attention, edit penalty γ = 50",
    )
    parser.add_argument(
        "--hide-tag-labels",
        nargs="?",
        type=float,
        const=DEFAULT_HIDDEN_SHARE,
        default=None,
        metavar="SHARE",
        help=f"apron only: withhold the tag labels of this share of the items (default {DEFAULT_HIDDEN_SHARE:g}; "
        "seeded by hidden_label_seed, never a prototype) from every tag-driven loss; `apron evaluate` then "
        "reports pct_delta@20_unlabelled over those items",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_train)


def parse_overrides(pairs: list[str], model_name: str) -> dict[str, Any]:
    """`key=value` strings -> hyperparameters checked against the model's config fields."""
    from training.models.registry import model_class

    config_class = model_class(model_name).config_class
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    hyperparameters: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserFacingError(f"--set {pair!r}: expected KEY=VALUE")
        if key not in fields:
            raise UserFacingError(f"--set {key}: {model_name} has no such hyperparameter; known: {', '.join(fields)}")
        value = _as_declared(_parse_value(raw.strip()), hints[key])
        if value is None:
            default = fields[key].default
            example = "" if default is dataclasses.MISSING else f", e.g. --set {key}={_shown(default)}"
            raise UserFacingError(f"--set {pair}: {model_name}'s {key} takes {_described(hints[key])}{example}")
        hyperparameters[key] = value
    return hyperparameters


def preset_hyperparameters(preset: str | None, model_name: str) -> dict[str, Any]:
    """`--preset NAME` -> APRON's named hyperparameters; refused for other models."""
    if preset is None:
        return {}
    if model_name != "apron":
        raise UserFacingError(f"--preset {preset}: presets are APRON's; {model_name} takes --set KEY=VALUE")
    from training.models.apron import PRESETS

    return dict(PRESETS[preset])


def _as_declared(value: Any, hint: Any) -> Any:
    """`value` as a hyperparameter of type `hint` takes it (an int for a float, a lone value for a
    tuple), or None where it cannot be: the model's own checks then see only values of their type."""
    def number(item: Any, kind: type) -> Any:
        if isinstance(item, bool) or not isinstance(item, int | float) or (kind is int and not isinstance(item, int)):
            return None
        return kind(item)

    if hint is bool or hint is str:
        return value if isinstance(value, hint) else None
    if hint is int or hint is float:
        return number(value, hint)
    if typing.get_origin(hint) is tuple:
        items, kinds = value if isinstance(value, tuple) else (value,), typing.get_args(hint)
        if len(kinds) == 2 and kinds[1] is Ellipsis:
            kinds = (kinds[0],) * len(items)
        if len(items) != len(kinds):
            return None
        typed = tuple(number(item, kind) for item, kind in zip(items, kinds, strict=True))
        return None if None in typed else typed
    return value  # a type these checks do not know: the model's own checks decide


def _described(hint: Any) -> str:
    """What a hyperparameter of type `hint` takes, for a person typing --set."""
    names = {bool: "True or False", str: "text", int: "an integer", float: "a number"}
    if hint in names:
        return names[hint]
    kinds = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and kinds:
        if len(kinds) == 2 and kinds[1] is Ellipsis:
            return f"{'integers' if kinds[0] is int else 'numbers'} separated by commas (one alone: 600,; none: ())"
        return f"{len(kinds)} numbers separated by commas"
    return str(hint)


def _shown(default: Any) -> str:
    """A default as --set takes it."""
    if isinstance(default, tuple):
        return ",".join(str(item) for item in default) + ("," if len(default) == 1 else "")
    return str(default)


def _parse_value(raw: str) -> Any:
    """Python literals (1, 0.5, True, 'x', (600, 200)); `a,b` is a tuple; anything else a string."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    return tuple(value) if isinstance(value, list) else value


def _load_dataset(path: str | Path) -> Any:
    from training.data.dataset import ProcessedDataset

    try:
        return ProcessedDataset.load(Path(path))
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise UserFacingError(f"cannot load processed dataset {path}: {error}") from error


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum` (a usage error otherwise)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def check_writable_file(path: Path, flag: str) -> None:
    """UserFacingError unless a file can be written at `path` (checked before the work, not after):
    not a directory, and its directory exists (or can be made) and takes files."""
    if path.is_dir():
        raise UserFacingError(f"{flag} {path} is a directory: give a file path (e.g. {path / 'model.pt'})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.probe-"):
            pass
    except OSError as error:
        raise UserFacingError(f"{flag} {path}: cannot write there ({error.strerror or error})") from error


def _run_train(args: argparse.Namespace) -> int:
    from training.checkpoint import save_checkpoint
    from training.train import train

    check_writable_file(Path(args.out), "--out")  # before training: a run is not thrown away at its end

    hyperparameters = {**preset_hyperparameters(args.preset, args.model), **parse_overrides(args.overrides, args.model)}
    if args.hide_tag_labels is not None:
        if args.model != "apron":
            raise UserFacingError("--hide-tag-labels: only APRON trains on tag labels it can be denied")
        hyperparameters["hidden_label_share"] = args.hide_tag_labels
    dataset = _load_dataset(args.dataset)
    try:
        model, info = train(
            dataset,
            args.model,
            features_kind=args.features,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            patience=args.patience,
            device=args.device,
            hyperparameters=hyperparameters,
            anneal_steps=args.anneal_steps,
            progress=not args.quiet,
        )
    except (FileNotFoundError, TypeError, ValueError) as error:
        raise UserFacingError(str(error)) from error
    path = save_checkpoint(args.out, model, info)
    summary = {k: info.train[k] for k in ("epochs_run", "best_epoch", "wall_time_s", "device")}
    print(json.dumps({"checkpoint": str(path), **info.metrics, **summary}))
    return 0


# ----------------------------------------------------------------------------- evaluate


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=HELP["evaluate"],
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("--dataset", default=None, metavar="DIR", help="processed dataset (default: the checkpoint's)")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument(
        "--plot", default=None, metavar="PATH", help="per-tag Δ@20 bar chart (default: CHECKPOINT.tag_delta.png)"
    )
    parser.add_argument("--per-tag", action="store_true", help="include every tag's Δ@20 in the JSON")
    parser.add_argument("--per-user", action="store_true", help="include every user's NDCG@100 and Recall@20/50")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_checkpoint

    plot = args.plot if args.plot is not None else str(Path(args.checkpoint).with_suffix(".tag_delta.png"))
    try:
        result = evaluate_checkpoint(args.checkpoint, args.dataset, args.split, plot, args.device)
    except (FileNotFoundError, ValueError) as error:
        raise UserFacingError(str(error)) from error
    if not args.per_tag:
        result.pop("per_tag", None)
    if not args.per_user:
        result.pop("per_user", None)
    json.dump(_json_safe(result), sys.stdout, indent=2)
    print()
    return 0


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# ----------------------------------------------------------------------------- results


def _add_results(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("results", help=HELP["results"])
    parser.add_argument("--output", default="RESULTS.md")
    parser.set_defaults(func=lambda args: _run_results(args.output))


def _run_results(output: str) -> int:
    from training.results import main

    return main(["--output", output])


COMMANDS = {
    # --- data stage ---
    "prepare": _add_prepare,
    "features": _add_features,
    # --- models stage ---
    "train": _add_train,
    "evaluate": _add_evaluate,
    "results": _add_results,
}
