"""Triton python-backend model: runs the exported `model.onnx` beside it with ONNX Runtime (CPU).

`apron export --triton-backend python` copies this file into every version directory of
`apron_profile`, `apron_scorer` and `apron_item_encoder`, next to the same `model.onnx` the
onnxruntime variant serves, so both variants have the same tensor names and numbers. It lets the
`tritonserver` of the nvidia-pytriton wheel (python backend only, no GPU) serve the repository.

Self-contained on purpose: it runs inside Triton's python stub, where only numpy, onnxruntime and
`triton_python_backend_utils` can be assumed importable. Tensor names and dtypes come from the
model's config.pbtxt.

The stub initialises its embedded Python in isolated mode: it inherits the server's environment
but ignores PYTHONPATH. The lines after the imports below honour PYTHONPATH by hand, which is how
`export/triton_server.py` hands the stub the project venv's numpy and onnxruntime (in a Triton
container whose Python already has them, PYTHONPATH is simply unset).

Tensors cross the stub boundary through DLPack, never `Tensor.as_numpy()` / `pb_utils.Tensor(name,
ndarray)`: the stub's pybind11 reads numpy 1's array-descriptor layout, and with the venv's numpy 2
those calls see an item size of 0 (inputs come back with wrong strides, outputs with no bytes).
DLPack goes through numpy's stable C entry points and works with numpy 1 and 2 alike.

Dynamic batching hands `execute` several requests at once; requests whose inputs have the same
non-batch shapes are concatenated and run in one ONNX Runtime call, then split back. A ragged
model (config parameter `ragged_ends`, apron_profile) takes one row per request; all requests'
values are concatenated into one flat input and the named graph input gets each request's end
offset, as Triton's BATCH_ACCUMULATED_ELEMENT_COUNT batch input does for the onnxruntime backend.
"""

from __future__ import annotations

import json
import os
import site
import sys
from typing import Any

for _directory in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_directory)  # also runs the directory's .pth files, as the venv's python would

import numpy as np  # noqa: E402  (only importable after the PYTHONPATH fix above)
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class _DLPackInput:
    """Lets `np.from_dlpack` read a Triton input tensor (which only offers `to_dlpack()`)."""

    def __init__(self, tensor: Any):
        self.tensor = tensor

    def __dlpack__(self, **_: Any) -> Any:
        return self.tensor.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: the python backend hands CPU tensors to a KIND_CPU model


def to_numpy(tensor: Any) -> np.ndarray:
    return np.from_dlpack(_DLPackInput(tensor))


def to_triton(name: str, array: np.ndarray) -> Any:
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array).__dlpack__())


def _quiet_consumed_capsules(unraisable: Any, default: Any = sys.unraisablehook) -> None:
    """The stub renames a consumed DLPack capsule to a name numpy's capsule destructor does not
    know, so numpy reports a harmless ValueError per output; the stub frees the tensor itself."""
    if isinstance(unraisable.exc_value, ValueError) and "PyCapsule_GetPointer" in str(unraisable.exc_value):
        return
    default(unraisable)


sys.unraisablehook = _quiet_consumed_capsules


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "0"))
        options.inter_op_num_threads = 1
        path = os.path.join(
            args["model_repository"], args["model_version"], parameters.get("onnx_file", "model.onnx")
        )
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.ragged_ends = parameters.get("ragged_ends")

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.ragged_ends:
            return self._execute_ragged(requests)
        return self._execute_stacked(requests)

    def _execute_ragged(self, requests: list[Any]) -> list[Any]:
        """One run for all requests: values concatenated, end offsets computed here."""
        responses: list[Any] = [None] * len(requests)
        rows: list[int] = []
        values: dict[str, list[np.ndarray]] = {name: [] for name in self.input_names}
        ends: list[int] = []
        for index, request in enumerate(requests):
            inputs = {
                name: to_numpy(pb_utils.get_input_tensor_by_name(request, name)) for name in self.input_names
            }
            batch = {array.shape[0] for array in inputs.values()}
            if batch != {1}:
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[],
                    error=pb_utils.TritonError(
                        f"this model takes one row per request (batch axis 1), got {sorted(batch)}; send "
                        "several requests instead: Triton batches them"
                    ),
                )
                continue
            for name, array in inputs.items():
                values[name].append(array.reshape(-1))
            ends.append((ends[-1] if ends else 0) + inputs[self.input_names[0]].size)
            rows.append(index)
        if not rows:
            return responses
        feed = {name: np.concatenate(arrays) for name, arrays in values.items()}
        feed[self.ragged_ends] = np.asarray(ends, dtype=np.int32)
        try:
            outputs = self.session.run(self.output_names, feed)
        except Exception as error:  # ONNX Runtime rejects the input: answer every request with it
            for i in rows:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error)))
            return responses
        for row, i in enumerate(rows):
            tensors = [
                to_triton(name, value[row : row + 1]) for name, value in zip(self.output_names, outputs, strict=True)
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _execute_stacked(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}  # same non-batch shapes -> one ONNX Runtime call
        arrays = []
        for index, request in enumerate(requests):
            inputs = {
                name: to_numpy(pb_utils.get_input_tensor_by_name(request, name)) for name in self.input_names
            }
            arrays.append(inputs)
            key = tuple(inputs[name].shape[1:] for name in self.input_names)
            groups.setdefault(key, []).append(index)
        for indices in groups.values():
            batch = {name: np.concatenate([arrays[i][name] for i in indices]) for name in self.input_names}
            try:
                outputs = self.session.run(self.output_names, batch)
            except Exception as error:  # ONNX Runtime rejects the input: answer every request with it
                for i in indices:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(str(error))
                    )
                continue
            start = 0
            for i in indices:
                size = arrays[i][self.input_names[0]].shape[0]
                tensors = [
                    to_triton(name, value[start : start + size])
                    for name, value in zip(self.output_names, outputs, strict=True)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses
