//! Tickets: one copy-pasteable string with a file ID (or a folder ID), its
//! name and size, the node ID of the peer that made it and that peer's
//! addresses. A downloader refuses a peer at those addresses that cannot
//! prove it is that node.
//!
//! A [`Ticket`] names a file; a [`FolderTicket`] (the same type over a
//! [`FolderId`]) names a folder, and has the `FOLDER` flag. Each refuses the
//! other's text with a clear error ([`TicketError::NotAFile`],
//! [`TicketError::NotAFolder`]); [`AnyTicket`] reads either.
//!
//! Text form: `ps1` followed by the lowercase, unpadded base32 (RFC 4648
//! alphabet) of the binary form below. Binary form (big-endian):
//!
//! ```text
//! u8        ticket version (= TICKET_VERSION)
//! [u8; 32]  file ID, or folder ID with FOLDER
//! [u8; 32]  node ID of the sharing peer (its Ed25519 public key)
//! u64       file size (at most MAX_FILE_SIZE), or with FOLDER the folder's
//!           total size (at most folder::MAX_FOLDER_SIZE)
//! u8        flags: bit 0 = UNLISTED (the sharer keeps it out of catalogs;
//!           so does a downloader that got it from this ticket);
//!           bit 1 = FOLDER (the ID is a folder ID); others 0
//! u16 + ..  name (UTF-8, at most MAX_NAME_LEN bytes; a shared name,
//!           see wire::check_shared_name, or with FOLDER a folder name,
//!           see folder::check_folder_name; or not to be used)
//! u8        address count (at most MAX_TICKET_ADDRS)
//! per address: u8 family (4 or 6), 4 or 16 address bytes, u16 port
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;

use crate::folder::{MAX_FOLDER_SIZE, PathError, check_folder_name};
use crate::id::{FileId, FolderId, ID_LEN, NodeId};
use crate::manifest::MAX_FILE_SIZE;
use crate::wire::{MAX_NAME_LEN, NameError, check_shared_name};

/// Text prefix of every ticket (it also carries the version).
pub const TICKET_PREFIX: &str = "ps1";
/// Binary version byte.
pub const TICKET_VERSION: u8 = 2;
/// Bits of a ticket's flags byte.
pub mod ticket_flags {
    /// Keep the file out of catalogs (the sharer's, and a downloader's).
    pub const UNLISTED: u8 = 1 << 0;
    /// The ID is a folder ID and the size the folder's total size.
    pub const FOLDER: u8 = 1 << 1;
    /// Every flag this build knows; a ticket with another is refused.
    pub const ALL: u8 = UNLISTED | FOLDER;
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
    #[error("ticket size {0} is larger than any shareable file or folder")]
    Size(u64),
    #[error("ticket flags {0:#04x} are unknown (made by a newer peershare?)")]
    Flags(u8),
    #[error("the ticket is for a folder, not a file")]
    NotAFile,
    #[error("the ticket is for a file, not a folder")]
    NotAFolder,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::id::FileId {}
    impl Sealed for crate::id::FolderId {}
}

/// What a ticket can name: a file ([`FileId`]) or a folder ([`FolderId`]).
pub trait TicketTarget: sealed::Sealed + Copy + Eq + std::fmt::Debug {
    /// Its [`ticket_flags`] bit (none for a file).
    const FLAG: u8;
    /// The largest size a ticket for it carries.
    const MAX_SIZE: u64;
    /// The error of a ticket for the other kind.
    const OTHER_KIND: TicketError;
    fn from_id_bytes(bytes: [u8; ID_LEN]) -> Self;
    fn id_bytes(&self) -> &[u8; ID_LEN];
}

impl TicketTarget for FileId {
    const FLAG: u8 = 0;
    const MAX_SIZE: u64 = MAX_FILE_SIZE;
    const OTHER_KIND: TicketError = TicketError::NotAFile;
    fn from_id_bytes(bytes: [u8; ID_LEN]) -> Self {
        FileId(bytes)
    }
    fn id_bytes(&self) -> &[u8; ID_LEN] {
        self.as_bytes()
    }
}

impl TicketTarget for FolderId {
    const FLAG: u8 = ticket_flags::FOLDER;
    const MAX_SIZE: u64 = MAX_FOLDER_SIZE;
    const OTHER_KIND: TicketError = TicketError::NotAFolder;
    fn from_id_bytes(bytes: [u8; ID_LEN]) -> Self {
        FolderId(bytes)
    }
    fn id_bytes(&self) -> &[u8; ID_LEN] {
        self.as_bytes()
    }
}

