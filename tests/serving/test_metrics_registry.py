"""What a real gateway's `/metrics` carries beside its `apron_*` series: the process collector's
`process_*`, and no `*_created` series."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from tests.serving.conftest import Gateway


async def test_metrics_have_process_series_and_no_created(ort_gateway: Gateway) -> None:
    await ort_gateway.stub.ListPrototypes(pb.ListPrototypesRequest())  # counters and histograms with children
    text = ort_gateway.metrics_text()
    samples = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= samples
    assert "apron_rpc_duration_seconds_count" in samples and "apron_worker_rpcs" in samples
    assert not [name for name in samples if name.endswith("_created")]
