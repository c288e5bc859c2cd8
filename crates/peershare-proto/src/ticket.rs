//! Tickets: one copy-pasteable string with a file ID, its name and size,
//! the node ID of the peer that made it and that peer's addresses. A
//! downloader refuses a peer at those addresses that cannot prove it is
//! that node.
//!
//! Text form: `ps1` followed by the lowercase, unpadded base32 (RFC 4648
//! alphabet) of the binary form below. Binary form (big-endian):
//!
//! ```text
//! u8        ticket version (= TICKET_VERSION)
//! [u8; 32]  file ID
//! [u8; 32]  node ID of the sharing peer (its Ed25519 public key)
//! u64       file size
//! u8        flags: bit 0 = UNLISTED (the sharer keeps it out of catalogs;
//!           so does a downloader that got it from this ticket); others 0
//! u16 + ..  name (UTF-8, at most MAX_NAME_LEN bytes; a shared name,
//!           see wire::check_shared_name, or not to be used)
//! u8        address count (at most MAX_TICKET_ADDRS)
//! per address: u8 family (4 or 6), 4 or 16 address bytes, u16 port
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;

use crate::id::{FileId, ID_LEN, NodeId};
use crate::manifest::MAX_FILE_SIZE;
use crate::wire::{MAX_NAME_LEN, NameError, check_shared_name};

/// Text prefix of every ticket (it also carries the version).
pub const TICKET_PREFIX: &str = "ps1";
/// Binary version byte.
pub const TICKET_VERSION: u8 = 2;
/// Bits of a ticket's flags byte.
pub mod ticket_flags {
    /// Keep the file out of catalogs (the sharer's, and a downloader's).
    pub const UNLISTED: u8 = 1;
}
/// Most peer addresses one ticket carries.
pub const MAX_TICKET_ADDRS: usize = 16;
/// Longest ticket text accepted, bytes (prefix included; tickets are ASCII).
pub const MAX_TICKET_LEN: usize = 4096;

/// Why a string is not a ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("not a ticket (tickets start with \"{TICKET_PREFIX}\")")]
    Prefix,
    #[error("ticket is longer than {MAX_TICKET_LEN} characters")]
    TooLong,
    #[error("ticket is not valid base32 (was it cut off or changed while copying?)")]
    Encoding,
    #[error(
        "ticket version {0} is not supported (version 1 tickets come from peershare before encryption; ask for a fresh ticket)"
    )]
    Version(u8),
    #[error("ticket is truncated or has trailing bytes")]
    Length,
    #[error("ticket name is not valid UTF-8 or too long")]
    Name,
    #[error("ticket has more than {MAX_TICKET_ADDRS} addresses")]
    TooManyAddrs,
    #[error("ticket address family {0} is unknown")]
    Family(u8),
    #[error("ticket file size {0} is larger than any shareable file")]
    Size(u64),
    #[error("ticket flags {0:#04x} are unknown (made by a newer peershare?)")]
    Flags(u8),
}

/// What a user sends a friend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub id: FileId,
    /// The node that made the ticket; the addresses are its.
    pub node: NodeId,
    pub size: u64,
    /// The file is unlisted: whoever downloads it keeps it out of its
    /// catalog too.
    pub unlisted: bool,
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

impl Ticket {
    /// The ticket's name, if it is a valid shared name
    /// ([`check_shared_name`]). A ticket parses whatever its name (its file
    /// ID and addresses are good), but a name that is not one must not be
    /// shown, kept or passed on.
    pub fn shared_name(&self) -> Result<&str, NameError> {
        check_shared_name(&self.name).map(|()| self.name.as_str())
    }

