//! The alerter: records what the totals newly reach, durably, before any
//! delivery, then delivers each milestone once per endpoint.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::budgets::evaluate_budgets;
use crate::state::{AlertState, Delivery, Recorded, Status};
use crate::webhook::{DeliveryError, Sender};
use crate::{AlertError, AlertsConfig, Endpoint, Milestone, Totals, display_url, evaluate};

/// Prometheus metrics of the alerter.
#[derive(Clone)]
pub struct AlertMetrics {
    pub deliveries: prometheus::IntCounterVec,
    pub disabled: prometheus::IntGauge,
    pub milestones: prometheus::IntCounterVec,
}

impl AlertMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let m = AlertMetrics {
            deliveries: prometheus::register_int_counter_vec_with_registry!(
                "tokentally_webhook_deliveries_total",
                "Webhook delivery attempts, by outcome (delivered, retry, gone, rejected).",
                &["outcome"],
                registry
            )?,
            disabled: prometheus::register_int_gauge_with_registry!(
                "tokentally_webhook_endpoints_disabled",
                "Webhook endpoints disabled after answering 410 Gone.",
                registry
            )?,
            milestones: prometheus::register_int_counter_vec_with_registry!(
                "tokentally_milestones_total",
                "Milestones detected, by type.",
                &["type"],
                registry
            )?,
        };
        for outcome in ["delivered", "retry", "gone", "rejected"] {
            m.deliveries.with_label_values(&[outcome]);
        }
        Ok(m)
    }
}

