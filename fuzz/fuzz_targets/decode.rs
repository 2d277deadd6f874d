//! The event decoders: any bytes, both decoders, both limits.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tokentally_schemas::fuzzing::decode_agrees(data);
});
