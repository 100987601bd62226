"""`apron export CHECKPOINT --repository model_repository`: checkpoint -> ONNX -> Triton repository.

Order matters: load and validate the checkpoint, check the target repository, export the graphs
to memory, check ONNX Runtime against PyTorch, and only then write (staged + renamed).
The pipeline is export/pipeline.py; this module parses flags and reports, and imports the
pipeline (torch) only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import UserFacingError
from export import contract


def _handle(args: argparse.Namespace) -> int:
    from export.pipeline import ExportError, export_checkpoint
    from export.triton_repository import RepositorySettings

    try:
        settings = RepositorySettings(
            backend=args.triton_backend,
            max_batch_size=args.max_batch_size,
            preferred_batch_sizes=tuple(args.preferred_batch_sizes),
            max_queue_delay_us=args.max_queue_delay_us,
            instance_kind=args.instance_kind,
            instance_count=args.instance_count,
            gpu_accelerator=args.gpu_accelerator,
            fp16=args.fp16,
            cpu_threads=args.cpu_threads,
        )
    except ValueError as error:
        raise UserFacingError(str(error)) from error
    try:
        result = export_checkpoint(
            args.checkpoint,
            args.repository,
            k_max=args.k_max,
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
        f"items={meta.n_items}"
    )
    return 0


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    from export.triton_repository import RepositorySettings

    defaults = RepositorySettings()
    parser = subparsers.add_parser(
        "export",
        help="checkpoint -> ONNX -> Triton model repository + apron_metadata.json",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="an APRON checkpoint written by `apron train`")
    parser.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="target Triton repository"
    )
    parser.add_argument("--version", type=int, default=None, help="model version (default: next free number)")
    parser.add_argument(
        "--k-max", type=int, default=contract.DEFAULT_K_MAX, help="items returned by the scorer's TopK"
    )
    parser.add_argument(
        "--triton-backend",
        choices=("onnxruntime", "python"),
        default=defaults.backend,
        help="onnxruntime: Triton's ONNX Runtime backend (GPU); python: ONNX Runtime inside Triton's python backend (CPU)",
    )
    parser.add_argument(
        "--fp16", action="store_true", help="half-precision catalog table and f (GPU serving)"
    )
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument(
        "--preferred-batch-sizes", type=int, nargs="+", default=list(defaults.preferred_batch_sizes)
    )
    parser.add_argument("--max-queue-delay-us", type=int, default=defaults.max_queue_delay_us)
    parser.add_argument("--instance-kind", choices=("auto", "gpu", "cpu"), default=defaults.instance_kind)
    parser.add_argument("--instance-count", type=int, default=defaults.instance_count)
    parser.add_argument("--gpu-accelerator", choices=("cuda", "tensorrt"), default=defaults.gpu_accelerator)
    parser.add_argument(
        "--cpu-threads", type=int, default=defaults.cpu_threads, help="python backend: ORT threads"
    )
    parser.add_argument(
        "--allow-other-models",
        action="store_true",
        help="add APRON to a repository that already serves other models (refused by default)",
    )
    parser.set_defaults(func=_handle)


COMMANDS = {"export": _add_export}
