//! One function per subcommand; each resolves its options and asks the
//! node: the one running on the data dir, through its local API, when
//! there is one ([`crate::remote`]); otherwise the engine directly (a node
//! started in this process for a `get`, `send` or `serve`). Output goes to
//! stdout (results) and stderr (progress, errors).

mod get;
mod get_folder;
mod host;
mod library;
mod look;
mod serve;

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use peershare::{Library, StoreError, Tls};
use serde::Serialize;

use crate::cli::{Cli, Command};
use crate::remote::Client;
use crate::{Failure, exit};

/// Default TCP port, the prototype's.
pub const DEFAULT_PORT: u16 = 9000;

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let data_dir = resolve_data_dir(cli.data_dir)?;
    let quiet = cli.quiet;
    match cli.command {
        Command::Share(a) => library::share(&data_dir, a, quiet).await,
        Command::Unshare(a) => library::unshare(&data_dir, a).await,
        Command::Shared(a) => library::shared(&data_dir, a).await,
        Command::Serve(a) => serve::serve(&data_dir, a, quiet).await,
        Command::Send(a) => serve::send(&data_dir, a, quiet).await,
        Command::Status(a) => serve::status(&data_dir, a.json).await,
        Command::Ls(a) => look::ls(&data_dir, a).await,
        Command::Get(a) => get::get(&data_dir, a, quiet).await,
        Command::Peers(a) => look::peers(&data_dir, a).await,
        Command::Id(a) => library::id(&data_dir, a.json),
        Command::Trust(a) => library::trust(&data_dir, a),
    }
}

fn resolve_data_dir(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    match given {
        Some(d) if d.as_os_str().is_empty() => Err(Failure::new(exit::USAGE, "--data-dir must not be empty")),
        Some(d) => Ok(d),
        None => dirs::data_dir().map(|d| d.join("peershare")).ok_or_else(|| {
            Failure::new(
                exit::USAGE,
                "cannot find a data directory (no $HOME or $XDG_DATA_HOME); pass --data-dir DIR",
            )
        }),
    }
}

fn open_library(dir: &Path) -> Result<Library, Failure> {
    Library::open(dir).map_err(store_failure)
}

/// The node running on `dir`, if one answers.
async fn running_node(dir: &Path) -> Option<Client> {
    Client::find(dir).await
}

/// `PEERSHARE_INSECURE_PLAINTEXT=1`: only a build with the
/// `insecure-plaintext` feature asks.
#[cfg(feature = "insecure-plaintext")]
fn plaintext_requested() -> bool {
    std::env::var("PEERSHARE_INSECURE_PLAINTEXT").is_ok_and(|v| v == "1")
}

/// This node's TLS endpoint, from its key in the data dir (created on
/// first use). A build with the `insecure-plaintext` feature (benchmarks
/// only) skips encryption when `PEERSHARE_INSECURE_PLAINTEXT=1`.
fn open_tls(lib: &Library) -> Result<Tls, Failure> {
    let identity = lib.identity().map_err(store_failure)?;
    #[cfg(feature = "insecure-plaintext")]
    if plaintext_requested() {
        eprintln!(
            "peershare: warning: PEERSHARE_INSECURE_PLAINTEXT: connections are NOT encrypted"
        );
        return Ok(Tls::plaintext(&identity));
    }
    Ok(Tls::new(&identity))
}

fn store_failure(e: StoreError) -> Failure {
    let code = match e {
        StoreError::NotShared(_) => exit::NOT_FOUND,
        _ => exit::LOCAL,
    };
    Failure::new(code, e)
}

/// The exit status of an engine error kind (`DownloadError::kind`, the
/// API's `error.kind`), as the README's table gives them.
pub fn kind_status(kind: &str) -> u8 {
    match kind {
        "usage" => exit::USAGE,
        "unreachable" => exit::UNREACHABLE,
        "not_found" => exit::NOT_FOUND,
        "corrupt" => exit::CORRUPT,
        "local" => exit::LOCAL,
        "refused" => exit::REFUSED,
        "cancelled" => exit::INTERRUPTED,
        _ => exit::FAILURE,
    }
}

/// Text that came from a peer (names, error messages), made safe to print:
/// control characters (newlines, escape sequences) are shown escaped, so a
/// peer can neither forge output lines nor drive the terminal.
pub fn printable(s: &str) -> String {
    peershare::error::printable(s).into_owned()
}

