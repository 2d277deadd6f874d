//! `tokentally serve`: the rankings page and the JSON behind it, read-only,
//! over either sink ([`data::Backend`]).
//!
//! - `/`: the page (`assets/index.html`, `app.js`, `style.css`), with
//!   Chart.js embedded in the binary: nothing is loaded from elsewhere, and
//!   the Content-Security-Policy says so to the browser.
//! - `/api/series`, `/api/leaderboard`, `/api/apps`, `/api/milestones`:
//!   docs/SERVE.md gives each one's parameters and SQL.
//!
//! Bounds: a range of at most [`MAX_DAYS`] days, at most [`MAX_TOP`]
//! models in a series, [`MAX_MILESTONES`] milestones, [`MAX_QUERIES`]
//! queries at once, each under the query timeout. Only GET and HEAD.

pub mod data;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{Datelike, NaiveDate};
use tokentally_ingest::gateway::Tokens;

use data::{Backend, DataError};

/// The longest range of days a series covers.
pub const MAX_DAYS: usize = 366;
/// The most models a series names (the rest are "Others").
pub const MAX_TOP: usize = 50;
/// The most milestones the feed returns.
pub const MAX_MILESTONES: usize = 500;
/// Queries run at once; more wait (within the timeout).
pub const MAX_QUERIES: usize = 4;

/// Days a series covers by default.
const DEFAULT_DAYS: usize = 30;
const DEFAULT_TOP: usize = 10;
const DEFAULT_MILESTONES: usize = 20;

/// What the page serves, and to whom.
pub struct ServeConfig {
    pub backend: Backend,
    /// Every query's time limit, waiting included.
    pub query_timeout: Duration,
    /// `None`: anyone who can connect.
    pub tokens: Option<Tokens>,
}

struct Served {
    backend: Backend,
    query_timeout: Duration,
    queries: tokio::sync::Semaphore,
}

/// The page's router: GET `/`, its assets, and `/api/...`.
pub fn router(config: ServeConfig) -> Router {
    let served = Arc::new(Served {
        backend: config.backend,
        query_timeout: config.query_timeout,
        queries: tokio::sync::Semaphore::new(MAX_QUERIES),
    });
    let tokens = Arc::new(config.tokens);
    Router::new()
        .route("/", get(|| asset(INDEX)))
        .route("/app.js", get(|| asset(APP_JS)))
        .route("/style.css", get(|| asset(STYLE)))
        .route("/chart.umd.min.js", get(|| asset(CHART_JS)))
        .route("/api/series", get(series))
        .route("/api/leaderboard", get(leaderboard))
        .route("/api/apps", get(apps))
        .route("/api/milestones", get(milestones))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page").into_response() })
        .with_state(served)
        .layer(axum::middleware::from_fn(move |req, next| {
            authorize(tokens.clone(), req, next)
        }))
}

/// An embedded file and its content type.
type Asset = (&'static str, &'static [u8]);

const INDEX: Asset = (
    "text/html; charset=utf-8",
    include_bytes!("assets/index.html"),
);
const APP_JS: Asset = (
    "text/javascript; charset=utf-8",
    include_bytes!("assets/app.js"),
);
const STYLE: Asset = (
    "text/css; charset=utf-8",
    include_bytes!("assets/style.css"),
);
/// Chart.js 4.6.1 from npm, MIT (assets/README.md).
const CHART_JS: Asset = (
    "text/javascript; charset=utf-8",
    include_bytes!("assets/chart.umd.min.js"),
);

async fn asset((content_type, body): Asset) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Every response: the security headers; without a valid token (when
/// tokens are set): 401 with a Basic challenge, so that a browser asks.
async fn authorize(tokens: Arc<Option<Tokens>>, req: Request, next: Next) -> Response {
    let allowed = match tokens.as_ref() {
        None => true,
        Some(tokens) => {
            let value = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            tokens.authorize(value).is_some() || tokens.authorize_basic(value).is_some()
        }
    };
    let mut response = if allowed {
        next.run(req).await
    } else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "a token is needed: Authorization: Bearer TOKEN, or Basic with the token's name and the token",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tokentally\", charset=\"UTF-8\""),
        );
        r
    };
    secure(response.headers_mut());
    response
}

/// The page runs only its own scripts and styles and talks only to its
/// own server; it is never framed; nothing is guessed from content.
fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// An answer other than 200: `{"error": message}`.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.message }));
        (self.status, body).into_response()
    }
}

fn error(status: StatusCode, message: &str) -> ApiError {
    ApiError {
        status,
        message: message.to_string(),
    }
}

