"""ONNX graphs vs the PyTorch APRON model, in-process with ONNX Runtime (no server)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from export import contract
from export.contract import Precision
from export.onnx_export import (
    TOLERANCES,
    ExportedGraphs,
    check_parity,
    export_onnx,
    ragged,
    random_histories,
    served_scorer,
    session,
    with_int8_scorer,
)
from export.quantize import all_nodes
from export.served_model import load_tensors
from tests.edit_penalty import edited_batches, reference_logits, reference_scores
from tests.export.fixtures import TINY, TINY_K_MAX
from training.checkpoint import load_checkpoint
from training.models.apron import APRON


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> APRON:
    return load_checkpoint(tiny_checkpoint)[0]


@pytest.fixture(scope="module")
def graphs(model: APRON) -> ExportedGraphs:
    return export_onnx(model, k_max=TINY_K_MAX)


def profile_feed(histories: np.ndarray) -> dict[str, np.ndarray]:
    """Padded rows -> apron_profile's ragged inputs."""
    ids, ends = ragged(histories)
    return {contract.HISTORY_IDS: ids, contract.HISTORY_ENDS: ends}


def multi_hot(histories: np.ndarray, n_items: int) -> torch.Tensor:
    x = torch.zeros(len(histories), n_items)
    for row, ids in enumerate(histories):
        x[row, ids[ids >= 0]] = 1.0
    return x


def reference_top_k(
    model: APRON, weights: torch.Tensor, exclude: torch.Tensor, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """torch.topk of the PyTorch model's log-softmax scores with `exclude` (B, N) masked out."""
    with torch.no_grad():
        scores = F.log_softmax(model.score(weights), dim=-1).masked_fill(exclude > 0, float("-inf"))
        values, ids = torch.topk(scores, k, dim=-1)
    return ids.numpy(), values.numpy()


@pytest.mark.parametrize("fp16", [False, True])
def test_parity_within_tolerance(model: APRON, fp16: bool) -> None:
    precision = Precision.of(fp16, int8=False)
    graphs = export_onnx(model, k_max=TINY_K_MAX, precision=precision)
    results = check_parity(graphs, model, precision, batch=12, seed=3)
    assert {(r.model, r.tensor) for r in results} >= {
        (contract.PROFILE_MODEL, contract.PROFILE_WEIGHTS),
        (contract.SCORER_MODEL, contract.TOP_SCORES),
        (contract.ITEM_ENCODER_MODEL, contract.ITEM_PROTOTYPE_WEIGHTS),
    }
    atol, _ = TOLERANCES[precision]
    for result in results:
        assert result.ok, str(result)
        assert result.max_abs_error <= atol * 50, str(result)  # scores are ~|5|: atol + rtol * 5 at most
    if not fp16:  # fp32 graphs must be much tighter than the tolerance
        assert max(r.max_abs_error for r in results) < 1e-4


def test_profile_matches_model_at_any_batch_and_length(model: APRON, graphs: ExportedGraphs) -> None:
    profile = session(graphs.onnx[contract.PROFILE_MODEL])
    rng = np.random.default_rng(1)
    for batch, length in [(1, 1), (5, 17), (9, 80)]:
        histories = random_histories(TINY["n_items"], batch, length, rng)
        histories[-1, 0] = histories[-1, 1] if length > 1 else histories[-1, 0]  # a duplicate counts once
        weights, lengths = profile.run(None, profile_feed(histories))
        x = multi_hot(histories, TINY["n_items"])
        with torch.no_grad():
            expected = model.profile_weights(x).numpy()
        assert weights.shape == (batch, TINY["n_heads"], TINY["n_tags"])
        np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(lengths[:, 0], x.sum(-1).numpy().astype(np.int64))


def test_out_of_range_ids_are_ignored(graphs: ExportedGraphs) -> None:
    profile = session(graphs.onnx[contract.PROFILE_MODEL])
    clean = np.array([[3, 7, -1, -1]], dtype=np.int64)
    noisy = np.array([[3, 7, TINY["n_items"], -5]], dtype=np.int64)
    raw = {contract.HISTORY_ENDS: np.array([4], np.int32)}  # padding sent as is, not dropped
    a = profile.run(None, {contract.HISTORY_IDS: clean[0], **raw})
    b = profile.run(None, {contract.HISTORY_IDS: noisy[0], **raw})
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1][0, 0] == b[1][0, 0] == 2 and a[0].sum() > 0


