//! The `otlp` fuzz target's committed corpus (`fuzz/corpus/otlp/`), every
//! crash ever found included, replayed through its property on stable.

use std::path::Path;

#[test]
fn the_otlp_corpus_holds() {
    let dir =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/otlp");
    tokentally_schemas::fuzzing::replay_corpus(
        &dir,
        tokentally_ingest::otlp::fuzzing::decode_is_sound,
    );
}