    /// The binary form. Names and address lists over their limits are cut
    /// (a name on a character boundary), so every ticket made here parses.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.name.len());
        out.push(TICKET_VERSION);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(self.node.as_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.push(if self.unlisted {
            ticket_flags::UNLISTED
        } else {
            0
        });
        let mut end = self.name.len().min(MAX_NAME_LEN);
        while !self.name.is_char_boundary(end) {
            end -= 1;
        }
        out.extend_from_slice(&(end as u16).to_be_bytes());
        out.extend_from_slice(&self.name.as_bytes()[..end]);
        let addrs = &self.addrs[..self.addrs.len().min(MAX_TICKET_ADDRS)];
        out.push(addrs.len() as u8);
        for a in addrs {
            match a.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, TicketError> {
        let mut r = b;
        let mut take = |n: usize| -> Result<&[u8], TicketError> {
            if r.len() < n {
                return Err(TicketError::Length);
            }
            let (head, tail) = r.split_at(n);
            r = tail;
            Ok(head)
        };
        let version = take(1)?[0];
        if version != TICKET_VERSION {
            return Err(TicketError::Version(version));
        }
        let id = FileId(take(ID_LEN)?.try_into().expect("ID_LEN"));
        let node = NodeId(take(ID_LEN)?.try_into().expect("ID_LEN"));
        let size = u64::from_be_bytes(take(8)?.try_into().expect("8"));
        if size > MAX_FILE_SIZE {
            return Err(TicketError::Size(size));
        }
        let flags = take(1)?[0];
        if flags & !ticket_flags::UNLISTED != 0 {
            return Err(TicketError::Flags(flags));
        }
        let name_len = u16::from_be_bytes(take(2)?.try_into().expect("2")) as usize;
        if name_len > MAX_NAME_LEN {
            return Err(TicketError::Name);
        }
        let name = String::from_utf8(take(name_len)?.to_vec()).map_err(|_| TicketError::Name)?;
        let count = take(1)?[0] as usize;
        if count > MAX_TICKET_ADDRS {
            return Err(TicketError::TooManyAddrs);
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let ip = match take(1)?[0] {
                4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(take(4)?).expect("4"))),
                6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(take(16)?).expect("16"))),
                f => return Err(TicketError::Family(f)),
            };
            let port = u16::from_be_bytes(take(2)?.try_into().expect("2"));
            addrs.push(SocketAddr::new(ip, port));
        }
        if !r.is_empty() {
            return Err(TicketError::Length);
        }
        Ok(Ticket {
            id,
            node,
            size,
            unlisted: flags & ticket_flags::UNLISTED != 0,
            name,
            addrs,
        })
    }
}

impl std::fmt::Display for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b32 = BASE32_NOPAD.encode(&self.to_bytes()).to_ascii_lowercase();
        write!(f, "{TICKET_PREFIX}{b32}")
    }
}

impl FromStr for Ticket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong);
        }
        let body = s.strip_prefix(TICKET_PREFIX).ok_or(TicketError::Prefix)?;
        let upper = body.to_ascii_uppercase();
        let bytes = BASE32_NOPAD
            .decode(upper.as_bytes())
            .map_err(|_| TicketError::Encoding)?;
        Ticket::from_bytes(&bytes)
    }
}

/// Longest local file name chosen from a shared name, bytes: the usual
/// 255-byte limit less room for the `.peershare-state` suffix of the
/// download's progress file beside it.
pub const MAX_LOCAL_NAME_LEN: usize = 255 - ".peershare-state".len();

/// Why a shared name cannot be used as a local file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the shared name {name:?} is not a safe local file name ({why}); save it under a name of your choice with -o PATH"
)]
pub struct UnsafeName {
    pub name: String,
    pub why: &'static str,
}

/// The local file name to save a download under when the user gave no
/// output path: the last `/`-separated component of the shared name, if it
/// is a plain, safe file name. Never a path: it cannot leave the directory.
///
/// Refused, so that a name from a peer means the same file on every system
/// a user may copy it to: `.` and `..`; backslashes, NUL and control
/// characters; `:` (Windows drive letters and alternate streams); a
/// trailing dot or space; Windows' reserved device names (`CON`, `PRN`,
/// `AUX`, `NUL`, `COM1`–`COM9`, `LPT1`–`LPT9`, with any extension); names
/// too long to sit beside their `.peershare-state` file. `-o` saves under
/// any name the user chooses.
pub fn safe_file_name(shared: &str) -> Result<&str, UnsafeName> {
    let base = shared.rsplit('/').next().unwrap_or(shared);
    let bad = |why| {
        Err(UnsafeName {
            name: shared.to_owned(),
            why,
        })
    };
    if base.is_empty() || base == "." || base == ".." {
        return bad("empty or a directory reference");
    }
    if base.contains(['\\', '\0']) || base.chars().any(char::is_control) {
        return bad("contains a backslash or control character");
    }
    if base.contains(':') {
        return bad("contains a colon (a drive letter or stream on Windows)");
    }
    if base.ends_with(['.', ' ']) {
        return bad("ends with a dot or space");
    }
    if is_reserved_device(base) {
        return bad("is a reserved device name on Windows");
    }
    if base.len() > MAX_LOCAL_NAME_LEN {
        return bad("too long for a file name beside its .peershare-state file");
    }
    Ok(base)
}

