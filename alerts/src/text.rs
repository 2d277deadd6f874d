//! Milestones and token counts as people read them (the demo's lines, the
//! chat and paging formats' text).

use crate::{Kind, Milestone, Unit};

/// `1_000_000_000_000` → `"1T"`, `2_500_000_000` → `"2.5B"`.
pub fn human_tokens(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "B"),
        (1_000_000, "M"),
        (1_000, "K"),
    ];
    for (scale, unit) in UNITS {
        if n >= scale {
            let v = n as f64 / scale as f64;
            let s = format!("{v:.2}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            return format!("{s}{unit}");
        }
    }
    n.to_string()
}

/// Micro-USD as dollars and cents, `$1,234.57` (rounded half up).
pub fn human_usd(micros: u64) -> String {
    let cents = (u128::from(micros) + 5_000) / 10_000;
    let dollars = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in dollars.chars().enumerate() {
        if i > 0 && (dollars.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("${grouped}.{:02}", cents % 100)
}

/// A milestone's number as people read it, in its unit.
pub fn amount(m: &Milestone, n: u64) -> String {
    match m.unit {
        Unit::Tokens => human_tokens(n),
        Unit::UsdMicros => human_usd(n),
    }
}

/// One sentence saying what happened, e.g. `qwen/qwen3.6-plus crossed 1T
/// tokens in a day on 2026-11-27, the first model ever (1.02T)`: the
/// demo's lines, and the text of every chat and paging format, so that
/// each kind of milestone reads the same wherever it is shown.
pub fn headline(m: &Milestone) -> String {
    let day = m.day.as_deref().unwrap_or("");
    let subject = match m.scope.as_str() {
        "fleet" => "The fleet".to_string(),
        "provider" => format!("Provider {}", m.provider.as_deref().unwrap_or("")),
        _ => m.model.clone().unwrap_or_default(),
    };
    let threshold = amount(m, m.threshold.unwrap_or(0));
    let value = amount(m, m.value);
    if m.unit == Unit::UsdMicros {
        return spend_headline(m, &subject, day, &threshold, &value);
    }
    match m.kind {
        Kind::Threshold => {
            format!("{subject} crossed {threshold} tokens in a day on {day} (now {value})")
        }
        Kind::AllTime => format!("{subject} crossed {threshold} tokens in all (now {value})"),
        Kind::First => format!(
            "{subject} crossed {threshold} tokens in a day on {day}, the first model ever ({value})"
        ),
        Kind::Test => format!(
            "Test from tokentally: {subject} crossed {threshold} tokens in a day on {day} (a sample, not a real milestone)"
        ),
        Kind::Record => {
            let previous = human_tokens(m.previous_record.unwrap_or(0));
            match (m.scope.as_str(), &m.previous_holder) {
                ("top_model", Some(holder)) => format!(
                    "{subject} set the highest daily total of any model on {day}: {value} tokens (was {previous}, {holder})"
                ),
                ("model", _) => format!(
                    "{subject} set its daily record on {day}: {value} tokens (was {previous})"
                ),
                _ => format!(
                    "{subject} set a daily record on {day}: {value} tokens (was {previous})"
                ),
            }
        }
        Kind::Budget => spend_headline(m, &subject, day, &threshold, &value),
    }
}

/// The headline of a spend milestone (values in micro-USD).
fn spend_headline(m: &Milestone, subject: &str, day: &str, threshold: &str, value: &str) -> String {
    let previous = human_usd(m.previous_record.unwrap_or(0));
    match (m.kind, m.scope.as_str(), &m.budget) {
        (Kind::Budget, scope, Some(b)) => {
            let subject = match scope {
                "app" => format!("App {}", m.app.as_deref().unwrap_or("")),
                _ => subject.to_string(),
            };
            let (period, when) = match b.period.as_str() {
                "month" => ("monthly", format!("in {}", day.get(..7).unwrap_or(day))),
                _ => ("daily", format!("on {day}")),
            };
            format!(
                "{subject} reached {}% of its {period} budget {} of {} {when} ({value} spent)",
                b.percent,
                b.name,
                human_usd(b.limit)
            )
        }
        (Kind::First, _, _) => {
            format!("{subject} spent {threshold} in a day on {day}, the first model ever ({value})")
        }
        (Kind::Record, "top_model", _) => format!(
            "{subject} set the highest daily spend of any model on {day}: {value} (was {previous}, {})",
            m.previous_holder.as_deref().unwrap_or("")
        ),
        (Kind::Record, _, _) => {
            format!("{subject} set a daily spend record on {day}: {value} (was {previous})")
        }
        _ => format!("{subject} spent {value} on {day}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_headlines_say_dollars() {
        assert_eq!(human_usd(1_234_567_890), "$1,234.57");
        assert_eq!(human_usd(999), "$0.00");
        assert_eq!(human_usd(5_000), "$0.01");
        let m = Milestone {
            id: "budget:cline-daily:2026-11-01:80".into(),
            kind: Kind::Budget,
            scope: "app".into(),
            model: None,
            provider: None,
            day: Some("2026-11-01".into()),
            threshold: Some(800_000_000),
            value: 812_400_000,
            previous_record: None,
            previous_holder: None,
            detected_at: "now".into(),
            unit: Unit::UsdMicros,
            app: Some("<b>クライン</b>".into()),
            budget: Some(crate::BudgetHit {
                name: "cline-monthly".into(),
                period: "month".into(),
                limit: 1_000_000_000,
                percent: 80,
            }),
        };
        assert_eq!(
            headline(&m),
            "App <b>クライン</b> reached 80% of its monthly budget cline-monthly of $1,000.00 in 2026-11 ($812.40 spent)"
        );
        let first = Milestone {
            id: "first_spend:model:1000000".into(),
            kind: Kind::First,
            scope: "model".into(),
            model: Some("qwen/qwen3.6-plus".into()),
            day: Some("2026-11-27".into()),
            threshold: Some(1_000_000_000_000),
            value: 1_020_000_000_000,
            app: None,
            budget: None,
            ..m
        };
        assert_eq!(
            headline(&first),
            "qwen/qwen3.6-plus spent $1,000,000.00 in a day on 2026-11-27, the first model ever ($1,020,000.00)"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_tokens(1_000_000_000_000), "1T");
        assert_eq!(human_tokens(2_500_000_000), "2.5B");
        assert_eq!(human_tokens(999), "999");
        assert_eq!(human_tokens(1_234_567), "1.23M");
    }

    #[test]
    fn the_sample_says_it_is_a_test() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T08:00:00.5Z")
            .unwrap()
            .to_utc();
        let m = Milestone::sample(now);
        assert_eq!(
            m.id,
            "test:model:tokentally/test-model:2026-11-29:1795939200500"
        );
        assert_eq!(m.kind, Kind::Test);
        assert_eq!(
            headline(&m),
            "Test from tokentally: tokentally/test-model crossed 1T tokens in a day on \
             2026-11-29 (a sample, not a real milestone)"
        );
        let later = Milestone::sample(now + chrono::Duration::milliseconds(1));
        assert_ne!(later.id, m.id, "every test is news to a receiver");
    }

    #[test]
    fn headlines_name_the_subject_and_the_numbers() {
        let m = Milestone {
            id: "first:model:1000000000000".into(),
            kind: Kind::First,
            scope: "model".into(),
            model: Some("通义/qwen \"max\" <b>".into()),
            provider: None,
            day: Some("2026-11-27".into()),
            threshold: Some(1_000_000_000_000),
            value: 1_020_000_000_000,
            previous_record: None,
            previous_holder: None,
            detected_at: "now".into(),
            unit: Unit::Tokens,
            app: None,
            budget: None,
        };
        assert_eq!(
            headline(&m),
            "通义/qwen \"max\" <b> crossed 1T tokens in a day on 2026-11-27, the first model ever (1.02T)"
        );
        let fleet = Milestone {
            id: "record:fleet:2026-11-28".into(),
            kind: Kind::Record,
            scope: "fleet".into(),
            model: None,
            day: Some("2026-11-28".into()),
            threshold: None,
            value: 5_000_000_000_000,
            previous_record: Some(4_800_000_000_000),
            ..m.clone()
        };
        assert_eq!(
            headline(&fleet),
            "The fleet set a daily record on 2026-11-28: 5T tokens (was 4.8T)"
        );
        let top = Milestone {
            scope: "top_model".into(),
            model: Some("b".into()),
            previous_holder: Some("a".into()),
            ..fleet
        };
        assert_eq!(
            headline(&top),
            "b set the highest daily total of any model on 2026-11-28: 5T tokens (was 4.8T, a)"
        );
    }
}
