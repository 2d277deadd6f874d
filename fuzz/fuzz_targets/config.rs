//! The config loader: any bytes as a config file's text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tokentally::config::parse_is_bounded(data);
});
