//! What the kernel-path tests share: the root/object check that skips them
//! loudly (and fails under CI when the object is missing), running
//! commands, and threads inside network namespaces the tests create.
//!
//! Included with `#[macro_use] #[path = "common/kernel.rs"] mod kernel;`
//! at each test crate's root, so `require_kernel_path!()` can name
//! `$crate::kernel::skip_reason`.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use nix::sched::{setns, CloneFlags};
use switchboard_rtpmanager::fastpath;

/// Why the kernel-path tests cannot run here, if they cannot: not root, or
/// no embedded eBPF object (a failure under CI, which must run them).
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "not root: kernel-path tests need CAP_BPF, CAP_NET_ADMIN and network namespaces".into(),
        );
    }
    if !fastpath::object_embedded() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the kernel-path tests: the eBPF object was not built (cargo xtask build-ebpf)"
        );
        return Some("this build has no eBPF object (cargo xtask build-ebpf)".into());
    }
    None
}

/// Returns from the test, saying so loudly, when it cannot run here.
macro_rules! require_kernel_path {
    () => {
        if let Some(reason) = $crate::kernel::skip_reason() {
            eprintln!(
                "\n!!!!!!!! SKIPPED kernel-path test {}: {reason} !!!!!!!!\n",
                module_path!()
            );
            return;
        }
    };
}

/// Runs a command to completion; panics unless it succeeds.
pub fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

/// A socket address literal.
pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    setns(file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
}

/// Runs `f` on a new thread inside network namespace `ns` (namespaces are
/// per thread).
pub fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
}

/// [`spawn_in_ns`] and wait for it, re-raising its panic.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_ns(ns, f)
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