def test_ragged_rows_are_independent_and_repeats_count_once(graphs: ExportedGraphs) -> None:
    """Empty rows anywhere, the same id in several rows, repeats within a row, ids past the last
    end offset: each row's profile is the one it gets alone."""
    profile = session(graphs.onnx[contract.PROFILE_MODEL])
    rows = [[], [5, 9, 5, 5], [9], [], [9, 5, -1, 200, 9], []]
    ids = np.array([i for row in rows for i in row], np.int64)
    ends = np.cumsum([len(row) for row in rows]).astype(np.int32)
    weights, lengths = profile.run(None, {contract.HISTORY_IDS: ids, contract.HISTORY_ENDS: ends})
    for row, history in enumerate(rows):
        alone = profile.run(
            None, {contract.HISTORY_IDS: np.array(history, np.int64), contract.HISTORY_ENDS: np.array([len(history)], np.int32)}
        )
        np.testing.assert_allclose(weights[row], alone[0][0], rtol=1e-6, atol=1e-7)
        assert lengths[row, 0] == alone[1][0, 0] == len({i for i in history if 0 <= i < TINY["n_items"]})
    np.testing.assert_allclose(weights[1], weights[4], rtol=1e-6)  # {5, 9} either way
    assert weights[1].sum() > 0 and np.all(weights[[0, 3, 5]] == 0)
    trailing = profile.run(  # ids after the last end belong to no row
        None, {contract.HISTORY_IDS: np.array([5, 9, 7], np.int64), contract.HISTORY_ENDS: np.array([2], np.int32)}
    )
    np.testing.assert_allclose(trailing[0][0], weights[1], rtol=1e-6)


