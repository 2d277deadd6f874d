//! The tokentally event contract.
//!
//! - [`event`]: the JSON event, decoding and validation ([`decode`]).
//! - [`reject`]: machine-readable reasons for refused input.
//! - [`arrow`]: the Arrow schema of validated events and a batch builder.
//!
//! The contract is documented for humans in `docs/EVENTS.md` and as a JSON
//! Schema in `schemas/event.schema.json`.

pub mod arrow;
pub mod event;
mod flat;
pub mod reject;

pub use event::{DEAD_LETTER_RAW_BYTES, Limits, Status, TokenEvent, check_depth, decode};
pub use reject::{RejectReason, Rejection};
