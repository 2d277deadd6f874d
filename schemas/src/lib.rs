//! The tokentally event contract.
//!
//! - [`event`]: the JSON event, decoding and validation ([`decode`]).
//! - [`reject`]: machine-readable reasons for refused input.
//! - [`body`]: how a batch of events is framed in one body (JSON array, NDJSON).
//! - [`arrow`]: the Arrow schema of validated events and a batch builder.
//! - [`prices`]: price tables (LiteLLM's format) as exact decimal prices.
//!
//! The contract is documented for humans in `docs/EVENTS.md` and as a JSON
//! Schema in `schemas/event.schema.json`.

#[cfg(feature = "arrow")]
pub mod arrow;
pub mod body;
pub mod event;
mod flat;
#[doc(hidden)]
pub mod fuzzing;
pub mod prices;
pub mod reject;

pub use event::{
    DEAD_LETTER_RAW_BYTES, Limits, Status, TokenEvent, check_depth, check_size, decode,
};
pub use reject::{RejectReason, Rejection};