def test_profile_graph_gathers_instead_of_multiplying_the_catalog(graphs: ExportedGraphs) -> None:
    """O(history), not O(catalog): the (N, H*K) table is only ever read by Gather (its history rows),
    never multiplied by a dense row; the one product left is over the gathered (T, H*K) rows."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(graphs.onnx[contract.PROFILE_MODEL]).graph
    tables = [init.name for init in graph.initializer if numpy_helper.to_array(init).shape[:1] == (TINY["n_items"],)]
    assert len(tables) == 1, [init.name for init in graph.initializer]
    readers = {node.op_type for node in graph.node if tables[0] in node.input}
    assert readers == {"Gather"}, readers


def test_scorer_top_k_equals_torch_topk_with_history_excluded(model: APRON, graphs: ExportedGraphs) -> None:
    histories = random_histories(TINY["n_items"], 10, 40, np.random.default_rng(2))
    x = multi_hot(histories, TINY["n_items"])
    with torch.no_grad():
        weights = model.profile_weights(x)
    top_ids, top_scores = session(graphs.onnx[contract.SCORER_MODEL]).run(
        None, {contract.PROFILE_WEIGHTS: weights.numpy(), contract.EXCLUDE_IDS: histories}
    )
    expected_ids, expected_scores = reference_top_k(model, weights, x, TINY_K_MAX)
    assert top_ids.shape == top_scores.shape == (10, TINY_K_MAX)
    np.testing.assert_array_equal(top_ids, expected_ids)
    np.testing.assert_allclose(top_scores, expected_scores, rtol=1e-5, atol=1e-5)
    for row, ids in enumerate(histories):
        assert not set(top_ids[row]) & set(ids[ids >= 0].tolist())
    assert np.all(np.diff(top_scores, axis=1) <= 0)  # best first


def test_dropping_a_prototype_changes_top_k_like_pytorch(model: APRON, graphs: ExportedGraphs) -> None:
    histories = random_histories(TINY["n_items"], 12, 30, np.random.default_rng(4))[1:]  # non-empty rows
    x = multi_hot(histories, TINY["n_items"])
    scorer = session(graphs.onnx[contract.SCORER_MODEL])
    with torch.no_grad():
        weights = model.profile_weights(x)
    tag = int(weights.sum(dim=(0, 1)).argmax())  # the prototype these users lean on most
    dropped = weights.clone()
    dropped[:, :, tag] = 0.0  # the gateway's edit "scale 0" of DESIGN.md section 2
    before, _ = scorer.run(None, {contract.PROFILE_WEIGHTS: weights.numpy(), contract.EXCLUDE_IDS: histories})
    after, after_scores = scorer.run(
        None, {contract.PROFILE_WEIGHTS: dropped.numpy(), contract.EXCLUDE_IDS: histories}
    )
    with torch.no_grad():
        expected = F.log_softmax(model.logits_without_tag(x, tag), dim=-1).masked_fill(x > 0, float("-inf"))
        expected_scores, expected_ids = torch.topk(expected, TINY_K_MAX, dim=-1)
    np.testing.assert_array_equal(after, expected_ids.numpy())
    np.testing.assert_allclose(after_scores, expected_scores.numpy(), rtol=1e-5, atol=1e-5)
    changed = [len(set(b) ^ set(a)) for b, a in zip(before, after, strict=True)]
    assert sum(changed) > 0, "dropping the dominant prototype changed no recommendation"


def test_empty_history_and_k_max_clamped_to_catalog(model: APRON) -> None:
    graphs = export_onnx(model, k_max=10_000)
    assert graphs.k_max == TINY["n_items"]
    empty = np.full((2, 3), contract.PAD_ID, dtype=np.int64)
    weights, lengths = session(graphs.onnx[contract.PROFILE_MODEL]).run(None, profile_feed(empty))
    assert np.all(weights == 0) and np.all(lengths == 0)
    top_ids, top_scores = session(graphs.onnx[contract.SCORER_MODEL]).run(
        None, {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: empty}
    )
    assert top_ids.shape == (2, TINY["n_items"]) and np.isfinite(top_scores).all()
    assert sorted(top_ids[0].tolist()) == list(range(TINY["n_items"]))
    np.testing.assert_allclose(np.exp(top_scores).sum(-1), 1.0, rtol=1e-4)  # log-softmax over the catalog


def test_item_encoder_matches_catalog_table(model: APRON, graphs: ExportedGraphs) -> None:
    """New-item path: encoding a catalog item's features gives that item's row of the table."""
    encoder = session(graphs.onnx[contract.ITEM_ENCODER_MODEL])
    ids = np.array([0, 5, 77])
    (encoded,) = encoder.run(None, {contract.ITEM_FEATURES: model.item_features[ids].numpy()})
    with torch.no_grad():
        table = model.item_prototype_weights()[ids].numpy()
    np.testing.assert_allclose(encoded, table, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoded.sum(-1), 1.0, rtol=1e-5)  # Eq. 12: a softmax over prototypes


def _with_config(model: APRON, **changes: object) -> APRON:
    """The same weights under a config with `changes` (an APRON option)."""
    import dataclasses

    other = APRON(dataclasses.replace(model.config, **changes))
    other.load_state_dict(model.state_dict())
    return other.eval()


@pytest.fixture(scope="module")
def penalised(model: APRON) -> APRON:
    return _with_config(model, edit_penalty=10.0)


@pytest.mark.parametrize("fp16", [False, True])
def test_edit_penalty_matches_the_whole_table_formula_in_every_runtime(penalised: APRON, fp16: bool) -> None:
    """ONNX Runtime, the traced module and the torch backend's weights file score every edit case
    (tests/edit_penalty.py) like the einsum over the whole (N, H, K) table that the penalty was
    before it became the cost of an edit; the weights file keeps the (N, H, K) weights."""
    from export.served_model import ITEM_WEIGHTS, load_tensors, scorer_from_tensors

    n_items = TINY["n_items"]
    graphs = export_onnx(penalised, k_max=n_items, precision=Precision.of(fp16, int8=False))  # every item's score, sorted
    onnx_scorer = session(graphs.onnx[contract.SCORER_MODEL])
    tensors, metadata = load_tensors(graphs.weights[contract.SCORER_MODEL])
    with torch.no_grad():
        torch.testing.assert_close(tensors[ITEM_WEIGHTS], penalised.item_prototype_weights(), rtol=0, atol=0)
    dtype = torch.float16 if fp16 else torch.float32
    from_file = scorer_from_tensors(tensors, metadata, dtype)
    histories = random_histories(n_items, 6, 30, np.random.default_rng(5))[1:]  # 5 non-empty rows
    with torch.no_grad():
        weights = penalised.profile_weights(multi_hot(histories, n_items))
    no_exclusions = np.full((len(histories), 1), contract.PAD_ID, np.int64)
    atol, rtol = TOLERANCES[Precision.of(fp16, int8=False)]
    modules = {"traced module": graphs.modules[contract.SCORER_MODEL], "weights file": from_file}
    for case, batch in edited_batches(weights).items():
        with torch.no_grad():
            expected = reference_logits(penalised, batch)
            for name, module in modules.items():
                logits = module.logits(batch).float()
                torch.testing.assert_close(logits, expected, rtol=rtol, atol=atol * 10, msg=f"{case}: {name}")
        feeds = {contract.PROFILE_WEIGHTS: batch.numpy(), contract.EXCLUDE_IDS: no_exclusions}
        _, top_scores = onnx_scorer.run(None, feeds)
        expected_scores = reference_scores(penalised, batch).numpy()
        np.testing.assert_allclose(top_scores, expected_scores, rtol=rtol, atol=atol * 10, err_msg=case)


def test_u_is_folded_into_f_and_the_weights_file_keeps_f_as_trained(penalised: APRON) -> None:
    """Eq. 13-14's u is linear in the shares, so the export folds it into f's first layer: the graph
    has no Einsum, scores every edit case like the unfolded module (which `fold=False` keeps), and the
    weights file still holds f's first layer as trained (apron-torch-weights/1 is unchanged)."""
    import onnx

    from export.served_model import ServedScorer, load_tensors, scorer_from_tensors

    graphs = export_onnx(penalised, k_max=TINY_K_MAX)
    ops = {node.op_type for node, _ in _nodes(onnx.load_from_string(graphs.onnx[contract.SCORER_MODEL]).graph)}
    assert "Einsum" not in ops, ops
    folded = graphs.modules[contract.SCORER_MODEL]
    assert folded.folded
    tensors, metadata = load_tensors(graphs.weights[contract.SCORER_MODEL])
    torch.testing.assert_close(tensors["f.0.weight"], penalised.f[0].weight.detach(), rtol=0, atol=0)
    from_file = scorer_from_tensors(tensors, metadata)
    unfolded = ServedScorer(
        folded.prototype_values, folded.layers(), folded.k_max, folded.activation, edit_penalty=folded.edit_penalty,
        item_weights=penalised.item_prototype_weights().detach(), fold=False,
    )  # fmt: skip
    assert from_file.folded and not unfolded.folded
    histories = random_histories(TINY["n_items"], 6, 30, np.random.default_rng(7))[1:]
    with torch.no_grad():
        weights = penalised.profile_weights(multi_hot(histories, TINY["n_items"]))
        for case, batch in edited_batches(weights).items():
            expected = reference_logits(penalised, batch)
            for name, module in {"folded": folded, "from file": from_file, "unfolded": unfolded}.items():
                torch.testing.assert_close(module.logits(batch), expected, rtol=1e-5, atol=1e-5, msg=f"{case}: {name}")


