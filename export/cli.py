"""`apron export CHECKPOINT --repository model_repository`: checkpoint -> ONNX -> Triton repository.

Order matters: load and validate the checkpoint, check the target repository, export the graphs
to memory, check ONNX Runtime against PyTorch, and only then write (staged + renamed).
The pipeline is export/pipeline.py; this module parses flags and reports, and imports the
pipeline (torch) only when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import UserFacingError

if TYPE_CHECKING:
    from export.triton_repository import RepositorySettings


# each command's one-line help: also `apron --help`'s overview, which builds no command's parser
HELP = {
    "export": "checkpoint -> ONNX -> Triton model repository + apron_metadata.json",
}


def resolve_settings(args: argparse.Namespace) -> tuple[RepositorySettings, int]:
    """(RepositorySettings, K_MAX): the defaults, or `--like REPO`'s settings, with every flag
    given on the command line on top (the flags default to None: "not given")."""
    from export import contract  # numpy: not for `apron --help`
    from export.triton_repository import RepositoryError, RepositorySettings, repository_settings

    if args.like is not None:
        try:
            profile = repository_settings(args.like)
        except RepositoryError as error:
            raise UserFacingError(f"--like: {error}") from error
        base, k_max = profile.settings, profile.k_max
    else:
        base, k_max = RepositorySettings(), contract.DEFAULT_K_MAX
    # each RepositorySettings field has a flag whose dest is the field's name
    named = (f.name for f in dataclasses.fields(RepositorySettings))
    given = {name: getattr(args, name) for name in named if getattr(args, name) is not None}
    if "preferred_batch_sizes" in given:
        given["preferred_batch_sizes"] = tuple(given["preferred_batch_sizes"])
    try:
        settings = dataclasses.replace(base, **given)
    except ValueError as error:
        raise UserFacingError(str(error)) from error
    return settings, k_max if args.k_max is None else args.k_max


def _handle(args: argparse.Namespace) -> int:
    from export import contract  # numpy: not for `apron --help`
    from export.pipeline import ExportError, export_checkpoint

    settings, k_max = resolve_settings(args)
    try:
        result = export_checkpoint(
            args.checkpoint,
            args.repository,
            k_max=k_max,
            version=args.version,
            settings=settings,
            allow_other_models=args.allow_other_models,
            report=True,
        )
    except ExportError as error:
        raise UserFacingError(str(error)) from error
    meta = result.metadata
    print(
        f"exported version {result.version} to {result.repository} ({settings.backend} backend, {meta.precision}): "
        f"{', '.join(contract.MODELS)}; H={meta.n_heads} K={meta.n_prototypes} K_MAX={meta.k_max} "
        f"items={meta.n_items}; Triton keeps the latest {settings.keep_versions} version(s) loaded"
    )
    return 0


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    from export import contract  # numpy: not for `apron --help`
    from export.triton_repository import RepositorySettings

    defaults = RepositorySettings()
    parser = subparsers.add_parser(
        "export",
        help=HELP["export"],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="an APRON checkpoint written by `apron train`")
    parser.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="target Triton repository"
    )
    parser.add_argument("--version", type=int, default=None, help="model version (default: next free number)")
    parser.add_argument(
        "--like",
        type=Path,
        default=None,
        metavar="REPO",
        help="take every setting below (K_MAX, backend, batching, instances, version policy) from the existing "
        "repository REPO's config.pbtxt and metadata; flags given as well override it",
    )
    # Settings default to None ("not given", so --like can fill them); the help shows the real default.
    parser.add_argument(
        "--k-max", type=int, default=None, help=f"items returned by the scorer's TopK (default {contract.DEFAULT_K_MAX})"
    )
    parser.add_argument(
        "--triton-backend",
        dest="backend",
        choices=("onnxruntime", "python"),
        default=None,
        help="onnxruntime: Triton's ONNX Runtime backend (GPU); python: ONNX Runtime inside Triton's python "
        f"backend (CPU) (default {defaults.backend})",
    )
    parser.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="half-precision catalog table and f (GPU serving; default off)",
    )
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the scorer's f with int8 weights, quantized per output channel (CPU serving: a quarter of the bytes "
        "each run reads; its scores are checked against the fp32 model's; default off)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help=f"Triton's max_batch_size, recorded in the metadata for the gateway (default {defaults.max_batch_size})",
    )
    parser.add_argument(
        "--preferred-batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help=f"default {' '.join(map(str, defaults.preferred_batch_sizes))}",
    )
    parser.add_argument(
        "--max-queue-delay-us", type=int, default=None, help=f"default {defaults.max_queue_delay_us}"
    )
    parser.add_argument(
        "--instance-kind", choices=("auto", "gpu", "cpu"), default=None, help=f"default {defaults.instance_kind}"
    )
    parser.add_argument("--instance-count", type=int, default=None, help=f"default {defaults.instance_count}")
    parser.add_argument(
        "--gpu-accelerator", choices=("cuda", "tensorrt"), default=None, help=f"default {defaults.gpu_accelerator}"
    )
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help=f"python backend: ORT threads (default {defaults.cpu_threads}: ORT's own)",
    )
    parser.add_argument(
        "--keep-versions",
        type=int,
        default=None,
        metavar="N",
        help="version_policy: Triton keeps the latest N versions loaded, so gateways on the previous "
        f"version keep answering while they move to the new one (default {defaults.keep_versions})",
    )
    parser.add_argument(
        "--allow-other-models",
        action="store_true",
        help="add APRON to a repository that already serves other models (refused by default)",
    )
    parser.set_defaults(func=_handle)


COMMANDS = {"export": _add_export}
