//! A download as a person or a program asks for it (an [`Order`]: a file
//! ID or a ticket, peers, where to save), checked and resolved into what a
//! download needs, the same way whether it came from the command line or
//! the local API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use peershare_proto::{FileId, NodeId, Ticket};
use serde::{Deserialize, Serialize};

use super::Output;

/// What to download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// A file ID (64 hex digits) or a ticket (`ps1...`).
    pub what: String,
    /// Peers that have it (besides a ticket's).
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Where to save: a file path, or an existing folder (then under the
    /// file's shared name). Relative paths are taken from the folder the
    /// order was given in. `None`: that folder.
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// Replace an existing file at the output path.
    #[serde(default)]
    pub force: bool,
    /// Look for peers on the LAN too. `None`: when no peer is given.
    #[serde(default)]
    pub discover: Option<bool>,
    /// Total download rate, bytes/s.
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// Offer the verified chunks while it runs and share the finished file.
    #[serde(default = "yes")]
    pub share: bool,
}

fn yes() -> bool {
    true
}

impl Order {
    /// An order for `what` with the defaults.
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            peers: Vec::new(),
            output: None,
            force: false,
            discover: None,
            max_rate: None,
            share: true,
        }
    }

    /// Whether peers are looked for on the LAN.
    pub fn uses_lan(&self) -> bool {
        self.discover.unwrap_or(self.peers.is_empty())
    }
}

/// Why an order cannot be carried out as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("{what:?}: {why}")]
    BadWhat { what: String, why: String },
    #[error(
        "the ticket names the file {name:?}, which {why}: no node lists such a name (the ticket was \
         made by a broken or hostile program); to download the file anyway, choose where to save it \
         with -o PATH"
    )]
    UnlistableName { name: String, why: String },
    #[error("folder {} does not exist; create it first or choose another -o", .0.display())]
    NoFolder(PathBuf),
}

impl OrderError {
    /// `usage` (the order itself is wrong) or `local` (the place to save).
    pub fn kind(&self) -> &'static str {
        match self {
            OrderError::BadWhat { .. } | OrderError::UnlistableName { .. } => "usage",
            OrderError::NoFolder(_) => "local",
        }
    }
}

/// An order checked and resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: FileId,
    /// The shared name, when the ticket gives a usable one.
    pub name: Option<String>,
    /// The order's peers and the ticket's.
    pub peers: Vec<SocketAddr>,
    /// The node each of the ticket's addresses must be.
    pub expect: HashMap<SocketAddr, NodeId>,
    pub unlisted: bool,
    pub output: Output,
    /// What the person should be told (an ignored name...).
    pub warnings: Vec<String>,
}

/// Checks `order` and resolves it, relative paths against `cwd`.
pub fn resolve(order: &Order, cwd: &Path) -> Result<Resolved, OrderError> {
    let mut warnings = Vec::new();
    let mut expect = HashMap::new();
    let mut unlisted = false;
    let (id, name, mut peers) = match order.what.parse::<FileId>() {
        Ok(id) => (id, None, Vec::new()),
        Err(id_err) => match order.what.parse::<Ticket>() {
            Ok(t) => {
                // The ticket's addresses are its maker's: only that node
                // may answer there.
                expect.extend(t.addrs.iter().map(|a| (*a, t.node)));
                unlisted = t.unlisted;
                let name = ticket_name(&t, order.output.is_some(), &mut warnings)?;
                (t.id, name, t.addrs)
            }
            Err(t_err) => {
                let why = if order.what.trim_start().starts_with("ps1") {
                    t_err.to_string()
                } else {
                    format!("not a file ID ({id_err}) nor a ticket")
                };
                return Err(OrderError::BadWhat {
                    what: order.what.clone(),
                    why,
                });
            }
        },
    };
    for p in &order.peers {
        if !peers.contains(p) {
            peers.push(*p);
        }
    }
    Ok(Resolved {
        id,
        name,
        peers,
        expect,
        unlisted,
        output: output(order.output.as_deref(), cwd)?,
        warnings,
    })
}