def test_f_without_a_hidden_layer_is_not_folded() -> None:
    """Folding u into a first layer that is also the last (O = N items) would only add work."""
    from export.served_model import ServedScorer

    generator = torch.Generator().manual_seed(0)
    values = torch.randn(6, 4, 8, generator=generator)  # (K, H, D')
    weight, bias = torch.randn(50, 32, generator=generator), torch.randn(50, generator=generator)
    scorer = ServedScorer(values, [(weight, bias)], k_max=10)
    assert not scorer.folded
    shares = torch.rand(3, 4, 6, generator=generator)
    shares = shares / shares.sum(-1, keepdim=True)
    expected = torch.einsum("bhk,khd->bhd", shares, values).flatten(1) @ weight.t() + bias
    torch.testing.assert_close(scorer.logits(shares), expected, rtol=1e-5, atol=1e-5)


def test_a_first_layer_that_does_not_fit_the_prototype_values_is_refused_by_name() -> None:
    from export.served_model import ServedScorer

    values = torch.randn(6, 4, 8)  # (K, H, D'): f's first layer must take H * D' = 32 inputs
    layers = [(torch.randn(16, 30), torch.zeros(16)), (torch.randn(50, 16), torch.zeros(50))]
    with pytest.raises(ValueError, match=r"takes 30 inputs, but the prototype values \(6, 4, 8\) give H \* D' = 32"):
        ServedScorer(values, layers, k_max=10)


