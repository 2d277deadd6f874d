//! Spend: the SQL of the views that turn the exact token totals into cost,
//! in ClickHouse's dialect and in DataFusion's, side by side so that the
//! two stay one definition (tests/spend.rs checks that they agree to the
//! last digit).
//!
//! - `prices`: the price table versions in force, one per `valid_from`.
//! - `cost_daily` (day, model, provider) and `cost_app_daily` (day, app,
//!   model): the roll-up's tokens by kind, and `cost_usd`.
//! - `unpriced`: models with tokens and no price, with their tokens.
//!
//! A row's price comes from the version with the newest `valid_from` on or
//! before its day, and from that version's row for, in order: the model id
//! itself (or a configured alias of it), then the id without its
//! `provider/` prefix. No price: `cost_usd` is NULL, never 0.
//!
//! ```text
//! cost_usd = (prompt − cached)·input + cached·cache_read
//!          + (completion − reasoning)·output + reasoning·reasoning
//! ```
//!
//! computed as `prompt·input + cached·(cache_read − input) + completion·output`
//! plus `reasoning·(reasoning − output)`, which is the same number, in
//! Decimal(38, 12) arithmetic: token counts are integers and prices have
//! 12 fractional digits, so every product and sum is exact (no rounding
//! at all) and the result does not depend on the order rows are summed in.

/// The cost expression over a row's token columns and the price columns
/// named `{p}input`, `{p}output`, `{p}cache_read`, `{p}reasoning`; `tokens`
/// turns a token column into a Decimal(.., 0).
fn cost(p: &str, tokens: impl Fn(&str) -> String) -> String {
    format!(
        "{} * {p}input + {} * ({p}cache_read - {p}input) + {} * {p}output \
         + {} * ({p}reasoning - {p}output)",
        tokens("prompt_tokens"),
        tokens("cached_tokens"),
        tokens("completion_tokens"),
        tokens("reasoning_tokens"),
    )
}

/// The token columns every cost view shows, after its keys.
const TOKENS: &str =
    "requests, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, total_tokens";

/// The price columns of `prices`, renamed with a prefix.
fn price_columns(prefix: &str) -> String {
    ["input", "output", "cache_read", "reasoning"]
        .map(|c| format!("{c} AS {prefix}{c}"))
        .join(", ")
}

/// ClickHouse: the last load of each `valid_from`.
pub fn prices_sql(db: &str) -> String {
    format!(
        "SELECT valid_from, model, provider, alias_of, input, output, cache_read, reasoning, \
         loaded_at FROM {db}.model_prices WHERE (valid_from, loaded_ns) IN \
         (SELECT valid_from, max(loaded_ns) FROM {db}.model_prices GROUP BY valid_from)"
    )
}

/// ClickHouse: `cost_daily` or `cost_app_daily` over roll-up view `from`
/// with key columns `keys`. Written for 18.16 too: one join per SELECT,
/// `ANY LEFT JOIN ... USING` (a row without a match gets the columns'
/// defaults, hence the `found` flags), every subquery named (the modern
/// analyzer wants it), and the version looked up in the array of the
/// `valid_from`s with a two-argument lambda: 18.16 drops a column that is
/// used only inside a lambda from a view's columns when the outer query
/// does not select it (`Unknown identifier: day`).
fn clickhouse_cost(db: &str, from: &str, keys: &str) -> String {
    let tokens = |c: &str| format!("toDecimal128({c}, 0)");
    format!(
        "SELECT {keys}, {TOKENS}, \
         multiIf(e_found = 1, {exact}, s_found = 1, {stripped}, NULL) AS cost_usd \
         FROM (SELECT * FROM (\
         SELECT {keys}, {TOKENS}, \
         arrayReverseSort(arrayFilter((v, d) -> v <= d, versions, \
         arrayResize([day], length(versions), day)))[1] AS valid_from, \
         model AS exact_key, substring(model, position(model, '/') + 1) AS stripped_key \
         FROM (SELECT {keys}, {TOKENS}, \
         (SELECT groupUniqArray(valid_from) FROM {db}.model_prices) AS versions \
         FROM {db}.{from}) AS r) AS u \
         ANY LEFT JOIN (SELECT valid_from, model AS exact_key, {e}, toUInt8(1) AS e_found \
         FROM {db}.prices) AS e USING (valid_from, exact_key)) AS ue \
         ANY LEFT JOIN (SELECT valid_from, model AS stripped_key, {s}, toUInt8(1) AS s_found \
         FROM {db}.prices WHERE alias_of = '') AS s USING (valid_from, stripped_key)",
        exact = cost("e_", tokens),
        stripped = cost("s_", tokens),
        e = price_columns("e_"),
        s = price_columns("s_"),
    )
}

