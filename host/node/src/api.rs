//! The control API: JSON over HTTP on a loopback address, protected by a bearer token read from
//! `api-token` (mode 0600) in the data folder.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /v1/node | member, addresses, connection type, traffic counters, kernel receive-buffer drops (`udp_receive_drops`) |
//! | GET | /v1/communities | joined communities, candidate counts, counters, plugin status and state (live, stuck, restarting, failed, disabled, destroyed), `destroyed` (`{degree, global_time, author}` or null) |
//! | POST | /v1/communities | join a new community of a loaded type: `{"type": NAME, "master_key": HEX}` (an instance with its own master key, joined again at every start); 201 with its id, 404 unknown type, 409 joined already. Without `master_key` the node **creates** a community of the type: a new master key whose secret it keeps (`masters/<id>.key` in its data folder, 0600) and founds it (`"created": true`, `master_key` in the answer: others join with it) |
//! | POST | /v1/communities/{id}/disable | drop the plugin's instance; deliveries to it are refused and counted (`plugin-down`) while the node keeps walking and answering sync from its store |
//! | POST | /v1/communities/{id}/enable | a new instance for a disabled or failed community |
//! | POST | /v1/communities/{id}/restart | drop the instance and create a new one (counted in `operator_restarts`) |
//! | DELETE | /v1/communities/{id} | leave: the node stops running it, and does not join it again at start; its stored messages stay |
//! | POST | /v1/communities/{id}/join | join a left community again |
//! | GET | /v1/communities/{id}/candidates | candidates with category and addresses |
//! | POST | /v1/communities/{id}/messages | create a message: `{"meta": NAME, "payload": {...}}` (double-member: `"co_signer"`; 504 not signed in time, 409 changed by the co-signer and declined by the plugin) |
//! | GET | /v1/communities/{id}/messages | delivered messages (`?since=SEQ&limit=N`) or stored ones (`?stored=true&since=ROW`, hidden ones included: `undone` (by an undo, named by `undone_by`: `{"member", "global_time"}` of the undo) and `denied` (by the timeline); null for delivered ones) |
//! | GET | /v1/communities/{id}/timeline | the permission timeline: master, every record held (id, author, global time, kind, valid, grants or setting), what every member holds now (meta, permission, since, proof) and the dynamic metas' policies |
//! | POST | /v1/communities/{id}/authorize | this node's member grants: `{"member": KEY_OR_ID_HEX, "grants": [{"meta": NAME, "permission": "permit"\|"authorize"\|"revoke"\|"undo"}]}` (`meta` may be `dynamic-settings` or `destroy-community`); 201 `{"global_time", "sequence_number", "record"}`, 403 with what the member lacks, 400 bad member, meta or permission |
//! | POST | /v1/communities/{id}/revoke | the same shape, revoking |
//! | POST | /v1/communities/{id}/undo | this node's member undoes a stored message: `{"member": KEY_OR_ID_HEX, "global_time": N}` (undo-own of its own, undo-other of another's, which needs `undo` on its meta; the meta must be undoable); 201 `{"kind", "global_time", "existing": false, "sent_to"}`, 200 with `"existing": true` when it undid it already, 404 not stored, 403 lacks undo, 400 not undoable |
//! | POST | /v1/communities/{id}/settings | switch a dynamic meta's policy: `{"meta": NAME, "policy": "public"\|"linear"}`; 201, 403, 400 |
//! | POST | /v1/communities/{id}/destroy | destroy the community: `{"degree": "hard"\|"soft"}` (needs `permit` on `destroy-community`); 201 `{"global_time", "sequence_number": 0, "record"}`, 403 without the permit, 409 destroyed already, 400 bad degree |
//! | GET | /v1/plugins | plugin files loaded (hash, private copy, upgrade candidate) and refused |
//! | POST | /v1/plugins | load `{"path": FILE}`, or rescan the plugin folders with `{}` |
//! | POST | /v1/plugins/upgrade | live upgrade of a running community type (its own community and its instances): `{"path": FILE}` or `{"community": ID}` (its changed file, the upgrade candidate), `"allow_downgrade": true` to switch to an equal or older version; 409 when refused |
//! | POST | /v1/shutdown | stop the node |
//! | GET | /metrics | Prometheus text format |
//!
//! Every error is a 4xx/5xx status with `{"error": "one line"}`: an unknown community is 404, a
//! lifecycle change the community's state does not allow (enable a live one) is 409.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use dispersy_core::community::Definition;
use dispersy_core::identity::{CommunityId, MemberId, PublicKey};
use dispersy_core::node::CreateError;
use dispersy_core::stats::CommunityStats;
use dispersy_core::wire::SignedMessage;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::command::Command;
use crate::mutex::lock;
use crate::plugin::{Change, Job, LifecycleError, QueueError, Worker};
use crate::registry::Registry;
use crate::registry::{InstanceError, MembershipError, UpgradeError};
use crate::store::Store;

mod timeline;
mod undo;