/// A request's parameters: only `allowed` names, each once. Values are
/// dates and counts, so nothing needs percent-decoding; anything else is
/// refused before it reaches a query.
fn params<'a>(
    raw: &'a Option<String>,
    allowed: &[&str],
) -> Result<BTreeMap<&'a str, &'a str>, ApiError> {
    let mut out = BTreeMap::new();
    for pair in raw.as_deref().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            let msg = format!(
                "unknown parameter {k:?}; this endpoint takes: {}",
                allowed.join(", ")
            );
            return Err(error(StatusCode::BAD_REQUEST, &msg));
        }
        if out.insert(k, v).is_some() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                &format!("parameter {k:?} given twice"),
            ));
        }
    }
    Ok(out)
}

/// A date parameter: `YYYY-MM-DD`, from 1970 to 9999 (so that a range
/// around it stays within what dates can hold).
fn date(p: &BTreeMap<&str, &str>, name: &str) -> Result<Option<NaiveDate>, ApiError> {
    p.get(name)
        .map(|v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .filter(|d| (1970..=9999).contains(&d.year()) && v.len() == 10)
                .ok_or_else(|| {
                    error(
                        StatusCode::BAD_REQUEST,
                        &format!("{name}: expected a date from 1970 to 9999, YYYY-MM-DD"),
                    )
                })
        })
        .transpose()
}

fn count(
    p: &BTreeMap<&str, &str>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match p.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    &format!("{name}: expected a whole number from 1 to {max}"),
                )
            }),
    }
}

impl Served {
    /// Run one read under the concurrency bound and the timeout.
    async fn read<T>(&self, f: impl Future<Output = Result<T, DataError>>) -> Result<T, ApiError> {
        let run = async {
            let _permit = self.queries.acquire().await.expect("never closed");
            f.await
        };
        match tokio::time::timeout(self.query_timeout, run).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a rankings query failed");
                Err(error(StatusCode::BAD_GATEWAY, &e.to_string()))
            }
            Err(_) => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "the query took longer than {}",
                    humantime::format_duration(self.query_timeout)
                ),
            )),
        }
    }

    /// `day`, else the newest day with tokens, else today (UTC).
    async fn day_or_latest(&self, day: Option<NaiveDate>) -> Result<NaiveDate, ApiError> {
        if let Some(d) = day {
            return Ok(d);
        }
        let latest = self.read(self.backend.latest_day()).await?;
        Ok(latest.unwrap_or_else(|| chrono::Utc::now().date_naive()))
    }
}

fn json<T: serde::Serialize>(v: Result<T, ApiError>) -> Response {
    match v {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn series(State(s): State<Arc<Served>>, RawQuery(q): RawQuery) -> Response {
    json(
        async {
            let p = params(&q, &["from", "to", "days", "top"])?;
            let top = count(&p, "top", DEFAULT_TOP, MAX_TOP)?;
            let to = s.day_or_latest(date(&p, "to")?).await?;
            let from = match (date(&p, "from")?, p.contains_key("days")) {
                (Some(_), true) => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "give from or days, not both",
                    ));
                }
                (Some(from), false) => from,
                (None, _) => {
                    let days = count(&p, "days", DEFAULT_DAYS, MAX_DAYS)?;
                    to - chrono::Duration::days(days as i64 - 1)
                }
            };
            let days = (to - from).num_days() + 1;
            if !(1..=MAX_DAYS as i64).contains(&days) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("from..to must be 1 to {MAX_DAYS} days, from on or before to"),
                ));
            }
            s.read(s.backend.series(from, to, top)).await
        }
        .await,
    )
}

async fn leaderboard(State(s): State<Arc<Served>>, RawQuery(q): RawQuery) -> Response {
    json(
        async {
            let p = params(&q, &["day"])?;
            let day = s.day_or_latest(date(&p, "day")?).await?;
            s.read(s.backend.leaderboard(day)).await
        }
        .await,
    )
}

async fn apps(State(s): State<Arc<Served>>, RawQuery(q): RawQuery) -> Response {
    json(
        async {
            let p = params(&q, &["day"])?;
            let day = s.day_or_latest(date(&p, "day")?).await?;
            s.read(s.backend.apps(day)).await
        }
        .await,
    )
}

async fn milestones(State(s): State<Arc<Served>>, RawQuery(q): RawQuery) -> Response {
    json(
        async {
            let p = params(&q, &["limit"])?;
            let limit = count(&p, "limit", DEFAULT_MILESTONES, MAX_MILESTONES)?;
            let items = s.read(s.backend.milestones(limit)).await?;
            Ok(serde_json::json!({ "milestones": items }))
        }
        .await,
    )
}
