//! `serve` (run the node), `send` (give files: share, print tickets, say
//! what is downloaded) and `status` (what the running node is doing).

use std::collections::HashSet;
use std::path::Path;

use peershare::node::NodeConfig;
use peershare::node::events::Event;
use peershare::node::status::NodeStatus;
use peershare::ops::SharedItem;
use peershare::{ServerConfig, ShareProgress};

use super::host::{HostConfig, host};
use super::{
    absolute, open_library, open_tls, out, out_json, printable, running_node, status_line,
    store_failure,
};
use crate::cli::{SendArgs, ServeArgs};
use crate::{Failure, exit, lan, progress};

/// What `serve`'s options (shared by `send`) ask the node for.
fn host_config(a: &ServeArgs) -> Result<HostConfig, Failure> {
    let server = ServerConfig {
        write_timeout: lan::seconds("--write-timeout", a.write_timeout, 3600.0)?,
        max_connections: a.max_connections as usize,
        max_pending_handshakes: a.max_pending_handshakes as usize,
        max_connections_per_ip: a.max_connections_per_ip as usize,
        max_upload_rate: a.max_upload_rate,
        trusted_only: a.trusted_only,
        ..ServerConfig::default()
    };
    let interval = lan::seconds("--announce-interval", a.announce_interval, 3600.0)?;
    let mut node = NodeConfig {
        server,
        ..NodeConfig::default()
    };
    node.manager.max_active = a.max_active_downloads as usize;
    Ok(HostConfig {
        listen: Some(a.listen),
        discovery: (!a.no_discovery).then(|| lan::config(&a.discovery, interval)),
        announce: true,
        node,
        api: (!a.no_api).then_some(a.api_listen),
    })
}

/// Refuses to start a second node on a data dir that has one running.
async fn no_node_yet(dir: &Path) -> Result<(), Failure> {
    match running_node(dir).await {
        None => Ok(()),
        Some(node) => Err(Failure::new(
            exit::LOCAL,
            format!(
                "a node is already running on {} (its API is {}); stop it first, or use another --data-dir",
                dir.display(),
                node.base()
            ),
        )),
    }
}

pub async fn serve(dir: &Path, a: ServeArgs, quiet: bool) -> Result<(), Failure> {
    let lib = open_library(dir)?;
    // Fail early on a damaged library rather than serve nothing.
    lib.snapshot().map_err(store_failure)?;
    let tls = open_tls(&lib)?;
    #[cfg(feature = "insecure-plaintext")]
    if a.trusted_only && super::plaintext_requested() {
        return Err(Failure::new(
            exit::USAGE,
            "--trusted-only needs encryption: without it nobody's node ID is proven",
        ));
    }
    if a.trusted_only && lib.trusted().map_err(store_failure)?.is_empty() {
        eprintln!(
            "peershare: warning: --trusted-only with an empty trust list: every peer will be refused (add some with `peershare trust add NODE-ID`)"
        );
    }
    no_node_yet(dir).await?;
    let shutdown = super::shutdown_signal()?;
    let node_id = tls.node_id();
    let hosted = host(dir, lib, tls, host_config(&a)?).await?;
    let node = hosted.node.clone();
    if let Some(first) = node.listening().first() {
        status_line(&format!("listening on {first}\n"));
    }
    if let Some(api) = hosted.api {
        status_line(&format!("api on http://{api}/\n"));
    }
    tracing::info!(node = %node_id, "serving the library in {}", dir.display());
    if let Some(lan) = node.lan() {
        let targets = peershare::discovery::lan_targets(&lan.config);
        if targets.is_empty() {
            eprintln!("peershare: warning: no up network interface to announce this node on");
        } else {
            tracing::info!("announcing on UDP port {} to {targets:?}", lan.config.port);
        }
    }
    let lines = tokio::spawn(say_what_happens(node.subscribe(), quiet, None));
    shutdown.await;
    lines.abort();
    hosted.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// One line on stderr per upload that ended (who, what, how much, how
/// fast), and per download of the node that finished or failed, unless
/// `quiet`. With `files`, only uploads of those files, and it returns
/// after `exit_after` complete ones.
async fn say_what_happens(
    mut events: tokio::sync::broadcast::Receiver<Event>,
    quiet: bool,
    only: Option<(HashSet<String>, Option<u32>)>,
) {
    let mut complete = 0u32;
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        if let Some(done) = note(&event, quiet, only.as_ref().map(|o| &o.0)) {
            complete += u32::from(done);
            if only
                .as_ref()
                .and_then(|o| o.1)
                .is_some_and(|n| complete >= n)
            {
                return;
            }
        }
    }
}