/// Everything the API needs.
pub(crate) struct Shared {
    pub commands: mpsc::Sender<Command>,
    /// `None` for a tracker.
    pub registry: Option<Arc<Registry>>,
    pub store: Option<Store>,
    pub token: String,
    pub shutdown: CancellationToken,
    pub api_body: usize,
    /// Explicit destinations one created message may name.
    pub api_candidates: usize,
    /// Connections served at once.
    pub api_connections: usize,
    /// Longest wait for a request's headers.
    pub api_header_timeout: Duration,
    /// Longest life of one connection.
    pub api_connection: Duration,
    /// The UDP socket's inode, by which the kernel's UDP table lists its drops (Linux).
    pub udp_inode: Option<u64>,
    /// Where the master keys of the communities this node creates go
    /// (`runtime::MASTERS_DIR` in the data folder).
    pub masters: std::path::PathBuf,
    /// Whether the store's inserts fail now.
    pub store_health: Arc<crate::store::Health>,
}

/// Node facts, as the control API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    /// Public key, hex.
    pub member: String,
    /// Member id, hex.
    pub mid: String,
    /// Bound UDP address.
    pub udp: SocketAddr,
    /// LAN address as the node reports it.
    pub lan: SocketAddr,
    /// WAN address as peers see it.
    pub wan: SocketAddr,
    /// `public`, `unknown` or `symmetric-NAT`.
    pub connection_type: &'static str,
    /// Tracker role.
    pub tracker: bool,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Communities known (a tracker's bare ones included).
    pub communities: usize,
    /// Sessions established with peers.
    pub sessions: usize,
    /// Traffic counters.
    pub stats: NodeStats,
}

/// Node traffic counters.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStats {
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Accepted packets by kind.
    pub packets: HashMap<&'static str, u64>,
    /// Dropped packets by reason (core and driver).
    pub dropped: HashMap<&'static str, u64>,
}

/// Community facts, as the control API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct CommunityInfo {
    /// Community id, hex.
    pub id: String,
    /// Type name (`null` for a tracker's bare community).
    pub name: Option<String>,
    /// Plugin version.
    pub version: Option<String>,
    /// Global time.
    pub global_time: u64,
    /// Candidates by category.
    pub candidates: HashMap<&'static str, usize>,
    /// Walker and message counters.
    pub stats: CommunityStatsView,
    /// Messages this node's plugin could not read (a peer runs a newer version of it), by meta
    /// and conversion, at most `limits.unreadable_kinds` of them.
    pub unreadable: Vec<UnreadableView>,
    /// Unreadable messages of kinds that found that table full.
    pub unreadable_others: u64,
    /// Whether a destroy-community ended (hard) or froze (soft) it: `null` when it did not.
    pub destroyed: Option<DestroyedView>,
}

/// A community's destroyed state as the control API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DestroyedView {
    /// `hard` or `soft`.
    pub degree: &'static str,
    /// The destroy's global time (soft: the freeze).
    pub global_time: u64,
    /// Its author's member id, hex.
    pub author: String,
}

/// One kind (meta, conversion) of messages a community's plugin could not read, as the
/// control API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UnreadableView {
    /// The meta-message type.
    pub meta: u32,
    /// The meta-message's name in this node's plugin.
    pub meta_name: Option<String>,
    /// The conversion identifier, hex.
    pub conversion: String,
    /// Messages dropped.
    pub count: u64,
    /// When the first one arrived, in milliseconds since this node started.
    pub first_seen_ms: u64,
}

/// Per-community counters, shown as one JSON object: every counter of
/// [`CommunityStats::fields`] by its name, and `dropped` (reason → count).
#[derive(Debug, Clone)]
pub struct CommunityStatsView(pub CommunityStats);

impl Serialize for CommunityStatsView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let fields = self.0.fields();
        let mut map = serializer.serialize_map(Some(fields.len() + 1))?;
        for (name, value) in fields {
            map.serialize_entry(name, &value)?;
        }
        let dropped: HashMap<&'static str, u64> = self.0.dropped.iter().collect();
        map.serialize_entry("dropped", &dropped)?;
        map.end()
    }
}

/// One candidate, as the control API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateView {
    /// Address used to reach it.
    pub address: SocketAddr,
    /// Its LAN address.
    pub lan: SocketAddr,
    /// Its WAN address.
    pub wan: SocketAddr,
    /// Member id, hex, once verified.
    pub member: Option<String>,
    /// `walk`, `stumble`, `intro` or `none`.
    pub category: &'static str,
    /// Whether it is verified (walk or stumble).
    pub verified: bool,
    /// Its connection type as reported.
    pub connection_type: &'static str,
    /// Its global time as reported.
    pub global_time: u64,
    /// Milliseconds since we last heard of it.
    pub last_seen_ms: Option<u64>,
}

