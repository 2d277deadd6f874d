//! Price tables in LiteLLM's format: any file loads whole, within bounds,
//! or is refused with a reason.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tokentally_schemas::fuzzing::prices_are_sound(data);
});
