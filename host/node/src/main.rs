//! `dispersy`: the Dispersy host binary. `dispersy --help` lists the commands.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dispersy_node::config::{Config, LogFormat};
use dispersy_node::{demo, keys, logging, new_plugin};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Dispersy: a host for decentralized communities, loaded as plugins.
#[derive(Debug, Parser)]
#[command(name = "dispersy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a node: load the community plugins and join their communities.
    Run(NodeFlags),
    /// Run a tracker: answer introductions for every community, store nothing.
    Tracker(NodeFlags),
    /// Create a member or master key; print its public key and ids.
    Keygen {
        /// Write the secret key to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Call the control API of the node whose data folder is given (address and token are read
    /// from it) and print the JSON answer, e.g. `dispersy api GET /v1/node`.
    Api {
        /// Data folder of the node.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// GET or POST.
        method: String,
        /// Path, e.g. /v1/communities.
        path: String,
        /// JSON body for POST.
        body: Option<String>,
    },
    /// Plugins of the running node whose data folder is given, through its control API:
    /// `upgrade FILE` switches the community FILE defines to FILE's plugin, live (a newer
    /// version; `--allow-downgrade` for an equal or older one).
    Plugin {
        /// What to do.
        #[command(subcommand)]
        action: PluginAction,
    },
    /// Change a community of the running node whose data folder is given, through its control
    /// API: `disable` (its plugin stops; messages to it are dropped and counted), `enable`,
    /// `restart` (a new instance of its plugin), `leave` (the node stops running it, also after
    /// a restart; its stored messages stay) or `join` (a left one again).
    Community {
        /// What to do.
        action: CommunityAction,
        /// The community id (40 hexadecimal digits, as `dispersy api GET /v1/communities` shows).
        id: String,
        /// Data folder of the node.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Show the permission timeline of a community of the running node whose data folder is
    /// given (records, who holds what, dynamic policies), through its control API.
    Timeline {
        /// The community id (40 hexadecimal digits).
        id: String,
        /// Data folder of the node.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Grant MEMBER permissions in a community, signed by the running node's member (which
    /// must hold `authorize` and the permission itself on each meta), through its control API.
    Authorize(GrantArgs),
    /// Revoke permissions of MEMBER in a community, signed by the running node's member (which
    /// must hold `revoke` on each meta), through its control API.
    Revoke(GrantArgs),
    /// Switch the policy of a meta of dynamic resolution of a community, signed by the running
    /// node's member (which must hold `permit` on `dynamic-settings`), through its control
    /// API; effective from the next global time.
    Settings {
        /// The community id (40 hexadecimal digits).
        id: String,
        /// The meta-message's name.
        meta: String,
        /// The new policy.
        #[arg(value_enum)]
        policy: Policy,
        /// Data folder of the node.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Undo the stored message of MEMBER at GLOBAL_TIME in a community, signed by the running
    /// node's member, through its control API: an undo-own of its own message, an undo-other of
    /// another's (which needs `undo` on the message's meta); the meta must be undoable.
    Undo {
        /// The community id (40 hexadecimal digits).
        id: String,
        /// The message's author: a 66-hex public key or a 40-hex member id.
        member: String,
        /// The message's global time.
        global_time: u64,
        /// Data folder of the node.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Destroy a community, signed by the running node's member (which must hold `permit` on
    /// `destroy-community`), through its control API. Hard (the default): every node deletes
    /// all of it but the destroy and its proof, and runs its plugin no more. Soft: frozen at
    /// the destroy's global time. Neither can be undone.
    Destroy {
        /// The community id (40 hexadecimal digits).
        id: String,
        /// Freeze the community instead of deleting it.
        #[arg(long)]
        soft: bool,
        /// Data folder of the node.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Join a new community of a type the running node loaded, through its control API: the
    /// community of master key MASTER_KEY (as `dispersy keygen` prints it), run by the plugin of
    /// type TYPE; joined again at every start of the node.
    Join {
        /// Community type: a loaded plugin's name (`dispersy api GET /v1/plugins` lists them).
        #[arg(value_name = "TYPE")]
        kind: String,
        /// The new community's master public key (66 hexadecimal digits).
        master_key: String,
        /// Data folder of the node.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Create a new community of a type the running node loaded, through its control API: the
    /// node makes a new master key, keeps its secret in its data folder (`masters/`, 0600) and
    /// founds the community (its member holds the first permits). Prints the master key that
    /// other nodes join with (`dispersy join TYPE MASTER_KEY`).
    Create {
        /// Community type: a loaded plugin's name.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// Data folder of the node.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write a new community plugin crate NAME (standalone: `cargo build --release` in it makes
    /// the plugin, `cargo test` runs its tests), with a fresh master key.
    NewPlugin {
        /// Crate and community type name: a-z, 0-9, '-' and '_', starting with a letter.
        name: String,
        /// Folder to create the crate folder NAME in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The dispersy-plugin-api crate to depend on (default: the one of the checkout this
        /// binary was built from).
        #[arg(long)]
        plugin_api: Option<PathBuf>,
    },
    /// Start a tracker and three nodes on loopback and show them at work.
    Demo {
        /// Example messages each node sends.
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Number of nodes besides the tracker.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Walk step interval of the demo nodes, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        step_interval_ms: u64,
        /// Folder holding libexample_community.so (default: beside this executable).
        #[arg(long)]
        plugin_dir: Option<PathBuf>,
        /// Run the moderated forum (libforum_community.so) across three nodes instead: founding,
        /// a moderator, posts, an edit, undo-own and undo-other, votes, a co-signed endorsement
        /// and moderated mode, until all three nodes show the same forum.
        #[arg(long)]
        forum: bool,
    },
}

/// Flags of `run` and `tracker`; each overrides the same key of the file and environment.
#[derive(Debug, Args, Serialize)]
struct NodeFlags {
    /// TOML configuration file.
    #[arg(long, short)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// UDP port.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    /// Address the UDP socket binds to.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bind: Option<IpAddr>,
    /// Data folder (key, database, API token).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Plugin folder (repeatable).
    #[arg(long = "plugin-dir")]
    #[serde(rename = "plugin_dir", skip_serializing_if = "Vec::is_empty")]
    plugin_dirs: Vec<PathBuf>,
    /// Tracker HOST:PORT (repeatable).
    #[arg(long = "tracker")]
    #[serde(rename = "trackers", skip_serializing_if = "Vec::is_empty")]
    trackers: Vec<String>,
    /// Peer HOST:PORT to contact at start (repeatable).
    #[arg(long = "peer")]
    #[serde(rename = "peers", skip_serializing_if = "Vec::is_empty")]
    peers: Vec<String>,
    /// Control API ADDR:PORT.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    /// Tracker role (set by the `tracker` command).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tracker: Option<bool>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(flags) => node(flags),
        Cmd::Tracker(mut flags) => {
            flags.tracker = Some(true);
            node(flags)
        }
        Cmd::Keygen { out } => keygen(out),
        Cmd::Api {
            data_dir,
            method,
            path,
            body,
        } => block(api(data_dir, method, path, body)),
        Cmd::Plugin {
            action:
                PluginAction::Upgrade {
                    file,
                    allow_downgrade,
                    data_dir,
                },
        } => {
            // The node opens the file: give it an absolute path.
            let file = std::path::absolute(&file).unwrap_or(file);
            let body = serde_json::json!({ "path": file, "allow_downgrade": allow_downgrade });
            let call = api(
                data_dir,
                "POST".to_owned(),
                "/v1/plugins/upgrade".to_owned(),
                Some(body.to_string()),
            );
            block(call)
        }
        Cmd::Community {
            action,
            id,
            data_dir,
        } => {
            if let Err(error) = checked_id(&id) {
                return fail(error);
            }
            let (method, path) = action.request(&id);
            block(api(data_dir, method.to_owned(), path, None))
        }
        Cmd::Timeline { id, data_dir } => match checked_id(&id) {
            Ok(()) => block(api(
                data_dir,
                "GET".to_owned(),
                format!("/v1/communities/{id}/timeline"),
                None,
            )),
            Err(error) => fail(error),
        },
        Cmd::Authorize(args) => grant(args, "authorize"),
        Cmd::Revoke(args) => grant(args, "revoke"),
        Cmd::Settings {
            id,
            meta,
            policy,
            data_dir,
        } => {
            if let Err(error) = checked_id(&id) {
                return fail(error);
            }
            let policy = match policy {
                Policy::Public => "public",
                Policy::Linear => "linear",
            };
            let body = serde_json::json!({ "meta": meta, "policy": policy });
            block(api(
                data_dir,
                "POST".to_owned(),
                format!("/v1/communities/{id}/settings"),
                Some(body.to_string()),
            ))
        }
        Cmd::Create { kind, data_dir } => {
            let body = serde_json::json!({ "type": kind });
            let call = api(
                data_dir,
                "POST".to_owned(),
                "/v1/communities".to_owned(),
                Some(body.to_string()),
            );
            block(call)
        }
        Cmd::Undo {
            id,
            member,
            global_time,
            data_dir,
        } => {
            if let Err(error) = checked_id(&id) {
                return fail(error);
            }
            let body = serde_json::json!({ "member": member, "global_time": global_time });
            block(api(
                data_dir,
                "POST".to_owned(),
                format!("/v1/communities/{id}/undo"),
                Some(body.to_string()),
            ))
        }
        Cmd::Destroy { id, soft, data_dir } => {
            if let Err(error) = checked_id(&id) {
                return fail(error);
            }
            let degree = if soft { "soft" } else { "hard" };
            let body = serde_json::json!({ "degree": degree });
            block(api(
                data_dir,
                "POST".to_owned(),
                format!("/v1/communities/{id}/destroy"),
                Some(body.to_string()),
            ))
        }
        Cmd::Join {
            kind,
            master_key,
            data_dir,
        } => {
            let body = serde_json::json!({ "type": kind, "master_key": master_key });
            let call = api(
                data_dir,
                "POST".to_owned(),
                "/v1/communities".to_owned(),
                Some(body.to_string()),
            );
            block(call)
        }
        Cmd::NewPlugin {
            name,
            dir,
            plugin_api,
        } => match new_plugin::create(&name, &dir, plugin_api.as_deref()) {
            Ok(created) => {
                println!("created {}", created.dir.display());
                println!("community id: {}", created.community_id);
                println!(
                    "master key:   {} (secret in master.key)",
                    created.master_key
                );
                println!(
                    "next: cd {} && cargo test && cargo build --release, then copy {} into a plugin folder of a node",
                    created.dir.display(),
                    created.library
                );
                ExitCode::SUCCESS
            }
            Err(error) => fail(error.into()),
        },
        Cmd::Demo {
            messages,
            nodes,
            step_interval_ms,
            plugin_dir,
            forum,
        } => {
            logging::init("warn", LogFormat::Text);
            let options = demo::Options {
                nodes: nodes.max(2),
                messages,
                step_interval_ms,
                plugin_dir,
                ..demo::Options::default()
            };
            if forum {
                return match runtime().and_then(|rt| Ok(rt.block_on(demo::forum::run(options))?)) {
                    Ok(summary) if summary.agreed && summary.moderated && summary.hidden >= 2 => {
                        ExitCode::SUCCESS
                    }
                    Ok(_) => ExitCode::FAILURE,
                    Err(error) => fail(error),
                };
            }
            match runtime().and_then(|rt| Ok(rt.block_on(demo::run(options))?)) {
                Ok(summary) if summary.discovered && summary.delivered == summary.expected => {
                    ExitCode::SUCCESS
                }
                Ok(_) => ExitCode::FAILURE,
                Err(error) => fail(error),
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs `call` on a new runtime: success, or its error as one line.
fn block(call: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(call)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(error),
    }
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("dispersy: {error:#}");
    ExitCode::FAILURE
}

fn node(flags: NodeFlags) -> ExitCode {
    let config = match Config::load(flags.config.as_deref(), &flags) {
        Ok(config) => config,
        Err(error) => return fail(error.into()),
    };
    logging::init(&config.log, config.log_format);
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let shutdown = CancellationToken::new();
            let signals = shutdown.clone();
            let running = dispersy_node::start(config, shutdown.clone()).await?;
            println!(
                "udp {} api {} member {}",
                running.udp, running.api, running.member
            );
            tokio::select! {
                () = wait_for_signal() => signals.cancel(),
                () = shutdown.cancelled() => {}
            }
            tracing::info!("stopping");
            running.wait().await;
            Ok(())
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(error),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The arguments of `dispersy authorize` and `dispersy revoke`.
#[derive(Debug, Args)]
struct GrantArgs {
    /// The community id (40 hexadecimal digits).
    id: String,
    /// The member: its public key (66 hexadecimal digits, better: receivers learn it) or its
    /// member id (40).
    member: String,
    /// What: META:PERMISSION, PERMISSION one of permit, authorize, revoke, undo; META a
    /// meta-message's name, `dynamic-settings` or `destroy-community`.
    #[arg(required = true, value_name = "META:PERMISSION")]
    grants: Vec<String>,
    /// Data folder of the node.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// A policy of a meta of dynamic resolution.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Policy {
    /// Anyone may create its messages.
    Public,
    /// Only members holding a permit.
    Linear,
}

/// `dispersy authorize` or (`action` "revoke") `dispersy revoke`: POSTs the grants.
fn grant(args: GrantArgs, action: &str) -> ExitCode {
    if let Err(error) = checked_id(&args.id) {
        return fail(error);
    }
    let mut grants = Vec::with_capacity(args.grants.len());
    for item in &args.grants {
        let Some((meta, permission)) = item.rsplit_once(':') else {
            return fail(anyhow::anyhow!(
                "{item:?}: a grant is META:PERMISSION, e.g. post:permit"
            ));
        };
        grants.push(serde_json::json!({ "meta": meta, "permission": permission }));
    }
    let body = serde_json::json!({ "member": args.member, "grants": grants });
    block(api(
        args.data_dir,
        "POST".to_owned(),
        format!("/v1/communities/{}/{action}", args.id),
        Some(body.to_string()),
    ))
}

/// Refuses a community id that is not 40 hexadecimal digits.
fn checked_id(id: &str) -> anyhow::Result<()> {
    if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("{id:?}: a community id is 40 hexadecimal digits");
    }
    Ok(())
}

/// What `dispersy plugin` does.
#[derive(Debug, Subcommand)]
enum PluginAction {
    /// Live upgrade: the community that FILE defines switches to FILE's plugin without a
    /// restart of the node or of its other communities (refused unless FILE's version is newer).
    Upgrade {
        /// The plugin file (a newer build of a running community's plugin).
        file: PathBuf,
        /// Switch even to an equal or older version.
        #[arg(long)]
        allow_downgrade: bool,
        /// Data folder of the node.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// What `dispersy community` does to a community.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum CommunityAction {
    /// Drop its plugin's instance; deliveries are dropped and counted until enabled.
    Disable,
    /// A new instance for a disabled or failed community.
    Enable,
    /// Drop its plugin's instance and create a new one.
    Restart,
    /// Stop running it, also after a restart of the node; its stored messages stay.
    Leave,
    /// Join a left community again.
    Join,
}

impl CommunityAction {
    /// The API request: method and path.
    fn request(self, id: &str) -> (&'static str, String) {
        let base = format!("/v1/communities/{id}");
        match self {
            CommunityAction::Disable => ("POST", format!("{base}/disable")),
            CommunityAction::Enable => ("POST", format!("{base}/enable")),
            CommunityAction::Restart => ("POST", format!("{base}/restart")),
            CommunityAction::Leave => ("DELETE", base),
            CommunityAction::Join => ("POST", format!("{base}/join")),
        }
    }
}

async fn api(
    data_dir: Option<PathBuf>,
    method: String,
    path: String,
    body: Option<String>,
) -> anyhow::Result<()> {
    let dir = data_dir.unwrap_or_else(dispersy_node::config::default_data_dir);
    let client = dispersy_node::client::Endpoints::read(&dir)?.client;
    let token = client.token().to_owned();
    let (status, text) = client
        .raw(&method.to_uppercase(), &path, body, Some(&token))
        .await?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    // A reader that stops early (`| head`) is not an error of ours.
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{pretty}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        written => written?,
    }
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(anyhow::anyhow!("HTTP {status}"))
    }
}

fn keygen(out: Option<PathBuf>) -> ExitCode {
    let key = match keys::generate() {
        Ok(key) => key,
        Err(error) => return fail(anyhow::anyhow!("random generator: {error}")),
    };
    println!("public key:   {}", key.public().to_hex());
    println!("member id:    {}", key.member_id());
    println!(
        "community id: {} (when used as a master key)",
        key.public().community_id()
    );
    match out {
        Some(path) => match keys::save(&path, &key) {
            Ok(()) => {
                println!("secret key written to {} (mode 0600)", path.display());
                ExitCode::SUCCESS
            }
            Err(error) => fail(error.into()),
        },
        None => {
            println!("secret key:   {}", hex::encode(key.secret_bytes()));
            eprintln!("(keep the secret key private; use --out FILE to write it to a 0600 file)");
            ExitCode::SUCCESS
        }
    }
}
