//! What the kernel-path tests share: the root/object check that skips them
//! loudly (and fails under CI when the object is missing), and
//! BPF_PROG_TEST_RUN. Commands and threads inside network namespaces are
//! switchboard-testkit's `netns`.
//!
//! Included with `#[macro_use] #[path = "common/kernel.rs"] mod kernel;`
//! at each test crate's root, so `require_kernel_path!()` can name
//! `$crate::kernel::skip_reason`; the program benchmark includes it for
//! [`test_run`].
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;

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
#[allow(unused_macros)]
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

/// A socket address literal.
pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// What one `BPF_PROG_TEST_RUN` returned.
pub struct TestRun {
    /// The program's verdict.
    pub verdict: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// Mean run time over the repetitions, in nanoseconds.
    pub mean_ns: u32,
}

/// The `test` member of `union bpf_attr` (BPF_PROG_TEST_RUN).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

/// Runs the loaded program `fd` on `packet` `repeat` times
/// (BPF_PROG_TEST_RUN), with `ctx` as its context when given; the kernel's
/// refusal of the input is the error.
pub fn test_run(
    fd: i32,
    packet: &[u8],
    ctx: Option<&[u8]>,
    repeat: u32,
) -> std::io::Result<TestRun> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let too_big = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(fd).map_err(too_big)?,
        data_size_in: u32::try_from(packet.len()).map_err(too_big)?,
        data_size_out: u32::try_from(out.len()).map_err(too_big)?,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    if let Some(ctx) = ctx {
        attr.ctx_size_in = u32::try_from(ctx.len()).map_err(too_big)?;
        attr.ctx_in = ctx.as_ptr() as u64;
    }
    // SAFETY: attr is a valid bpf_attr prefix; the buffers it points at
    // outlive the call and data_size_out bounds the kernel's writes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun {
        verdict: attr.retval,
        packet: out,
        mean_ns: attr.duration,
    })
}
