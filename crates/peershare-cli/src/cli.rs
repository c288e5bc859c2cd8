//! Command-line options. Every option can also be set from the environment
//! (`PEERSHARE_*`); the command line wins.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "peershare",
    version,
    about = "Share files with peers on your network and download them from every peer that has them, verified.",
    long_about = "Share files with peers on your network and download them from every peer that has them.\n\n\
        Every chunk is verified with SHA-256 before it counts, interrupted downloads resume \
        where they stopped, and a file only ever appears under its final name complete.",
    after_help = "Quick start, two terminals (or two machines):\n  \
        peershare share ~/Videos/talk.mkv ~/Documents/papers\n  \
        peershare serve\n  \
        peershare ls --peer 192.168.1.20:9000\n  \
        peershare get <FILE-ID or TICKET> --peer 192.168.1.20:9000 -o talk.mkv"
)]
pub struct Cli {
    /// Where this node keeps its library and identity [default: $XDG_DATA_HOME/peershare]
    #[arg(long, global = true, env = "PEERSHARE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// No progress output; errors only
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add files and folders to this node's library (hashes them; nothing is copied)
    #[command(after_help = "Examples:\n  \
        peershare share ~/Videos/talk.mkv          # one file, shared as \"talk.mkv\"\n  \
        peershare share ~/Documents/papers         # a folder, recursively: \"papers/a.pdf\", ...\n  \
        peershare share --json notes.txt | jq -r '.[0].ticket'\n\n\
        Prints one line per file: <file-id>  <name>, then one per folder: <folder-id>  <name>/  \
        (folder: N files, SIZE). A folder is also shared as one unit: `peershare get FOLDER-ID` \
        downloads the whole tree. Sharing the same file again does not re-hash it \
        unless it changed. A file that changes after sharing is no longer served until shared again \
        (and a folder holding it until the folder is shared again, under a new folder ID).")]
    Share(ShareArgs),

    /// Remove files from the library, or stop offering a download in progress (the files themselves are never touched)
    #[command(after_help = "Examples:\n  \
        peershare unshare ~/Videos/talk.mkv\n  \
        peershare unshare ~/Documents/papers       # everything shared from that folder\n  \
        peershare unshare 3f2a...e1                # by file ID")]
    Unshare(UnshareArgs),

