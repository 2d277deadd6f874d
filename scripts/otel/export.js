// The JavaScript counterpart of export.py: the same corpus exported as
// GenAI spans through the OpenTelemetry JavaScript SDK's OTLP/HTTP
// exporter (@opentelemetry/exporter-trace-otlp-http), which sends OTLP
// JSON, gzipped when OTEL_EXPORTER_OTLP_TRACES_COMPRESSION=gzip. Every
// batch is exported twice; the events tokentally should make of the spans
// are printed as NDJSON. See export.py for the corpus.
'use strict';

const fs = require('fs');
const api = require('@opentelemetry/api');
const { BasicTracerProvider, SimpleSpanProcessor, InMemorySpanExporter } = require('@opentelemetry/sdk-trace-base');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http');

const SERVICE = 'chat-ü <svc> "x"';
const HOST = 'node-otel-js';
const BATCH = 200;

// Epoch milliseconds as an HrTime ([seconds, nanoseconds]).
const hr = (ms) => [Math.floor(ms / 1000), (ms % 1000) * 1e6];

async function main(corpusPath) {
  const requests = fs.readFileSync(corpusPath, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  const memory = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': SERVICE, 'host.name': HOST }),
    spanProcessors: [new SimpleSpanProcessor(memory)],
  });
  const tracer = provider.getTracer('tokentally-test');
  const events = [];
  for (const r of requests) {
    const start = r.ts - r.latency_ms;
    const parent = tracer.startSpan('POST /v1/chat/completions', {
      kind: api.SpanKind.SERVER,
      startTime: hr(start - 1),
      attributes: { 'http.request.method': 'POST', 'url.path': '/v1/chat/completions' },
    });
    // The exporter sends a whole number as intValue (int64 as a string), so
    // float_tokens makes no difference here.
    const output = r.completion_tokens;
    const attributes = r.legacy
      ? {
          'gen_ai.request.model': r.model,
          'gen_ai.system': r.provider,
          'gen_ai.usage.prompt_tokens': r.prompt_tokens,
          'gen_ai.usage.completion_tokens': output,
          'gen_ai.usage.cache_read_input_tokens': r.cached_tokens,
        }
      : {
          'gen_ai.operation.name': 'chat',
          'gen_ai.request.model': r.model.split('/').pop(),
          'gen_ai.response.model': r.model,
          'gen_ai.provider.name': r.provider,
          'gen_ai.usage.input_tokens': r.prompt_tokens,
          'gen_ai.usage.output_tokens': output,
          'gen_ai.usage.cache_read.input_tokens': r.cached_tokens,
        };
    attributes['gen_ai.usage.reasoning.output_tokens'] = r.reasoning_tokens;
    if (r.app !== null) attributes['tokentally.app'] = r.app;
    const span = tracer.startSpan(
      'chat ' + r.model,
      { kind: api.SpanKind.CLIENT, startTime: hr(start), attributes },
      api.trace.setSpan(api.context.active(), parent),
    );
    if (r.status === 'error') span.setStatus({ code: api.SpanStatusCode.ERROR, message: 'upstream error' });
    span.end(hr(r.ts));
    parent.end(hr(r.ts + 1));
    const ctx = span.spanContext();
    events.push({
      event_id: `${ctx.traceId}-${ctx.spanId}`,
      ts: r.ts,
      model: r.model,
      provider: r.provider,
      app: r.app !== null ? r.app : SERVICE,
      node: HOST,
      prompt_tokens: r.prompt_tokens,
      completion_tokens: r.completion_tokens,
      cached_tokens: r.cached_tokens,
      reasoning_tokens: r.reasoning_tokens,
      latency_ms: r.latency_ms,
      status: r.status,
    });
  }
  const spans = memory.getFinishedSpans();
  const exporter = new OTLPTraceExporter();
  for (let i = 0; i < spans.length; i += BATCH) {
    for (const attempt of ['export', 'retry']) {
      const result = await new Promise((resolve) => exporter.export(spans.slice(i, i + BATCH), resolve));
      if (result.code !== 0) {
        console.error(`[otel-js] ${attempt} of spans ${i}..${i + BATCH} failed:`, result.error);
        process.exit(1);
      }
    }
  }
  await exporter.shutdown();
  for (const e of events) console.log(JSON.stringify(e));
  console.error(`[otel-js] exported ${spans.length} spans (${events.length} GenAI) twice`);
}

main(process.argv[2]).catch((e) => {
  console.error(e);
  process.exit(1);
});
