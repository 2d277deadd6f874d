//! The property the `otlp` fuzz target checks (`fuzz/`, run by
//! `scripts/fuzz`), written here so that its committed corpus replays as an
//! ordinary test on stable (`ingest/tests/fuzz_corpus.rs`).

use prost::Message;
use tokentally_schemas::Limits;
use tokentally_schemas::body::MAX_RECORDS;

use super::{Encoding, decode, events, span_count};

/// Any bytes, read as protobuf and as OTLP JSON, decode to a request or an
/// error without panicking; a request's spans are each an event, a
/// rejection or skipped; each event is valid under the contract with the
/// limits it was mapped under and keyed by its `event_id` (trace id `-`
/// span id in hex); and a request survives protobuf's round trip.
pub fn decode_is_sound(data: &[u8]) {
    let tight = Limits {
        max_tokens: 1_000,
        max_depth: 3,
        max_record_bytes: 512,
    };
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        let Ok(request) = decode(data, encoding) else {
            continue;
        };
        // Compared as bytes: a NaN attribute is not equal to itself.
        let bytes = request.encode_to_vec();
        let again = decode(&bytes, Encoding::Protobuf).expect("an encoded request decodes");
        assert_eq!(again.encode_to_vec(), bytes);
        let spans = span_count(&request);
        for limits in [Limits::default(), tight] {
            let Ok(mapped) = events(&request, &limits) else {
                assert!(spans > MAX_RECORDS);
                continue;
            };
            assert_eq!(
                mapped.events().len() + mapped.rejected_count + mapped.skipped,
                spans
            );
            assert!(mapped.rejected.len() <= mapped.rejected_count);
            for e in mapped.events() {
                let event = tokentally_schemas::decode(e.json, &limits)
                    .unwrap_or_else(|r| panic!("a mapped event is invalid: {r}"));
                assert_eq!(event.event_id, e.event_id);
                assert_eq!(e.event_id.len(), 49);
                assert!(
                    e.event_id
                        .bytes()
                        .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                );
            }
        }
    }
}
