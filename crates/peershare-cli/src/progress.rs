//! Progress on stderr: a bar with bytes, rate and ETA on a terminal (for
//! `get`, a second line with each peer's rate), a plain line a second
//! otherwise, nothing with `--quiet`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use peershare::{Progress, ShareProgress};
use tokio::sync::oneshot;

/// Human byte count (binary units).
pub fn bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// A running display; `finish` stops it and clears the bar.
pub struct Display {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Display {
    pub async fn finish(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    fn none() -> Self {
        Self {
            stop: None,
            task: None,
        }
    }
}

fn bar(template: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// Progress of `share`: a bar on a terminal only.
pub fn hashing(c: Arc<ShareProgress>, quiet: bool) -> Display {
    if quiet || !std::io::stderr().is_terminal() {
        return Display::none();
    }
    let pb = bar("hashing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}");
    let pb_done = pb.clone();
    spawn(
        move |_| {
            pb.set_length(c.total.load(Ordering::Relaxed));
            pb.set_position(c.done.load(Ordering::Relaxed));
        },
        move || pb_done.finish_and_clear(),
        Duration::from_millis(100),
    )
}

/// Progress of `get`: a bar on a terminal, a line a second otherwise.
pub fn downloading(c: Arc<Progress>, quiet: bool) -> Display {
    if quiet {
        return Display::none();
    }
    if std::io::stderr().is_terminal() {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let pb = multi.add(bar(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        ));
        let line = multi.add(ProgressBar::new_spinner());
        line.set_style(ProgressStyle::with_template("  {msg}").expect("valid template"));
        let (pb_done, line_done) = (pb.clone(), line.clone());
        let mut rates = PeerRates::default();
        let mut shown = Instant::now();
        spawn(
            move |_| {
                pb.set_length(c.total.load(Ordering::Relaxed));
                pb.set_position(c.verified.load(Ordering::Relaxed));
                let peers = c.peers.load(Ordering::Relaxed);
                pb.set_message(format!("{peers} peer{}", if peers == 1 { "" } else { "s" }));
                // Per-peer rates change slowly: once a second.
                if shown.elapsed() >= Duration::from_secs(1) {
                    shown = Instant::now();
                    line.set_message(rates.line(&c));
                }
            },
            move || {
                pb_done.finish_and_clear();
                line_done.finish_and_clear();
            },
            Duration::from_millis(100),
        )
    } else {
        let mut last = (Instant::now(), 0u64);
        let mut rates = PeerRates::default();
        spawn(
            move |_| {
                let total = c.total.load(Ordering::Relaxed);
                let done = c.verified.load(Ordering::Relaxed);
                let received = c.received.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate =
                    (received - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, received);
                if total > 0 {
                    eprintln!(
                        "downloading: {} / {} ({:.0}%), {}/s, {} peers{}",
                        bytes(done),
                        bytes(total),
                        done as f64 * 100.0 / total as f64,
                        bytes(rate as u64),
                        c.peers.load(Ordering::Relaxed),
                        match rates.line(&c) {
                            l if l.is_empty() => String::new(),
                            l => format!(": {l}"),
                        }
                    );
                }
            },
            || {},
            Duration::from_secs(1),
        )
    }
}

/// Each peer's rate since the previous look, from its verified bytes.
#[derive(Default)]
struct PeerRates {
    last: HashMap<SocketAddr, (Instant, u64)>,
}

impl PeerRates {
    /// "ADDR RATE/s, ADDR (partial) RATE/s, ..." for the live peers, and
    /// "ADDR silent, reconnecting (N s)" for those being reconnected.
    fn line(&mut self, c: &Progress) -> String {
        let now = Instant::now();
        let peers = c.per_peer.lock().map(|p| p.clone()).unwrap_or_default();
        let mut parts = Vec::new();
        for p in &peers {
            if let Some(lost) = p.reconnecting {
                parts.push(format!(
                    "{} lost, reconnecting ({} s)",
                    p.addr,
                    lost.as_secs()
                ));
            }
        }
        for p in peers.iter().filter(|p| p.live) {
            let (then, before) = self.last.insert(p.addr, (now, p.bytes)).unwrap_or((now, 0));
            let secs = now.duration_since(then).as_secs_f64();
            let rate = if secs > 0.0 {
                p.bytes.saturating_sub(before) as f64 / secs
            } else {
                0.0
            };
            let partial = if p.partial { " (partial)" } else { "" };
            parts.push(format!("{}{partial} {}/s", p.addr, bytes(rate as u64)));
        }
        parts.join(", ")
    }
}

fn spawn(
    mut tick: impl FnMut(()) + Send + 'static,
    done: impl FnOnce() + Send + 'static,
    every: Duration,
) -> Display {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        // The first tick fires at once; skip it so lines start after a period.
        interval.tick().await;
        loop {
            tokio::select! {
                _ = interval.tick() => tick(()),
                _ = &mut stopped => break,
            }
        }
        done();
    });
    Display {
        stop: Some(stop),
        task: Some(task),
    }
}

/// Progress of a folder `get`: files done of total and bytes, as a bar on a
/// terminal, a line a second otherwise.
pub fn folder(c: Arc<peershare::download::folder::FolderProgress>, quiet: bool) -> Display {
    if quiet {
        return Display::none();
    }
    let line = move |c: &peershare::download::folder::FolderProgress| {
        format!(
            "{} / {} files",
            c.files_done.load(Ordering::Relaxed),
            c.files_total.load(Ordering::Relaxed)
        )
    };
    if std::io::stderr().is_terminal() {
        let pb = bar("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}");
        let pb_done = pb.clone();
        spawn(
            move |_| {
                pb.set_length(c.bytes_total.load(Ordering::Relaxed));
                pb.set_position(c.bytes_done.load(Ordering::Relaxed));
                pb.set_message(line(&c));
            },
            move || pb_done.finish_and_clear(),
            Duration::from_millis(100),
        )
    } else {
        spawn(
            move |_| {
                let total = c.bytes_total.load(Ordering::Relaxed);
                if total > 0 || c.files_total.load(Ordering::Relaxed) > 0 {
                    eprintln!(
                        "downloading: {}, {} / {}, {} peers",
                        line(&c),
                        bytes(c.bytes_done.load(Ordering::Relaxed)),
                        bytes(total),
                        c.peers.load(Ordering::Relaxed)
                    );
                }
            },
            || {},
            Duration::from_secs(1),
        )
    }
}