def _nodes(graph: object, inside_if: bool = False) -> list[tuple[object, bool]]:
    """Every node of an ONNX graph with its subgraphs', and whether it sits inside an `If` branch."""
    import onnx

    found = []
    for node in graph.node:
        found.append((node, inside_if))
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += _nodes(attribute.g, inside_if or node.op_type == "If")
    return found


def _nodes_run(onnx_model: bytes, feeds: dict[str, np.ndarray], directory: Path) -> set[str]:
    """The names of the nodes ONNX Runtime ran for `feeds` (its profiler, subgraphs included)."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(directory / "scorer")
    runner = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    runner.run(None, feeds)
    events = json.loads(Path(runner.end_profiling()).read_text())
    suffix = "_kernel_time"
    return {e["name"].removesuffix(suffix) for e in events if e.get("cat") == "Node" and e["name"].endswith(suffix)}


def test_a_batch_without_removal_never_reads_the_penalty_table(penalised: APRON, tmp_path: Path) -> None:
    """The scorer graph reads its penalty table only through a Gather inside an `If` branch, and
    ONNX Runtime runs it only for a batch with a removed prototype: an unedited batch pays no
    penalty work, an edited one reads the removed prototypes' rows."""
    import onnx

    graphs = export_onnx(penalised, k_max=TINY_K_MAX)
    scorer = graphs.onnx[contract.SCORER_MODEL]
    readers = [(node, inside) for node, inside in _nodes(onnx.load_from_string(scorer).graph)
               if "penalty_table" in node.input]  # fmt: skip
    assert len(readers) == 1 and all(node.op_type == "Gather" and inside for node, inside in readers), readers
    table_gathers = {node.name for node, _ in readers}
    histories = random_histories(TINY["n_items"], 6, 30, np.random.default_rng(5))[1:]
    with torch.no_grad():
        weights = penalised.profile_weights(multi_hot(histories, TINY["n_items"]))
    batches = edited_batches(weights)
    feeds = {
        case: {contract.PROFILE_WEIGHTS: batches[case].numpy(), contract.EXCLUDE_IDS: histories}
        for case in ("none", "some heads")
    }
    assert not table_gathers & _nodes_run(scorer, feeds["none"], tmp_path)
    assert table_gathers <= _nodes_run(scorer, feeds["some heads"], tmp_path)


def test_summed_profiles_are_refused_by_the_export(model: APRON) -> None:
    with pytest.raises(ValueError, match="profile='sum' cannot be served"):
        served_scorer(_with_config(model, profile="sum"), TINY_K_MAX)


def test_heads_per_tag_group_export_their_mask(model: APRON) -> None:
    """A model with tag groups: the catalog table, the new-item encoder and the scorer all carry the
    head mask (exact zeros outside each head's group), because they are traced from the model."""
    import dataclasses

    grouped = APRON(dataclasses.replace(model.config, tag_groups=2))
    grouped.load_state_dict(model.state_dict(), strict=False)  # head_mask stays all-True here ...
    grouped.head_mask[0, 1:] = False  # ... so give head 0 one prototype and check it is exported
    grouped.eval()
    graphs = export_onnx(grouped, k_max=TINY_K_MAX)
    encoder = session(graphs.onnx[contract.ITEM_ENCODER_MODEL])
    ids = np.array([0, 5, 77])
    (encoded,) = encoder.run(None, {contract.ITEM_FEATURES: grouped.item_features[ids].numpy()})
    encoded = encoded.reshape(len(ids), grouped.config.n_heads, grouped.config.n_tags)
    np.testing.assert_allclose(encoded[:, 0, 0], 1.0, rtol=1e-6)
    assert (encoded[:, 0, 1:] == 0).all()
    with torch.no_grad():
        np.testing.assert_allclose(encoded, grouped.encode_items(grouped.item_features[ids]).numpy(), atol=1e-6)


