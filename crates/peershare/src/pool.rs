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

    /// Notes that `node` was proven at `addr`. The map holds at most
    /// `MAX_POOL_ADDRS` addresses: when full, those of nodes no longer
    /// connected are forgotten first; if it is still full, a new address is
    /// not remembered (its connection works all the same, it is only not
    /// found by address next time). A remembered address always gets its
    /// latest node.
    fn remember(&mut self, addr: SocketAddr, node: NodeId) {
        if self.at.len() >= MAX_POOL_ADDRS && !self.at.contains_key(&addr) {
            self.forget_dead();
        }
        if self.at.len() < MAX_POOL_ADDRS || self.at.contains_key(&addr) {
            self.at.insert(addr, node);
        }
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
        inner.remember(addr, node);
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

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;
    use crate::server::{Server, ServerConfig};
    use crate::store::{Library, ShareProgress};

    /// A server on loopback sharing one file named `name`; stopped by
    /// sending on (or dropping) the returned sender, then awaiting the task.
    async fn serve(
        dir: &std::path::Path,
        name: &str,
    ) -> (
        SocketAddr,
        NodeId,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let lib = Library::open(dir.join(format!("data-{name}"))).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, name.as_bytes()).unwrap();
        lib.share(&[file], &ShareProgress::default()).unwrap();
        let tls = Tls::new(&lib.identity().unwrap());
        let node = tls.node_id();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::new(lib, tls, addr.port(), ServerConfig::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (addr, node, stop, task)
    }

    /// Addresses nobody dials (TEST-NET-1), one per `i`.
    fn elsewhere(i: usize) -> SocketAddr {
        let i = u16::try_from(i).unwrap();
        SocketAddr::from(([192, 0, 2, (i >> 8) as u8], (i & 0xff) + 1))
    }

    fn addrs(pool: &PeerPool) -> usize {
        pool.inner.lock().unwrap().at.len()
    }

    /// The address map is full of addresses of a node still connected:
    /// past it a new address is not remembered, its connection works all
    /// the same, and once that node's connection is gone its addresses
    /// make room.
    #[tokio::test]
    async fn the_address_map_is_bounded_and_dead_nodes_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let (a_addr, a, a_stop, a_task) = serve(dir.path(), "a").await;
        let (b_addr, b, b_stop, b_task) = serve(dir.path(), "b").await;
        let (tls, config) = (Tls::ephemeral(), ClientConfig::default());
        let pool = PeerPool::default();
        let to_a = pool
            .connect(a_addr, &tls, None, config.clone())
            .await
            .unwrap();
        assert_eq!(addrs(&pool), 1);
        {
            // A's node proven at as many more addresses as the map holds
            // (through the bookkeeping `connect` uses).
            let mut inner = pool.inner.lock().unwrap();
            for i in 0..MAX_POOL_ADDRS {
                inner.remember(elsewhere(i), a);
                assert!(inner.at.len() <= MAX_POOL_ADDRS);
            }
            assert_eq!(inner.at.len(), MAX_POOL_ADDRS);
            assert_eq!(inner.at.get(&elsewhere(MAX_POOL_ADDRS - 2)), Some(&a));
            assert_eq!(inner.at.get(&elsewhere(MAX_POOL_ADDRS - 1)), None);
            // An address already remembered still learns its new node.
            inner.remember(a_addr, b);
            assert_eq!(inner.at.get(&a_addr), Some(&b));
            inner.remember(a_addr, a);
        }

        // Past the limit: B is connected and pooled by node, its address
        // not remembered.
        let to_b = pool
            .connect(b_addr, &tls, None, config.clone())
            .await
            .unwrap();
        assert_eq!(to_b.remote().node_id, b);
        let catalog = to_b.catalog().await.unwrap();
        assert_eq!(catalog.len(), 1);
        assert_eq!(catalog[0].name, "b");
        assert_eq!(addrs(&pool), MAX_POOL_ADDRS);
        assert!(!pool.inner.lock().unwrap().at.contains_key(&b_addr));
        assert_eq!(pool.connections().len(), 2);
        // Asked for again, B's address is dialed (not known), and the new
        // connection gives way to the live one.
        let again = pool
            .connect(b_addr, &tls, None, config.clone())
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&again, &to_b));
        assert_eq!(pool.duplicates_dropped(), 1);
        assert_eq!(addrs(&pool), MAX_POOL_ADDRS);

        // A's connection gone, its addresses are forgotten at the next one.
        drop(to_a);
        let again = pool.connect(b_addr, &tls, None, config).await.unwrap();
        assert!(Arc::ptr_eq(&again, &to_b));
        assert_eq!(pool.duplicates_dropped(), 2);
        {
            let inner = pool.inner.lock().unwrap();
            assert_eq!(inner.at.len(), 1, "only B's address is left");
            assert_eq!(inner.at.get(&b_addr), Some(&b));
        }
        drop((to_b, again));
        for (stop, task) in [(a_stop, a_task), (b_stop, b_task)] {
            let _ = stop.send(());
            task.await.unwrap();
        }
    }
}