    /// List this node's own library, with a ticket for each file
    #[command(
        after_help = "Examples:\n  peershare shared\n  peershare shared --json --addr 203.0.113.7:9000 | jq -r '.[].ticket'"
    )]
    Shared(SharedArgs),

    /// Serve the library to peers until interrupted (Ctrl-C or SIGTERM)
    #[command(after_help = "Examples:\n  \
        peershare serve                            # all interfaces, port 9000\n  \
        peershare serve --listen 127.0.0.1:0       # loopback, any free port\n  \
        peershare serve --max-upload-rate 10MB\n  \
        peershare serve --trusted-only              # only nodes added with `peershare trust add`\n\n\
        Every connection is encrypted (TLS 1.3) and both sides prove their node ID. \
        Prints `listening on IP:PORT` once it accepts connections. Files shared by another \
        `peershare share` on the same data dir are served without a restart.")]
    Serve(ServeArgs),

    /// List the folders and files that peers share
    #[command(after_help = "Examples:\n  \
        peershare ls                               # every peer found on the LAN\n  \
        peershare ls photos/                       # the files in the folder photos\n  \
        peershare ls --tree                        # every folder with its files\n  \
        peershare ls --search holiday photos\n  \
        peershare ls --peer 192.168.1.20:9000\n  \
        peershare ls --peer 10.0.0.5:9000 --peer 10.0.0.6:9000 --json\n\n\
        One row per shared name (a file's path, or a folder) and ID, with the peers that list it. \
        Without NAME/ or --tree: the folders (file count, total size) and the files outside them.")]
    Ls(LsArgs),

    /// List the peers on the LAN (and those the local `serve` has heard), and how each was first heard
    #[command(after_help = "Examples:\n  \
        peershare peers\n  \
        peershare peers --json --discovery-wait 3\n\n\
        Broadcasts a query on every up network interface and lists who answers, plus the peers a \
        `peershare serve` running on this data dir has heard. Nothing found? A firewall may block \
        UDP port 9000, or the Wi-Fi may isolate clients: connect directly with --peer HOST:PORT.")]
    Peers(PeersArgs),

    /// Print this node's ID (its public key; peers check it in every connection)
    #[command(after_help = "Example:\n  peershare id\n\n\
        The ID is the public half of the Ed25519 key pair made on first use and kept in the data \
        dir (node.key, readable only by you). Give it to friends whose `serve --trusted-only` \
        should let you in; tickets carry it, so a download checks it is talking to the right node.")]
    Id(JsonArg),

    /// Manage the nodes that `serve --trusted-only` serves
    #[command(
        subcommand,
        after_help = "Examples:\n  \
        peershare trust add 8c1f...07 laptop        # a node ID from `peershare id` on that machine\n  \
        peershare trust ls\n  \
        peershare trust rm 8c1f...07\n\n\
        A running `serve --trusted-only` sees changes at the next connection, without a restart."
    )]
    Trust(TrustCommand),

    /// Download a file or a whole folder by ID or ticket, verified, from every given peer at once
    #[command(after_help = "Examples:\n  \
        peershare get ps1aebq...                   # a ticket carries the peers' addresses\n  \
        peershare get ps1ajqw... --only '*.jpg'    # a folder ticket: the tree into ./NAME/, only the JPEGs\n  \
        peershare get 3f2a...e1                    # finds the peers that have it on the LAN\n  \
        peershare get 3f2a...e1 --peer 192.168.1.20:9000 -o talk.mkv\n  \
        peershare get 3f2a...e1 --peer a:9000 --peer b:9000 --json\n\n\
        Without -o the file is saved in the current directory under its shared name. While \
        downloading, data goes to NAME.peershare-part; if interrupted, run the same command \
        again to resume. Exit status 0 means the complete file is verified and in place.\n\n\
        Every peer that has the file sends part of it: the rarest chunks first, more to the \
        faster ones, and near the end the last chunks are asked of a second peer so a slow one \
        never holds the tail. A peer that sends corrupt data is dropped. Peers that are \
        downloading the same file help too: a `peershare serve` on the same data dir offers \
        what this download has verified (unless --no-share), and the finished file is shared.\n\n\
        A folder (a folder ticket, or a folder ID) is built in NAME.peershare-part/ beside the \
        target and renamed into place when every file is verified: NAME/ either does not exist or \
        is complete. Identical files are fetched once. Interrupted, the same command resumes. An \
        existing NAME/ is refused unless --force.")]
    Get(GetArgs),

    /// Give files to someone: share them (unlisted), print a ticket per path, and serve until Ctrl-C
    #[command(after_help = "Examples:\n  \
        peershare send talk.mkv                    # prints a ticket; the other side runs `peershare get TICKET`\n  \
        peershare send a.pdf b.pdf --exit-after 1  # stop after one complete download\n  \
        peershare send photos/ --listed            # also listed in this node's catalog\n\n\
        With a node running on this data dir (`peershare serve`), the files are shared by that node and \
        `send` only prints the tickets and what is downloaded; otherwise `send` runs a node itself, \
        with `serve`'s options, until Ctrl-C. Tickets carry the addresses where the node really listens \
        (loopback included when it listens there) and its node ID. A line per peer and file says what \
        each downloaded.")]
    Send(SendArgs),

    /// Show the running node: its ID and addresses, peers, downloads and uploads in progress, totals
    #[command(
        after_help = "Examples:\n  peershare status\n  peershare status --json | jq .downloads\n\n\
        Reads the state of the node running on this data dir (`peershare serve`) through its local API. \
        With none running, says so and exits 3."
    )]
    Status(JsonArg),
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShareArgs {
    /// Files or folders to share
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Leave the files out of this node's catalog: peers can fetch them only by file ID or ticket (sharing again without it lists them)
    #[arg(long)]
    pub unlisted: bool,

    #[command(flatten)]
    pub ticket: TicketArgs,

    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust a node: `serve --trusted-only` serves it
    Add {
        /// Its node ID (64 hex digits, from `peershare id` on that node)
        #[arg(value_name = "NODE-ID")]
        node: String,
        /// A name to remember it by
        name: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Stop trusting a node (its open connections are not cut; new ones are refused)
    Rm {
        #[arg(value_name = "NODE-ID")]
        node: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// List the trusted nodes
    Ls(JsonArg),
}

#[derive(Debug, Args)]
pub struct TicketArgs {
    /// Port written into tickets with this machine's addresses (the one `serve` listens on)
    #[arg(long, env = "PEERSHARE_PORT", default_value_t = 9000)]
    pub port: u16,

    /// Address written into tickets instead of this machine's own, e.g. a
    /// port-forward on your router (repeatable)
    #[arg(long = "addr", value_name = "IP:PORT")]
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct SharedArgs {
    #[command(flatten)]
    pub ticket: TicketArgs,

    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct UnshareArgs {
    /// File IDs or paths (a folder removes everything shared from under it)
    #[arg(required = true, value_name = "FILE-ID|PATH")]
    pub targets: Vec<String>,

    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args, Clone)]
pub struct DiscoveryArgs {
    /// UDP port of LAN discovery (the same on every peer)
    #[arg(
        long,
        env = "PEERSHARE_DISCOVERY_PORT",
        default_value_t = 9000,
        value_name = "PORT"
    )]
    pub discovery_port: u16,

    /// Broadcast only on this network interface (repeatable, or comma-separated in the env) [default: every up interface]
    #[arg(
        long = "discovery-interface",
        env = "PEERSHARE_DISCOVERY_INTERFACES",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub interfaces: Vec<String>,

    /// Address families to discover over: IPv4 broadcast, IPv6 link-local multicast, or both
    #[arg(long, env = "PEERSHARE_DISCOVERY_FAMILY", value_enum, default_value_t = Family::Both)]
    pub discovery_family: Family,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    Both,
    Ipv4,
    Ipv6,
}

#[derive(Debug, Args, Clone)]
pub struct LookArgs {
    #[command(flatten)]
    pub discovery: DiscoveryArgs,

    /// How long to wait for answers on the LAN, seconds
    #[arg(
        long,
        env = "PEERSHARE_DISCOVERY_WAIT",
        default_value_t = 1.5,
        value_name = "SECONDS"
    )]
    pub discovery_wait: f64,
}

