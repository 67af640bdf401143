//! TLS for SIP (RFC 3261 §26.2, RFC 5630): the server's certificate and
//! key read from PEM files and swapped in place on reload (new
//! connections get the new pair, open ones keep theirs), and the trust
//! anchors that outbound connections check servers against.
//!
//! Outbound connections check the server's certificate against the
//! address dialled (a target named by host name is resolved to addresses
//! first, so the certificate must name the address in a subjectAltName),
//! and present this server's certificate when the server asks for one:
//! trunks that want mutual TLS (as Microsoft Teams Direct Routing does)
//! get it. Clients are not asked for a certificate: phones rarely have
//! one; they authenticate with digest over the encrypted connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// What is wrong with the TLS files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM block.
    #[error("--{option}: {path}: {reason}")]
    File {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, never the key's content.
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls refuses them.
    #[error("--tls-cert/--tls-key: {0}")]
    Pair(String),
    /// No trust anchor at all for outbound connections.
    #[error("--tls-ca: no certificate authority to check servers against ({0})")]
    NoRoots(String),
}

/// Where the server's certificate and key come from, and whom outbound
/// connections trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Trust anchors for servers we connect to (PEM); `None`: the
    /// system's (`/etc/ssl/certs`).
    pub ca: Option<PathBuf>,
}

/// The TLS settings in force: configurations for both directions and the
/// certificate holder that [`Tls::reload`] swaps.
#[derive(Debug, Clone)]
pub struct Tls {
    files: TlsFiles,
    certificate: Arc<Certificate>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// Two settings are the same when they read the same files.
impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        self.files == other.files
    }
}

impl Eq for Tls {}

impl Tls {
    /// Reads the files; any problem is an error naming the option.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = provider();
        let key = read_pair(&files, &provider)?;
        let certificate = Arc::new(Certificate {
            current: RwLock::new(Arc::new(key)),
        });
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
        let roots = trust_anchors(files.ca.as_deref())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesClientCert>);
        Ok(Tls {
            files,
            certificate,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// Reads the certificate and key again (a renewed certificate); on
    /// any error the pair in force stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = read_pair(&self.files, &provider())?;
        *self
            .certificate
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub(super) fn server(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    pub(super) fn client(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.client)
    }
}

/// ring, as the rest of the process (tonic, redis) uses it; named here
/// rather than taken from a process-wide default that another crate may
/// or may not have installed.
/// rustls marks ring's provider deprecated for want of post-quantum key
/// exchange; aws-lc-rs would add a C and CMake build to every build of the
/// workspace. Revisit when ring gains ML-KEM.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's certificate, swapped whole on reload.
#[derive(Debug)]
struct Certificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The same certificate, shown to servers that ask for one.
impl ResolvesClientCert for Certificate {
    fn resolve(
        &self,
        _root_hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn file_error(option: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        option,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read_certificates(
    option: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(option, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(option, path, e))?;
    if certificates.is_empty() {
        return Err(file_error(
            option,
            path,
            "holds no `-----BEGIN CERTIFICATE` block",
        ));
    }
    Ok(certificates)
}

fn read_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates("tls-cert", &files.cert)?;
    // The key's content never appears in an error: only what kind of
    // problem the file has.
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        file_error(
            "tls-key",
            &files.key,
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "holds no PEM private key block".to_owned()
                }
                rustls::pki_types::pem::Error::Io(io) => io.to_string(),
                _ => "is not a readable PEM private key".to_owned(),
            },
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Pair(e.to_string()))
}

fn trust_anchors(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for certificate in read_certificates("tls-ca", path)? {
                roots
                    .add(certificate)
                    .map_err(|e| file_error("tls-ca", path, e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoRoots(
                    "none in the system store; name a file with --tls-ca".to_owned(),
                ));
            }
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_errors_naming_the_option() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = TlsFiles {
            cert: dir.path().join("none.pem"),
            key: dir.path().join("none.key"),
            ca: None,
        };
        let error = Tls::load(missing).expect_err("no files").to_string();
        assert!(error.starts_with("--tls-cert: "), "{error}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let error = Tls::load(TlsFiles {
            cert: empty.clone(),
            key: empty.clone(),
            ca: None,
        })
        .expect_err("no PEM")
        .to_string();
        assert!(
            error.contains("holds no `-----BEGIN CERTIFICATE` block"),
            "{error}"
        );
    }
}

#[cfg(test)]
mod transport_tests {
    //! TLS through the transports: accepted, dialled, verified, reloaded.

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    use super::{Tls, TlsFiles};
    use crate::transport::limits::TransportStats;
    use crate::transport::{
        Destination, Flow, Inbound, InboundSink, Outbound, Stream, TransportConfig, Transports,
    };