/// Detects milestones and delivers them; one per state directory.
pub struct Alerter {
    dir: PathBuf,
    config: AlertsConfig,
    endpoints: Vec<Endpoint>,
    state: AlertState,
    /// True until the first detection of a fresh state: what already exists
    /// then is history, recorded but not sent.
    fresh: bool,
    sender: Sender,
    metrics: Option<AlertMetrics>,
    _lock: File,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Alerter {
    /// Open (or create) the state directory and resolve every endpoint
    /// (its format's keys).
    pub fn open(dir: &Path, config: AlertsConfig) -> Result<Alerter, AlertError> {
        let io = |source| AlertError::State {
            dir: dir.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let lock = File::create(dir.join("LOCK")).map_err(io)?;
        if lock.try_lock().is_err() {
            return Err(AlertError::Locked(dir.display().to_string()));
        }
        crate::budgets::check(&config.budgets).map_err(AlertError::Budget)?;
        let endpoints = config
            .webhooks
            .iter()
            .map(|w| w.resolve())
            .collect::<Result<Vec<_>, AlertError>>()?;
        let sender = Sender::new(
            config.request_timeout,
            endpoints.iter().map(|e| &e.config.ca_file),
        )?;
        let loaded = AlertState::load(dir)?;
        Ok(Alerter {
            dir: dir.to_path_buf(),
            sender,
            fresh: loaded.is_none(),
            state: loaded.unwrap_or_default(),
            endpoints,
            config,
            metrics: None,
            _lock: lock,
        })
    }

    pub fn with_metrics(mut self, metrics: AlertMetrics) -> Self {
        metrics.disabled.set(self.state.disabled.len() as i64);
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.deliveries.with_label_values(&[outcome]).inc();
            m.disabled.set(self.state.disabled.len() as i64);
        }
    }

    pub fn state(&self) -> &AlertState {
        &self.state
    }

    pub fn interval(&self) -> Duration {
        self.config.interval
    }

    /// Record the milestones `totals` reach for the first time (durably,
    /// before any delivery) and return them.
    pub fn detect(&mut self, totals: &Totals) -> Result<Vec<Milestone>, AlertError> {
        let known: BTreeSet<String> = self.state.milestones.keys().cloned().collect();
        let detected_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut new = evaluate(&self.config.rules, totals, &known, &detected_at);
        new.extend(evaluate_budgets(
            &self.config.budgets,
            totals,
            &known,
            &detected_at,
        ));
        let history = std::mem::replace(&mut self.fresh, false);
        if new.is_empty() && !history {
            return Ok(new);
        }
        let now = now_ms();
        for m in &new {
            let deliveries = self
                .endpoints
                .iter()
                .filter(|e| e.config.wants(m))
                .map(|e| {
                    let status = if history {
                        Status::Skipped
                    } else if self.state.disabled.contains(&e.config.url) {
                        Status::Disabled
                    } else {
                        Status::Pending
                    };
                    let d = Delivery {
                        status,
                        attempts: 0,
                        next_attempt_ms: now,
                        last_error: None,
                    };
                    (e.config.url.clone(), d)
                })
                .collect();
            self.state.milestones.insert(
                m.id.clone(),
                Recorded {
                    milestone: m.clone(),
                    deliveries,
                    mirrored: false,
                },
            );
        }
        self.state.store(&self.dir)?;
        if history {
            if !new.is_empty() {
                tracing::info!(
                    count = new.len(),
                    "first start: existing milestones recorded as history, not sent"
                );
            }
            return Ok(Vec::new());
        }
        if let Some(metrics) = &self.metrics {
            for m in &new {
                metrics
                    .milestones
                    .with_label_values(&[m.kind.as_str()])
                    .inc();
            }
        }
        Ok(new)
    }

    /// Attempt every delivery that is due; the state is saved after each.
    /// Returns how many are still pending.
    pub async fn deliver_due(&mut self) -> Result<usize, AlertError> {
        let now = now_ms();
        let due: Vec<(String, String)> = self
            .state
            .milestones
            .iter()
            .flat_map(|(id, r)| {
                r.deliveries
                    .iter()
                    .filter(|(_, d)| d.status == Status::Pending && d.next_attempt_ms <= now)
                    .map(move |(url, _)| (id.clone(), url.clone()))
            })
            .collect();
        for (id, url) in due {
            // Never the URL itself in a log: for Slack and Discord it is
            // the credential.
            let shown = display_url(&url);
            if self.state.disabled.contains(&url) {
                self.set(&id, &url, |d| d.status = Status::Disabled);
                continue;
            }
            let Some(endpoint) = self.endpoints.iter().find(|e| e.config.url == url) else {
                continue; // endpoint removed from the config: stays pending
            };
            let recorded = &self.state.milestones[&id];
            let message = endpoint.message(&recorded.milestone, now / 1000);
            let detected_ms = chrono::DateTime::parse_from_rfc3339(&recorded.milestone.detected_at)
                .map(|t| t.timestamp_millis())
                .unwrap_or(now);
            let attempt = self
                .sender
                .send(&url, endpoint.config.ca_file.as_deref(), &message)
                .await;
            let since_detected =
                Duration::from_millis(now.saturating_sub(detected_ms).max(0) as u64);
            let give_up = self.config.retry_policy().gives_up(since_detected);
            match attempt {
                Ok(status) => {
                    self.count("delivered");
                    tracing::info!(id, endpoint = shown, status, "milestone delivered");
                    self.set(&id, &url, |d| {
                        d.status = Status::Delivered;
                        d.attempts += 1;
                        d.last_error = None;
                    });
                }
                Err(e @ DeliveryError::Gone) => {
                    tracing::warn!(
                        endpoint = shown,
                        "webhook endpoint answered 410 Gone: disabled"
                    );
                    self.state.disabled.insert(url.clone());
                    self.count("gone");
                    self.set(&id, &url, |d| {
                        d.status = Status::Disabled;
                        d.attempts += 1;
                        d.last_error = Some(e.to_string());
                    });
                }
                Err(e @ (DeliveryError::Rejected { .. } | DeliveryError::Invalid(_))) => {
                    self.count("rejected");
                    tracing::error!(
                        id,
                        endpoint = shown,
                        error = %e,
                        "webhook rejected the milestone: not retried"
                    );
                    self.set(&id, &url, |d| {
                        d.status = Status::Failed;
                        d.attempts += 1;
                        d.last_error = Some(e.to_string());
                    });
                }
                Err(DeliveryError::Retry { error, after }) => {
                    self.count("retry");
                    let attempts = self.state.milestones[&id].deliveries[&url].attempts + 1;
                    let wait = self.config.retry_policy().delay(attempts, after);
                    tracing::warn!(id, endpoint = shown, error, attempts, retry_in = ?wait, "webhook delivery failed");
                    self.set(&id, &url, |d| {
                        d.attempts = attempts;
                        d.last_error = Some(error.clone());
                        d.next_attempt_ms = now + wait.as_millis() as i64;
                        if give_up {
                            d.status = Status::Failed;
                        }
                    });
                }
            }
            self.state.store(&self.dir)?;
        }
        Ok(self
            .state
            .milestones
            .values()
            .flat_map(|r| r.deliveries.values())
            .filter(|d| d.status == Status::Pending)
            .count())
    }

    /// One round: record what `totals` newly reach (when they could be
    /// read), then attempt every delivery that is due. Returns the new
    /// milestones.
    pub async fn round(&mut self, totals: Option<&Totals>) -> Result<Vec<Milestone>, AlertError> {
        let new = match totals {
            Some(t) => self.detect(t)?,
            None => Vec::new(),
        };
        self.deliver_due().await?;
        Ok(new)
    }

    /// Milestones not yet copied to ClickHouse.
    pub fn unmirrored(&self) -> Vec<Milestone> {
        self.state
            .milestones
            .values()
            .filter(|r| !r.mirrored)
            .map(|r| r.milestone.clone())
            .collect()
    }

    /// Note that these were copied to ClickHouse.
    pub fn mark_mirrored(&mut self, ids: &[String]) -> Result<(), AlertError> {
        for id in ids {
            if let Some(r) = self.state.milestones.get_mut(id) {
                r.mirrored = true;
            }
        }
        self.state.store(&self.dir)
    }

    fn set(&mut self, id: &str, url: &str, f: impl FnOnce(&mut Delivery)) {
        if let Some(d) = self
            .state
            .milestones
            .get_mut(id)
            .and_then(|r| r.deliveries.get_mut(url))
        {
            f(d);
        }
    }
}
