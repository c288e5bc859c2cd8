//! `get`: a download handed to a node — the one running on the data dir,
//! through its API, or, with none, a node run by this command for its
//! duration (it serves what it downloads while it runs, and with `--seed`
//! after). Either way the same: the order is checked here, handed over, and
//! followed until it is over, with the progress display, the summary and
//! the exit status of the README; Ctrl-C cancels it (its progress kept).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use peershare::Progress;
use peershare::download::PeerProgress;
use peershare::download::manager::{DownloadInfo, ManagerConfig, State};
use peershare::download::order::{self, Order};
use peershare::node::events::DownloadId;
use peershare::node::{Node, NodeConfig};

use super::host::{HostConfig, host};
use super::{
    cwd, kind_status, open_library, open_tls, out, out_json, printable, printable_path,
    resolve_peers, running_node,
};
use crate::cli::GetArgs;
use crate::remote::Client;
use crate::{Failure, exit, lan, progress};

/// How often a download's state is read while it is followed.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);
/// How long a cancelled download may take to record its progress and stop.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// The node a download is handed to.
enum Link {
    /// Run by this command.
    Local(Node),
    /// Running on the data dir, reached through its API.
    Remote(Client),
}

impl Link {
    async fn add(&self, order: Order, cwd: &Path) -> Result<DownloadInfo, Failure> {
        match self {
            Link::Local(n) => n
                .download(order, cwd)
                .map_err(|e| Failure::new(kind_status(e.kind()), e)),
            Link::Remote(c) => c.download(&order, cwd).await,
        }
    }

    async fn info(&self, id: DownloadId) -> Result<DownloadInfo, Failure> {
        match self {
            Link::Local(n) => n
                .download_info(id)
                .ok_or_else(|| Failure::new(exit::FAILURE, format!("download {id} is gone"))),
            Link::Remote(c) => c.download_info(id).await,
        }
    }

    async fn cancel(&self, id: DownloadId) -> Result<(), Failure> {
        match self {
            Link::Local(n) => n
                .cancel(id)
                .map(drop)
                .map_err(|e| Failure::new(kind_status(e.kind()), e)),
            Link::Remote(c) => c.cancel(id).await.map(drop),
        }
    }
}

/// The order `get`'s options make.
async fn make_order(a: &GetArgs) -> Result<Order, Failure> {
    let mut order = Order::new(a.what.clone());
    order.peers = resolve_peers(&a.peers).await?;
    order.output = a.output.clone();
    order.force = a.force;
    order.discover = Some(a.discover || (a.peers.is_empty() && !a.no_discovery));
    order.max_rate = a.max_download_rate;
    order.share = !a.no_share;
    Ok(order)
}

pub async fn get(dir: &Path, a: GetArgs, quiet: bool) -> Result<(), Failure> {
    let cancel = super::shutdown_signal()?;
    if let Some(folder) = super::get_folder::folder_of(dir, &a).await? {
        return super::get_folder::get_folder(dir, &a, folder, quiet, cancel).await;
    }
    if !a.only.is_empty() {
        return Err(Failure::new(
            exit::USAGE,
            "--only selects files of a folder, and this is not a folder (or no peer has it)",
        ));
    }
    let cwd = cwd()?;
    let order = make_order(&a).await?;
    // The order is checked here first: a bad one needs no node.
    order::resolve(&order, &cwd).map_err(|e| Failure::new(kind_status(e.kind()), e))?;
    match running_node(dir).await {
        Some(client) => {
            let link = Link::Remote(client);
            let info = link.add(order, &cwd).await?;
            if a.detach {
                return detached(&info, a.json.json);
            }
            follow_to_the_end(&link, info, &a, quiet, cancel).await
        }
        None if a.detach => Err(Failure::new(
            exit::USAGE,
            format!(
                "--detach hands the download to the node running on {}, and none runs: start one with \
                 `peershare serve`, or leave out --detach",
                dir.display()
            ),
        )),
        None => standalone(dir, order, &cwd, &a, quiet, cancel).await,
    }
}

/// `get --detach`: says what was queued.
fn detached(info: &DownloadInfo, json: bool) -> Result<(), Failure> {
    for w in &info.warnings {
        eprintln!("peershare: warning: {}", printable(w));
    }
    if json {
        out_json(info);
    } else {
        out(&format!(
            "queued download {} of {}; `peershare status` shows it\n",
            info.id,
            printable(info.name.as_deref().unwrap_or(&info.file_id))
        ));
    }
    Ok(())
}

