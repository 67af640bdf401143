//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! fuzz targets' own checks on stable, without cargo-fuzz or nightly: every
//! seed, and every crash input added there once fixed, keeps passing. The
//! checks are the fuzz crate's modules, included by path (the fuzz crate is
//! its own workspace); `cargo xtask fuzz` runs the real fuzzers.

#[path = "../../fuzz/src/media.rs"]
mod media;
#[path = "../../fuzz/src/sip.rs"]
mod sip;

use std::path::PathBuf;

/// Runs `check` on every file of the target's corpus, naming the file that
/// fails; returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    paths.sort();
    for path in &paths {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{target}: {} fails its check", path.display());
        }
    }
    paths.len()
}

#[test]
fn every_sip_parse_corpus_message_round_trips_through_the_parser() {
    assert!(
        replay("sip_parse", sip::parse) >= 50,
        "RFC 4475/5118 seeds present"
    );
}

#[test]
fn every_sip_framer_corpus_stream_frames_alike_however_it_is_split() {
    assert!(replay("sip_framer", sip::framer) >= 5);
}

#[test]
fn every_dialplan_corpus_file_loads_consistently() {
    assert!(replay("dialplan", sip::dialplan) >= 5);
}

#[test]
fn every_sdp_corpus_body_round_trips_and_rewrites_into_valid_sdp() {
    assert!(replay("sdp_parse", media::sdp) >= 10);
}

#[test]
fn every_rtp_rtcp_corpus_datagram_reads_back_what_is_written() {
    assert!(replay("rtp_rtcp", media::rtp_rtcp) >= 5);
}