/// What a user sends a friend: a ticket for a file, or with `I` =
/// [`FolderId`] (a [`FolderTicket`]) for a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket<I = FileId> {
    pub id: I,
    /// The node that made the ticket; the addresses are its.
    pub node: NodeId,
    /// The file's size, or the folder's total size, bytes.
    pub size: u64,
    /// The file is unlisted: whoever downloads it keeps it out of its
    /// catalog too.
    pub unlisted: bool,
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

/// A ticket for a folder: its ID is a folder ID, its size the folder's
/// total size and its name the folder's name.
pub type FolderTicket = Ticket<FolderId>;

impl FolderTicket {
    /// The ticket's name, if it is a valid folder name
    /// ([`check_folder_name`]); like a file ticket's, a name that is not
    /// one must not be shown, kept or passed on.
    pub fn folder_name(&self) -> Result<&str, PathError> {
        check_folder_name(&self.name).map(|()| self.name.as_str())
    }
}

/// The binary fields of a ticket of either kind.
struct Fields {
    flags: u8,
    id: [u8; ID_LEN],
    node: NodeId,
    size: u64,
    name: String,
    addrs: Vec<SocketAddr>,
}

impl<I: TicketTarget> Ticket<I> {
    fn from_fields(f: Fields) -> Result<Self, TicketError> {
        if f.flags & ticket_flags::FOLDER != I::FLAG {
            return Err(I::OTHER_KIND);
        }
        Ok(Ticket {
            id: I::from_id_bytes(f.id),
            node: f.node,
            size: f.size,
            unlisted: f.flags & ticket_flags::UNLISTED != 0,
            name: f.name,
            addrs: f.addrs,
        })
    }

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
        out.extend_from_slice(self.id.id_bytes());
        out.extend_from_slice(self.node.as_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.push(
            I::FLAG
                | if self.unlisted {
                    ticket_flags::UNLISTED
                } else {
                    0
                },
        );
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
}

impl Ticket {
    /// Reads the binary form of a file ticket; a well-formed folder ticket
    /// is refused with [`TicketError::NotAFile`]. (A folder ticket's:
    /// `FolderTicket::try_from(bytes)`; either: [`AnyTicket::from_bytes`].)
    pub fn from_bytes(b: &[u8]) -> Result<Self, TicketError> {
        Self::try_from(b)
    }
}

/// Reads the binary form of a ticket of this kind; a well-formed ticket of
/// the other kind is refused with [`TicketError::NotAFile`] or
/// [`TicketError::NotAFolder`].
impl<I: TicketTarget> TryFrom<&[u8]> for Ticket<I> {
    type Error = TicketError;
    fn try_from(b: &[u8]) -> Result<Self, TicketError> {
        Self::from_fields(read_fields(b)?)
    }
}

fn read_fields(b: &[u8]) -> Result<Fields, TicketError> {
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
    let id = take(ID_LEN)?.try_into().expect("ID_LEN");
    let node = NodeId(take(ID_LEN)?.try_into().expect("ID_LEN"));
    let size = u64::from_be_bytes(take(8)?.try_into().expect("8"));
    let flags = take(1)?[0];
    if flags & !ticket_flags::ALL != 0 {
        return Err(TicketError::Flags(flags));
    }
    let max = if flags & ticket_flags::FOLDER != 0 {
        MAX_FOLDER_SIZE
    } else {
        MAX_FILE_SIZE
    };
    if size > max {
        return Err(TicketError::Size(size));
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
    Ok(Fields {
        flags,
        id,
        node,
        size,
        name,
        addrs,
    })
}

/// The binary form inside a ticket's text.
fn text_to_bytes(s: &str) -> Result<Vec<u8>, TicketError> {
    let s = s.trim();
    if s.len() > MAX_TICKET_LEN {
        return Err(TicketError::TooLong);
    }
    let body = s.strip_prefix(TICKET_PREFIX).ok_or(TicketError::Prefix)?;
    let upper = body.to_ascii_uppercase();
    BASE32_NOPAD
        .decode(upper.as_bytes())
        .map_err(|_| TicketError::Encoding)
}

impl<I: TicketTarget> std::fmt::Display for Ticket<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b32 = BASE32_NOPAD.encode(&self.to_bytes()).to_ascii_lowercase();
        write!(f, "{TICKET_PREFIX}{b32}")
    }
}

impl<I: TicketTarget> FromStr for Ticket<I> {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ticket::try_from(&text_to_bytes(s)?[..])
    }
}

/// A ticket of either kind, as read from a user's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyTicket {
    File(Ticket),
    Folder(FolderTicket),
}