/// Prints what `event` says (unless `quiet`); for an ended upload (of one
/// of `files`, when given), whether it was complete.
fn note(event: &Event, quiet: bool, files: Option<&HashSet<String>>) -> Option<bool> {
    match event {
        Event::UploadFinished {
            peer,
            file_id,
            name,
            bytes,
            chunks,
            of_chunks,
            seconds,
            complete,
        } => {
            if files.is_some_and(|f| !f.contains(file_id)) {
                return None;
            }
            if !quiet {
                let whole = if *complete {
                    "all of it".to_owned()
                } else {
                    format!("{chunks} of {of_chunks} chunks")
                };
                let short = &peer.node_id[..peer.node_id.len().min(12)];
                eprintln!(
                    "peershare: sent {} to {}… ({}): {} ({whole}) in {:.1} s at {}/s",
                    printable(name),
                    printable(short),
                    peer.addr,
                    progress::bytes(*bytes),
                    seconds,
                    progress::bytes((*bytes as f64 / seconds.max(0.001)) as u64),
                );
            }
            Some(*complete)
        }
        Event::DownloadFinished { summary, .. } if !quiet && files.is_none() => {
            eprintln!(
                "peershare: downloaded {} ({}) to {}",
                printable(&summary.name),
                progress::bytes(summary.size),
                printable(&summary.path.display().to_string())
            );
            None
        }
        Event::DownloadFailed { id, error } if !quiet && files.is_none() => {
            eprintln!(
                "peershare: download {id} failed: {}",
                printable(&error.message)
            );
            None
        }
        _ => None,
    }
}

fn print_tickets(files: &[SharedItem], json: bool, quiet: bool) {
    if json {
        let text = serde_json::to_string_pretty(&files).expect("serializable");
        status_line(&(text + "\n"));
        return;
    }
    let mut text = String::new();
    for f in files {
        text.push_str(f.ticket());
        text.push('\n');
    }
    status_line(&text);
    if !quiet {
        for f in files {
            let what = match f {
                SharedItem::File(_) => String::new(),
                SharedItem::Folder(d) => format!("folder of {} files, ", d.files),
            };
            eprintln!(
                "peershare: {} ({what}{}): on the other machine run `peershare get TICKET` with the ticket above",
                printable(f.name()),
                progress::bytes(f.size())
            );
        }
    }
}

/// What `send` gives a ticket for: the files named directly and the
/// folders (not each file of a folder: the folder's ticket fetches them).
fn top_level(items: &[SharedItem]) -> Vec<SharedItem> {
    items
        .iter()
        .filter(|i| matches!(i, SharedItem::Folder(_)) || !i.name().contains('/'))
        .cloned()
        .collect()
}

pub async fn send(dir: &Path, a: SendArgs, quiet: bool) -> Result<(), Failure> {
    let paths = a
        .paths
        .iter()
        .map(|p| absolute(p))
        .collect::<Result<Vec<_>, _>>()?;
    let unlisted = !a.listed;
    if let Some(client) = running_node(dir).await {
        let files = client.share(&paths, unlisted).await?;
        let events = client.events().await?;
        print_tickets(&top_level(&files), a.json.json, quiet);
        let ids = files.iter().map(|f| f.id().to_owned()).collect();
        let shutdown = super::shutdown_signal()?;
        tokio::select! {
            _ = relay(events, quiet, ids, a.exit_after) => {}
            _ = shutdown => {}
        }
        return Ok(());
    }
    let lib = open_library(dir)?;
    let tls = open_tls(&lib)?;
    let shutdown = super::shutdown_signal()?;
    let hosted = host(dir, lib, tls, host_config(&a.serve)?).await?;
    let node = hosted.node.clone();
    let events = node.subscribe();
    let shared = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.share(&paths, unlisted, &ShareProgress::default()))
            .await
            .expect("share does not panic")
    };
    let files = match shared {
        Ok(f) => f,
        Err(e) => {
            hosted.stop().await;
            return Err(store_failure(e));
        }
    };
    print_tickets(&top_level(&files), a.json.json, quiet);
    let ids = files.iter().map(|f| f.id().to_owned()).collect();
    tokio::select! {
        _ = say_what_happens(events, quiet, Some((ids, a.exit_after))) => {}
        _ = shutdown => {}
    }
    hosted.stop().await;
    Ok(())
}

