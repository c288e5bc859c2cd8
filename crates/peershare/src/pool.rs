//! Connections to peers, keyed by their proven node ID: a node reached at
//! several addresses (IPv4 and IPv6, a LAN and a public address) is one
//! peer with one connection, shared by every download from it.
//!
//! The pool holds connections weakly: a connection lives while some
//! download uses it, and goes (its socket closed) when the last one drops
//! it. Asking for an address whose node already has a live connection
//! returns that connection without dialing; asking for an address of an
//! unknown node dials it, and if the node it proves is already connected
//! (reached through another address), the new connection is dropped and
//! the existing one returned.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use peershare_proto::NodeId;

use crate::client::{ClientConfig, PeerConn};
use crate::error::PeerError;
use crate::tls::Tls;

/// Addresses remembered with the node found there, at most; beyond it
/// those of nodes no longer connected are forgotten.
pub const MAX_POOL_ADDRS: usize = 4096;

/// The pool; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PeerPool {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    by_node: HashMap<NodeId, Weak<PeerConn>>,
    /// The node last proven at each address.
    at: HashMap<SocketAddr, NodeId>,
    /// Connections dialed that turned out to duplicate a live one.
    duplicates_dropped: u64,
}

impl Inner {
    fn live(&self, node: &NodeId) -> Option<Arc<PeerConn>> {
        self.by_node
            .get(node)
            .and_then(Weak::upgrade)
            .filter(|c| !c.is_closed())
    }

    fn forget_dead(&mut self) {
        self.by_node
            .retain(|_, w| w.upgrade().is_some_and(|c| !c.is_closed()));
        let by_node = &self.by_node;
        self.at.retain(|_, n| by_node.contains_key(n));
    }
}

impl PeerPool {
    /// A live connection to the node at `addr` (which must be `expect`,
    /// when given): the one already open to it, or a new one.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        tls: &Tls,
        expect: Option<NodeId>,
        config: ClientConfig,
    ) -> Result<Arc<PeerConn>, PeerError> {
        {
            let inner = self.inner.lock().expect("pool lock");
            let known = inner.at.get(&addr).copied();
            if let Some(node) = known.filter(|n| expect.is_none_or(|e| e == *n))
                && let Some(conn) = inner.live(&node)
            {
                return Ok(conn);
            }
        }
        let conn = Arc::new(PeerConn::connect(addr, tls, expect, config).await?);
        let node = conn.remote().node_id;
        let mut inner = self.inner.lock().expect("pool lock");
        if inner.at.len() >= MAX_POOL_ADDRS {
            inner.forget_dead();
        }
        if inner.at.len() < MAX_POOL_ADDRS {
            inner.at.insert(addr, node);
        }
        if let Some(existing) = inner.live(&node) {
            // Reached through another address: one connection per node.
            inner.duplicates_dropped += 1;
            return Ok(existing);
        }
        inner.by_node.insert(node, Arc::downgrade(&conn));
        Ok(conn)
    }

    /// The live connections, one per node.
    pub fn connections(&self) -> Vec<Arc<PeerConn>> {
        let inner = self.inner.lock().expect("pool lock");
        inner
            .by_node
            .values()
            .filter_map(Weak::upgrade)
            .filter(|c| !c.is_closed())
            .collect()
    }

    /// Connections dialed and dropped because their node was connected
    /// already.
    pub fn duplicates_dropped(&self) -> u64 {
        self.inner.lock().expect("pool lock").duplicates_dropped
    }
}