def test_heads_reading_all_features_export_like_the_model(model: APRON) -> None:
    """head_features="full" changes the shape of A^x and A^p; the traced item encoder follows it."""
    import dataclasses

    torch.manual_seed(0)
    full = APRON(dataclasses.replace(model.config, head_features="full"))
    for name in ("item_features", "feature_mean", "feature_std", "prototype_items", "item_tags"):
        getattr(full, name).copy_(getattr(model, name))
    full.eval()
    graphs = export_onnx(full, k_max=TINY_K_MAX)
    encoder = session(graphs.onnx[contract.ITEM_ENCODER_MODEL])
    ids = np.array([0, 5, 77])
    (encoded,) = encoder.run(None, {contract.ITEM_FEATURES: full.item_features[ids].numpy()})
    with torch.no_grad():
        expected = full.encode_items(full.item_features[ids]).numpy()
    np.testing.assert_allclose(encoded.reshape(expected.shape), expected, atol=1e-6)


def test_served_profiles_are_floored_like_the_model(model: APRON) -> None:
    """A catalog table with exact zeros (sharp attention, or fp16 underflow): the profile graph floors
    every prototype of a non-empty history at the model's PROFILE_FLOOR, so only an edit makes a
    share 0 for the edit penalty; an empty history stays 0."""
    from export import served_model
    from training.models import apron

    assert served_model.PROFILE_FLOOR == apron.PROFILE_FLOOR
    table = torch.zeros(6, 2 * 3)
    table[torch.arange(6), torch.arange(6) % 3] = 1.0  # one-hot attention in head 0 ...
    table[torch.arange(6), 3 + torch.arange(6) % 3] = 1.0  # ... and in head 1: exact zeros elsewhere
    profile = served_model.ServedProfile(table, n_heads=2, n_prototypes=3)
    ids, ends = torch.tensor([0, 3, 1]), torch.tensor([2, 3, 3])  # histories [0, 3], [1], []
    weights, lengths = profile(ids, ends)
    expected = apron.floor_profile(torch.stack([table[[0, 3]].sum(0), table[1], torch.zeros(6)]).reshape(3, 2, 3))
    torch.testing.assert_close(weights, expected)
    assert (weights[:2] > 0).all() and (weights[2] == 0).all() and lengths.flatten().tolist() == [2, 1, 0]
    graph = session(export_onnx(model, k_max=TINY_K_MAX).onnx[contract.PROFILE_MODEL])
    (onnx_weights, _) = graph.run(None, profile_feed(np.array([[0, -1], [5, 7]])))
    assert (onnx_weights > 0).all()


