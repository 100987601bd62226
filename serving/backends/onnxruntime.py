"""In-process ONNX Runtime backend: the repository's `apron_profile` and `apron_scorer` graphs, each
behind its own micro-batcher (`serving/batching.py`), so concurrent requests share one run.

A batch's histories go to `apron_profile` ragged (one after another plus end offsets, nothing
padded); exclusions are padded with PAD_ID to the batch's longest row, which the scorer ignores
(DESIGN.md section 4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from export import contract
from serving.backends.base import (
    BatchedScorer,
    GraphSignature,
    ScorerRequest,
    batcher_options,
    default_threads,
    pad_rows,
    scorer_threads,
    static_dims,
)
from serving.batching import BatchObserver
from serving.catalog import ServedModel
from serving.config import (
    DEFAULT_INLINE_MIN_BATCH,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE,
    BackendConfig,
    BatchingConfig,
)

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def onnx_path(repository: str | Path, model_name: str, version: int) -> Path:
    return Path(repository) / model_name / str(version) / contract.ONNX_FILENAME


def load_session(path: Path, device: str = "cpu", threads: int = 0, spinning: bool = False) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the repository lacks this model version's ONNX graph")
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(
            f"--ort-device cuda: this onnxruntime has no CUDA provider (available: {ort.get_available_providers()}); "
            "install onnxruntime-gpu or use --ort-device cpu"
        )
    return ort.InferenceSession(str(path), session_options(threads, spinning), providers=PROVIDERS[device])


def load_scorer_session(path: Path, device: str = "cpu", threads: int = 0, spinning: bool = False) -> ort.InferenceSession:
    """`load_session` for a scorer graph: 0 threads gives a large one every core (`scorer_threads`:
    it reads its whole graph per run; the export keeps every weight inside the file)."""
    return load_session(path, device, threads or scorer_threads(path.stat().st_size), spinning)


def session_options(threads: int = 0, spinning: bool = False) -> ort.SessionOptions:
    """The gateway's session settings (`--ort-threads`, `--ort-spinning`; 0 threads: the cores less
    one; `load_scorer_session` gives a large scorer every core)."""
    options = ort.SessionOptions()
    # ONNX Runtime's default takes every core, and the event loop (gRPC, Redis, edits) then preempts
    # its workers mid-batch; one pair of runs on 2 cores: 1 thread instead of 2 gave 560 vs 429 req/s
    # and 2.9 vs 3.9 CPU ms per request (`python -m benchmarks.run`, APRON_ORT_THREADS=1 vs 0 before).
    options.intra_op_num_threads = threads or default_threads()
    # Spinning workers burn CPU between batches that the gateway's event loop needs to gather the
    # next batch. One pair of runs on 2 shared cores (`python -m benchmarks.run`, APRON_ORT_SPINNING
    # true vs false): gateway CPU per request 4.55 -> 4.19 ms, p99 at 70% load 69 -> 49 ms (noisy).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return options


def run_bound(session: ort.InferenceSession, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """`session.run` through an IO binding: the inputs are copied to the session's device once and
    the outputs are allocated by ONNX Runtime on the host, so on the CUDA provider only the small
    (B, K_MAX) top-k tensors come back and no output is first materialised on the device and then
    copied by a second, implicit synchronisation. On the CPU provider it equals `session.run`."""
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(array))
    for name in outputs:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def session_signature(session: ort.InferenceSession) -> GraphSignature:
    inputs = {t.name: static_dims(t.shape) for t in session.get_inputs()}
    outputs = {t.name: static_dims(t.shape) for t in session.get_outputs()}
    if takes_top_k(session):  # its output width is the caller's: what it returns unasked is K_MAX
        k_max = default_top_k(session, inputs)
        outputs = {name: (*dims[:1], k_max) if name in (contract.TOP_IDS, contract.TOP_SCORES) else dims for name, dims in outputs.items()}
    return GraphSignature(inputs, outputs)


def default_top_k(session: ort.InferenceSession, inputs: dict[str, tuple[int | None, ...]]) -> int:
    """How many items a scorer graph returns when TOP_K is not fed (its K_MAX): one run of batch 1,
    an empty profile and no exclusion (ONNX Runtime does not show an initializer's value)."""
    heads, prototypes = inputs[contract.PROFILE_WEIGHTS][1:]
    feeds = {
        contract.PROFILE_WEIGHTS: np.zeros((1, heads or 1, prototypes or 1), np.float32),
        contract.EXCLUDE_IDS: np.full((1, 1), contract.PAD_ID, np.int64),
    }
    [top_ids] = session.run([contract.TOP_IDS], feeds)
    return int(top_ids.shape[1])


def takes_top_k(session: ort.InferenceSession) -> bool:
    """Whether the scorer graph takes how many items to return (`contract.TOP_K`: an overridable
    initializer holding K_MAX); a graph exported before it always returns K_MAX."""
    return any(t.name == contract.TOP_K for t in session.get_overridable_initializers())


def _run_plain(session: ort.InferenceSession, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run(outputs, feeds)


def single_threaded_cpu(session: ort.InferenceSession) -> bool:
    """Whether a run of `session` is all done on the thread that calls it: the CPU provider with one
    intra-op thread (its CPU time there is then the whole run's)."""
    return session.get_providers()[0] == "CPUExecutionProvider" and session.get_session_options().intra_op_num_threads == 1


class OnnxRuntimeScorer(BatchedScorer):
    backend = "onnxruntime"

    def __init__(
        self,
        profile_session: ort.InferenceSession,
        scorer_session: ort.InferenceSession,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_s: float = 0.0,
        observer: BatchObserver | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        inline_min_batch: int = DEFAULT_INLINE_MIN_BATCH,
    ):
        self.profile_session = profile_session
        self.scorer_session = scorer_session
        # the CUDA provider runs through IO bindings (one host<->device copy each way per batch)
        on_cuda = scorer_session.get_providers()[0] == "CUDAExecutionProvider"
        self._run = run_bound if on_cuda else _run_plain
        self._takes_k = takes_top_k(scorer_session)
        super().__init__(
            max_batch_size=max_batch_size, max_wait_s=max_wait_s, observer=observer, max_queue=max_queue,
            inline_min_batch=inline_min_batch, on_caller=(single_threaded_cpu(profile_session), single_threaded_cpu(scorer_session)),
        )  # fmt: skip

    @classmethod
    def from_config(
        cls, inference: BackendConfig, batching: BatchingConfig, repository: str, model: ServedModel, observer: BatchObserver | None = None
    ) -> OnnxRuntimeScorer:
        profile_path, scorer_path = (onnx_path(repository, name, model.version) for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL))
        device, threads, spinning = inference.ort_device, inference.ort_threads, inference.ort_spinning
        # the profile graph gathers a history's rows, whatever the catalog: the cores less one
        profile = load_session(profile_path, device, threads, spinning)
        scorer = load_scorer_session(scorer_path, device, threads, spinning)
        return cls(profile, scorer, observer=observer, **batcher_options(batching))

    @property
    def threads(self) -> dict[str, int]:
        """Each graph's intra-op threads (the start-up log names them)."""
        return {
            name: session.get_session_options().intra_op_num_threads
            for name, session in ((contract.PROFILE_MODEL, self.profile_session), (contract.SCORER_MODEL, self.scorer_session))
        }

    async def signatures(self) -> dict[str, GraphSignature]:
        return {name: session_signature(session) for name, session in
                ((contract.PROFILE_MODEL, self.profile_session), (contract.SCORER_MODEL, self.scorer_session))}

    # Run in the batchers' worker threads: one ONNX Runtime call per batch.
    def _run_profiles(self, histories: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        ids, ends = contract.ragged_batch(histories)  # (T_total,), (B,)
        weights, lengths = self._run(
            self.profile_session,
            [contract.PROFILE_WEIGHTS, contract.HISTORY_LENGTH],
            {contract.HISTORY_IDS: ids, contract.HISTORY_ENDS: ends},
        )  # (B, H, K), (B, 1)
        return [(weights[i], int(lengths[i, 0])) for i in range(len(histories))]

    def _run_scorer(self, requests: list[ScorerRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        weights = np.stack([w for w, _, _ in requests]).astype(np.float32, copy=False)  # (B, H, K)
        exclude = pad_rows([e for _, e, _ in requests])  # (B, E)
        feeds = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: exclude}
        if self._takes_k:  # the batch's largest k (validated: at most K_MAX), not K_MAX (export/contract.py)
            feeds[contract.TOP_K] = np.array([max(k for _, _, k in requests)], dtype=np.int64)
        top_ids, top_scores = self._run(self.scorer_session, [contract.TOP_IDS, contract.TOP_SCORES], feeds)  # (B, k) each
        return [(top_ids[i], top_scores[i]) for i in range(len(requests))]
