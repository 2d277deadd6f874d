use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokentally_common::secret::{Origin, SecretSource};
use tokentally_common::tls;
use tokentally_ingest::emitter::{Emitter, NotReady};
use tokentally_ingest::gateway::{self, Auth, GatewayConfig, GatewayMetrics, Tokens};

use super::kafka_args::KafkaArgs;
use super::metrics::MetricsArgs;
use super::shutdown_signal;
use tokentally::config::Config;
use tokentally::metrics::registry;

/// Tens of thousands of tokens; past this it is the wrong file.
const TOKENS_FILE_BYTES: u64 = 1 << 20;

/// Environment variable with bearer tokens, `name:token[,name:token...]`.
const TOKENS_ENV: &str = "TOKENTALLY_GATEWAY_TOKENS";

const GATEWAY_HELP: &str = "\
POST /v1/events takes one JSON event, a JSON array of events, or NDJSON
(Content-Type: application/x-ndjson), with `Authorization: Bearer TOKEN`.
Valid events are produced to the events topic (key = event_id, header
`source` = the token's name); the answer comes only after Kafka acknowledged
all of them:
  200  {\"accepted\": N, \"rejected\": [{\"index\", \"reason\", \"field\", \"detail\"}]}
       (invalid events are listed, never sent, and do not block valid ones;
       index = position in the array, or 0-based line number in NDJSON)
  400  no event can be read from the body (empty, or a malformed JSON array)
  401  missing or unknown bearer token
  408  the body did not arrive within --body-read-timeout (connection closed)
  413  body larger than --max-body-bytes
  429  too busy (bytes in flight, producer queue full): retry after Retry-After
  431  request head larger than --max-header-bytes (connection closed)
  503  Kafka did not acknowledge within the delivery timeout, or (before any
       request, then closed) --max-connections are open: retry after
       Retry-After. Resending after 429/503 is safe: each event_id counts once.
A connection that sends no complete request head within --header-read-timeout
of opening or of its previous response is closed: slow senders and idle
keep-alive connections alike. Pipelined requests are answered in order.
POST /v1/traces takes OpenTelemetry traces (OTLP/HTTP: application/x-protobuf
or application/json, optionally Content-Encoding: gzip), same token, limits
and admission: each span with GenAI usage (gen_ai.* attributes) becomes one
event, event_id = trace id-span id, so a retried export counts once; other
spans are skipped. 200 carries an ExportTraceServiceResponse whose
partial_success counts and names rejected spans; errors a google.rpc.Status;
415 for another content type or encoding. /v1/metrics and /v1/logs: 404.
Point an SDK at it with OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://ADDR/v1/traces
and OTEL_EXPORTER_OTLP_TRACES_HEADERS=Authorization=Bearer%20TOKEN.
GET /healthz: 200 while the process runs. GET /readyz: 200 when the broker
returns the topic's metadata within 2s, else 503. Neither needs a token.

Tokens: --tokens-file (one `name:token` per line; blank lines and # comments
ignored), or else TOKENTALLY_GATEWAY_TOKENS=name:token,name:token (read
only when no file is given). Names are
1-64 characters of A-Z a-z 0-9 . _ -. Without any token the gateway refuses
to start, unless --no-auth is given.";

/// HTTP ingest gateway for nodes that cannot embed a Kafka client, and for
/// OpenTelemetry exporters.
#[derive(Debug, Args)]
#[command(after_help = GATEWAY_HELP)]
pub struct GatewayArgs {
    /// Address to listen on; port 0 picks a free port. The address is printed
    /// on stderr as `listening on http://ADDR` (https:// with --tls-cert).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM, the server's
    /// certificate first), for deployments without a TLS proxy in front.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Largest request body in bytes; larger requests are answered 413.
    #[arg(long, value_name = "BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Request bytes processed at once over all requests (bounds memory);
    /// a request that finds no room within 1s is answered 429.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_in_flight_bytes: usize,
    /// Connections served at once; further connections are answered 503 and
    /// closed at once. Each takes a file descriptor: keep `ulimit -n` above
    /// it.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: u32,
    /// How long a connection may take to send a complete request head after
    /// it opened or after its previous response; it is closed then. Also the
    /// keep-alive idle timeout.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// How long the body of a request may take to arrive in full once the
    /// request is admitted; 408 and the connection closed after it.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; larger
    /// heads are answered 431 and the connection closed.
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// How long Kafka may take to acknowledge an event before the request is
    /// answered 503 [default: [kafka] delivery_timeout, 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub delivery_timeout: Option<Duration>,
    /// File of bearer tokens, one `name:token` per line. The name is recorded
    /// as the source of the events sent with the token.
    #[arg(long, value_name = "PATH")]
    pub tokens_file: Option<PathBuf>,
    /// Accept requests without a bearer token (only behind a proxy that
    /// authenticates, or on a trusted network).
    #[arg(long)]
    pub no_auth: bool,
}

fn auth(args: &GatewayArgs) -> anyhow::Result<Auth> {
    let tokens = bearer_tokens(TOKENS_ENV, args.tokens_file.as_deref())?;
    match (args.no_auth, tokens.is_empty()) {
        (true, true) => Ok(Auth::Disabled),
        (true, false) => anyhow::bail!(
            "--no-auth, but tokens are configured (--tokens-file or {TOKENS_ENV}): choose one"
        ),
        (false, true) => anyhow::bail!(
            "no bearer tokens: give --tokens-file PATH or {TOKENS_ENV}=name:token, \
             or --no-auth to accept anyone"
        ),
        (false, false) => Ok(Auth::Tokens(tokens)),
    }
}

/// Bearer tokens from `file` (one `name:token` per line) or else the
/// variable `env` (`name:token,name:token`); none when neither is set.
pub(super) fn bearer_tokens(env: &str, file: Option<&std::path::Path>) -> anyhow::Result<Tokens> {
    let mut tokens = Tokens::default();
    let source = SecretSource::new(env, file).with_limit(TOKENS_FILE_BYTES);
    if let Some(text) = source.read()? {
        let origin = text.origin().to_string();
        match text.origin() {
            Origin::File(_) => tokens.add_file_text(text.expose(), &origin),
            Origin::Env(_) => tokens.add_list(text.expose(), &origin),
        }
        .map_err(|e| anyhow::anyhow!("invalid bearer tokens: {e}"))?;
    }
    Ok(tokens)
}

pub async fn run(mut config: Config, args: GatewayArgs) -> anyhow::Result<()> {
    args.kafka.apply(&mut config);
    if let Some(t) = args.delivery_timeout {
        config.kafka.delivery_timeout = t;
    }
    anyhow::ensure!(args.max_body_bytes > 0, "--max-body-bytes must be positive");
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections must be positive"
    );
    anyhow::ensure!(
        !args.header_read_timeout.is_zero() && !args.body_read_timeout.is_zero(),
        "--header-read-timeout and --body-read-timeout must be positive"
    );
    anyhow::ensure!(
        args.max_header_bytes >= 1024,
        "--max-header-bytes must be at least 1024"
    );
    let auth = auth(&args)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(gateway::TlsAcceptor::from(
            tls::server_config(cert, key).context("the gateway's TLS certificate")?,
        )),
        _ => None,
    };
    let connection = config.kafka.connection()?;
    let emitter = Emitter::new(&config.kafka)
        .context("creating the Kafka producer")?
        .with_limits(config.aggregate.limits);

    let listener =
        gateway::bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;

    // A missing topic or refused credentials are configuration errors; an
    // unreachable broker is not (it may come up later): /readyz reports
    // it meanwhile.
    let (check, emitter) = tokio::task::spawn_blocking(move || {
        let check = emitter.check_topics(&[emitter.topic()], Duration::from_secs(3));
        (check, emitter)
    })
    .await?;
    match check {
        Ok(()) => {}
        Err(e @ (NotReady::MissingTopic(_) | NotReady::Refused(_))) => {
            anyhow::bail!("{e} (on {connection})")
        }
        Err(e) => tracing::warn!(
            brokers = %connection,
            "{e}; starting anyway, /readyz answers 503 until Kafka answers"
        ),
    }

    let gateway_config = GatewayConfig {
        max_body_bytes: args.max_body_bytes,
        max_in_flight_bytes: args.max_in_flight_bytes,
        header_read_timeout: args.header_read_timeout,
        body_read_timeout: args.body_read_timeout,
        max_header_bytes: args.max_header_bytes,
        max_connections: args.max_connections,
        limits: config.aggregate.limits,
        ..GatewayConfig::default()
    };
    match &auth {
        Auth::Tokens(t) => eprintln!(
            "gateway: {} token(s) ({}), producing to {} at {}",
            t.len(),
            t.names().collect::<Vec<_>>().join(", "),
            config.kafka.topic,
            connection
        ),
        Auth::Disabled => eprintln!(
            "gateway: authentication disabled (--no-auth), producing to {} at {}",
            config.kafka.topic, connection
        ),
    }
    let registry = registry();
    let metrics = GatewayMetrics::register(&registry)?;
    args.metrics.serve(&registry).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("listening on {scheme}://{addr}");
    gateway::serve(
        listener,
        emitter,
        auth,
        gateway_config,
        Some(metrics),
        tls,
        shutdown_signal(),
    )
    .await
    .context("serving HTTP")?;
    eprintln!("gateway stopped: every answered request was acknowledged by Kafka");
    Ok(())
}