def test_int8_quantizes_f_alone_and_scores_within_its_tolerance(penalised: APRON, caplog: pytest.LogCaptureFixture) -> None:
    """`--int8`: f's two layers become integer products on int8 weights and nothing else changes
    (the penalty, the exclusions, the profile graph), the quantizer's advice is not logged; its scores pass the int8 parity check and
    fail the fp32 one, so the check tells the two apart."""
    fp32 = export_onnx(penalised, k_max=TINY_K_MAX)
    caplog.set_level(logging.INFO)
    int8 = export_onnx(penalised, k_max=TINY_K_MAX, precision=Precision.INT8)
    assert not [r for r in caplog.records if "pre-process" in r.getMessage()]
    graph = onnx.load_from_string(int8.onnx[contract.SCORER_MODEL])
    ops = [node.op_type for node in all_nodes(graph.graph)]  # the edit penalty's If branches included
    before = [node.op_type for node in all_nodes(onnx.load_from_string(fp32.onnx[contract.SCORER_MODEL]).graph)]
    assert ops.count("MatMulInteger") == 2 and "Gemm" not in ops  # f: 1280 -> hidden -> N
    assert ops.count("MatMul") == before.count("MatMul")  # the penalty's product stays fp32
    int8_weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert sorted(tuple(t.dims) for t in int8_weights) == sorted(
        (layer.in_features, layer.out_features) for layer in int8.modules[contract.SCORER_MODEL].f if isinstance(layer, torch.nn.Linear)
    )
    assert int8.onnx[contract.PROFILE_MODEL] == fp32.onnx[contract.PROFILE_MODEL]
    assert with_int8_scorer(fp32).onnx == int8.onnx  # the same graphs from the fp32 export, not traced again
    for name in int8.weights:  # the torch backend's files stay fp32
        (tensors8, _), (tensors32, _) = load_tensors(int8.weights[name]), load_tensors(fp32.weights[name])
        assert tensors8.keys() == tensors32.keys() and all(torch.equal(tensors8[k], tensors32[k]) for k in tensors8)

    results = check_parity(int8, penalised, Precision.INT8, batch=12, seed=3)
    assert all(r.ok for r in results), "\n".join(map(str, results))
    scorer_errors = [r.max_abs_error for r in results if r.model == contract.SCORER_MODEL]
    assert 0 < max(scorer_errors) <= TOLERANCES[Precision.INT8][0]
    assert not all(r.ok for r in check_parity(int8, penalised, batch=12, seed=3))  # not within fp32's 1e-4


def test_int8_quantizes_u_as_signed_where_f_has_no_hidden_layer(model: APRON) -> None:
    """f of one layer: u is not folded into it (`ServedScorer.folded`), so the layer reads u, of
    either sign, not the shares; quantized from 0 like the shares, its negative half was clipped
    and the int8 export failed its parity check."""
    import dataclasses

    torch.manual_seed(5)
    shallow = APRON(dataclasses.replace(model.config, hidden_dims=())).eval()
    int8 = export_onnx(shallow, k_max=TINY_K_MAX, precision=Precision.INT8)
    assert not int8.modules[contract.SCORER_MODEL].folded
    results = check_parity(int8, shallow, Precision.INT8, batch=12, seed=3)
    assert all(r.ok for r in results), [str(r) for r in results if not r.ok]


def test_int8_scorer_excludes_edits_and_ranks_like_the_fp32_one(penalised: APRON) -> None:
    """Exclusions, k and the edit penalty are exact in the int8 graph; its top k is the fp32 one's
    but for items whose fp32 scores lie within the int8 tolerance of each other."""
    fp32 = session(export_onnx(penalised, k_max=TINY_K_MAX).onnx[contract.SCORER_MODEL])
    int8 = session(export_onnx(penalised, k_max=TINY_K_MAX, precision=Precision.INT8).onnx[contract.SCORER_MODEL])
    histories = random_histories(TINY["n_items"], 8, 30, np.random.default_rng(6))[1:]
    with torch.no_grad():
        weights = penalised.profile_weights(multi_hot(histories, TINY["n_items"]))
    atol, rtol = TOLERANCES[Precision.INT8]
    for case, batch in edited_batches(weights).items():
        feeds = {contract.PROFILE_WEIGHTS: batch.numpy(), contract.EXCLUDE_IDS: histories}
        (ids8, scores8), (ids32, scores32) = int8.run(None, feeds), fp32.run(None, feeds)
        for row, history in enumerate(histories):
            assert not set(ids8[row]) & set(history[history >= 0].tolist()), case
            kth = scores32[row, -1]  # an item only one of the two top-k hold scores near the k-th
            for item in set(ids8[row]) ^ set(ids32[row]):
                fp32_score = scores32[row][ids32[row] == item][0] if item in ids32[row] else None
                int8_score = scores8[row][ids8[row] == item][0] if item in ids8[row] else None
                near = fp32_score if fp32_score is not None else int8_score
                assert abs(near - kth) <= 2 * (atol + rtol * abs(kth)), (case, item)
        np.testing.assert_allclose(scores8, scores32, atol=atol, rtol=rtol, err_msg=case)


