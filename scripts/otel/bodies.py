"""Turn NDJSON files of tokentally events into OTLP/HTTP request bodies
carrying the same requests as GenAI spans, for scripts/bench-gateway: for
each FILE, FILE.pb (protobuf, built with the opentelemetry-proto package)
and FILE.json (OTLP JSON: hex ids, int64 as strings).

Spans are grouped into one resource per (node, region) (host.name,
cloud.region); the app is the span attribute tokentally.app. Trace and span
ids are derived from the event_id, so each event maps to the same event_id
in both bodies.
"""

import hashlib
import json
import sys
from collections import defaultdict

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status


def attributes(e):
    return [
        ("gen_ai.operation.name", e.get("operation", "chat")),
        ("gen_ai.response.model", e["model"]),
        ("gen_ai.provider.name", e["provider"]),
        ("tokentally.app", e.get("app", "")),
        ("gen_ai.usage.input_tokens", e["prompt_tokens"]),
        ("gen_ai.usage.output_tokens", e["completion_tokens"]),
        ("gen_ai.usage.cache_read.input_tokens", e.get("cached_tokens", 0)),
        ("gen_ai.usage.reasoning.output_tokens", e.get("reasoning_tokens", 0)),
    ]


def ids(e):
    digest = hashlib.sha256(e["event_id"].encode()).digest()
    return digest[:16], digest[16:24]


def times(e):
    end = e["ts"] * 1_000_000
    return end - e.get("latency_ms", 0) * 1_000_000, end


def protobuf(groups):
    request = ExportTraceServiceRequest()
    for (node, region), events in groups.items():
        rs = ResourceSpans(resource=Resource(attributes=[
            KeyValue(key="host.name", value=AnyValue(string_value=node)),
            KeyValue(key="cloud.region", value=AnyValue(string_value=region)),
        ]))
        ss = ScopeSpans(scope=InstrumentationScope(name="bench"))
        for e in events:
            trace_id, span_id = ids(e)
            start, end = times(e)
            span = Span(trace_id=trace_id, span_id=span_id, name="chat " + e["model"],
                        kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=start,
                        end_time_unix_nano=end)
            for k, v in attributes(e):
                value = AnyValue(string_value=v) if isinstance(v, str) else AnyValue(int_value=v)
                span.attributes.append(KeyValue(key=k, value=value))
            if e.get("status") == "error":
                span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR))
            ss.spans.append(span)
        rs.scope_spans.append(ss)
        request.resource_spans.append(rs)
    return request.SerializeToString()


def otlp_json(groups):
    resource_spans = []
    for (node, region), events in groups.items():
        spans = []
        for e in events:
            trace_id, span_id = ids(e)
            start, end = times(e)
            spans.append({
                "traceId": trace_id.hex(), "spanId": span_id.hex(), "name": "chat " + e["model"],
                "kind": 3, "startTimeUnixNano": str(start), "endTimeUnixNano": str(end),
                "attributes": [
                    {"key": k, "value": {"stringValue": v} if isinstance(v, str) else {"intValue": str(v)}}
                    for k, v in attributes(e)
                ],
                "status": {"code": 2} if e.get("status") == "error" else {},
            })
        resource_spans.append({
            "resource": {"attributes": [
                {"key": "host.name", "value": {"stringValue": node}},
                {"key": "cloud.region", "value": {"stringValue": region}},
            ]},
            "scopeSpans": [{"scope": {"name": "bench"}, "spans": spans}],
        })
    return json.dumps({"resourceSpans": resource_spans}, ensure_ascii=False).encode()


def main(paths):
    for path in paths:
        groups = defaultdict(list)
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    e = json.loads(line)
                    groups[(e.get("node", ""), e.get("region", ""))].append(e)
        with open(path + ".pb", "wb") as f:
            f.write(protobuf(groups))
        with open(path + ".json", "wb") as f:
            f.write(otlp_json(groups))


if __name__ == "__main__":
    main(sys.argv[1:])
