//! The gateway's OTLP decoders (protobuf and JSON) and the span mapping:
//! any body, and every event it maps to through the contract's decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tokentally_ingest::otlp::fuzzing::decode_is_sound(data);
});
