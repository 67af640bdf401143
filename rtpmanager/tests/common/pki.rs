//! A throwaway PKI made with the `openssl` command at test time: a CA, a
//! server certificate for 127.0.0.1/localhost, a client certificate, and a
//! second CA with a client certificate of its own (a stranger's). The same
//! commands are the ones docs/DEPLOYMENT.md gives operators.
//!
//! Shared with signaling's tests (included there by path), which start the
//! manager too.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of a test PKI, deleted with it.
pub struct Pki {
    dir: tempfile::TempDir,
    manager_tls: [String; 6],
    signaling_tls: [String; 6],
}

impl Pki {
    /// Makes every file (one ECDSA P-256 key each; a few tens of milliseconds).
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir for the PKI");
        let arg = |name: &str| {
            let path = dir.path().join(name);
            path.to_str().expect("utf-8 temp path").to_owned()
        };
        let manager_tls = [
            "--grpc-tls-cert".to_owned(),
            arg("server.crt"),
            "--grpc-tls-key".to_owned(),
            arg("server.key"),
            "--grpc-tls-client-ca".to_owned(),
            arg("ca.crt"),
        ];
        let signaling_tls = [
            "--rtpmanager-tls-ca".to_owned(),
            arg("ca.crt"),
            "--rtpmanager-tls-cert".to_owned(),
            arg("client.crt"),
            "--rtpmanager-tls-key".to_owned(),
            arg("client.key"),
        ];
        let pki = Pki {
            dir,
            manager_tls,
            signaling_tls,
        };
        pki.ca("ca");
        pki.ca("rogue-ca");
        pki.leaf(
            "server",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.leaf("client", "ca", "extendedKeyUsage=clientAuth\n");
        pki.leaf("rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth\n");
        pki
    }

    /// The path of one file: `ca.crt`, `server.crt`, `server.key`,
    /// `client.crt`, `client.key`, `rogue-ca.crt`, `rogue-client.crt`, ….
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `path` as a `&str` argument.
    pub fn arg(&self, name: &str) -> String {
        self.path(name)
            .to_str()
            .expect("utf-8 temp path")
            .to_owned()
    }

    /// The manager's options for TLS with its server certificate, taking
    /// only clients with a certificate of `ca`.
    pub fn manager_tls(&self) -> [&str; 6] {
        self.manager_tls.each_ref().map(String::as_str)
    }

    /// Signaling's options to reach that manager: trusting `ca` and
    /// presenting the client certificate.
    pub fn signaling_tls(&self) -> [&str; 6] {
        self.signaling_tls.each_ref().map(String::as_str)
    }

    /// Writes a file beside the PKI's (a token file) and returns its path
    /// as an argument.
    pub fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.path(name), text).expect("write a file beside the PKI");
        self.arg(name)
    }

    /// The contents of one file.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read PKI file")
    }

    fn ca(&self, name: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=switchboard test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    fn leaf(&self, name: &str, ca: &str, extensions: &str) {
        let ext = format!("{name}.ext");
        std::fs::write(self.path(&ext), extensions).expect("write extensions");
        openssl(
            self.dir.path(),
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN=switchboard test {name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-CAserial",
                &format!("{ca}.srl"),
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
