"""The served APRON: `apron_profile` and `apron_scorer` as torch modules built from exported tensors.

One definition of the serving math (DESIGN.md section 4): `export/onnx_export.py` traces these
modules to the ONNX graphs, and the torch backend (`serving/backends/torch.py`) runs them from the
weights the export writes beside the graphs (`model.safetensors` in each version folder). Nothing
here imports the training code, so a server needs only these tensors.

- `ServedProfile` (Eq. 13 before the value projection): the catalog's per-item prototype weights
  (Eq. 12) are a constant (N, H*K) table; a profile sums the history's rows. The histories of a
  batch arrive ragged: `history_ids` (T,) holds them one after another and `history_ends` (B,) the
  end offset of each (Triton's BATCH_ACCUMULATED_ELEMENT_COUNT), so nothing is padded to the
  longest history and the work is O(T), not O(catalog). Duplicates count once and ids outside
  [0, N) are ignored, exactly like the binary fold-in vector `APRON.profile_weights` is trained on:
  ids are keyed by (row, id), sorted, and only the first of equal keys is summed. The per-row sums
  are one (B, T) x (T, H*K) product with a 0/1 selection matrix, not a scatter-add: ONNX
  Runtime's ScatterElements(add) is an element-by-element loop, ~10x slower at the gateway's batch
  sizes (`python -m benchmarks.model_bench`, 41k items, batch 32 of 50-item histories, 2-core CPU:
  78.9 ms with the scatter, 8.0 ms with the product). The product's B*T*H*K multiply-adds grow
  with the square of the batch, still 5x faster than the scatter at batch 256.
- `ServedScorer` (Eq. 13-14, 6): shares per head, u, f(u), then the log-softmax score of the top
  K_MAX items over the whole catalog, excluded ids at -inf. u is linear in the shares, so it is
  folded into f's first layer (`fold_values`) when f has a hidden layer.
- `edit_penalty` (APRON's optional γ, training/models/apron.py imports it from here, so the training
  model, the graphs and the torch backend share one definition): the cost of an edit, not of the
  catalog. A batch with no removed prototype skips it (an ONNX `If`); otherwise it gathers only the
  removed prototypes' rows of a table laid out (prototype, item) once, at export or load
  (`penalty_table`), and multiplies them by the batch's removal columns.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn


def ragged_rows(history_ends: torch.Tensor, total: int | torch.Tensor) -> torch.Tensor:
    """End offsets (B,) of ragged rows -> the row of each of the `total` flat positions. (T,)

    A +1 at each end offset, then a running sum: position j lies in row #{ends <= j}. Empty rows
    repeat an offset and are skipped; offsets past `total` are clamped, so no index is out of range.
    """
    ends = history_ends.long().clamp(0, total)  # (B,)
    marks = torch.zeros(total + 1, dtype=torch.long, device=ends.device).scatter_add(0, ends, torch.ones_like(ends))
    return marks.cumsum(0)[:total]  # (T,)


def distinct_valid(
    history_ids: torch.Tensor, rows: torch.Tensor, n_rows: int | torch.Tensor, n_items: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(item, row, weight) per flat position, sorted by row: weight 1 at the first occurrence of
    each valid (row, id) pair, 0 for repeats, padding, ids outside [0, n_items) and positions past
    the last row.

    Sorting the keys row * (n_items + 1) + id (an invalid id keys as n_items, the end of its own
    row) puts equal pairs side by side and keeps every row in the span its end offsets give it; a
    valid key that differs from its predecessor is a first occurrence. Static shapes throughout, so
    it can be traced to ONNX and captured in a CUDA graph."""
    valid = (history_ids >= 0) & (history_ids < n_items) & (rows < n_rows)  # (T,)
    keys = rows * (n_items + 1) + torch.where(valid, history_ids, torch.full_like(history_ids, n_items))
    keys, _ = keys.sort()  # (T,)
    previous = torch.cat([torch.full_like(keys[:1], -1), keys])[:-1]  # (T,)
    items = keys % (n_items + 1)  # (T,)
    weight = (keys != previous) & (items < n_items)  # (T,)
    return items.clamp_max(n_items - 1), keys // (n_items + 1), weight  # invalid ones read item N-1, weight 0


