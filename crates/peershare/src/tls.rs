//! TLS 1.3 around every peer connection (rustls with the ring provider).
//!
//! Both sides present a self-signed certificate for their node key
//! ([`crate::identity`]) and both sides require one. There is no
//! certificate authority: a certificate is accepted when it carries an
//! Ed25519 key and the handshake's signature verifies with that key, which
//! proves the peer holds the private key of the node ID the certificate
//! names. Whether that node is the one wanted (the node a ticket or an
//! announcement names, or one on the trust list) is decided above, by
//! [`crate::client`] and [`crate::server`], from [`Secured::peer`].
//!
//! Cipher suites in order of preference: AES-128-GCM (fastest where the
//! CPU has AES instructions), ChaCha20-Poly1305, AES-256-GCM. TLS 1.2 is
//! not offered.
//!
//! With the `insecure-plaintext` build feature (benchmarks only; release
//! builds leave it out) a [`Tls::plaintext`] endpoint skips TLS, to
//! measure what encryption costs.

use std::sync::Arc;

use peershare_proto::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::identity::{Identity, node_id_from_spki};

/// The application protocol named in the handshake.
pub const ALPN: &[u8] = b"peershare/1";

/// The name a client asks for; certificates are not checked against it.
const SERVER_NAME: &str = "peershare";

/// The read half of a secured connection.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a secured connection.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection after the TLS handshake.
pub struct Secured {
    pub reader: BoxRead,
    pub writer: BoxWrite,
    /// The peer's node ID, proven by the handshake. `None` only on a
    /// plaintext (benchmark) endpoint, where nothing is proven.
    pub peer: Option<NodeId>,
}

impl Secured {
    /// A plaintext (benchmark) connection: TCP's own halves, no lock
    /// between them, nothing proven.
    fn plain(tcp: TcpStream) -> Self {
        let (r, w) = tcp.into_split();
        Secured {
            reader: Box::new(r),
            writer: Box::new(w),
            peer: None,
        }
    }

    /// A TLS stream's read and write halves, boxed, with the proven `peer`.
    fn halves<S>(stream: S, peer: Option<NodeId>) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        Secured {
            reader: Box::new(r),
            writer: Box::new(w),
            peer,
        }
    }
}

/// This node's TLS endpoint: its identity and both directions' settings.
/// Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    #[cfg(feature = "insecure-plaintext")]
    plaintext: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

impl Tls {
    pub fn new(identity: &Identity) -> Self {
        let mut provider = rustls::crypto::ring::default_provider();
        let prefer = |s: &rustls::SupportedCipherSuite| match s.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
            _ => 2,
        };
        provider.cipher_suites.sort_by_key(prefer);
        let provider = Arc::new(provider);
        let verifier = Arc::new(NodeCertVerifier {
            algs: provider.signature_verification_algorithms,
        });
        let versions = &[&rustls::version::TLS13];

        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("the ring provider speaks TLS 1.3")
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(vec![identity.cert()], identity.key())
            .expect("an Ed25519 node certificate is usable");
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("the ring provider speaks TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![identity.cert()], identity.key())
            .expect("an Ed25519 node certificate is usable");
        client.alpn_protocols = vec![ALPN.to_vec()];

        Self {
            inner: Arc::new(Inner {
                node_id: identity.node_id(),
                client: Arc::new(client),
                server: Arc::new(server),
                #[cfg(feature = "insecure-plaintext")]
                plaintext: false,
            }),
        }
    }

    /// An endpoint that does not encrypt: for measuring what TLS costs.
    #[cfg(feature = "insecure-plaintext")]
    pub fn plaintext(identity: &Identity) -> Self {
        let mut tls = Self::new(identity);
        Arc::get_mut(&mut tls.inner)
            .expect("not shared yet")
            .plaintext = true;
        tls
    }

    /// A throwaway identity's endpoint (tests, tools).
    pub fn ephemeral() -> Self {
        Self::new(&Identity::generate())
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    #[cfg(feature = "insecure-plaintext")]
    fn is_plaintext(&self) -> bool {
        self.inner.plaintext
    }

    #[cfg(not(feature = "insecure-plaintext"))]
    fn is_plaintext(&self) -> bool {
        false
    }

    /// The client side of the handshake.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<Secured> {
        if self.is_plaintext() {
            return Ok(Secured::plain(tcp));
        }
        let stream = self.client_stream(tcp).await?;
        let peer = peer_of(stream.get_ref().1.peer_certificates())?;
        Ok(Secured::halves(stream, Some(peer)))
    }

