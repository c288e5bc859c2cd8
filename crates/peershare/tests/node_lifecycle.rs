//! A node's shutdown is complete: after it, no task of the node is alive,
//! no file or socket of it is open. (Alone in its test binary: it counts
//! the process's descriptors and the runtime's tasks.)

mod common;

use std::time::Duration;

use common::*;
use peershare::download::manager::State;
use peershare::download::order::Order;
use peershare::node::{Bound, Node, NodeConfig};
use peershare::{Library, ShareProgress, Tls};
use tokio::net::TcpListener;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn start(dir: &std::path::Path, name: &str, share: Option<&std::path::Path>) -> Node {
    let lib = Library::open(dir.join(name)).unwrap();
    if let Some(p) = share {
        lib.share(&[p.to_path_buf()], &ShareProgress::default())
            .unwrap();
    }
    let tls = Tls::new(&lib.identity().unwrap());
    let bound = Bound {
        listeners: vec![TcpListener::bind("127.0.0.1:0").await.unwrap()],
        discovery: None,
    };
    Node::start(lib, tls, NodeConfig::default(), bound)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaves_no_task_file_or_connection_behind() {
    let dir = tempfile::tempdir().unwrap();
    let content = data(3 * 1024 * 1024, 600);
    let file = dir.path().join("f");
    std::fs::write(&file, &content).unwrap();
    let (fds, tasks) = (open_fds(), alive_tasks());
    {
        let a = start(dir.path(), "a", Some(&file)).await;
        let b = start(dir.path(), "b", None).await;
        let mut order = Order::new(id_of(&content).to_string());
        order.peers = vec![a.listening()[0]];
        order.output = Some(dir.path().join("got"));
        let id = b.download(order, dir.path()).unwrap().id;
        wait_for("the download", 30, || {
            b.download_info(id).is_some_and(|d| d.state.is_over())
        })
        .await;
        assert_eq!(b.download_info(id).unwrap().state, State::Finished);
        assert!(alive_tasks() > tasks && open_fds() > fds, "the nodes ran");
        b.shutdown().await;
        a.shutdown().await;
    }
    // Aborted tasks (a connection's, as it drops) end at the runtime's next
    // turn: give it a few.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (alive_tasks(), open_fds()) != (tasks, fds) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(alive_tasks(), tasks, "tasks left");
    assert_eq!(open_fds(), fds, "descriptors left");
}