class ServedProfile(nn.Module):
    """history_ids (T,), history_ends (B,) -> profile_weights (B, H, K) fp32, history_length (B, 1)."""

    def __init__(self, item_table: torch.Tensor, n_heads: int, n_prototypes: int):
        super().__init__()
        self.n_items, self.n_heads, self.n_prototypes = item_table.shape[0], n_heads, n_prototypes
        self.register_buffer("item_table", item_table)  # (N, H*K), Eq. 12 for every catalog item

    def forward(
        self, history_ids: torch.Tensor, history_ends: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_rows, total = history_ends.shape[0], history_ids.shape[0]
        rows = ragged_rows(history_ends, total)  # (T,)
        items, rows, weight = distinct_valid(history_ids, rows, n_rows, self.n_items)  # (T,) each
        # (B, T) selection: row b of the batch sums the positions of history b that count; one GEMM
        # with fp32 accumulation (the table may be fp16), no scatter
        batch_rows = torch.arange(n_rows, device=rows.device)[:, None]  # (B, 1)
        selection = (rows[None, :] == batch_rows).float() * weight.float()[None, :]  # (B, T)
        weights = selection @ self.item_table[items].float()  # (B, H*K), Eq. 13's sum over each history
        lengths = selection.sum(1).round().long()  # (B,) distinct valid ids
        weights = floor_profile(weights.reshape(-1, self.n_heads, self.n_prototypes))
        return weights, lengths[:, None]  # (B, H, K), (B, 1)


PROFILE_FLOOR = 1e-30  # training/models/apron.py's: only an edit makes a share exactly 0


def floor_profile(weights: torch.Tensor) -> torch.Tensor:
    """Every prototype of a head with mass weighs at least PROFILE_FLOOR, so the edit penalty sees
    removed prototypes only, never attention that underflowed (an fp16 table underflows below 6e-8;
    training/models/apron.py's, repeated like profile_shares)."""
    has_mass = weights.sum(dim=-1, keepdim=True) > 0
    return torch.where(has_mass, weights.clamp_min(PROFILE_FLOOR), weights)


def profile_shares(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each head's weights as shares summing to 1 (training/models/apron.py's, repeated here so the
    served model needs no training code; tests/export checks both against each other)."""
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(eps)


def penalty_table(item_weights: torch.Tensor) -> torch.Tensor:
    """The items' prototype weights W (N, H, K) -> the edit penalty's table (K + H*K, N), laid out by
    prototype: row k is W[:, :, k]'s mean over heads (prototype k removed in every head, which is
    what an edit does), row K + h*K + k is W[:, h, k] (removed in head h only: an fp32 share that
    underflowed after a `weight` edit, or a client's own profile). Contiguous, so a removed
    prototype costs one N-long read."""
    n_items = item_weights.shape[0]
    every_head = item_weights.mean(dim=1).t()  # (K, N)
    per_head = item_weights.permute(1, 2, 0).reshape(-1, n_items)  # (H*K, N)
    return torch.cat([every_head, per_head]).contiguous()


@torch.jit.script_if_tracing
def edit_penalty(logits: torch.Tensor, removed: torch.Tensor, table: torch.Tensor, gamma: float) -> torch.Tensor:
    """logits (B, N) - γ · (1/H) sum_{h,k} removed[b, h, k] W[n, h, k]: each item loses γ times its mean
    attention over heads on the prototypes whose share is 0 (`removed` (B, H, K) bool: profiles are
    floored, so only an edit makes a share 0). `table`: `penalty_table(W)`, on any device; `removed`
    may live on the host (the torch backend decides there, without a device synchronisation).

    Exact factorisation: a prototype removed in every head selects its mean-over-heads row with
    weight 1, one removed in some heads its per-head rows with weight 1/H. The work is one `If` in
    the traced graph (this function is scripted when traced): a batch with nothing removed skips
    it, one with removals Gathers only the R rows its batch selects and multiplies (B, R) x (R, N),
    never reading the (N, H, K) catalog."""
    if not bool(removed.any()):
        return logits
    every = removed.all(dim=1)  # (B, K): removed in every head
    partial = (removed & ~every.unsqueeze(1)).flatten(1)  # (B, H*K): removed in some heads only
    selection = torch.cat([every.to(table.dtype), partial.to(table.dtype) / removed.shape[1]], dim=1)  # (B, K + H*K)
    rows = (selection > 0).any(dim=0).nonzero().squeeze(1)  # (R,) the rows some batch row selects
    chosen = selection.index_select(1, rows).to(table.device)  # (B, R)
    penalty = chosen @ table.index_select(0, rows.to(table.device))  # (B, N)
    return logits - (gamma * penalty).to(logits.dtype)


def exclusion_mask(exclude_ids: torch.Tensor, n_items: int) -> torch.Tensor:
    """Padded ids (B, E) -> bool (B, N), True at excluded items. Padding and ids outside [0, N) set
    nothing: they are scattered into an extra column N that is dropped (ONNX has no masked scatter)."""
    valid = (exclude_ids >= 0) & (exclude_ids < n_items)
    columns = torch.where(valid, exclude_ids, torch.full_like(exclude_ids, n_items))  # (B, E)
    mask = torch.zeros(exclude_ids.shape[0], n_items + 1, dtype=torch.bool, device=exclude_ids.device)
    return mask.scatter(1, columns, torch.ones_like(columns, dtype=torch.bool))[:, :n_items]  # (B, N)


def activation_module(name: str) -> nn.Module:
    modules = {"tanh": nn.Tanh, "relu": nn.ReLU}
    if name not in modules:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(modules)})")
    return modules[name]()


def fold_values(
    prototype_values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """f's first Linear (O, H*D') and the values P~ (K, H, D') -> one Linear (O, H*K) on the shares.

    Eq. 13-14's u = concat_h sum_k s_hk P~_kh is linear in the shares s, so W1 u + b1 = F s + b1
    with F[o, (h, k)] = sum_d W1[o, (h, d)] P~[k, h, d]: the einsum and the first layer become one
    GEMM (`python -m benchmarks.scorer_ops` times both, export/README.md). Only in front of a hidden
    layer: F has O x H*K weights against W1's O x H*D' (1,280 against 1,024 per output here), which
    a hidden layer's O = 600 makes small and a last layer's O = N items would not. The product is
    taken in fp32 whatever f's dtype."""
    n_prototypes, n_heads, head_dim = prototype_values.shape
    if weight.shape[1] != n_heads * head_dim:  # a weights file whose layers do not fit its values
        raise ValueError(
            f"f's first layer takes {weight.shape[1]} inputs, but the prototype values {tuple(prototype_values.shape)} "
            f"give H * D' = {n_heads * head_dim}; re-run `apron export`"
        )
    per_head = weight.float().reshape(weight.shape[0], n_heads, head_dim)  # (O, H, D')
    folded = torch.einsum("khd,ohd->ohk", prototype_values.float(), per_head)  # (O, H, K)
    return folded.reshape(weight.shape[0], n_heads * n_prototypes), bias


class ServedScorer(nn.Module):
    """profile_weights (B, H, K), exclude_ids (B, E) -> top_ids (B, K_MAX), top_scores (B, K_MAX).

    `f_dtype` runs f (Eq. 6, nearly all of the work) in half precision between fp32 tensors: shares
    stay fp32 because the 1e-12 clamp of an empty history rounds to 0 in fp16 (0/0 = NaN). The
    ranking uses the logits themselves and the score subtracts their fp32 log-sum-exp, which equals
    the log-softmax without writing a second (B, N) tensor."""

    def __init__(
        self,
        prototype_values: torch.Tensor,
        layers: list[tuple[torch.Tensor, torch.Tensor]],
        k_max: int,
        activation: str = "tanh",
        f_dtype: torch.dtype = torch.float32,
        edit_penalty: float = 0.0,
        item_weights: torch.Tensor | None = None,
        fold: bool = True,
    ):
        super().__init__()
        self.register_buffer("prototype_values", prototype_values.float())  # (K, H, D'), P~_{k,h}
        # APRON's optional edit penalty (`edit_penalty`): γ · each item's mean attention on the
        # prototypes whose share is 0 is subtracted from its logit. Its table is laid out here,
        # once per export or load; the weights file keeps the (N, H, K) item weights it comes from.
        if edit_penalty > 0 and item_weights is None:
            raise ValueError("an edit penalty needs the items' prototype weights (N, H, K)")
        self.edit_penalty = float(edit_penalty)
        table = penalty_table(item_weights.float()) if edit_penalty > 0 else None
        self.register_buffer("penalty_table", table)  # (K + H*K, N)
        self.n_heads, self.n_prototypes = prototype_values.shape[1], prototype_values.shape[0]
        self.folded = fold and len(layers) > 1  # `fold=False`: the A/B of `benchmarks.scorer_ops` only
        # when folded, f's first layer as given, which the weights file keeps (`layers()`)
        self.register_buffer("value_layer_weight", layers[0][0].float() if self.folded else None, persistent=False)  # (O, H*D')
        if self.folded:
            layers = [fold_values(prototype_values.float(), *layers[0]), *layers[1:]]
        modules: list[nn.Module] = []
        for index, (weight, bias) in enumerate(layers):
            linear = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)
            modules.append(linear)
            if index < len(layers) - 1:
                modules.append(activation_module(activation))
        self.f = nn.Sequential(*modules).to(f_dtype).requires_grad_(False)
        self.f_dtype = f_dtype
        self.activation = activation
        self.n_items = layers[-1][0].shape[0]
        self.k_max = min(k_max, self.n_items)

    @property
    def penalised(self) -> bool:
        return self.penalty_table is not None

    def removed(self, profile_weights: torch.Tensor) -> torch.Tensor:
        """(B, H, K) weights -> bool (B, H, K): the prototypes whose share is 0 (profiles are floored,
        so only an edit removes one; an empty profile has every share 0)."""
        return profile_shares(profile_weights.float()) == 0

    def logits(self, profile_weights: torch.Tensor, penalise: bool = True) -> torch.Tensor:
        """Shares per head, u (Eq. 13-14), logits f(u) (Eq. 6) in f's dtype, then the edit penalty
        (unless `penalise` is False: see `penalise_rows`). (B, H, K) -> (B, N)"""
        shares = profile_shares(profile_weights.float())
        if self.folded:  # u is folded into f's first layer (`fold_values`): f reads the shares
            logits = self.f(shares.flatten(1).to(self.f_dtype))  # (B, H*K) -> (B, N)
        else:
            u = torch.einsum("bhk,khd->bhd", shares, self.prototype_values)  # (B, H, D')
            logits = self.f(u.flatten(1).to(self.f_dtype))  # Eq. 14 concatenates the heads
        if penalise and self.penalty_table is not None:
            logits = edit_penalty(logits, shares == 0, self.penalty_table, self.edit_penalty)
        return logits

    def normalised_logits(
        self, profile_weights: torch.Tensor, penalise: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, N) in f's dtype, their fp32 log-sum-exp (B, 1)): the log-softmax over the
        whole catalog is logits - normaliser, excluded items included in the normaliser."""
        logits = self.logits(profile_weights, penalise)
        return logits, logits.float().logsumexp(dim=-1, keepdim=True)

    def penalise_rows(
        self, logits: torch.Tensor, normaliser: torch.Tensor, removed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`normalised_logits(..., penalise=False)`'s outputs + `removed(weights)` -> what
        `normalised_logits(weights)` returns: the torch backend's CUDA graphs cannot branch on the
        data, so it applies the penalty after them, to the rows with a removed prototype only (their
        logits in place, their normaliser recomputed). `removed` may be on the host."""
        if self.penalty_table is None:
            return logits, normaliser
        rows = removed.flatten(1).any(dim=1).nonzero().squeeze(1)  # (R,) rows with an edit
        if rows.numel() == 0:
            return logits, normaliser
        on_device = rows.to(logits.device)
        edited = edit_penalty(
            logits.index_select(0, on_device), removed.index_select(0, rows), self.penalty_table, self.edit_penalty
        )
        logits.index_copy_(0, on_device, edited)
        return logits, normaliser.index_copy(0, on_device, edited.float().logsumexp(dim=-1, keepdim=True))

    def top(
        self, masked_logits: torch.Tensor, normaliser: torch.Tensor, top_k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits with excluded items at -inf -> (top_ids, top_scores) (B, top_k; default K_MAX), best first."""
        top_logits, top_ids = masked_logits.topk(self.k_max if top_k is None else top_k, dim=-1)
        return top_ids, top_logits.float() - normaliser

    def forward(
        self, profile_weights: torch.Tensor, exclude_ids: torch.Tensor, top_k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`top_k` (eager only: the export traces K_MAX and `expose_top_k` makes it the graph's
        TOP_K input): how many items to return.

        The scores are the log-softmax itself (ONNX `LogSoftmax`), not logits less a separate
        log-sum-exp as the torch backend's CUDA graphs need (`normalised_logits`, `top`): ONNX
        Runtime's CPU `ReduceLogSumExp` is several times slower than its `LogSoftmax` (7-8x at
        (4-32, 41,000) on one thread: `python -m benchmarks.scorer_ops`, export/README.md) and was
        29 % of the whole scorer at (32, 41,000). The same numbers: log_softmax(x) =
        x - logsumexp(x), both over every item, the excluded included."""
        top_scores, top_ids = self.scores(profile_weights, exclude_ids).topk(self.k_max if top_k is None else top_k, dim=-1)
        return top_ids, top_scores

    def scores(self, profile_weights: torch.Tensor, exclude_ids: torch.Tensor) -> torch.Tensor:
        """Every item's score (B, N): what `forward`'s top k are taken from."""
        logits = self.logits(profile_weights).float()
        return F.log_softmax(logits, dim=-1).masked_fill(exclusion_mask(exclude_ids, self.n_items), float("-inf"))

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """f's layers as given to the constructor (the first one unfolded), in f's dtype."""
        linears = [(m.weight, m.bias) for m in self.f if isinstance(m, nn.Linear)]
        if self.value_layer_weight is not None:
            linears[0] = (self.value_layer_weight.to(self.f_dtype), linears[0][1])
        return linears


# ---- the weights file (`model.safetensors` beside each graph's model.onnx) -------------------------

WEIGHTS_FORMAT = "apron-torch-weights/1"
ITEM_TABLE = "item_table"
PROTOTYPE_VALUES = "prototype_values"
ITEM_WEIGHTS = "item_weights"  # only with an edit penalty


def profile_tensors(profile: ServedProfile) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, string metadata) of the profile's weights file; always fp32 (the dtype is a
    serving choice: the torch backend casts on load)."""
    metadata = {"format": WEIGHTS_FORMAT, "n_heads": str(profile.n_heads), "n_prototypes": str(profile.n_prototypes)}
    return {ITEM_TABLE: profile.item_table.float().contiguous()}, metadata


def scorer_tensors(scorer: ServedScorer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {PROTOTYPE_VALUES: scorer.prototype_values.float().contiguous()}
    for index, (weight, bias) in enumerate(scorer.layers()):
        tensors[f"f.{index}.weight"] = weight.float().contiguous()
        tensors[f"f.{index}.bias"] = bias.float().contiguous()
    metadata = {"format": WEIGHTS_FORMAT, "activation": scorer.activation, "k_max": str(scorer.k_max)}
    if scorer.penalty_table is not None:  # the (N, H, K) weights it is laid out from at load
        per_head = scorer.penalty_table[scorer.n_prototypes :]  # (H*K, N)
        weights = per_head.reshape(scorer.n_heads, scorer.n_prototypes, -1).permute(2, 0, 1)
        tensors[ITEM_WEIGHTS] = weights.float().contiguous()
        metadata["edit_penalty"] = repr(scorer.edit_penalty)
    return tensors, metadata


def weights_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def _check_format(metadata: dict[str, str] | None, source: str) -> dict[str, str]:
    if not metadata or metadata.get("format") != WEIGHTS_FORMAT:
        found = (metadata or {}).get("format")
        raise ValueError(
            f"{source}: weights format is {found!r}, expected {WEIGHTS_FORMAT!r}; re-run `apron export`"
        )
    return metadata


def load_tensors(source: str | bytes, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A weights file (path) or its bytes -> (tensors on `device`, metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load

    if isinstance(source, bytes):
        tensors = load(source)
        # safetensors' bytes loader drops the metadata: read the header (8-byte length + JSON) here
        size = int.from_bytes(source[:8], "little")
        metadata = json.loads(source[8 : 8 + size]).get("__metadata__")
        name = "<bytes>"
    else:
        with safe_open(source, framework="pt", device=device) as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        name = str(source)
    return {key: value.to(device) for key, value in tensors.items()}, _check_format(metadata, name)


def profile_from_tensors(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], dtype: torch.dtype = torch.float32
) -> ServedProfile:
    return ServedProfile(tensors[ITEM_TABLE].to(dtype), int(metadata["n_heads"]), int(metadata["n_prototypes"]))


def scorer_from_tensors(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], f_dtype: torch.dtype = torch.float32
) -> ServedScorer:
    n_layers = sum(1 for key in tensors if key.startswith("f.") and key.endswith(".weight"))
    layers = [(tensors[f"f.{i}.weight"], tensors[f"f.{i}.bias"]) for i in range(n_layers)]
    return ServedScorer(
        tensors[PROTOTYPE_VALUES], layers, int(metadata["k_max"]), metadata["activation"], f_dtype,
        float(metadata.get("edit_penalty", 0.0)), tensors.get(ITEM_WEIGHTS),
    ).to(tensors[PROTOTYPE_VALUES].device)  # fmt: skip