    /// The client side of the handshake, as one stream: for tests that
    /// speak the protocol by hand (and badly). Always TLS.
    #[doc(hidden)]
    pub async fn client_stream(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
        tokio_rustls::TlsConnector::from(self.inner.client.clone())
            .connect(name, tcp)
            .await
    }

    /// The server side of the handshake.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Secured> {
        if self.is_plaintext() {
            return Ok(Secured::plain(tcp));
        }
        let stream = tokio_rustls::TlsAcceptor::from(self.inner.server.clone())
            .accept(tcp)
            .await?;
        let peer = peer_of(stream.get_ref().1.peer_certificates())?;
        Ok(Secured::halves(stream, Some(peer)))
    }
}

fn peer_of(certs: Option<&[CertificateDer<'_>]>) -> std::io::Result<NodeId> {
    let cert = certs.and_then(|c| c.first()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the peer presented no certificate",
        )
    })?;
    node_of(cert).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The node ID a certificate names: its Ed25519 public key.
fn node_of(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    node_id_from_spki(parsed.subject_public_key_info().as_ref()).ok_or(
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
    )
}

/// Accepts any certificate carrying an Ed25519 key, in both directions;
/// the handshake signature is checked against that key.
#[derive(Debug)]
struct NodeCertVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl NodeCertVerifier {
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

fn no_tls12() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not spoken here".into())
}

impl ServerCertVerifier for NodeCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        node_of(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for NodeCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        node_of(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::net::TcpListener;

    /// Both ends of a fresh loopback TCP connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (c.unwrap(), s.unwrap().0)
    }

    fn verifier() -> Arc<NodeCertVerifier> {
        Arc::new(NodeCertVerifier {
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A self-signed ECDSA P-256 certificate: a valid certificate, but not
    /// a node's.
    fn ecdsa() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .unwrap()
            .self_signed(&pair)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.serialize_der()));
        (cert.der().clone(), key)
    }

    /// Client settings like ours, with `cert` as the client certificate.
    fn client_with(
        cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    ) -> Arc<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier());
        let mut config = match cert {
            Some((c, k)) => builder.with_client_auth_cert(vec![c], k).unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Arc::new(config)
    }

    /// Runs a client handshake with `config` against a real node server;
    /// returns what the server's `accept` made of it.
    async fn server_sees(config: Arc<rustls::ClientConfig>) -> std::io::Result<Secured> {
        let server = Tls::ephemeral();
        let (c, s) = pair().await;
        let client = async {
            let name = ServerName::try_from(SERVER_NAME).unwrap();
            // TLS 1.3: the client's last flight (its certificate, if any,
            // and Finished) is sent when this returns; the server judges
            // it from the socket whatever the client does next.
            let _ = tokio_rustls::TlsConnector::from(config)
                .connect(name, c)
                .await;
        };
        let (_, accepted) = tokio::join!(client, server.accept(s));
        accepted
    }

    #[tokio::test]
    async fn both_sides_prove_their_node_ids() {
        let (a, b) = (Tls::ephemeral(), Tls::ephemeral());
        let (c, s) = pair().await;
        let (client, server) = tokio::join!(a.connect(c), b.accept(s));
        assert_eq!(client.unwrap().peer, Some(b.node_id()));
        assert_eq!(server.unwrap().peer, Some(a.node_id()));
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        assert!(server_sees(client_with(None)).await.is_err());
        // The same settings with a node certificate are accepted.
        let me = Identity::generate();
        let accepted = server_sees(client_with(Some((me.cert(), me.key())))).await;
        assert_eq!(accepted.unwrap().peer, Some(me.node_id()));
    }

    #[tokio::test]
    async fn a_client_certificate_that_is_not_ed25519_is_refused() {
        assert!(server_sees(client_with(Some(ecdsa()))).await.is_err());
    }

    #[tokio::test]
    async fn a_server_certificate_that_is_not_ed25519_is_refused() {
        let me = Identity::generate();
        let (cert, key) = ecdsa();
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier())
            .with_single_cert(vec![cert], key)
            .unwrap();
        config.alpn_protocols = vec![ALPN.to_vec()];
        let (c, s) = pair().await;
        let server = async {
            let _ = tokio_rustls::TlsAcceptor::from(Arc::new(config))
                .accept(s)
                .await;
        };
        let tls = Tls::new(&me);
        let (connected, _) = tokio::join!(tls.connect(c), server);
        assert!(connected.is_err());
    }
}