/// `get` with no node running: a node of this command's, listening on any
/// port of every address (unless `--no-share`) and announced on the LAN
/// (unless `--no-discovery`), serving what it downloads and nothing else.
async fn standalone(
    dir: &Path,
    order: Order,
    cwd: &Path,
    a: &GetArgs,
    quiet: bool,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    let tls = open_tls(&lib)?;
    let wait = lan::seconds(
        "--discovery-wait",
        a.look.discovery_wait,
        lan::MAX_DISCOVERY_WAIT_SECS,
    )?;
    let node = NodeConfig {
        only_downloads: true,
        discovery_wait: wait,
        manager: ManagerConfig {
            max_active: 1,
            // A `get` of its own is not a node's queue: a later `serve`
            // does not take it up (the same `get` resumes it).
            persist: false,
            ..ManagerConfig::default()
        },
        ..NodeConfig::default()
    };
    let sharing = !a.no_share;
    let config = HostConfig {
        listen: sharing.then(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        discovery: (!a.no_discovery)
            .then(|| lan::config(&a.look.discovery, Duration::from_secs(5))),
        announce: sharing,
        node,
        api: None,
    };
    let hosted = host(dir, lib, tls, config).await?;
    let link = Link::Local(hosted.node.clone());
    tokio::pin!(cancel);
    let result = match link.add(order, cwd).await {
        Ok(info) => follow_to_the_end(&link, info, a, quiet, cancel.as_mut()).await,
        Err(e) => Err(e),
    };
    if result.is_ok() && a.seed && sharing {
        if !quiet {
            eprintln!("peershare: seeding until Ctrl-C");
        }
        cancel.await;
    }
    hosted.stop().await;
    result
}

/// Follows download `info` until it is over, with the progress display;
/// then prints its summary, or fails with its error's exit status. Ctrl-C
/// (`cancel`) cancels it.
async fn follow_to_the_end(
    link: &Link,
    info: DownloadInfo,
    a: &GetArgs,
    quiet: bool,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    for w in &info.warnings {
        eprintln!("peershare: warning: {}", printable(w));
    }
    let counters = Arc::new(Progress::default());
    let display = progress::downloading(counters.clone(), quiet);
    let result = follow(link, info.id, &counters, cancel).await;
    display.finish().await;
    let info = result?;
    match info.state {
        State::Finished => {
            let summary = info.summary.expect("a finished download has a summary");
            print_summary(&summary, a.json.json);
            Ok(())
        }
        State::Cancelled => Err(Failure::new(
            exit::INTERRUPTED,
            "the download was cancelled; run the same command again to resume",
        )),
        _ => {
            let error = info
                .error
                .unwrap_or_else(|| peershare::node::events::Failure {
                    kind: "failed".into(),
                    message: "the download failed".into(),
                });
            Err(Failure::new(kind_status(&error.kind), error.message))
        }
    }
}

/// Reads download `id`'s state every `FOLLOW_INTERVAL` into `counters` (the
/// progress display's) until it is over; on `cancel`, cancels it and waits
/// for it to stop.
async fn follow(
    link: &Link,
    id: DownloadId,
    counters: &Progress,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<DownloadInfo, Failure> {
    tokio::pin!(cancel);
    loop {
        let info = link.info(id).await?;
        show(&info, counters);
        if info.state.is_over() {
            return Ok(info);
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = &mut cancel => {
                link.cancel(id).await?;
                return tokio::time::timeout(CANCEL_WAIT, wait_over(link, id))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::new(exit::INTERRUPTED, "interrupted; the download is still stopping"))
                    });
            }
        }
    }
}

async fn wait_over(link: &Link, id: DownloadId) -> Result<DownloadInfo, Failure> {
    loop {
        let info = link.info(id).await?;
        if info.state.is_over() {
            return Ok(info);
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

/// A download's state into the display's counters.
fn show(info: &DownloadInfo, c: &Progress) {
    c.total.store(info.size, Ordering::Relaxed);
    c.verified.store(info.verified, Ordering::Relaxed);
    c.received.store(info.received, Ordering::Relaxed);
    let live = info.peers.iter().filter(|p| p.live).count();
    c.peers.store(live as u64, Ordering::Relaxed);
    let mut per = c.per_peer.lock().expect("progress lock");
    per.clear();
    per.extend(info.peers.iter().map(|p| PeerProgress {
        addr: p.addr,
        bytes: p.bytes,
        live: p.live,
        partial: p.partial,
        dropped: p.dropped.clone(),
        reconnecting: p.reconnecting_secs.map(Duration::from_secs_f64),
    }));
}

fn print_summary(summary: &peershare::DownloadSummary, json: bool) {
    if json {
        out_json(summary);
        return;
    }
    let rate = summary.bytes_received as f64 / summary.seconds.max(1e-6);
    let resumed = if summary.bytes_resumed > 0 {
        format!(", {} resumed", progress::bytes(summary.bytes_resumed))
    } else {
        String::new()
    };
    let shared = if summary.shared {
        "; now shared by this node"
    } else {
        ""
    };
    let from = summary.peers.iter().filter(|p| p.chunks > 0).count();
    out(&format!(
        "saved {} ({}, verified) in {:.1} s at {}/s from {} peer{}{resumed}{shared}\n",
        printable_path(&summary.path),
        progress::bytes(summary.size),
        summary.seconds,
        progress::bytes(rate as u64),
        from,
        if from == 1 { "" } else { "s" },
    ));
    if summary.peers.len() > 1 {
        for p in &summary.peers {
            eprintln!(
                "peershare:   {}{}: {} in {} chunks",
                p.addr,
                if p.partial { " (partial)" } else { "" },
                progress::bytes(p.bytes),
                p.chunks
            );
        }
    }
    for p in summary.peers.iter().filter(|p| p.dropped.is_some()) {
        eprintln!(
            "peershare: dropped {}: {}",
            p.addr,
            printable(p.dropped.as_deref().unwrap_or(""))
        );
    }
}
