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
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let run = std::panic::catch_unwind(|| property(&data));
        assert!(run.is_ok(), "{} fails its property", path.display());
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn the_decode_corpus_holds() {
    replay("decode", fuzzing::decode_agrees);
}

#[test]
fn the_body_corpus_holds() {
    replay("body", fuzzing::split_is_sound);
}
