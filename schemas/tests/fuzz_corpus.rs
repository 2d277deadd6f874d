//! The fuzz targets' committed corpus (`fuzz/corpus/<target>/`), every
//! crash ever found included, replayed through the same properties on
//! stable: a regression fails here, in `scripts/test`, without libFuzzer.

use std::path::Path;

use tokentally_schemas::fuzzing;

fn replay(target: &str, property: fn(&[u8])) {
    let dir =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
    fuzzing::replay_corpus(&dir, property);
}

#[test]
fn the_decode_corpus_holds() {
    replay("decode", fuzzing::decode_agrees);
}

#[test]
fn the_body_corpus_holds() {
    replay("body", fuzzing::split_is_sound);
}

#[test]
fn the_prices_corpus_holds() {
    replay("prices", fuzzing::prices_are_sound);
}
