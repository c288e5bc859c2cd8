//! This node's identity: an Ed25519 key pair kept in the data dir, created
//! on first use. The node ID *is* the 32-byte public key, so anyone holding
//! a node ID can check a peer's claim without asking anyone else: the TLS
//! handshake proves the peer holds the matching private key
//! ([`crate::tls`]).
//!
//! The key file is PKCS#8 PEM (`openssl pkey -in node.key -text` reads it),
//! created with mode 0600. A key file that others may read is refused
//! rather than used: whoever copied it could impersonate this node.

use std::io;
use std::path::Path;

use peershare_proto::NodeId;
use peershare_proto::id::ID_LEN;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::StoreError;
use crate::store::{create_private, read_private, remedy};

/// The key file's name in the data dir.
pub const KEY_FILE: &str = "node.key";

/// The DER header of an Ed25519 SubjectPublicKeyInfo (RFC 8410): a
/// 44-byte SEQUENCE holding the algorithm OID 1.3.101.112 and a 33-byte BIT
/// STRING whose first byte is 0 (no unused bits). The 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The node ID in an Ed25519 SubjectPublicKeyInfo; `None` for any other
/// key type or encoding.
pub fn node_id_from_spki(spki: &[u8]) -> Option<NodeId> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    Some(NodeId(key.try_into().ok()?))
}

/// A key pair and the self-signed certificate that carries it in TLS.
pub struct Identity {
    node_id: NodeId,
    key: PrivatePkcs8KeyDer<'static>,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh key pair, kept nowhere (tests, throwaway nodes).
    pub fn generate() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .expect("ring generates Ed25519 keys");
        Self::from_pair(&pair).expect("a fresh Ed25519 key makes a certificate")
    }

    /// The key in `dir`'s [`KEY_FILE`], created (mode 0600) if there is
    /// none. Two processes racing to create it end up with the same key.
    pub fn load_or_create(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(KEY_FILE);
        match Self::load(&path) {
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Self::create(&path)
            }
            other => other,
        }
    }

    /// The key in `path`: a regular file (not a symbolic link) owned by
    /// this user, that nobody else may read or write.
    fn load(path: &Path) -> Result<Self, StoreError> {
        let bytes = read_private(
            path,
            |path, mode| StoreError::KeyPermissions { path, mode },
            remedy::KEY,
        )?;
        let pem = String::from_utf8(bytes).map_err(|_| "not text, so not a PEM key".to_string());
        pem.and_then(|pem| Self::from_pem(&pem))
            .map_err(|reason| damaged(path, reason))
    }

    fn create(path: &Path) -> Result<Self, StoreError> {
        let pair =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| StoreError::Io {
                path: path.to_path_buf(),
                source: io::Error::other(e.to_string()),
            })?;
        // If another process got there first, its key is the one used
        // (checked like any).
        if !create_private(path, pair.serialize_pem().as_bytes())? {
            return Self::load(path);
        }
        Self::from_pair(&pair).map_err(|reason| damaged(path, reason))
    }

    fn from_pem(pem: &str) -> Result<Self, String> {
        let pair =
            rcgen::KeyPair::from_pem(pem).map_err(|e| format!("not a PEM private key ({e})"))?;
        if !pair.is_compatible(&rcgen::PKCS_ED25519) {
            return Err("not an Ed25519 key".into());
        }
        Self::from_pair(&pair)
    }

    fn from_pair(pair: &rcgen::KeyPair) -> Result<Self, String> {
        let raw: [u8; ID_LEN] = pair
            .public_key_raw()
            .try_into()
            .map_err(|_| "an Ed25519 public key is 32 bytes".to_string())?;
        let node_id = NodeId(raw);
        let mut params = rcgen::CertificateParams::new(vec!["peershare".to_string()])
            .map_err(|e| e.to_string())?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("peershare node {node_id}"),
        );
        let cert = params.self_signed(pair).map_err(|e| e.to_string())?;
        Ok(Self {
            node_id,
            key: PrivatePkcs8KeyDer::from(pair.serialize_der()),
            cert: cert.der().clone(),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub(crate) fn cert(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The key file at `path` cannot be used, for `reason`.
fn damaged(path: &Path, reason: String) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
        remedy: remedy::KEY,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_key_is_created_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .contains("BEGIN PRIVATE KEY")
        );
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(
            err,
            StoreError::KeyPermissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_symbolic_link_for_the_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        Identity::load_or_create(elsewhere.path()).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join(KEY_FILE), dir.path().join(KEY_FILE))
            .unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        // Still the link: nothing replaced it.
        assert!(
            fs::symlink_metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn a_damaged_key_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, "not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a key");
        // Not even text: damaged all the same, not an I/O error.
        fs::write(&path, b"\xff\xfe\x00key").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    remedy: crate::store::remedy::KEY,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), b"\xff\xfe\x00key");
    }

    #[test]
    fn the_node_id_is_the_public_key_in_the_certificate() {
        let id = Identity::generate();
        let cert = id.cert();
        let parsed = rustls::server::ParsedCertificate::try_from(&cert).unwrap();
        let spki = parsed.subject_public_key_info();
        assert_eq!(node_id_from_spki(spki.as_ref()), Some(id.node_id()));
        assert_ne!(Identity::generate().node_id(), id.node_id());
    }

    #[test]
    fn only_ed25519_keys_make_node_ids() {
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&[9; 32]);
        assert_eq!(node_id_from_spki(&spki), Some(NodeId([9; 32])));
        assert_eq!(node_id_from_spki(&spki[..43]), None);
        spki.push(0);
        assert_eq!(node_id_from_spki(&spki), None);
        let mut other = ED25519_SPKI_PREFIX.to_vec();
        other[8] = 0x71; // Ed448's OID ends in 113
        other.extend_from_slice(&[9; 32]);
        assert_eq!(node_id_from_spki(&other), None);
    }
}