/// How long the API waits for the protocol task or a community thread.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// An API error: a status and a one-line message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Serves the API on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let body_limit = shared.api_body;
    let app = Router::new()
        .route("/v1/node", get(node))
        .route("/v1/communities", get(communities).post(join_instance))
        .route("/v1/communities/{id}/candidates", get(candidates))
        .route(
            "/v1/communities/{id}/messages",
            get(messages).post(create_message),
        )
        .route("/v1/communities/{id}/timeline", get(timeline::timeline))
        .route("/v1/communities/{id}/authorize", post(timeline::authorize))
        .route("/v1/communities/{id}/revoke", post(timeline::revoke))
        .route("/v1/communities/{id}/settings", post(timeline::settings))
        .route("/v1/communities/{id}/undo", post(undo::undo))
        .route("/v1/communities/{id}/destroy", post(timeline::destroy))
        .route("/v1/communities/{id}", delete(leave))
        .route("/v1/communities/{id}/disable", post(disable))
        .route("/v1/communities/{id}/enable", post(enable))
        .route("/v1/communities/{id}/restart", post(restart))
        .route("/v1/communities/{id}/join", post(rejoin))
        .route("/v1/plugins", get(plugins).post(load_plugins))
        .route("/v1/plugins/upgrade", post(upgrade_plugin))
        .route("/v1/shutdown", post(shutdown_node))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(shared.clone());
    accept(listener, app, &shared, shutdown).await;
}

/// The accept loop: every connection is served by HTTP/1 on a task of `connections` (none
/// detached), at most `api_connections` at once (one more is closed at once, unanswered, and
/// counted in one warning per burst), each closed when its request headers take longer than
/// `api_header_timeout` (idle keep-alive included) or it lives longer than `api_connection`.
/// At shutdown the open connections get one second to finish, then are dropped.
async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    shared: &Shared,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut connections = tokio::task::JoinSet::new();
    let mut refused = 0u64;
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!(%error, "control API: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if connections.len() >= shared.api_connections {
            if refused == 0 {
                tracing::warn!(
                    limit = shared.api_connections,
                    "control API: too many connections; new ones are closed unanswered"
                );
            }
            refused += 1;
            drop(stream);
            continue;
        }
        if refused > 0 {
            tracing::info!(refused, "control API: connections accepted again");
            refused = 0;
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let header_timeout = shared.api_header_timeout;
        let lifetime = shared.api_connection;
        connections.spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let served = http.serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(error)) = tokio::time::timeout(lifetime, served).await {
                tracing::debug!(%error, "control API connection ended");
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}

async fn authorize(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), shared.token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong API token").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` (the token is in api-token in the data folder)",
        )
        .into_response(),
    }
}

