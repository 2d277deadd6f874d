use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokentally_ingest::gateway::Tokens;

use super::gateway::bearer_tokens;
use super::prices::{Destination, Where, destination};
use super::shutdown_signal;
use tokentally::config::Config;
use tokentally::serve::data::Backend;
use tokentally::serve::{ServeConfig, router};

/// Environment variable with the page's tokens, `name:token[,name:token...]`.
const TOKENS_ENV: &str = "TOKENTALLY_SERVE_TOKENS";

const SERVE_HELP: &str = "\
Pages (read-only, GET):
  /                  the rankings: tokens per day of the top models (stacked
                     bars), the ranked table of a day, its apps, milestones;
                     refreshed every 5 s
  /api/series        ?from=&to=&top=   tokens per day of the top models
  /api/leaderboard   ?day=             a day's models, ranked
  /api/apps          ?day=             a day's apps, ranked
  /api/milestones    ?limit=           the newest milestones
docs/SERVE.md gives each endpoint's fields and the SQL it runs.

Access: without tokens the page is open to whoever can connect, so it binds
127.0.0.1 unless tokens are set (--tokens-file, one `name:token` per line,
or TOKENTALLY_SERVE_TOKENS=name:token,...) or --no-auth is given. With
tokens every request needs `Authorization: Bearer TOKEN`, or Basic auth
with the token's name as user and the token as password (browsers ask).";

/// Serve the rankings page: a live, read-only view of the exact totals
/// in a browser, from the store or ClickHouse.
#[derive(Debug, Args)]
#[command(after_help = SERVE_HELP)]
pub struct ServeArgs {
    #[command(flatten)]
    pub target: Where,
    #[command(flatten)]
    pub page: PageArgs,
}

/// How the page is served; `demo --serve` takes these too.
#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Address to listen on (port 0: any free port; the URL is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8700")]
    pub listen: SocketAddr,
    /// Alert state whose milestones the page lists, with --store
    /// [default: the store's alerts/, where `demo` keeps them].
    #[arg(long, env = "TOKENTALLY_ALERTS_STATE", value_name = "DIR")]
    pub alerts_state: Option<PathBuf>,
    /// Time limit of each query (waiting included); 503 after it.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub query_timeout: Duration,
    /// File of access tokens, one `name:token` per line.
    #[arg(long, value_name = "PATH")]
    pub tokens_file: Option<PathBuf>,
    /// Serve a non-loopback address without tokens (behind a proxy that
    /// authenticates, or on a trusted network).
    #[arg(long)]
    pub no_auth: bool,
}

impl PageArgs {
    /// The tokens to require, if any; refuses an open page on a
    /// non-loopback address unless --no-auth says so.
    fn tokens(&self) -> anyhow::Result<Option<Tokens>> {
        let tokens = bearer_tokens(TOKENS_ENV, self.tokens_file.as_deref())?;
        match (tokens.is_empty(), self.no_auth) {
            (false, true) => anyhow::bail!(
                "--no-auth, but tokens are configured (--tokens-file or {TOKENS_ENV}): choose one"
            ),
            (false, false) => Ok(Some(tokens)),
            (true, _) if self.no_auth || self.listen.ip().is_loopback() => Ok(None),
            (true, _) => anyhow::bail!(
                "{} is not a loopback address: give tokens (--tokens-file PATH or \
                 {TOKENS_ENV}=name:token), or --no-auth to let anyone who can connect read the page",
                self.listen
            ),
        }
    }

    /// Bind (so that a taken port fails at once) and return the address
    /// and the server, which serves `backend` until `shutdown` resolves.
    pub async fn start(
        &self,
        backend: Backend,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<(
        SocketAddr,
        impl Future<Output = anyhow::Result<()>> + Send + 'static,
    )> {
        let tokens = self.tokens()?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("listening on {}", self.listen))?;
        let addr = listener.local_addr()?;
        let app = router(ServeConfig {
            backend,
            query_timeout: self.query_timeout,
            tokens,
        });
        let server = async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .context("serving the rankings page")
        };
        Ok((addr, server))
    }
}

pub async fn run(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    let backend = match destination(&mut config, &args.target)? {
        Destination::Store(dir) => Backend::Store {
            alerts: args
                .page
                .alerts_state
                .clone()
                .unwrap_or_else(|| dir.join("alerts")),
            dir,
        },
        Destination::ClickHouse(client, database) => Backend::ClickHouse {
            client,
            database,
            timeout_secs: args.page.query_timeout.as_secs().max(1),
        },
    };
    let (addr, server) = args.page.start(backend, shutdown_signal()).await?;
    println!("open http://{addr}/");
    server.await
}