#[derive(Debug, Args)]
pub struct PeersArgs {
    #[command(flatten)]
    pub look: LookArgs,

    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to accept connections on
    #[arg(
        long,
        env = "PEERSHARE_LISTEN",
        default_value = "0.0.0.0:9000",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Total upload rate over all peers, e.g. 500KB, 10MB, 80Mbit [default: unlimited]
    #[arg(long, env = "PEERSHARE_MAX_UPLOAD_RATE", value_name = "RATE", value_parser = parse_rate)]
    pub max_upload_rate: Option<u64>,

    /// Do not announce this node on the LAN nor answer discovery queries
    #[arg(long, env = "PEERSHARE_NO_DISCOVERY", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_discovery: bool,

    #[command(flatten)]
    pub discovery: DiscoveryArgs,

    /// Seconds between LAN announcements (peers silent for three of them are forgotten)
    #[arg(
        long,
        env = "PEERSHARE_ANNOUNCE_INTERVAL",
        default_value_t = 5.0,
        value_name = "SECONDS"
    )]
    pub announce_interval: f64,

    /// Connections served at once (their handshake done); more are refused as busy
    #[arg(long, env = "PEERSHARE_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,

    /// Connections still in their handshake at once; a new one then closes the oldest, so silent connections cannot lock peers out
    #[arg(long, env = "PEERSHARE_MAX_PENDING_HANDSHAKES", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_pending_handshakes: u32,

    /// Connections from one remote IP address at once; more are refused as busy
    #[arg(long, env = "PEERSHARE_MAX_CONNECTIONS_PER_IP", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections_per_ip: u32,

    /// Seconds a peer may take nothing we send it (each piece of 64 KiB) before it is disconnected; a slow peer that keeps taking is served as long as it likes
    #[arg(
        long,
        env = "PEERSHARE_WRITE_TIMEOUT",
        default_value_t = 30.0,
        value_name = "SECONDS"
    )]
    pub write_timeout: f64,

    /// Serve only the nodes on the trust list (`peershare trust add NODE-ID`); others are refused
    #[arg(long, env = "PEERSHARE_TRUSTED_ONLY", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub trusted_only: bool,

    /// Where the node's local API listens (loopback only; `127.0.0.1:0` takes any free port); the CLI and the web UI talk to it
    #[arg(
        long,
        env = "PEERSHARE_API_LISTEN",
        default_value = "127.0.0.1:9001",
        value_name = "ADDR"
    )]
    pub api_listen: SocketAddr,

    /// Serve no local API (other commands then work on the data dir by themselves)
    #[arg(long, env = "PEERSHARE_NO_API", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_api: bool,

    /// Downloads the node runs at once; more wait in order
    #[arg(long, env = "PEERSHARE_MAX_ACTIVE_DOWNLOADS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_active_downloads: u32,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Files or folders to give
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Also list them in this node's catalog (by default only a ticket finds them)
    #[arg(long)]
    pub listed: bool,

    /// Stop after this many complete downloads (by anyone, of any of the files)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub exit_after: Option<u32>,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// List what is inside this folder (any path prefix, with or without the final /), by full path
    #[arg(value_name = "NAME/")]
    pub folder: Option<String>,

    /// List everything: each folder followed by its files (indented, by full path), then the other files
    #[arg(long, conflicts_with = "folder")]
    pub tree: bool,

    /// A peer to ask, HOST:PORT (repeatable) [default: every peer found on the LAN]
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,

    /// Only files and folders whose path contains every one of these words (case-insensitive)
    #[arg(long, value_name = "WORDS", num_args = 1..)]
    pub search: Vec<String>,

    #[command(flatten)]
    pub look: LookArgs,

    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// A 64-hex-digit file or folder ID, or a ticket (ps1...) for either
    #[arg(value_name = "ID|TICKET")]
    pub what: String,

    /// A peer that has the file, HOST:PORT (repeatable; adds to a ticket's peers). Without it, peers are also found on the LAN
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,

    /// Do not look for peers on the LAN
    #[arg(long, env = "PEERSHARE_NO_DISCOVERY", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_discovery: bool,

    /// Look for peers on the LAN even though --peer is given (wins over --no-discovery)
    #[arg(long)]
    pub discover: bool,

    #[command(flatten)]
    pub look: LookArgs,

    /// Where to save: a file path, or an existing folder [default: ./NAME]
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Replace the output file (or folder) if it exists
    #[arg(long)]
    pub force: bool,

    /// For a folder: download only the files matching GLOB (repeatable). A pattern without `/` matches a file or folder name at any depth (`*.jpg`, `raw`); one with `/` a path from the folder's top (`2024/*/*.jpg`); a folder that matches brings everything in it
    #[arg(long, value_name = "GLOB")]
    pub only: Vec<String>,

    /// Total download rate, e.g. 500KB, 10MB, 80Mbit [default: unlimited]
    #[arg(long, env = "PEERSHARE_MAX_DOWNLOAD_RATE", value_name = "RATE", value_parser = parse_rate)]
    pub max_download_rate: Option<u64>,

    /// Keep the download to yourself: a `serve` on this data dir does not offer its chunks while it runs, and the finished file is not added to the library
    #[arg(long, env = "PEERSHARE_NO_SHARE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_share: bool,

    /// Keep serving the file after it is complete, until Ctrl-C (when no node runs: a running node always does)
    #[arg(long)]
    pub seed: bool,

    /// Hand the download to the running node and return at once (`peershare status` shows it)
    #[arg(long)]
    pub detach: bool,

    #[command(flatten)]
    pub json: JsonArg,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    peershare_proto::rate::parse_rate(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_are_the_engines() {
        let cli = Cli::try_parse_from(["peershare", "serve"]).unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve")
        };
        let engine = peershare::ServerConfig::default();
        assert_eq!(a.write_timeout, engine.write_timeout.as_secs_f64());
        assert_eq!(a.max_connections as usize, engine.max_connections);
        assert_eq!(
            a.max_pending_handshakes as usize,
            engine.max_pending_handshakes
        );
        assert_eq!(
            a.max_connections_per_ip as usize,
            engine.max_connections_per_ip
        );
    }

    #[test]
    fn data_dir_is_global() {
        let a = Cli::try_parse_from(["peershare", "--data-dir", "/x", "shared"]).unwrap();
        let b = Cli::try_parse_from(["peershare", "shared", "--data-dir", "/x"]).unwrap();
        assert_eq!(a.data_dir, b.data_dir);
        assert_eq!(a.data_dir, Some(PathBuf::from("/x")));
    }
}
