//! Embeds the eBPF object when `cargo xtask build-ebpf` has built it.
//!
//! The object is optional: without it the manager still builds and runs the
//! userspace relay only (and says so). `SWITCHBOARD_EBPF_OBJECT` points at an
//! object elsewhere (packaging).

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ebpf_object)");
    println!("cargo::rerun-if-env-changed=SWITCHBOARD_EBPF_OBJECT");
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let ebpf_dir = manifest_dir.join("../rtpmanager-ebpf");
    // A directory is scanned recursively, so a freshly built object (under
    // its target/) reruns this script.
    println!("cargo::rerun-if-changed={}", ebpf_dir.display());

    let object = std::env::var_os("SWITCHBOARD_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| ebpf_dir.join("target/bpfel-unknown-none/release/rtpmanager-ebpf"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("rtpmanager-ebpf.o");
    if object.is_file() {
        std::fs::copy(&object, &out).expect("copy the eBPF object into OUT_DIR");
        println!("cargo::rustc-cfg=ebpf_object");
    } else {
        let _ = std::fs::remove_file(&out);
        println!(
            "cargo::warning=eBPF object not found at {}; building without the kernel fast path (run `cargo xtask build-ebpf`)",
            object.display()
        );
    }
}