    const OPTIONS: &str = "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\n\
        Via: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bKtls\r\n\
        Content-Length: 0\r\n\r\n";

    async fn start(tls: Option<Tls>) -> (Transports, mpsc::UnboundedReceiver<Inbound>) {
        let (sender, received) = mpsc::unbounded_channel::<Inbound>();
        let sink: InboundSink = Arc::new(move |inbound| {
            let _ = sender.send(inbound);
        });
        let transports = Transports::start(
            TransportConfig {
                tcp_message_timeout: Duration::from_secs(2),
                tcp_connect_timeout: Duration::from_secs(2),
                tls: tls.map(|tls| ("127.0.0.1:0".parse().expect("address"), tls)),
                ..TransportConfig::for_test()
            },
            sink,
            Arc::new(TransportStats::default()),
        )
        .await
        .expect("transports start");
        (transports, received)
    }

    fn files(dir: &std::path::Path, prefix: &str) -> Option<TlsFiles> {
        let made = switchboard_testkit::certs::make(dir, prefix, "the SIP over TLS tests")?;
        Some(TlsFiles {
            cert: made.cert,
            key: made.key,
            ca: Some(made.ca),
        })
    }

    /// A client trusting `ca` only, as a phone configured with it.
    async fn client(
        ca: &std::path::Path,
        server: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in super::read_certificates("tls-ca", ca).expect("CA") {
            roots.add(cert).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = TcpStream::connect(server).await?;
        connector
            .connect(ServerName::IpAddress(server.ip().into()), stream)
            .await
    }

    async fn next(received: &mut mpsc::UnboundedReceiver<Inbound>) -> Option<Inbound> {
        tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn a_message_over_tls_arrives_on_a_tls_flow_and_the_reply_goes_back_on_its_connection() {
        let dir = tempfile::tempdir().expect("dir");
        let Some(files) = files(dir.path(), "") else {
            return;
        };
        let ca = files.ca.clone().expect("ca");
        let (transports, mut received) = start(Some(Tls::load(files).expect("load"))).await;
        let server = transports.tls_local_addr().expect("TLS served");
        assert_ne!(server.port(), transports.local_addr().port());

        let mut phone = client(&ca, server).await.expect("handshake");
        phone.write_all(OPTIONS.as_bytes()).await.expect("write");
        let inbound = next(&mut received).await.expect("the OPTIONS arrives");
        assert_eq!(inbound.bytes, OPTIONS.as_bytes());
        let Flow::Stream {
            kind: Stream::Tls,
            remote,
            connection,
        } = inbound.flow
        else {
            panic!("not a TLS flow: {:?}", inbound.flow);
        };
        assert_eq!(remote, phone.get_ref().0.local_addr().expect("local"));

        transports.send(Outbound {
            destination: inbound.flow.reply_destination(),
            bytes: b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        });
        let mut reply = vec![0u8; 64];
        let len = tokio::time::timeout(Duration::from_secs(5), phone.read(&mut reply))
            .await
            .expect("the reply comes back")
            .expect("read");
        assert!(reply[..len].starts_with(b"SIP/2.0 200 OK"));
        assert_eq!(transports.tcp_connections(), 1, "{connection}");

        // Plain TCP to the TLS port is not SIP: the handshake fails and
        // the slot is given back.
        let mut plain = TcpStream::connect(server).await.expect("connect");
        plain.write_all(OPTIONS.as_bytes()).await.expect("write");
        let mut buffer = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buffer)).await;
        assert!(next(&mut received).await.is_none(), "plaintext delivered");
        assert_eq!(transports.tcp_connections(), 1);
    }