/// The shared name to use from a ticket: its name, if it is a valid shared
/// name. A ticket is a peer's text, and a name no node may list (control
/// characters, `..`, absolute...) is never used: without an output path
/// there is then no name to save the file under, and the order is refused;
/// with one the download goes on as if given the file ID, with a warning.
fn ticket_name(
    ticket: &Ticket,
    has_output: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<String>, OrderError> {
    let why = match ticket.shared_name() {
        Ok(name) => return Ok(Some(name.to_owned())),
        Err(why) => why.to_string(),
    };
    let name = &ticket.name;
    if !has_output {
        return Err(OrderError::UnlistableName {
            name: name.clone(),
            why,
        });
    }
    warnings.push(format!(
        "ignoring the ticket's name {name:?}, which {why}; downloading as if given only the file ID"
    ));
    Ok(None)
}

/// Where to save: `given` (a file path, or an existing folder) made
/// absolute against `cwd`, whose folder must exist; without one, `cwd`.
fn output(given: Option<&Path>, cwd: &Path) -> Result<Output, OrderError> {
    let Some(p) = given else {
        return Ok(Output::Dir(cwd.to_path_buf()));
    };
    let trailing_slash = p.as_os_str().to_string_lossy().ends_with('/');
    let p = cwd.join(p);
    let parent = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() || (trailing_slash && !p.is_dir()) {
        let missing = if trailing_slash {
            p.clone()
        } else {
            parent.to_path_buf()
        };
        return Err(OrderError::NoFolder(missing));
    }
    Ok(if p.is_dir() {
        Output::Dir(p)
    } else {
        Output::File(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(name: &str) -> String {
        Ticket {
            id: FileId([7; 32]),
            node: NodeId([8; 32]),
            size: 10,
            unlisted: true,
            name: name.into(),
            addrs: vec!["192.0.2.1:9000".parse().unwrap()],
        }
        .to_string()
    }

    #[test]
    fn a_file_id_a_ticket_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let id = FileId([7; 32]).to_string();
        let r = resolve(&Order::new(&id), dir.path()).unwrap();
        assert_eq!((r.id, r.name, r.peers.len()), (FileId([7; 32]), None, 0));
        let r = resolve(&Order::new(ticket("talk.mkv")), dir.path()).unwrap();
        assert_eq!(r.name.as_deref(), Some("talk.mkv"));
        assert!(r.unlisted);
        assert_eq!(r.expect[&r.peers[0]], NodeId([8; 32]));
        let err = resolve(&Order::new("nope"), dir.path()).unwrap_err();
        assert_eq!(err.kind(), "usage");
        assert!(err.to_string().contains("nor a ticket"), "{err}");
    }

    #[test]
    fn a_ticket_name_no_node_may_list_needs_an_output_and_is_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let evil = ticket("a\nb");
        let err = resolve(&Order::new(&evil), dir.path()).unwrap_err();
        assert!(matches!(err, OrderError::UnlistableName { .. }), "{err}");
        let mut order = Order::new(&evil);
        order.output = Some("out.bin".into());
        let r = resolve(&order, dir.path()).unwrap();
        assert_eq!(r.name, None);
        assert_eq!(r.warnings.len(), 1);
        assert!(matches!(r.output, Output::File(p) if p == dir.path().join("out.bin")));
    }

    #[test]
    fn the_output_folder_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let mut order = Order::new(FileId([1; 32]).to_string());
        order.output = Some("missing/out.bin".into());
        let err = resolve(&order, dir.path()).unwrap_err();
        assert_eq!(err.kind(), "local");
        order.output = Some("new/".into());
        assert!(
            resolve(&order, dir.path()).is_err(),
            "a folder named with / must exist"
        );
        order.output = Some(".".into());
        let r = resolve(&order, dir.path()).unwrap();
        assert!(matches!(r.output, Output::Dir(_)));
    }
}