pub fn cost_daily_sql(db: &str) -> String {
    clickhouse_cost(db, "usage_daily", "day, model, provider")
}

pub fn cost_app_daily_sql(db: &str) -> String {
    clickhouse_cost(db, "usage_app_daily", "day, app, model")
}

/// Both dialects: `unpriced` over `cost_daily` (`db` is a prefix: `db.` or
/// empty).
fn unpriced(db: &str) -> String {
    format!(
        "SELECT model, provider, min(day) AS first_day, max(day) AS last_day, \
         sum(requests) AS requests, sum(total_tokens) AS total_tokens \
         FROM {db}cost_daily WHERE cost_usd IS NULL GROUP BY model, provider"
    )
}

pub fn unpriced_sql(db: &str) -> String {
    unpriced(&format!("{db}."))
}

/// DataFusion: the views over the embedded store's tables, as `(name,
/// SQL)` in creation order (`prices` is the table `model_prices` itself:
/// the store keeps one load per `valid_from`).
pub fn datafusion_views() -> Vec<(&'static str, String)> {
    let tokens = |c: &str| format!("CAST(u.{c} AS DECIMAL(20, 0))");
    let view = |from: &str, keys: &[&str]| {
        let u_keys = keys.iter().map(|k| format!("u.{k}")).collect::<Vec<_>>();
        let u_tokens: Vec<String> = TOKENS.split(", ").map(|c| format!("u.{c}")).collect();
        format!(
            "SELECT {keys}, {tokens_out}, \
             CASE WHEN e.model IS NOT NULL THEN {exact} \
             WHEN s.model IS NOT NULL THEN {stripped} END AS cost_usd \
             FROM (SELECT {u_keys}, {u_tokens}, MAX(v.valid_from) AS valid_from \
             FROM {from} u LEFT JOIN (SELECT DISTINCT valid_from FROM model_prices) v \
             ON v.valid_from <= u.day GROUP BY {u_keys}, {u_tokens}) u \
             LEFT JOIN (SELECT valid_from, model, {e} FROM model_prices) e \
             ON e.valid_from = u.valid_from AND e.model = u.model \
             LEFT JOIN (SELECT valid_from, model, {s} FROM model_prices WHERE alias_of = '') s \
             ON s.valid_from = u.valid_from AND s.model = \
             CASE WHEN strpos(u.model, '/') > 0 \
             THEN substr(u.model, strpos(u.model, '/') + 1) ELSE u.model END",
            keys = u_keys.join(", "),
            tokens_out = u_tokens.join(", "),
            u_keys = u_keys.join(", "),
            u_tokens = u_tokens.join(", "),
            exact = cost("e.e_", tokens),
            stripped = cost("s.s_", tokens),
            e = price_columns("e_"),
            s = price_columns("s_"),
        )
    };
    vec![
        (
            "cost_daily",
            view("usage_daily", &["day", "model", "provider"]),
        ),
        (
            "cost_app_daily",
            view("usage_app_daily", &["day", "app", "model"]),
        ),
        ("unpriced", unpriced("")),
    ]
}
