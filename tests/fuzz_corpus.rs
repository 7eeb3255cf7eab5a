//! Replays the fuzzers' regression corpus (`fuzz/corpus/<target>/`, grown by `fuzz/run.sh`)
//! through the same entry points the fuzz targets use: none of it may panic.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        run(&data);
        count += 1;
    }
    assert!(count > 0, "no corpus in {}", dir.display());
    eprintln!("{target}: {count} inputs replayed");
}

#[test]
fn frame_decoder_corpus() {
    replay("frames", menet_actors::fuzzing::frames);
}

#[test]
fn record_layer_corpus() {
    replay("records", menet_actors::fuzzing::records);
}

#[test]
fn handshake_corpus() {
    replay("handshake", menet_actors::fuzzing::handshake);
}

#[test]
fn admin_request_corpus() {
    replay("admin_request", menet::api::fuzz_request);
}
