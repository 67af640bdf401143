//! Test certificates made with `openssl`: a throw-away CA and a server
//! certificate for 127.0.0.1 signed by it, as the TLS tests (SIP, Redis)
//! need them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files [`make`] wrote.
#[derive(Debug, Clone)]
pub struct Certificates {
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate for `IP:127.0.0.1` (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, unencrypted).
    pub key: PathBuf,
}

/// Makes a CA (`ca.crt`) and a certificate for 127.0.0.1 (`server.crt`,
/// `server.key`) in `dir`, named `prefix`-…; `None` (the test is skipped,
/// loudly, or fails under CI) without `openssl`.
pub fn make(dir: &Path, prefix: &str, purpose: &str) -> Option<Certificates> {
    let openssl = crate::tool("openssl", purpose)?;
    std::fs::create_dir_all(dir).expect("certificate directory");
    let run = |args: &[&str]| {
        let status = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?} failed");
    };
    let name = |file: &str| format!("{prefix}{file}");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &name("ca.key"),
        "-out",
        &name("ca.crt"),
        "-days",
        "2",
        "-subj",
        "/CN=switchboard test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &name("server.key"),
        "-out",
        &name("server.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join(name("san.ext")), "subjectAltName=IP:127.0.0.1\n")
        .expect("write san.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        &name("server.csr"),
        "-CA",
        &name("ca.crt"),
        "-CAkey",
        &name("ca.key"),
        "-CAcreateserial",
        "-out",
        &name("server.crt"),
        "-days",
        "2",
        "-extfile",
        &name("san.ext"),
    ]);
    Some(Certificates {
        ca: dir.join(name("ca.crt")),
        cert: dir.join(name("server.crt")),
        key: dir.join(name("server.key")),
    })
}
