//! The gateway's body splitter: any body, as JSON and as NDJSON, and every
//! record it cuts out through the decoders.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tokentally_schemas::fuzzing::split_is_sound(data);
});