/// A path made safe to print, as [`printable`]: local paths can hold
/// control characters too (`-o` names, files from elsewhere).
fn printable_path(p: &Path) -> String {
    printable(&p.display().to_string())
}

/// Writes to stdout; a closed pipe (`| head`) ends quietly, not as an error.
fn out(text: &str) {
    let mut o = io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("peershare: error: writing output: {e}");
        std::process::exit(exit::FAILURE as i32);
    }
}

/// A line of a long-running command (`serve`, `send`): like [`out`], but
/// a stdout nobody reads any more (`serve | head -1`) only drops the line,
/// not the node; other write errors are told once on stderr.
fn status_line(text: &str) {
    let mut o = io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|_| o.flush())
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        eprintln!("peershare: warning: writing output: {e}");
    }
}

fn out_json<T: Serialize>(value: &T) {
    out(&(serde_json::to_string_pretty(value).expect("serializable") + "\n"));
}

/// Installs SIGINT and SIGTERM handlers *now* and returns a future that
/// completes when either arrives. Installing them before announcing
/// anything means a signal sent right after `listening on` is handled, not
/// fatal.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind| {
        signal(kind)
            .map_err(|e| Failure::new(exit::FAILURE, format!("cannot install signal handler: {e}")))
    };
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Resolves `HOST:PORT` (or `HOST`, meaning port 9000).
async fn resolve_peer(s: &str) -> Result<SocketAddr, Failure> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if s
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        s.to_owned()
    } else {
        format!("{s}:{DEFAULT_PORT}")
    };
    let bad = |why: String| {
        Failure::new(
            exit::USAGE,
            format!("bad peer address {s:?}: {why} (expected HOST:PORT, e.g. 192.168.1.20:9000)"),
        )
    };
    let mut addrs = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| bad(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| bad("the name resolves to no address".into()))
}

async fn resolve_peers(list: &[String]) -> Result<Vec<SocketAddr>, Failure> {
    let mut out = Vec::new();
    for p in list {
        out.push(resolve_peer(p).await?);
    }
    Ok(out)
}

/// The current directory, for paths given relative to it.
fn cwd() -> Result<PathBuf, Failure> {
    std::env::current_dir()
        .map_err(|e| Failure::new(exit::LOCAL, format!("cannot tell the current folder: {e}")))
}

/// `p` made absolute against the current directory (not resolved: a path
/// that does not exist yet keeps its name).
fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(p)
        .map_err(|e| Failure::new(exit::LOCAL, format!("{}: {e}", printable_path(p))))
}

#[cfg(test)]
mod tests {
    use super::{kind_status, printable};

    /// Regression (issue 10.8): a peer still busy after the retries ended
    /// `get` with status 1, not the README's 3 for "no peer could be
    /// reached".
    #[test]
    fn a_peer_that_stays_busy_is_unreachable() {
        use peershare_proto::wire::ErrorCode;
        let addr = "127.0.0.1:9000".parse().unwrap();
        let busy = peershare::PeerError::Remote {
            addr,
            code: ErrorCode::Busy,
            message: "too many connections".into(),
        };
        assert_eq!(kind_status(busy.kind()), crate::exit::UNREACHABLE);
        let silent = peershare::PeerError::Stalled { addr, secs: 8 };
        assert_eq!(kind_status(silent.kind()), crate::exit::UNREACHABLE);
    }

    #[test]
    fn every_engine_kind_has_its_readme_status() {
        use crate::exit::*;
        for (kind, status) in [
            ("usage", USAGE),
            ("unreachable", UNREACHABLE),
            ("not_found", NOT_FOUND),
            ("corrupt", CORRUPT),
            ("local", LOCAL),
            ("refused", REFUSED),
            ("cancelled", INTERRUPTED),
            ("failed", FAILURE),
        ] {
            assert_eq!(kind_status(kind), status, "{kind}");
        }
    }

    #[test]
    fn peer_text_cannot_forge_lines_or_drive_the_terminal() {
        assert_eq!(printable("talk.mkv"), "talk.mkv");
        assert_eq!(printable("naïve — ok"), "naïve — ok");
        let evil = "a.txt\n0000 1 GiB fake.iso\x1b]0;pwned\x07";
        let shown = printable(evil);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(shown.lines().count(), 1);
        assert!(shown.contains("\\n") && shown.contains("\\u{1b}"));
    }
}