/// `send` through a running node: its events, from its API.
async fn relay(
    mut events: crate::remote::Events,
    quiet: bool,
    ids: HashSet<String>,
    exit_after: Option<u32>,
) {
    let mut complete = 0u32;
    while let Some(event) = events.next().await {
        if let Some(done) = note(&event, quiet, Some(&ids)) {
            complete += u32::from(done);
            if exit_after.is_some_and(|n| complete >= n) {
                return;
            }
        }
    }
}

pub async fn status(dir: &Path, json: bool) -> Result<(), Failure> {
    let Some(client) = running_node(dir).await else {
        return Err(Failure::new(
            exit::UNREACHABLE,
            format!(
                "no node is running on {} (start one with `peershare serve`)",
                dir.display()
            ),
        ));
    };
    let status = client.status().await?;
    if json {
        out_json(&status);
    } else {
        out(&status_text(&status));
    }
    Ok(())
}

fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn status_text(s: &NodeStatus) -> String {
    let mut t = String::new();
    t.push_str(&format!("node       {}\n", s.node_id));
    t.push_str(&format!("version    {}\n", s.version));
    t.push_str(&format!(
        "data dir   {}\n",
        printable(&s.data_dir.display().to_string())
    ));
    t.push_str(&format!("listening  {}\n", list(&s.listening)));
    t.push_str(&format!("reachable  {}\n", list(&s.reachable)));
    t.push_str(&format!("announced  {}\n", list(&s.announced_to)));
    t.push_str(&format!(
        "api        {}\n",
        s.api.as_deref().unwrap_or("none")
    ));
    t.push_str(&format!(
        "peers      {} on the LAN, {} connected\n",
        s.peers.len(),
        s.connected.len()
    ));
    for p in &s.peers {
        t.push_str(&format!(
            "  {}  {}  ({})\n",
            printable(&p.node_id),
            p.addr,
            printable(&p.found_via)
        ));
    }
    t.push_str(&format!("downloads  {}\n", s.downloads.len()));
    for d in &s.downloads {
        let pct = (d.verified * 100).checked_div(d.size).unwrap_or(0);
        t.push_str(&format!(
            "  #{} {}  {:?}  {}% of {}  {}/s  {} peers\n",
            d.id,
            printable(d.name.as_deref().unwrap_or(&d.file_id)),
            d.state,
            pct,
            progress::bytes(d.size),
            progress::bytes(d.rate),
            d.peers.iter().filter(|p| p.live).count()
        ));
    }
    t.push_str(&format!("uploads    {}\n", s.uploads.len()));
    for u in &s.uploads {
        t.push_str(&format!(
            "  {} to {} ({}): {} at {}/s\n",
            printable(&u.name),
            printable(&u.peer.node_id[..u.peer.node_id.len().min(12)]),
            u.peer.addr,
            progress::bytes(u.bytes),
            progress::bytes(u.rate)
        ));
    }
    t.push_str(&format!(
        "library    {} files, {}; {} downloads in progress recorded\n",
        s.library.files,
        progress::bytes(s.library.bytes),
        s.library.downloads
    ));
    t.push_str(&format!(
        "since start  up {:.0} s, sent {}, received {}, {} downloads finished\n",
        s.totals.uptime_secs,
        progress::bytes(s.totals.uploaded_bytes),
        progress::bytes(s.totals.downloaded_bytes),
        s.totals.downloads_finished
    ));
    t
}
