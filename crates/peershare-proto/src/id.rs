//! Content and node identifiers: 32-byte values shown as lowercase hex.
//!
//! A [`FileId`] names content (the SHA-256 of a canonical manifest), never a
//! name or a peer. A [`FolderId`] names a folder's tree (a hash of the
//! manifest of its encoding, under a domain prefix: see
//! [`crate::folder::folder_id_of`]); it is a distinct type so that one is
//! never taken for the other. A [`NodeId`] names one running peer.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Length of every identifier and every chunk hash, in bytes.
pub const ID_LEN: usize = 32;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; ID_LEN] {
    Sha256::digest(data).into()
}

/// SHA-256 of the concatenation of `parts`, without building it.
pub fn sha256_parts(parts: &[&[u8]]) -> [u8; ID_LEN] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Why a string is not an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    #[error("expected {expected} hex digits, got {got} characters")]
    Length { expected: usize, got: usize },
    #[error("not a hexadecimal identifier (only 0-9 and a-f are allowed)")]
    NotHex,
}

fn parse_hex(s: &str) -> Result<[u8; ID_LEN], IdParseError> {
    let s = s.trim();
    if s.len() != ID_LEN * 2 {
        return Err(IdParseError::Length {
            expected: ID_LEN * 2,
            got: s.chars().count(),
        });
    }
    let mut out = [0u8; ID_LEN];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]).ok_or(IdParseError::NotHex)?;
        let lo = hex_val(pair[1]).ok_or(IdParseError::NotHex)?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn write_hex(bytes: &[u8; ID_LEN], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }
            /// The first 8 hex digits, for compact human output.
            pub fn short(&self) -> String {
                self.to_string()[..8].to_owned()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }
        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex(s).map($name)
            }
        }
    };
}

id_type!(
    /// SHA-256 of a file's canonical manifest encoding.
    FileId
);
id_type!(
    /// Names a folder: SHA-256 of `FOLDER_ID_DOMAIN` followed by the
    /// manifest of the folder's encoding ([`crate::folder::folder_id_of`]).
    FolderId
);
id_type!(
    /// Identifies one running peer.
    NodeId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_is_lowercase() {
        let id = FileId([0xAB; ID_LEN]);
        let s = id.to_string();
        assert_eq!(s, "ab".repeat(32));
        assert_eq!(s.parse::<FileId>().unwrap(), id);
        assert_eq!(s.to_uppercase().parse::<FileId>().unwrap(), id);
        assert_eq!(id.short(), "abababab");
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        assert_eq!(
            "abc".parse::<FileId>(),
            Err(IdParseError::Length {
                expected: 64,
                got: 3
            })
        );
        assert_eq!("zz".repeat(32).parse::<NodeId>(), Err(IdParseError::NotHex));
        // Multi-byte characters must not panic on slicing.
        assert!("é".repeat(32).parse::<FileId>().is_err());
    }

    #[test]
    fn folder_ids_read_and_print_like_file_ids() {
        let hex = "0123456789abcdef".repeat(4);
        let folder: FolderId = hex.parse().unwrap();
        let file: FileId = hex.parse().unwrap();
        assert_eq!(folder.to_string(), hex);
        assert_eq!(folder.as_bytes(), file.as_bytes());
        assert_eq!(folder.short(), "01234567");
        assert_eq!(format!("{folder:?}"), format!("FolderId({hex})"));
        assert_eq!(
            "abc".parse::<FolderId>(),
            Err(IdParseError::Length {
                expected: 64,
                got: 3
            })
        );
    }

    #[test]
    fn sha256_parts_is_the_hash_of_the_concatenation() {
        assert_eq!(sha256_parts(&[b"a", b"", b"bc"]), sha256(b"abc"));
        assert_eq!(sha256_parts(&[]), sha256(b""));
    }

    #[test]
    fn sha256_known_vector() {
        // FIPS 180-2 test vector for "abc".
        let d = sha256(b"abc");
        assert_eq!(
            FileId(d).to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