    #[tokio::test]
    async fn a_request_to_a_tls_destination_opens_a_verified_connection_and_an_untrusted_server_gets_nothing(
    ) {
        let dir = tempfile::tempdir().expect("dir");
        let (Some(trunk_files), Some(other_files)) =
            (files(dir.path(), "trunk-"), files(dir.path(), "other-"))
        else {
            return;
        };
        let trunk_ca = trunk_files.ca.clone();
        let (trunk, mut at_trunk) = start(Some(Tls::load(trunk_files).expect("trunk"))).await;
        let trunk_tls = trunk.tls_local_addr().expect("TLS served");

        // Trusting the trunk's CA: the request arrives over TLS.
        let (us, _) = start(Some(
            Tls::load(TlsFiles {
                ca: trunk_ca,
                ..other_files.clone()
            })
            .expect("ours"),
        ))
        .await;
        us.send(Outbound {
            destination: Destination::over(&crate::sip::Transport::Tls, trunk_tls),
            bytes: OPTIONS.as_bytes().to_vec(),
        });
        let inbound = next(&mut at_trunk).await.expect("the request arrives");
        assert!(
            matches!(
                inbound.flow,
                Flow::Stream {
                    kind: Stream::Tls,
                    ..
                }
            ),
            "{:?}",
            inbound.flow
        );
        assert_eq!(inbound.bytes, OPTIONS.as_bytes());

        // Trusting another CA only: the handshake fails, nothing arrives,
        // and the connection slot is given back.
        let (stranger, _) = start(Some(Tls::load(other_files).expect("stranger"))).await;
        stranger.send(Outbound {
            destination: Destination::over(&crate::sip::Transport::Tls, trunk_tls),
            bytes: OPTIONS.as_bytes().to_vec(),
        });
        assert!(
            next(&mut at_trunk).await.is_none(),
            "sent to an untrusted server"
        );
        assert_eq!(stranger.tcp_connections(), 0);
    }

    #[tokio::test]
    async fn a_reloaded_certificate_is_shown_to_new_connections_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let (Some(first), Some(second)) = (files(dir.path(), "a-"), files(dir.path(), "b-")) else {
            return;
        };
        // The server reads its pair from fixed paths, as a deployment does.
        let cert = dir.path().join("sip.crt");
        let key = dir.path().join("sip.key");
        std::fs::copy(&first.cert, &cert).expect("copy");
        std::fs::copy(&first.key, &key).expect("copy");
        let tls = Tls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        })
        .expect("load");
        let (transports, _received) = start(Some(tls.clone())).await;
        let server = transports.tls_local_addr().expect("TLS served");
        let first_ca = first.ca.expect("ca");
        let second_ca = second.ca.expect("ca");
        assert!(client(&first_ca, server).await.is_ok());
        assert!(client(&second_ca, server).await.is_err());

        std::fs::copy(&second.cert, &cert).expect("copy");
        std::fs::copy(&second.key, &key).expect("copy");
        tls.reload().expect("reload");
        assert!(client(&second_ca, server).await.is_ok());
        assert!(client(&first_ca, server).await.is_err());

        // A key that does not belong to the certificate: refused, and the
        // certificate in force stays.
        std::fs::copy(&first.key, &key).expect("copy");
        let error = tls.reload().expect_err("mismatched pair").to_string();
        assert!(error.starts_with("--tls-cert/--tls-key: "), "{error}");
        assert!(client(&second_ca, server).await.is_ok());
    }

    #[tokio::test]
    async fn a_trunk_asking_for_a_client_certificate_gets_ours() {
        let dir = tempfile::tempdir().expect("dir");
        let (Some(ours), Some(trunk)) = (files(dir.path(), "ours-"), files(dir.path(), "trunk-"))
        else {
            return;
        };
        // A trunk requiring client certificates of our CA (mutual TLS).
        let our_ca = ours.ca.clone().expect("ca");
        let mut client_roots = rustls::RootCertStore::empty();
        for cert in super::read_certificates("tls-ca", &our_ca).expect("CA") {
            client_roots.add(cert).expect("root");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(client_roots),
            super::provider(),
        )
        .build()
        .expect("verifier");
        let trunk_key = super::read_pair(
            &TlsFiles {
                ca: None,
                ..trunk.clone()
            },
            &super::provider(),
        )
        .expect("trunk pair");
        let server = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                trunk_key.cert.clone(),
                rustls::pki_types::PrivateKeyDer::from_pem_file(&trunk.key).expect("key"),
            )
            .expect("server config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let trunk_address = listener.local_addr().expect("address");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let accepted = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut stream = acceptor.accept(socket).await?;
            let peer_has_certificate = stream.get_ref().1.peer_certificates().is_some();
            let mut received = vec![0u8; OPTIONS.len()];
            stream.read_exact(&mut received).await?;
            Ok::<_, std::io::Error>((peer_has_certificate, received))
        });

        let (us, _) = start(Some(
            Tls::load(TlsFiles {
                ca: trunk.ca.clone(),
                ..ours
            })
            .expect("ours"),
        ))
        .await;
        us.send(Outbound {
            destination: Destination::over(&crate::sip::Transport::Tls, trunk_address),
            bytes: OPTIONS.as_bytes().to_vec(),
        });
        let (had_certificate, received) = tokio::time::timeout(Duration::from_secs(5), accepted)
            .await
            .expect("in time")
            .expect("task")
            .expect("the trunk accepted our certificate");
        assert!(had_certificate);
        assert_eq!(received, OPTIONS.as_bytes());
    }
}