impl AnyTicket {
    pub fn from_bytes(b: &[u8]) -> Result<Self, TicketError> {
        let f = read_fields(b)?;
        Ok(if f.flags & ticket_flags::FOLDER != 0 {
            AnyTicket::Folder(Ticket::from_fields(f)?)
        } else {
            AnyTicket::File(Ticket::from_fields(f)?)
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            AnyTicket::File(t) => t.to_bytes(),
            AnyTicket::Folder(t) => t.to_bytes(),
        }
    }

    /// The node that made the ticket.
    pub fn node(&self) -> NodeId {
        match self {
            AnyTicket::File(t) => t.node,
            AnyTicket::Folder(t) => t.node,
        }
    }

    /// The sharing node's addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        match self {
            AnyTicket::File(t) => &t.addrs,
            AnyTicket::Folder(t) => &t.addrs,
        }
    }
}

impl From<Ticket> for AnyTicket {
    fn from(t: Ticket) -> Self {
        AnyTicket::File(t)
    }
}

impl From<FolderTicket> for AnyTicket {
    fn from(t: FolderTicket) -> Self {
        AnyTicket::Folder(t)
    }
}

impl std::fmt::Display for AnyTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnyTicket::File(t) => t.fmt(f),
            AnyTicket::Folder(t) => t.fmt(f),
        }
    }
}

impl FromStr for AnyTicket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AnyTicket::from_bytes(&text_to_bytes(s)?)
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
pub(crate) fn is_reserved_device(name: &str) -> bool {
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
        for unknown in [0x04, 0x05, 0x80, 0xff] {
            b[at] = unknown;
            assert_eq!(Ticket::from_bytes(&b), Err(TicketError::Flags(unknown)));
            assert_eq!(AnyTicket::from_bytes(&b), Err(TicketError::Flags(unknown)));
        }
        // UNLISTED | FOLDER: a folder ticket, which is no file ticket.
        b[at] = 0x03;
        assert_eq!(Ticket::from_bytes(&b), Err(TicketError::NotAFile));
    }

    fn folder_sample() -> FolderTicket {
        Ticket {
            id: FolderId([7; 32]),
            node: NodeId([5; 32]),
            size: MAX_FOLDER_SIZE,
            unlisted: false,
            name: "holiday photos".into(),
            addrs: vec!["192.168.1.20:9000".parse().unwrap()],
        }
    }

    #[test]
    fn a_folder_ticket_round_trips_and_is_no_file_ticket() {
        let t = folder_sample();
        let s = t.to_string();
        assert_eq!(s.parse::<FolderTicket>(), Ok(t.clone()));
        assert_eq!(s.parse::<AnyTicket>(), Ok(AnyTicket::Folder(t.clone())));
        assert_eq!(s.parse::<Ticket>(), Err(TicketError::NotAFile));
        assert_eq!(
            sample().to_string().parse::<FolderTicket>(),
            Err(TicketError::NotAFolder)
        );
        assert_eq!(
            sample().to_string().parse::<AnyTicket>(),
            Ok(AnyTicket::File(sample()))
        );
        let b = t.to_bytes();
        assert_eq!(b[1 + 32 + 32 + 8], ticket_flags::FOLDER);
        let unlisted = Ticket {
            unlisted: true,
            ..t.clone()
        };
        assert_eq!(
            unlisted.to_bytes()[1 + 32 + 32 + 8],
            ticket_flags::FOLDER | ticket_flags::UNLISTED
        );
        let any = AnyTicket::from(unlisted.clone());
        assert_eq!(any.to_string().parse::<AnyTicket>(), Ok(any.clone()));
        assert_eq!(any.node(), NodeId([5; 32]));
        assert_eq!(any.addrs(), unlisted.addrs.as_slice());
        assert_eq!(t.folder_name(), Ok("holiday photos"));
        let nested = Ticket {
            name: "a/b".into(),
            ..t
        };
        assert_eq!(nested.folder_name(), Err(PathError::NotOneComponent));
    }

    #[test]
    fn a_folder_ticket_may_carry_a_folder_size_a_file_ticket_may_not() {
        // MAX_FOLDER_SIZE is taken, one more refused; a file ticket of more
        // than MAX_FILE_SIZE is refused even when a folder may be larger.
        let mut t = folder_sample();
        t.size = MAX_FOLDER_SIZE + 1;
        assert_eq!(
            FolderTicket::try_from(&t.to_bytes()[..]),
            Err(TicketError::Size(MAX_FOLDER_SIZE + 1))
        );
        let mut f = sample();
        f.size = MAX_FILE_SIZE + 1;
        assert_eq!(
            AnyTicket::from_bytes(&f.to_bytes()),
            Err(TicketError::Size(MAX_FILE_SIZE + 1))
        );
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
