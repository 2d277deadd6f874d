//! The standard format: the milestone itself as the JSON body, with the
//! Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`; see [`crate::webhook`]).

use crate::Milestone;
use crate::webhook::{Message, Secret, signature_header, webhook_id};

/// The signed request announcing `m` at Unix second `timestamp`.
pub fn message(m: &Milestone, secrets: &[Secret], timestamp: i64) -> Message {
    let body = serde_json::to_vec(m).expect("milestones serialize");
    let id = webhook_id(&m.id);
    let signature = signature_header(secrets, &id, timestamp, &body);
    Message {
        body,
        headers: vec![
            ("webhook-id", id),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::{HOSTILE, milestone};
    use crate::webhook::verify;

    #[test]
    fn the_body_is_the_milestone_and_every_header_is_ascii_and_verifies() {
        let m = milestone(HOSTILE);
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let msg = message(&m, std::slice::from_ref(&secret), 1_795_737_600);
        let body: Milestone = serde_json::from_slice(&msg.body).unwrap();
        assert_eq!(body, m, "the readable id and model stay in the body");
        let names: Vec<&str> = msg.headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["webhook-id", "webhook-timestamp", "webhook-signature"]
        );
        for (name, value) in &msg.headers {
            assert!(value.is_ascii(), "{name}: {value}");
        }
        let h = |n: &str| &msg.headers.iter().find(|(k, _)| *k == n).unwrap().1;
        assert_eq!(h("webhook-id"), &webhook_id(&m.id));
        assert_eq!(
            verify(
                &secret,
                h("webhook-id"),
                h("webhook-timestamp"),
                h("webhook-signature"),
                &msg.body,
                1_795_737_600
            ),
            Ok(())
        );
    }
}