/// `CON`, `PRN`, `AUX`, `NUL`, `COM1`–`COM9`, `LPT1`–`LPT9`, in any case,
/// alone or before an extension.
fn is_reserved_device(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).trim_end();
    let upper = stem.to_ascii_uppercase();
    matches!(upper.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((upper.starts_with("COM") || upper.starts_with("LPT"))
            && upper.len() == 4
            && matches!(upper.as_bytes()[3], b'1'..=b'9'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ticket {
        Ticket {
            id: FileId([9; 32]),
            node: NodeId([5; 32]),
            size: 12345,
            unlisted: false,
            name: "talk.mkv".into(),
            addrs: vec![
                "192.168.1.20:9000".parse().unwrap(),
                "[fe80::1]:9001".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let s = t.to_string();
        assert!(s.starts_with("ps1"));
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_eq!(s.parse::<Ticket>().unwrap(), t);
        assert_eq!(
            s.to_uppercase()
                .replacen("PS1", "ps1", 1)
                .parse::<Ticket>()
                .unwrap(),
            t
        );
    }

    #[test]
    fn the_unlisted_flag_round_trips_and_unknown_flags_are_refused() {
        let t = Ticket {
            unlisted: true,
            ..sample()
        };
        assert_eq!(t.to_string().parse::<Ticket>().unwrap(), t);
        let mut b = sample().to_bytes();
        // version, file ID, node ID, size: the flags byte follows.
        let at = 1 + 32 + 32 + 8;
        assert_eq!(b[at], 0);
        b[at] = 0x03;
        assert_eq!(Ticket::from_bytes(&b), Err(TicketError::Flags(0x03)));
    }

    #[test]
    fn rejects_damaged_tickets() {
        let s = sample().to_string();
        assert_eq!("xx".parse::<Ticket>(), Err(TicketError::Prefix));
        assert!(s[..s.len() - 7].parse::<Ticket>().is_err());
        assert_eq!(
            format!("{s}!").parse::<Ticket>(),
            Err(TicketError::Encoding)
        );
        assert_eq!(
            "ps1".repeat(2000).parse::<Ticket>(),
            Err(TicketError::TooLong)
        );
        let mut b = sample().to_bytes();
        b[0] = 9;
        assert_eq!(Ticket::from_bytes(&b), Err(TicketError::Version(9)));
        let mut t = sample();
        t.size = MAX_FILE_SIZE + 1;
        assert_eq!(
            Ticket::from_bytes(&t.to_bytes()),
            Err(TicketError::Size(MAX_FILE_SIZE + 1))
        );
    }

    #[test]
    fn a_ticket_with_a_name_no_node_lists_parses_but_its_name_is_refused() {
        let evil = Ticket {
            name: "a.txt\n\u{1b}]0;pwned\u{7}".into(),
            ..sample()
        };
        let back: Ticket = evil.to_string().parse().unwrap();
        assert_eq!(back, evil);
        assert_eq!(back.shared_name(), Err(NameError::Control));
        assert_eq!(sample().shared_name(), Ok("talk.mkv"));
    }

    #[test]
    fn limits_are_applied_on_encode() {
        let mut t = sample();
        t.addrs = vec!["1.2.3.4:5".parse().unwrap(); MAX_TICKET_ADDRS + 3];
        t.name = "é".repeat(MAX_NAME_LEN);
        let back: Ticket = t.to_string().parse().unwrap();
        assert_eq!(back.addrs.len(), MAX_TICKET_ADDRS);
        assert!(back.name.len() <= MAX_NAME_LEN);
    }

    #[test]
    fn safe_names() {
        // Only the last component is ever used: a name cannot lead out of
        // the folder the download goes to.
        for (shared, local) in [
            ("papers/a.pdf", "a.pdf"),
            ("talk.mkv", "talk.mkv"),
            ("/etc/passwd", "passwd"),
            ("../../.ssh/authorized_keys", "authorized_keys"),
            ("a/../b.txt", "b.txt"),
            ("..a", "..a"),
            ("console.log", "console.log"),
            ("COM10", "COM10"),
            ("ÉTÉ été.txt", "ÉTÉ été.txt"),
            ("dir\0/b", "b"),
        ] {
            assert_eq!(safe_file_name(shared), Ok(local), "{shared:?}");
        }
        for bad in [
            "",
            "..",
            "a/..",
            ".",
            "a/",
            "/",
            "x\\..\\y",
            "..\\..\\windows\\win.ini",
            "nul\0",
            "tab\there",
            "bell\u{7}",
            "C:",
            "C:evil.exe",
            "file.txt:stream",
            "trailing.",
            "trailing ",
            "CON",
            "con.txt",
            "Aux.tar.gz",
            "nul",
            "COM1",
            "lpt9.log",
            "PRN .x",
        ] {
            assert!(safe_file_name(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(safe_file_name(&"a".repeat(MAX_LOCAL_NAME_LEN + 1)).is_err());
        assert!(safe_file_name(&"a".repeat(MAX_LOCAL_NAME_LEN)).is_ok());
        assert_eq!(MAX_LOCAL_NAME_LEN + ".peershare-state".len(), 255);
    }
}