def test_an_int8_rows_scores_do_not_depend_on_the_rows_batched_with_it(penalised: APRON) -> None:
    """Each row's input to f is quantized with its own scale (`quantize.quantize_rows_apart`): a
    profile scored alone and beside a very different one (a concentrated profile, an empty one)
    gets the same top k and scores, as in the fp32 graph (dynamic quantization's one scale per
    batch made them depend on the neighbours)."""
    int8 = session(export_onnx(penalised, k_max=TINY_K_MAX, precision=Precision.INT8).onnx[contract.SCORER_MODEL])
    histories = random_histories(TINY["n_items"], 4, 30, np.random.default_rng(8))[1:]
    with torch.no_grad():
        spread = penalised.profile_weights(multi_hot(histories, TINY["n_items"])).numpy()
    concentrated = np.full_like(spread[:1], 1e-30)
    concentrated[0, :, 0] = 1.0  # every head on one prototype
    exclude = np.full((1, 1), -1, np.int64)
    for row in spread:
        (alone_ids, alone_scores) = int8.run(None, {contract.PROFILE_WEIGHTS: row[None], contract.EXCLUDE_IDS: exclude})
        for neighbour in (concentrated, np.zeros_like(concentrated), spread):
            batch = np.concatenate([row[None], neighbour])
            ids, scores = int8.run(None, {contract.PROFILE_WEIGHTS: batch, contract.EXCLUDE_IDS: np.repeat(exclude, len(batch), 0)})
            np.testing.assert_array_equal(ids[0], alone_ids[0])
            np.testing.assert_allclose(scores[0], alone_scores[0], rtol=0, atol=1e-5)


def test_int8_is_refused_with_fp16_and_without_f_layers() -> None:
    from export.quantize import QuantizationError, quantize_scorer

    with pytest.raises(ValueError, match="--fp16 and --int8 exclude each other"):
        Precision.of(fp16=True, int8=True)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    no_f = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    with pytest.raises(QuantizationError, match="no f layers"):
        quantize_scorer(no_f.SerializeToString())
    # an f layer the quantizer leaves alone (its weight is an input, not a constant): refused, not
    # written as an "int8" graph that is not one
    w = onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2, 2])
    gemm = onnx.helper.make_node("Gemm", ["x", "w"], ["y"], name="/f/f.0/Gemm")
    dynamic_f = onnx.helper.make_model(onnx.helper.make_graph([gemm], "g", [x, w], [y]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(QuantizationError, match=r"made integer products \[\] of f's layers \['/f/f.0/Gemm'\]"):
        quantize_scorer(dynamic_f.SerializeToString())


def test_the_quantizers_advice_is_muted_for_its_own_files_only(caplog: pytest.LogCaptureFixture) -> None:
    """`quantize_scorer` mutes what ONNX Runtime's quantizer logs on the root logger below ERROR
    (a filter on the root logger for its own files), not by raising the root logger's level: a
    warning from anywhere else, in any thread, still gets through while it runs."""
    import importlib
    import threading

    from export.quantize import quantizer_advice_muted

    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module (the package exports a function of that name)

    root = logging.getLogger()
    level = root.level
    caplog.set_level(logging.WARNING)
    with quantizer_advice_muted():
        assert root.level == level
        elsewhere = threading.Thread(target=logging.warning, args=("from another thread",))
        elsewhere.start()
        elsewhere.join()
        logging.warning("from the caller")
        advice = logging.LogRecord("root", logging.WARNING, ort_quantize.__file__, 1, "pre-process first", None, None)
        failure = logging.LogRecord("root", logging.ERROR, ort_quantize.__file__, 1, "it failed", None, None)
        root.handle(advice)
        root.handle(failure)
    root.handle(logging.LogRecord("root", logging.WARNING, ort_quantize.__file__, 1, "after it", None, None))
    assert [r.getMessage() for r in caplog.records] == ["from another thread", "from the caller", "it failed", "after it"]
    assert root.filters == []