/// A request body that is not the JSON asked for: 413 when it is larger than
/// `limits.api_body`, 400 otherwise, with the reason.
pub(crate) fn rejected(rejection: JsonRejection) -> ApiError {
    let status = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::new(status, rejection.body_text())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ask<T>(shared: &Shared, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> ApiResult<T> {
    ask_within(shared, REPLY_TIMEOUT, make).await
}

/// [`ask`] with another timeout (a co-signed message waits for its co-signer).
async fn ask_within<T>(
    shared: &Shared,
    timeout: Duration,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> ApiResult<T> {
    let (reply, answer) = oneshot::channel();
    shared
        .commands
        .try_send(make(reply))
        .map_err(|_| ApiError::unavailable("node busy (command queue full) or stopping"))?;
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(ApiError::unavailable("node did not answer")),
    }
}

async fn ask_worker<T>(
    worker: &Worker,
    make: impl FnOnce(oneshot::Sender<T>) -> Job,
) -> ApiResult<T> {
    let (reply, mut answer) = oneshot::channel();
    worker.submit(make(reply)).map_err(|e| match e {
        QueueError::Full => ApiError::unavailable("community busy (queue full); try again"),
        QueueError::Stopped => ApiError::unavailable("community stopped"),
        QueueError::Stuck { .. } | QueueError::Down { .. } => ApiError::unavailable(e.to_string()),
    })?;
    // Queued behind a call that becomes stuck: answered as soon as that shows.
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    let mut look = tokio::time::interval(STUCK_POLL);
    loop {
        tokio::select! {
            value = &mut answer => {
                return value.map_err(|_| ApiError::unavailable("community did not answer"));
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(ApiError::unavailable("community did not answer"));
            }
            _ = look.tick() => {
                let health = worker.shared.health();
                if health.state == "stuck" {
                    return Err(ApiError::unavailable(format!(
                        "community {} is stuck: {}",
                        worker.name(),
                        health.reason.unwrap_or_default()
                    )));
                }
            }
        }
    }
}

/// How often a waiting API call looks whether the community became stuck.
const STUCK_POLL: Duration = Duration::from_millis(100);

fn community_id(text: &str) -> ApiResult<CommunityId> {
    CommunityId::from_hex(text)
        .map_err(|_| ApiError::bad_request("a community id is 40 hexadecimal digits"))
}

async fn node(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Value>> {
    let info = ask(&shared, |reply| Command::Node { reply }).await?;
    let mut value = json!(info);
    // Datagrams the kernel dropped because the receive buffer was full (null: not known here).
    value["udp_receive_drops"] = json!(shared.udp_inode.and_then(crate::net::receive_drops));
    let health = &shared.store_health;
    value["store"] = json!({
        "failing": health.failing.load(std::sync::atomic::Ordering::Relaxed),
        "failed_batches": health.failed_batches.load(std::sync::atomic::Ordering::Relaxed),
    });
    Ok(Json(value))
}

async fn communities(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Value>> {
    let infos = ask(&shared, |reply| Command::Communities { reply }).await?;
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        let mut value = json!(info);
        let worker = CommunityId::from_hex(&info.id)
            .ok()
            .and_then(|id| shared.registry.as_ref()?.worker(&id));
        let plugin = match worker {
            Some(worker) => Some(plugin_view(&worker).await),
            None => None,
        };
        value["plugin"] = plugin.unwrap_or(Value::Null);
        out.push(value);
    }
    Ok(Json(json!(out)))
}

async fn plugin_view(worker: &Worker) -> Value {
    let status = match ask_worker(worker, |reply| Job::Status { reply }).await {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => json!({ "error": error.message.as_str() }),
        Err(error) => json!({ "error": error.message }),
    };
    let stats = lock(&worker.shared.stats).clone();
    let health = worker.shared.health();
    json!({
        "state": health.state,
        "reason": health.reason,
        "since_ms": health.since_ms,
        "restarts": health.restarts,
        "operator_restarts": health.operator_restarts,
        "version": health.version,
        "previous_version": health.previous_version,
        "upgrades": health.upgrades,
        "status": status,
        "accepted": stats.accepted,
        "dropped": stats.dropped,
        "delayed": stats.delayed,
        "delay_expired": stats.delay_expired,
        "duplicates": stats.duplicates,
        "errors": stats.errors,
        "last_error": stats.last_error,
        "failed": stats.failed,
        "queue_full": stats.queue_full,
    })
}

async fn candidates(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let community = community_id(&id)?;
    let list = ask(&shared, |reply| Command::Candidates { community, reply })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown community {community}")))?;
    Ok(Json(json!(list)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    meta: String,
    payload: Value,
    #[serde(default)]
    candidates: Vec<String>,
    /// For double-member metas: the second author.
    #[serde(default)]
    co_signer: Option<CoSigner>,
}

/// The second author of a double-member message: its public key (hex) and `ip:port`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoSigner {
    public_key: String,
    address: String,
}

async fn create_message(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<NewMessage>, JsonRejection>,
) -> ApiResult<Response> {
    let community = community_id(&id)?;
    let Json(request) = body.map_err(rejected)?;
    let (definition, worker, _) = joined(&shared, community)?;
    let meta = definition.meta_by_name(&request.meta).ok_or_else(|| {
        let names: Vec<&str> = definition.metas.iter().map(|m| m.name.as_str()).collect();
        ApiError::bad_request(format!(
            "community {} has no meta-message {:?} (it has: {})",
            definition.name,
            request.meta,
            names.join(", ")
        ))
    })?;
    // Explicit destinations are bounded: the API must not make the node a packet cannon.
    if request.candidates.len() > shared.api_candidates {
        return Err(ApiError::bad_request(format!(
            "{} candidates given, at most {} (limits.api_candidates)",
            request.candidates.len(),
            shared.api_candidates
        )));
    }
    let mut candidates = Vec::with_capacity(request.candidates.len());
    for candidate in &request.candidates {
        candidates.push(candidate.parse().map_err(|_| {
            ApiError::bad_request(format!("candidate {candidate:?} is not ip:port"))
        })?);
    }
    let co_signer = match &request.co_signer {
        None => None,
        Some(c) => Some((
            dispersy_core::identity::PublicKey::from_hex(&c.public_key).map_err(|e| {
                ApiError::bad_request(format!("co_signer.public_key {:?}: {e}", c.public_key))
            })?,
            c.address.parse().map_err(|_| {
                ApiError::bad_request(format!("co_signer.address {:?} is not ip:port", c.address))
            })?,
        )),
    };
    let json = request.payload.to_string();
    let meta_id = meta.id;
    let (conversion, payload) = ask_worker(&worker, |reply| Job::FromJson {
        meta: meta_id,
        json,
        reply,
    })
    .await?
    .map_err(|e| match e.code {
        dispersy_plugin_api::abi::ERROR_INVALID => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.message.to_string())
        }
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("plugin error: {}", e.message),
        ),
    })?;
    let meta_name = meta.name.clone();
    // The core answers a co-signed message within its signature timeout (10 s by default).
    let timeout = REPLY_TIMEOUT * if co_signer.is_some() { 2 } else { 1 };
    let created = ask_within(&shared, timeout, |reply| Command::Create {
        community,
        meta: meta_name,
        conversion: conversion.map(Vec::into_boxed_slice),
        payload,
        candidates,
        co_signer,
        reply: Some(reply),
    })
    .await?
    .map_err(|e| match e {
        CreateError::UnknownCommunity(_) => ApiError::not_found(e.to_string()),
        CreateError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        CreateError::Signature(
            dispersy_core::signature::SignError::Timeout
            | dispersy_core::signature::SignError::Undecided,
        ) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        CreateError::Signature(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        CreateError::Busy | CreateError::Checking(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        // The community's own check refused it: nothing was sent or stored.
        CreateError::Refused(ref refusal) if refusal.is_verdict() => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        CreateError::Refused(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        CreateError::CheckTimeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        // The permission timeline gives this member no permit for the meta.
        CreateError::NotPermitted(_) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        // A destroy-community ended or froze the community.
        CreateError::Destroyed(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        CreateError::NotStored(_) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        _ => ApiError::bad_request(e.to_string()),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "global_time": created.global_time,
            "sequence_number": created.sequence_number,
            "sent_to": created.sent_to,
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    #[serde(default)]
    since: u64,
    #[serde(default = "default_limit")]
    limit: u32,
    #[serde(default)]
    stored: bool,
}

fn default_limit() -> u32 {
    100
}

/// One message as the API shows it, before its payload is rendered.
struct Listed {
    seq: u64,
    meta: u32,
    author: Option<PublicKey>,
    global_time: u64,
    sequence_number: Option<u32>,
    source: Option<String>,
    stored: bool,
    /// For a stored row: its `sync.undone` reason bits and the undo's row id.
    hidden: Option<(u8, Option<i64>)>,
    conversion: Vec<u8>,
    payload: Vec<u8>,
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let community = community_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.clamp(1, 1_000);
    let (definition, worker, row) = joined(&shared, community)?;
    // The undos stored rows are undone by: (author, global time) by row id.
    let mut undone_by = HashMap::new();
    let listed: Vec<Listed> = if query.stored {
        let store = shared
            .store
            .as_ref()
            .ok_or_else(|| ApiError::not_found("this node stores nothing"))?;
        let since = i64::try_from(query.since).unwrap_or(i64::MAX);
        let rows = store
            .messages(row, since, limit)
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let undos: Vec<i64> = rows.iter().filter_map(|r| r.undone_by).collect();
        undone_by = store
            .undo_refs(&undos)
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        rows.into_iter()
            .filter_map(|r| {
                let signed = SignedMessage::decode(&r.packet).ok()?;
                let m = signed.message;
                Some(Listed {
                    seq: u64::try_from(r.id).unwrap_or(0),
                    meta: m.message_type,
                    author: m.authors.into_iter().next(),
                    global_time: m.global_time,
                    sequence_number: m.sequence_number,
                    source: None,
                    stored: true,
                    hidden: Some((r.undone, r.undone_by)),
                    conversion: m.conversion.as_bytes().to_vec(),
                    payload: m.payload,
                })
            })
            .collect()
    } else {
        worker
            .shared
            .recent(query.since, limit as usize)
            .into_iter()
            .map(|d| Listed {
                seq: d.seq,
                meta: d.meta,
                author: d.author,
                global_time: d.global_time,
                sequence_number: d.sequence_number,
                source: d.source.map(|s| s.to_string()),
                stored: d.stored,
                hidden: None,
                conversion: d.conversion,
                payload: d.payload,
            })
            .collect()
    };
    let items = listed
        .iter()
        .map(|l| (l.meta, l.conversion.clone(), l.payload.clone()))
        .collect();
    // A destroyed community runs no instance to render payloads; what it keeps (the destroy
    // and its proof) has none.
    let rendered = if worker.shared.health().state == "destroyed" {
        vec![Err("the community is destroyed".to_owned()); listed.len()]
    } else {
        ask_worker(&worker, |reply| Job::ToJson { items, reply }).await?
    };
    let next = listed.last().map_or(query.since, |l| l.seq);
    let messages: Vec<Value> = listed
        .into_iter()
        .zip(rendered)
        .map(|(l, payload)| {
            let meta = definition
                .meta_by_id(l.meta)
                .map_or_else(|| l.meta.to_string(), |m| m.name.clone());
            json!({
                "seq": l.seq,
                "meta": meta,
                "member": l.author.as_ref().map(|k| k.member_id().to_hex()),
                "public_key": l.author.as_ref().map(PublicKey::to_hex),
                "global_time": l.global_time,
                "sequence_number": l.sequence_number,
                "source": l.source,
                "stored": l.stored,
                "undone": l.hidden.map(|(bits, _)| bits & 1 != 0),
                "denied": l.hidden.map(|(bits, _)| bits & 2 != 0),
                "undone_by": l
                    .hidden
                    .and_then(|(_, by)| undone_by.get(&by?))
                    .map(|(member, global_time): &(MemberId, u64)| json!({
                        "member": member.to_hex(),
                        "global_time": global_time,
                    })),
                "payload": payload.unwrap_or_else(|e| json!({ "error": e })),
            })
        })
        .collect();
    Ok(Json(json!({ "messages": messages, "next": next })))
}

/// The definition, thread and store row of a community joined through a plugin.
fn joined(shared: &Shared, community: CommunityId) -> ApiResult<(Definition, Arc<Worker>, i64)> {
    let unknown = || ApiError::not_found(format!("unknown community {community}"));
    let registry = shared.registry.as_ref().ok_or_else(unknown)?;
    let (definition, row) = registry.definition(&community).ok_or_else(unknown)?;
    let worker = registry
        .worker(&community)
        .ok_or_else(|| ApiError::unavailable("the community's plugin is not running"))?;
    Ok((definition, worker, row))
}

async fn disable(state: State<Arc<Shared>>, id: Path<String>) -> ApiResult<Json<Value>> {
    lifecycle(state, id, Change::Disable).await
}

async fn enable(state: State<Arc<Shared>>, id: Path<String>) -> ApiResult<Json<Value>> {
    lifecycle(state, id, Change::Enable).await
}

async fn restart(state: State<Arc<Shared>>, id: Path<String>) -> ApiResult<Json<Value>> {
    lifecycle(state, id, Change::Restart).await
}

/// The registry, or 404 for community `id` on a node without plugins (a tracker).
fn registry_of(shared: &Shared, id: CommunityId) -> ApiResult<&Registry> {
    shared
        .registry
        .as_deref()
        .ok_or_else(|| ApiError::not_found(format!("unknown community {id}")))
}

/// Makes an operator's change of community `id`'s instance; answers its health after.
async fn lifecycle(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    change: Change,
) -> ApiResult<Json<Value>> {
    let id = community_id(&id)?;
    let registry = registry_of(&shared, id)?;
    let Some(worker) = registry.worker(&id) else {
        return Err(if registry.left().contains(&id) {
            ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "cannot {} community {id}: it was left; POST /v1/communities/{id}/join joins it again",
                    change.name()
                ),
            )
        } else {
            ApiError::not_found(format!("unknown community {id}"))
        });
    };
    let answer = worker.control(change).map_err(|e| match e {
        QueueError::Stuck { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        other => ApiError::unavailable(other.to_string()),
    })?;
    // create() runs under the call deadline: a new instance answers within it, or is stuck.
    let result = tokio::time::timeout(REPLY_TIMEOUT, answer)
        .await
        .map_err(|_| {
            ApiError::unavailable(format!(
                "community {} did not answer: {}",
                worker.name(),
                worker.shared.health().reason.unwrap_or_default()
            ))
        })?
        .map_err(|_| ApiError::unavailable("the community's thread has stopped"))?;
    match result {
        Ok(()) => Ok(Json(json!(worker.shared.health()))),
        Err(error @ LifecycleError::Conflict { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, error.to_string()))
        }
        Err(error @ (LifecycleError::Create { .. } | LifecycleError::Upgrade { .. })) => Err(
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        ),
        Err(LifecycleError::Queue(error)) => Err(ApiError::unavailable(error.to_string())),
    }
}

fn membership_error(error: MembershipError) -> ApiError {
    let status = match &error {
        MembershipError::Unknown(_) => StatusCode::NOT_FOUND,
        MembershipError::Joined(_) | MembershipError::Left(_) => StatusCode::CONFLICT,
        MembershipError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, error.to_string())
}

/// `DELETE /v1/communities/{id}`: leave the community.
async fn leave(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = community_id(&id)?;
    let registry = registry_of(&shared, id)?;
    registry.leave(id).await.map_err(membership_error)?;
    Ok(Json(json!({ "community": id.to_hex(), "state": "left" })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceRequest {
    /// The community type: a loaded plugin's name, or the id of its own community.
    #[serde(rename = "type")]
    kind: String,
    /// The new community's master public key, 66 hexadecimal digits. Absent: the node
    /// creates the community: it makes a new master key, keeps its secret and founds it.
    master_key: Option<String>,
}

/// `POST /v1/communities` with `{"type": NAME, "master_key": HEX}`: join a new community of a
/// loaded type (see [`Registry::join_instance`]); 201 with the new community's id.
async fn join_instance(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<InstanceRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(request) = body.map_err(rejected)?;
    let registry = shared
        .registry
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("a tracker joins no communities"))?;
    let (master, created) = match &request.master_key {
        Some(hex) => {
            let master = PublicKey::from_hex(hex).map_err(|e| {
                ApiError::bad_request(format!(
                    "master_key: {e} (a compressed secp256k1 public key, as `dispersy keygen` prints it)"
                ))
            })?;
            (master, None)
        }
        None => {
            let (master, path) = create_master(&shared.masters)?;
            (master, Some(path))
        }
    };
    let joined = registry.join_instance(&request.kind, master).await;
    if let (Err(_), Some(path)) = (&joined, &created) {
        // Nothing was joined: the new key names no community.
        let _ = std::fs::remove_file(path);
    }
    let mut report = json!(joined.map_err(|error| {
        let status = match &error {
            InstanceError::UnknownType(_) => StatusCode::NOT_FOUND,
            InstanceError::AmbiguousType { .. }
            | InstanceError::Joined(_)
            | InstanceError::OtherType(_) => StatusCode::CONFLICT,
            InstanceError::Failed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, error.to_string())
    })?);
    report["created"] = json!(created.is_some());
    Ok((StatusCode::CREATED, Json(report)).into_response())
}

/// A new master key for a community this node creates, its secret written to
/// `<masters>/<community id>.key` (mode 0600, the folder 0700); returns its public key and the
/// file. The protocol task founds the community from that file when it is joined.
fn create_master(masters: &std::path::Path) -> ApiResult<(PublicKey, std::path::PathBuf)> {
    use std::os::unix::fs::DirBuilderExt;
    let failed = |what: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, what);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(masters)
        .map_err(|e| failed(format!("creating {}: {e}", masters.display())))?;
    let key = crate::keys::generate().map_err(|e| failed(format!("a new master key: {e}")))?;
    let public = key.public().clone();
    let path = masters.join(format!("{}.key", public.community_id()));
    crate::keys::save(&path, &key).map_err(|e| failed(e.to_string()))?;
    Ok((public, path))
}

/// `POST /v1/communities/{id}/join`: join a left community again.
async fn rejoin(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = community_id(&id)?;
    let registry = registry_of(&shared, id)?;
    let report = registry.rejoin(id).await.map_err(membership_error)?;
    Ok((StatusCode::CREATED, Json(json!(report))).into_response())
}

async fn plugins(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let reports = shared
        .registry
        .as_ref()
        .map(|r| r.reports())
        .unwrap_or_default();
    Json(json!(reports))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    path: Option<std::path::PathBuf>,
}

/// `{"path": FILE}` loads one plugin file (only from a plugin folder); `{}` rescans the plugin folders for new files.
async fn load_plugins(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<LoadRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(request) = body.map_err(rejected)?;
    let registry = shared
        .registry
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("a tracker loads no plugins"))?;
    match request.path {
        Some(path) => {
            // Only from the plugin folders: a file elsewhere never reaches dlopen.
            let path = registry.loadable(&path).map_err(ApiError::bad_request)?;
            let report = registry.load(&path).await;
            let status = if report.error.is_none() {
                StatusCode::CREATED
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            Ok((status, Json(json!(report))).into_response())
        }
        None => Ok(Json(json!(registry.scan().await)).into_response()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeRequest {
    path: Option<std::path::PathBuf>,
    community: Option<String>,
    #[serde(default)]
    allow_downgrade: bool,
}

/// `POST /v1/plugins/upgrade`: a live upgrade (see [`crate::registry::Registry::upgrade`]);
/// answers the file's report and the community's health after the switch.
async fn upgrade_plugin(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<UpgradeRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(request) = body.map_err(rejected)?;
    let registry = shared
        .registry
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("a tracker runs no plugins"))?;
    let path = match (request.path, request.community) {
        (Some(path), None) => path,
        (None, Some(id)) => {
            let id = community_id(&id)?;
            registry
                .plugin_file(&id)
                .ok_or_else(|| ApiError::not_found(format!("community {id} does not run here")))?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give either \"path\" (a plugin file) or \"community\" (its changed file)",
            ));
        }
    };
    if !path.is_file() {
        return Err(ApiError::bad_request(format!(
            "{} is not a file on the node's machine",
            path.display()
        )));
    }
    let mut report = registry
        .upgrade(&path, request.allow_downgrade)
        .await
        .map_err(|error| {
            let status = match &error {
                UpgradeError::Load(_) => StatusCode::UNPROCESSABLE_ENTITY,
                UpgradeError::NotRunning { .. } => StatusCode::NOT_FOUND,
                UpgradeError::BadVersion { .. }
                | UpgradeError::NotNewer { .. }
                | UpgradeError::Incompatible { .. }
                | UpgradeError::Switch(LifecycleError::Conflict { .. }) => StatusCode::CONFLICT,
                UpgradeError::Switch(LifecycleError::Queue(QueueError::Stuck { .. })) => {
                    StatusCode::CONFLICT
                }
                UpgradeError::Switch(LifecycleError::Queue(_))
                | UpgradeError::Stopping
                | UpgradeError::Pending { .. } => StatusCode::SERVICE_UNAVAILABLE,
                UpgradeError::Switch(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!("live upgrade refused: {error}");
            ApiError::new(status, error.to_string())
        })?;
    let id = report
        .community
        .as_deref()
        .and_then(|id| CommunityId::from_hex(id).ok());
    report.health = id
        .and_then(|id| registry.worker(&id))
        .map(|w| w.shared.health());
    Ok(Json(json!(report)).into_response())
}

async fn shutdown_node(State(shared): State<Arc<Shared>>) -> Response {
    tracing::info!("shutdown requested through the control API");
    shared.shutdown.cancel();
    (StatusCode::ACCEPTED, Json(json!({ "stopping": true }))).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> ApiResult<Response> {
    let node = ask(&shared, |reply| Command::Node { reply }).await?;
    let communities = ask(&shared, |reply| Command::Communities { reply }).await?;
    let healths: Vec<(String, crate::plugin::Health)> = shared
        .registry
        .as_ref()
        .map(|r| {
            r.workers()
                .into_iter()
                .map(|(id, w)| (id.to_hex(), w.shared.health()))
                .chain(r.left().into_iter().map(|id| {
                    let id = id.to_hex();
                    let health = crate::plugin::Health::left(&id);
                    (id, health)
                }))
                .collect()
        })
        .unwrap_or_default();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(
            out,
            "# HELP dispersy_{name} {help}\n# TYPE dispersy_{name} {kind}"
        );
        for (labels, value) in samples {
            let _ = writeln!(out, "dispersy_{name}{labels} {value}");
        }
    };
    let s = &node.stats;
    gauge(
        "datagrams_received_total",
        "Datagrams received.",
        "counter",
        vec![(String::new(), s.datagrams_received)],
    );
    gauge(
        "bytes_received_total",
        "Bytes received.",
        "counter",
        vec![(String::new(), s.bytes_received)],
    );
    gauge(
        "datagrams_sent_total",
        "Datagrams sent.",
        "counter",
        vec![(String::new(), s.datagrams_sent)],
    );
    gauge(
        "bytes_sent_total",
        "Bytes sent.",
        "counter",
        vec![(String::new(), s.bytes_sent)],
    );
    let health = &shared.store_health;
    gauge(
        "store_failing",
        "1 while the store fails to write (a full disk, say): nothing new is acknowledged.",
        "gauge",
        vec![(
            String::new(),
            u64::from(health.failing.load(std::sync::atomic::Ordering::Relaxed)),
        )],
    );
    gauge(
        "store_failed_batches_total",
        "Inserts that failed: their messages were neither stored nor acknowledged.",
        "counter",
        vec![(
            String::new(),
            health
                .failed_batches
                .load(std::sync::atomic::Ordering::Relaxed),
        )],
    );
    let labelled = |map: &HashMap<&'static str, u64>, key: &str| {
        let mut v: Vec<(String, u64)> = map
            .iter()
            .map(|(k, n)| (format!("{{{key}=\"{k}\"}}"), *n))
            .collect();
        v.sort();
        v
    };
    gauge(
        "packets_total",
        "Accepted packets by kind.",
        "counter",
        labelled(&s.packets, "kind"),
    );
    gauge(
        "dropped_total",
        "Dropped packets by reason.",
        "counter",
        labelled(&s.dropped, "reason"),
    );
    let per = |f: &dyn Fn(&CommunityInfo) -> u64| {
        communities
            .iter()
            .map(|c| (format!("{{community=\"{}\"}}", c.id), f(c)))
            .collect::<Vec<_>>()
    };
    gauge(
        "global_time",
        "Global time per community.",
        "gauge",
        per(&|c| c.global_time),
    );
    gauge(
        "verified_candidates",
        "Walk and stumble candidates per community.",
        "gauge",
        per(&|c| (c.candidates["walk"] + c.candidates["stumble"]) as u64),
    );
    gauge(
        "walk_attempts_total",
        "Introduction-requests sent.",
        "counter",
        per(&|c| c.stats.0.walk_attempts),
    );
    gauge(
        "walk_successes_total",
        "Introduction-responses received.",
        "counter",
        per(&|c| c.stats.0.walk_successes),
    );
    gauge(
        "messages_received_total",
        "Verified messages passed to plugins.",
        "counter",
        per(&|c| c.stats.0.messages_received),
    );
    gauge(
        "messages_created_total",
        "Messages created.",
        "counter",
        per(&|c| c.stats.0.messages_created),
    );
    gauge(
        "messages_refused_total",
        "Messages created here that their plugin's check refused (not sent, not stored).",
        "counter",
        per(&|c| c.stats.0.messages_refused),
    );
    let mut states = Vec::new();
    for (id, health) in &healths {
        for state in crate::plugin::Health::STATES {
            let on = u64::from(health.state == state);
            states.push((format!("{{community=\"{id}\",state=\"{state}\"}}"), on));
        }
    }
    states.sort();
    gauge(
        "plugin_state",
        "1 for the state each community's plugin is in (starting, live, stuck, restarting, failed, disabled, left).",
        "gauge",
        states,
    );
    let mut restarts: Vec<(String, u64)> = healths
        .iter()
        .map(|(id, h)| (format!("{{community=\"{id}\"}}"), u64::from(h.restarts)))
        .collect();
    restarts.sort();
    gauge(
        "plugin_restarts_total",
        "Restarts of each community's plugin after a panic.",
        "counter",
        restarts,
    );
    let mut operator: Vec<(String, u64)> = healths
        .iter()
        .map(|(id, h)| {
            (
                format!("{{community=\"{id}\"}}"),
                u64::from(h.operator_restarts),
            )
        })
        .collect();
    operator.sort();
    gauge(
        "plugin_operator_restarts_total",
        "Restarts of each community's plugin asked for by the operator.",
        "counter",
        operator,
    );
    let mut upgrades: Vec<(String, u64)> = healths
        .iter()
        .map(|(id, h)| (format!("{{community=\"{id}\"}}"), u64::from(h.upgrades)))
        .collect();
    upgrades.sort();
    gauge(
        "plugin_upgrades_total",
        "Live upgrades (and downgrades) of each community's plugin.",
        "counter",
        upgrades,
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispersy_core::stats::DropReason;

    #[test]
    fn community_counters_keep_their_json_names() {
        let mut stats = CommunityStats {
            sync_follow_ups: 3,
            ..CommunityStats::default()
        };
        stats.dropped.add(DropReason::Pruned, 2);
        let json = serde_json::to_value(CommunityStatsView(stats)).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        // The control API's names: clients and dashboards read them.
        let mut expected = vec![
            "walk_attempts",
            "walk_successes",
            "walk_failures",
            "stumbles",
            "handshakes",
            "responses_without_introduction",
            "introductions_refused",
            "punctures",
            "sync_new",
            "sync_reused",
            "sync_skipped",
            "sync_follow_ups",
            "sync_sweeps",
            "sync_packets_sent",
            "missing_packets_sent",
            "relayed",
            "delayed",
            "messages_created",
            "messages_refused",
            "messages_received",
            "destroy_answers",
            "dropped",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["sync_follow_ups"], 3);
        assert_eq!(json["dropped"]["pruned"], 2);
    }
}
