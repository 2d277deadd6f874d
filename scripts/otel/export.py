"""Export inference requests as OpenTelemetry GenAI spans through the
OpenTelemetry Python SDK's OTLP/HTTP exporter, and print the same requests
as tokentally events, so that a test can compare both paths.

Input: NDJSON, one request per line:
  {"ts": epoch ms (the span's end), "latency_ms": int, "model": str,
   "provider": str, "app": str or null (null: the resource's service.name),
   "prompt_tokens": int, "completion_tokens": int, "cached_tokens": int,
   "reasoning_tokens": int, "status": "ok" | "error",
   "legacy": bool (gen_ai.system and gen_ai.usage.prompt/completion_tokens
   instead of gen_ai.provider.name and input/output_tokens),
   "float_tokens": bool (the output count as a double holding a whole number)}

Each request becomes a GenAI client span under a plain HTTP server span
(which carries no GenAI usage). Every batch of 200 spans is exported twice:
the second export is a retry of the first, which must count once.

Output: NDJSON, one contract event per GenAI span (event_id = trace id "-"
span id in hex), as tokentally maps it. Exits non-zero when an export
fails.
"""

import json
import sys

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

SERVICE = "chat-ü <svc> \"x\""
HOST = "node-otel-1"
BATCH = 200


def main(corpus_path):
    requests = [json.loads(line) for line in open(corpus_path, encoding="utf-8") if line.strip()]
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE, "host.name": HOST}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tokentally-test")
    events = []
    for r in requests:
        end = r["ts"] * 1_000_000
        start = end - r["latency_ms"] * 1_000_000
        parent = tracer.start_span(
            "POST /v1/chat/completions",
            kind=SpanKind.SERVER,
            start_time=start - 1_000_000,
            attributes={"http.request.method": "POST", "url.path": "/v1/chat/completions"},
        )
        output = float(r["completion_tokens"]) if r.get("float_tokens") else r["completion_tokens"]
        if r["legacy"]:
            attributes = {
                "gen_ai.request.model": r["model"],
                "gen_ai.system": r["provider"],
                "gen_ai.usage.prompt_tokens": r["prompt_tokens"],
                "gen_ai.usage.completion_tokens": output,
                "gen_ai.usage.cache_read_input_tokens": r["cached_tokens"],
            }
        else:
            attributes = {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": r["model"].split("/")[-1],
                "gen_ai.response.model": r["model"],
                "gen_ai.provider.name": r["provider"],
                "gen_ai.usage.input_tokens": r["prompt_tokens"],
                "gen_ai.usage.output_tokens": output,
                "gen_ai.usage.cache_read.input_tokens": r["cached_tokens"],
            }
        attributes["gen_ai.usage.reasoning.output_tokens"] = r["reasoning_tokens"]
        if r["app"] is not None:
            attributes["tokentally.app"] = r["app"]
        span = tracer.start_span(
            "chat " + r["model"],
            context=set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            start_time=start,
            attributes=attributes,
        )
        if r["status"] == "error":
            span.set_status(Status(StatusCode.ERROR, "upstream error"))
        span.end(end_time=end)
        parent.end(end_time=end + 1_000_000)
        ctx = span.get_span_context()
        events.append({
            "event_id": f"{ctx.trace_id:032x}-{ctx.span_id:016x}",
            "ts": r["ts"],
            "model": r["model"],
            "provider": r["provider"],
            "app": r["app"] if r["app"] is not None else SERVICE,
            "node": HOST,
            "prompt_tokens": r["prompt_tokens"],
            "completion_tokens": r["completion_tokens"],
            "cached_tokens": r["cached_tokens"],
            "reasoning_tokens": r["reasoning_tokens"],
            "latency_ms": r["latency_ms"],
            "status": r["status"],
        })
    spans = memory.get_finished_spans()
    exporter = OTLPSpanExporter()
    for i in range(0, len(spans), BATCH):
        for attempt in ("export", "retry"):
            result = exporter.export(spans[i:i + BATCH])
            if result != SpanExportResult.SUCCESS:
                sys.exit(f"[otel] {attempt} of spans {i}..{i + BATCH} failed: {result}")
    exporter.shutdown()
    for e in events:
        print(json.dumps(e, ensure_ascii=False))
    print(f"[otel] exported {len(spans)} spans ({len(events)} GenAI) twice", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
