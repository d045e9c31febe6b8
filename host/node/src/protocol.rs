//! The protocol task: it owns the core [`Node`] and is the only writer of protocol state. It
//! handles verified datagrams, [`Command`]s and the core's timeouts, sends what the core queues,
//! hands store reads to the sync-read task and verified messages to community threads. It makes
//! no protocol decisions of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dispersy_core::identity::{CommunityId, KeyPair};
use dispersy_core::node::{
    CreateError, Created, Event, FoundError, Incoming, Node, Refusal, RequestId,
};
use dispersy_core::signature::Answer;
use dispersy_core::stats::{Counters, DropReason};
use dispersy_core::time::Instant as CoreInstant;
use dispersy_core::wire::CommunityMessage;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::api::{
    CandidateView, CommunityInfo, CommunityStatsView, DestroyedView, NodeInfo, NodeStats,
    UnreadableView,
};
use crate::command::Command;
use crate::keys;
use crate::mutex::lock;
use crate::net::Datagram;
use crate::plugin::{self, Job};
use crate::registry::Registry;
use crate::store::sync_task::SyncJob;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// The tokio instant that is the core's time zero.
    pub start: tokio::time::Instant,
}

impl Clock {
    /// The core's time now.
    pub fn now(&self) -> CoreInstant {
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        CoreInstant::from_millis(millis)
    }

    /// The tokio instant of core time `at`.
    pub fn to_tokio(self, at: CoreInstant) -> tokio::time::Instant {
        self.start + Duration::from_millis(at.as_millis())
    }
}

/// The protocol task's state: the core node and the driver's own bits around it.
pub(crate) struct Protocol {
    node: Node,
    udp: SocketAddr,
    sync_jobs: mpsc::Sender<SyncJob>,
    socket: Arc<UdpSocket>,
    clock: Clock,
    registry: Option<Arc<Registry>>,
    /// Drops decided by the driver (full queues).
    dropped: Counters<DropReason>,
    last_refresh: tokio::time::Instant,
    /// API calls waiting for a created or co-signed message, by request (bounded by the core's
    /// `max_checking` and `signature.max_pending`: every request ends in an `Event::Created`;
    /// callers that gave up are forgotten at the next refresh).
    creating: HashMap<RequestId, CreatedReply>,
    /// A community's master key: that community is founded when it is joined. Never logged.
    founder: Option<KeyPair>,
    /// The folder of the master keys of communities this node created (`runtime::MASTERS_DIR`):
    /// a community whose key is there is founded when it is joined.
    masters: Option<PathBuf>,
    /// API calls whose persistent message was published and waits to be stored, by
    /// (community, global time): answered by `Command::Durable` (bounded like `creating`,
    /// which they come from; callers that gave up are forgotten at the next refresh).
    durable: HashMap<(CommunityId, u64), (Created, CreatedReply)>,
    /// Store writes that could not be queued at once (a full queue): each waits for room or
    /// writes by itself; reaped at every refresh, awaited when the task ends (none detached).
    /// Bounded by what creates them: permission records and undos, themselves bounded.
    writes: tokio::task::JoinSet<()>,
    /// Double-member messages plugins proposed, by request: the plugin's token (bounded by the
    /// core's `signature.max_pending`; every request ends in an `Event::Created`).
    proposals: HashMap<RequestId, u64>,
}

/// Where the answer to an API call that creates a message goes.
type CreatedReply = oneshot::Sender<Result<Created, CreateError>>;

impl Protocol {
    /// A protocol task for `node`, bound at `udp` on `socket`, handing store reads to
    /// `sync_jobs` and messages to the threads of `registry` (`None` for a tracker).
    pub fn new(
        node: Node,
        udp: SocketAddr,
        socket: Arc<UdpSocket>,
        clock: Clock,
        sync_jobs: mpsc::Sender<SyncJob>,
        registry: Option<Arc<Registry>>,
    ) -> Self {
        Protocol {
            node,
            udp,
            sync_jobs,
            socket,
            clock,
            registry,
            dropped: Counters::default(),
            last_refresh: tokio::time::Instant::now(),
            creating: HashMap::new(),
            durable: HashMap::new(),
            writes: tokio::task::JoinSet::new(),
            founder: None,
            masters: None,
            proposals: HashMap::new(),
        }
    }

    /// The same task, founding the community of the master key `founder` (if any) once that
    /// community is joined and its thread runs ([`Command::Running`], [`Node::found`]).
    pub fn with_founder(mut self, founder: Option<KeyPair>) -> Self {
        self.founder = founder;
        self
    }

    /// The same task, founding a community whose master key is in folder `masters` (a file
    /// `<community id>.key`) once that community is joined.
    pub fn with_masters(mut self, masters: PathBuf) -> Self {
        self.masters = Some(masters);
        self
    }

    /// Founds joined community `id` if the founder key, or a key in the masters folder, is its
    /// master key; what happened is logged (never the key).
    fn found_if_master(&mut self, now: CoreInstant, id: CommunityId) {
        let configured = self
            .founder
            .clone()
            .filter(|key| key.public().community_id() == id);
        let created = || {
            let path = self.masters.as_ref()?.join(format!("{id}.key"));
            if !path.is_file() {
                return None;
            }
            keys::load(&path)
                .inspect_err(
                    |error| tracing::warn!(community = %id, %error, "master key unreadable"),
                )
                .ok()
                .filter(|key| key.public().community_id() == id)
        };
        let Some(master) = configured.or_else(created) else {
            return;
        };
        match self.node.found(now, id, &master) {
            Ok(created) => tracing::info!(
                community = %id,
                global_time = created.global_time,
                "community founded: this member holds its first permits"
            ),
            Err(FoundError::AlreadyFounded(_)) => {
                tracing::debug!(community = %id, "community founded already")
            }
            Err(error) => tracing::warn!(community = %id, %error, "community not founded"),
        }
    }

    /// Runs until `shutdown` is cancelled or an input queue closes.
    pub async fn run(
        mut self,
        mut datagrams: mpsc::Receiver<Vec<Datagram>>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        self.refresh();
        loop {
            let deadline = self.node.poll_timeout().map(|t| self.clock.to_tokio(t));
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                batch = datagrams.recv() => match batch {
                    Some(batch) => {
                        let mut handled = batch.len();
                        self.datagrams(batch);
                        // Take what else is waiting before flushing (bounded, to stay fair).
                        while handled < 1024 {
                            match datagrams.try_recv() {
                                Ok(batch) => {
                                    handled += batch.len();
                                    self.datagrams(batch);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                () = timer => {
                    self.node.handle_timeout(self.clock.now());
                    self.refresh();
                }
            }
            self.flush().await;
            if self.last_refresh.elapsed() >= Duration::from_millis(250) {
                self.refresh();
            }
        }
        // Store writes not queued yet finish (or fail with the store) before the task ends.
        let writes = async { while self.writes.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), writes).await;
        self.writes.shutdown().await;
    }

    fn datagrams(&mut self, batch: Vec<Datagram>) {
        let now = self.clock.now();
        for d in batch {
            self.node.handle_decoded(now, d.from, &d.bytes, d.decoded);
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.clock.now();
        match command {
            Command::Create {
                community,
                meta,
                conversion,
                payload,
                candidates,
                co_signer,
                reply,
            } => {
                let conversion = conversion.as_deref();
                let started = match co_signer {
                    Some((key, address)) => self.node.request_signature_in(
                        now,
                        community,
                        &meta,
                        conversion,
                        payload,
                        key,
                        address,
                        &candidates,
                    ),
                    None => self.node.create_message_in(
                        now,
                        community,
                        &meta,
                        conversion,
                        payload,
                        &candidates,
                    ),
                };
                self.started(community, &meta, started, reply);
            }
            Command::Join {
                definition,
                resume,
                peers,
                reply,
            } => {
                let joined = self.node.join(now, *definition, resume);
                if let Ok(id) = &joined {
                    for peer in peers {
                        if let Err(error) = self.node.add_candidate(now, *id, peer) {
                            tracing::warn!(%peer, %error, "peer not added");
                        }
                    }
                }
                let _ = reply.send(joined);
            }
            Command::Running { community } => {
                self.found_if_master(now, community);
                // A community a destroy ended or froze before a restart: its thread retires or
                // restores the instance and finishes an interrupted deletion.
                self.node.announce_destroyed(community);
            }
            Command::Leave { community, reply } => {
                let _ = reply.send(self.node.leave(community));
            }
            Command::Redefine {
                community,
                definition,
                reply,
            } => {
                let _ = reply.send(self.node.redefine(community, *definition));
            }
            Command::SyncQueried {
                community,
                right,
                left,
            } => self.node.handle_sync_query(now, community, right, left),
            Command::SyncRowsRead { request, rows } => {
                self.node.handle_sync_rows(now, request, rows);
            }
            Command::PacketsRead { request, packets } => {
                self.node.handle_packets_read(now, request, packets);
            }
            Command::StoreReport { community, report } => {
                self.node.handle_store_report(now, community, *report);
            }
            Command::Durable {
                community,
                global_times,
                error,
            } => {
                for global_time in global_times {
                    if let Some((created, reply)) = self.durable.remove(&(community, global_time)) {
                        let answer = match &error {
                            None => Ok(created),
                            Some(error) => Err(CreateError::NotStored(error.clone())),
                        };
                        let _ = reply.send(answer);
                    }
                }
            }
            Command::Wait {
                community,
                message,
                awaited,
            } => self.node.handle_wait(now, community, *message, awaited),
            Command::CreatedChecked { request, verdict } => {
                self.node.handle_created_check(now, request, verdict);
            }
            Command::SignatureVerdict { ask, verdict } => {
                self.node.handle_cosign_verdict(now, ask, verdict);
            }
            Command::Propose {
                community,
                meta,
                conversion,
                payload,
                co_signer: (key, address),
                candidates,
                token,
            } => {
                let started = self.node.propose(
                    now,
                    community,
                    &meta,
                    conversion.as_deref(),
                    payload.clone(),
                    key.clone(),
                    address,
                    &candidates,
                );
                match started {
                    Ok(request) => {
                        self.proposals.insert(request, token);
                    }
                    Err(error) => {
                        tracing::warn!(%community, %meta, %error, "double-member message proposed by the plugin not started");
                        if let Some(proposed) =
                            self.unstarted(community, &meta, conversion, payload, key)
                        {
                            self.tell_cosigned(community, None, token, Answer::Timeout, proposed);
                        }
                    }
                }
            }
            Command::Cosigned { request, accept } => {
                self.node.handle_cosigned(now, request, accept);
            }
            Command::May {
                community,
                meta,
                member,
                global_time,
                reply,
            } => {
                let _ = reply.try_send(self.node.may(&community, &meta, member, global_time));
            }
            Command::AnswerRead { request, packets } => {
                self.node.handle_answer_read(now, request, packets);
            }
            Command::Node { reply } => {
                let _ = reply.send(self.node_info(now));
            }
            Command::Communities { reply } => {
                let _ = reply.send(self.communities(now));
            }
            Command::Authority {
                community,
                body,
                reply,
            } => {
                let _ = reply.send(self.node.create_authority(now, community, body));
            }
            Command::Timeline { community, reply } => {
                let _ = reply.send(self.node.timeline_view(&community));
            }
            Command::Candidates { community, reply } => {
                let _ = reply.send(self.candidates(community, now));
            }
            Command::Undo {
                community,
                target,
                meta,
                reply,
            } => {
                let result = self.node.create_undo(now, community, target, meta);
                match reply {
                    Some(reply) => {
                        let _ = reply.send(result);
                    }
                    None => {
                        if let Err(error) = result {
                            tracing::warn!(%community, %error, "undo asked by the plugin not created");
                        }
                    }
                }
            }
            Command::UndoTargetsRead { community, found } => {
                self.node.handle_undo_targets(now, community, found);
            }
            Command::UndoneMarked { community, marked } => {
                match self.registry.as_ref().and_then(|r| r.worker(&community)) {
                    Some(worker) => {
                        for notice in marked {
                            if let Err(error) = worker.submit(Job::Undone(notice)) {
                                self.dropped.bump(error.drop_reason());
                            }
                        }
                    }
                    None => self.dropped.bump(DropReason::NoPlugin),
                }
            }
        }
    }

    /// The message a plugin proposed that could not be started, as its `cosigned` is told of
    /// it (global time 0, the meta's type if the community has it, else 0); `None` when the
    /// community has no definition (no plugin to tell).
    fn unstarted(
        &self,
        community: CommunityId,
        meta: &str,
        conversion: Option<Box<[u8]>>,
        payload: Vec<u8>,
        co_signer: dispersy_core::identity::PublicKey,
    ) -> Option<CommunityMessage> {
        let definition = self
            .node
            .community(&community)
            .and_then(|c| c.definition.as_ref());
        let message_type = definition
            .and_then(|d| d.meta_by_name(meta))
            .map_or(0, |m| m.id);
        let first = definition.and_then(|d| d.conversions.first().cloned());
        let conversion = conversion
            .and_then(|bytes| dispersy_core::wire::Conversion::new(&bytes).ok())
            .or(first)?;
        Some(CommunityMessage {
            community,
            message_type,
            conversion,
            authors: vec![self.node.key().public().clone(), co_signer],
            global_time: 0,
            sequence_number: None,
            resolution_index: None,
            relay_hops: None,
            payload,
            authority: None,
        })
    }

    /// Hands the co-signer's answer to `request` (`None`: a proposal that never started) to
    /// the community's thread, for its plugin's `cosigned(token, ...)`. When the thread cannot
    /// take it, an answer is declined (nothing published) and an expiry is dropped.
    fn tell_cosigned(
        &mut self,
        community: CommunityId,
        request: Option<RequestId>,
        token: u64,
        answer: Answer,
        message: CommunityMessage,
    ) {
        let job = Job::Cosigned {
            request,
            token,
            answer,
            message: Box::new(message),
        };
        let taken = match self.registry.as_ref().and_then(|r| r.worker(&community)) {
            Some(worker) => worker.submit(job).map_err(|error| error.to_string()),
            None => Err("the community has no plugin".to_owned()),
        };
        if let Err(reason) = taken {
            tracing::debug!(%community, %reason, "the plugin was not asked about a co-signed message");
            if let (Some(request), false) = (request, answer == Answer::Timeout) {
                self.node.handle_cosigned(self.clock.now(), request, false);
            }
        }
    }

    /// A message was started (created or co-signing asked): its caller waits for its
    /// `Event::Created`; one that could not start is answered (or, from a plugin, logged) now.
    fn started(
        &mut self,
        community: CommunityId,
        meta: &str,
        started: Result<RequestId, CreateError>,
        reply: Option<oneshot::Sender<Result<Created, CreateError>>>,
    ) {
        match (started, reply) {
            (Ok(request), Some(reply)) => {
                self.creating.insert(request, reply);
            }
            (Ok(_), None) => {}
            (Err(error), Some(reply)) => {
                tracing::debug!(%community, %meta, %error, "message not created");
                let _ = reply.send(Err(error));
            }
            (Err(error), None) => {
                tracing::warn!(%community, %meta, %error, "message sent by the plugin not created");
            }
        }
    }

    /// Sends what the core queued and hands events to community threads, until the core has
    /// nothing more (answering an event here may queue more: a check that cannot be asked).
    async fn flush(&mut self) {
        while self.flush_once().await {}
    }

    /// One pass of [`Protocol::flush`]; whether there was anything.
    async fn flush_once(&mut self) -> bool {
        let mut any = false;
        while let Some(transmit) = self.node.poll_transmit() {
            any = true;
            if let Err(error) = self
                .socket
                .send_to(&transmit.bytes, transmit.destination)
                .await
            {
                tracing::debug!(destination = %transmit.destination, %error, "send failed");
                self.dropped.bump(DropReason::SendFailed);
            }
        }
        // Messages of one community and meta go to its thread as one job per flush.
        let mut deliveries: Vec<(CommunityId, u32, Vec<Incoming>)> = Vec::new();
        while let Some(event) = self.node.poll_event() {
            any = true;
            match event {
                Event::Messages {
                    community,
                    meta,
                    messages,
                } => match deliveries
                    .iter_mut()
                    .find(|(c, m, _)| *c == community && *m == meta)
                {
                    Some((_, _, list)) => list.extend(messages),
                    None => deliveries.push((community, meta, messages)),
                },
                Event::SyncQuery { community, query } => {
                    self.sync_job(community, |row| SyncJob::Query {
                        community,
                        row,
                        query,
                    });
                }
                Event::SyncRows {
                    community,
                    request,
                    range,
                    limit,
                    metas,
                } => {
                    self.sync_job(community, |row| SyncJob::Rows {
                        request,
                        row,
                        range,
                        limit,
                        metas,
                    });
                }
                Event::Prune {
                    community,
                    meta,
                    below,
                } => self.sync_job(community, |row| SyncJob::Prune { row, meta, below }),
                Event::ReadPackets {
                    request,
                    community,
                    lookup,
                    max_bytes,
                } => self.sync_job(community, |row| SyncJob::Lookup {
                    request,
                    row,
                    lookup,
                    max_bytes,
                }),
                Event::SignatureAsked {
                    community,
                    ask,
                    message,
                } => match self.registry.as_ref().and_then(|r| r.worker(&community)) {
                    // Unanswered questions expire in the core.
                    Some(worker) => {
                        let job = Job::AllowSignature {
                            ask,
                            message: Box::new(message),
                        };
                        if let Err(error) = worker.submit(job) {
                            self.dropped.bump(error.drop_reason());
                        }
                    }
                    None => self.dropped.bump(DropReason::NoPlugin),
                },
                Event::CheckCreated {
                    community,
                    request,
                    message,
                } => {
                    // Messages already published go to the thread before this check, so that
                    // the plugin has handled our earlier messages when it checks this one.
                    self.deliver(&mut deliveries, Some(community));
                    let job = Job::CheckCreated {
                        request,
                        message: Box::new(message),
                    };
                    let refusal = match self.registry.as_ref().and_then(|r| r.worker(&community)) {
                        Some(worker) => match worker.submit(job) {
                            Ok(()) => None,
                            Err(error) => Some(error.to_string()),
                        },
                        None => Some("the community has no plugin".to_owned()),
                    };
                    if let Some(reason) = refusal {
                        let now = self.clock.now();
                        let verdict = Err(Refusal::Unchecked(reason));
                        self.node.handle_created_check(now, request, verdict);
                    }
                }
                Event::Reevaluate {
                    community,
                    meta,
                    spans,
                } => {
                    // After the messages judged before the record that caused it.
                    self.deliver(&mut deliveries, Some(community));
                    self.reevaluate(community, meta, spans);
                }
                Event::Unreadable {
                    community,
                    meta,
                    conversion,
                } => {
                    // Once per (community, meta, conversion); the count is in the API.
                    tracing::warn!(
                        %community,
                        meta,
                        conversion = %hex::encode(&conversion),
                        "a peer sends messages in a conversion this node's plugin cannot read \
                         (a newer version of the plugin?): dropped and counted (GET /v1/communities, unreadable)"
                    );
                }
                Event::Cosigned {
                    community,
                    request,
                    answer,
                    message,
                } => {
                    // The control API's proposals are token 0.
                    let token = self.proposals.get(&request).copied().unwrap_or(0);
                    self.tell_cosigned(community, Some(request), token, answer, message);
                }
                Event::Created {
                    community,
                    request,
                    result,
                } => match (self.creating.remove(&request), result) {
                    // A stored message is acknowledged once its insert committed.
                    (Some(reply), Ok(created)) if created.persistent => {
                        self.durable
                            .insert((community, created.global_time), (created, reply));
                    }
                    (Some(reply), result) => {
                        if let Err(error) = &result {
                            tracing::debug!(%community, %error, "message not published");
                        }
                        let _ = reply.send(result);
                    }
                    (None, Err(error)) => {
                        self.proposals.remove(&request);
                        tracing::warn!(%community, %error, "message sent by the plugin not published");
                    }
                    (None, Ok(_)) => {
                        self.proposals.remove(&request);
                    }
                },
                Event::UndoTargets { community, targets } => {
                    self.sync_job(community, |row| SyncJob::UndoTargets {
                        community,
                        row,
                        targets,
                    });
                }
                Event::Undone { community, flips } => {
                    // A flip comes after its undo and its target were stored (it is made from
                    // store reports and reads), so the rows it names are there.
                    self.sync_write(community, |row| SyncJob::Undone {
                        community,
                        row,
                        flips,
                    });
                }
                Event::Destroyed {
                    community,
                    degree,
                    global_time,
                    keep,
                } => {
                    // After the messages of it already gathered, on its own thread (the only
                    // writer of its rows).
                    self.deliver(&mut deliveries, Some(community));
                    let job = Job::Destroy {
                        degree,
                        global_time,
                        keep,
                    };
                    match self.registry.as_ref().and_then(|r| r.worker(&community)) {
                        Some(worker) => {
                            if let Err(error) = worker.submit_write(job) {
                                tracing::warn!(%community, %error, "the destroyed community's thread did not take the deletion");
                            }
                        }
                        None => self.dropped.bump(DropReason::NoPlugin),
                    }
                }
                Event::SendPackets { request, rows } => {
                    let job = SyncJob::Packets { request, ids: rows };
                    if self.sync_jobs.try_send(job).is_err() {
                        self.dropped.bump(DropReason::SyncQueueFull);
                    }
                }
            }
        }
        self.deliver(&mut deliveries, None);
        any
    }

    /// Hands the gathered `deliveries` of `community` (of every community: `None`) to their
    /// threads.
    fn deliver(
        &mut self,
        deliveries: &mut Vec<(CommunityId, u32, Vec<Incoming>)>,
        community: Option<CommunityId>,
    ) {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(deliveries)
            .into_iter()
            .partition(|(c, _, _)| community.is_none_or(|id| id == *c));
        *deliveries = later;
        for (community, meta, messages) in now {
            match self.registry.as_ref().and_then(|r| r.worker(&community)) {
                Some(worker) => {
                    let n = messages.len() as u64;
                    if let Err(error) = worker.submit(Job::Deliver { meta, messages }) {
                        self.dropped.add(error.drop_reason(), n);
                    }
                }
                None => self.dropped.bump(DropReason::NoPlugin),
            }
        }
    }

    /// Hands a re-evaluation to the community's thread ([`Job::Reevaluate`]). When it has no
    /// thread or its queue is full, the flags are written by a task of their own and the
    /// plugin is not told (logged): the flags must follow the timeline.
    fn reevaluate(
        &mut self,
        community: CommunityId,
        meta: u32,
        spans: Vec<dispersy_core::timeline::Reevaluation>,
    ) {
        let Some(registry) = self.registry.as_ref() else {
            return;
        };
        if let Some(worker) = registry.worker(&community) {
            // The spans are few (a handful per record): a copy keeps them for the fallback.
            let job = Job::Reevaluate {
                meta,
                spans: spans.clone(),
            };
            match worker.submit_write(job) {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%community, meta, %error, "re-evaluation not queued: the flags are written apart, the plugin is not told");
                }
            }
        }
        let Some((_, row)) = registry.definition(&community) else {
            return;
        };
        let store = registry.store().clone();
        self.writes.spawn(async move {
            for reevaluation in spans {
                for span in reevaluation.spans {
                    let range = crate::store::Span {
                        community: row,
                        meta,
                        authors: reevaluation.authors.clone(),
                        low: span.low,
                        high: span.high,
                    };
                    if let Err(error) = store
                        .mark_range(
                            &range,
                            !span.allowed,
                            crate::plugin::worker::MARK_PAGE,
                            |_| {},
                        )
                        .await
                    {
                        tracing::error!(%community, meta, %error, "re-evaluation not applied");
                    }
                }
            }
        });
    }

    /// Hands a store read to the sync task; when it is busy the read is dropped (the walk then
    /// goes without a filter, the request without an answer).
    /// Hands a job that writes the store to the sync task: queued at once when there is room,
    /// else by a task of [`Protocol::writes`] that waits for room (a write must not be lost;
    /// the protocol task must not wait).
    fn sync_write(&mut self, community: CommunityId, job: impl FnOnce(i64) -> SyncJob) {
        let row = self
            .registry
            .as_ref()
            .and_then(|r| r.definition(&community))
            .map(|(_, row)| row);
        let Some(row) = row else {
            self.dropped.bump(DropReason::NoPlugin);
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(job)) = self.sync_jobs.try_send(job(row)) {
            let jobs = self.sync_jobs.clone();
            self.writes.spawn(async move {
                let _ = jobs.send(job).await;
            });
        }
    }

    fn sync_job(&mut self, community: CommunityId, job: impl FnOnce(i64) -> SyncJob) {
        let row = self
            .registry
            .as_ref()
            .and_then(|r| r.definition(&community))
            .map(|(_, row)| row);
        match row {
            Some(row) => {
                if self.sync_jobs.try_send(job(row)).is_err() {
                    self.dropped.bump(DropReason::SyncQueueFull);
                }
            }
            None => self.dropped.bump(DropReason::NoPlugin),
        }
    }

    /// Publishes global times and candidate lists to the community threads.
    fn refresh(&mut self) {
        self.last_refresh = tokio::time::Instant::now();
        let now = self.clock.now();
        self.creating.retain(|_, reply| !reply.is_closed());
        self.durable.retain(|_, (_, reply)| !reply.is_closed());
        while self.writes.try_join_next().is_some() {}
        let Some(registry) = &self.registry else {
            return;
        };
        for (id, worker) in registry.workers() {
            if let Some(community) = self.node.community(&id) {
                worker
                    .shared
                    .global_time
                    .store(community.global_time, Ordering::Relaxed);
                *lock(&worker.shared.candidates) = plugin::candidate_infos(community, now);
            }
        }
    }

    fn node_info(&self, now: CoreInstant) -> NodeInfo {
        let stats = self.node.stats();
        let mut dropped: HashMap<&'static str, u64> = stats.dropped.iter().collect();
        for (name, n) in self.dropped.iter() {
            *dropped.entry(name).or_default() += n;
        }
        NodeInfo {
            member: self.node.key().public().to_hex(),
            mid: self.node.key().member_id().to_hex(),
            udp: self.udp,
            lan: self.node.lan_address(),
            wan: self.node.wan_address(),
            connection_type: self.node.connection_type().as_str(),
            tracker: self.node.config().tracker,
            uptime_ms: now.as_millis(),
            communities: self.node.communities().count(),
            sessions: self.node.session_count(),
            stats: NodeStats {
                datagrams_received: stats.datagrams_received,
                bytes_received: stats.bytes_received,
                datagrams_sent: stats.datagrams_sent,
                bytes_sent: stats.bytes_sent,
                packets: stats.packets.iter().collect(),
                dropped,
            },
        }
    }

    fn communities(&self, now: CoreInstant) -> Vec<CommunityInfo> {
        let mut out: Vec<CommunityInfo> = self
            .node
            .communities()
            .map(|c| {
                let config = c.candidates.config();
                let mut candidates = HashMap::from([("walk", 0), ("stumble", 0), ("intro", 0)]);
                for candidate in c.candidates.iter() {
                    let category = candidate.category(now, config);
                    if category != dispersy_core::candidate::Category::None {
                        *candidates.entry(category.as_str()).or_default() += 1;
                    }
                }
                CommunityInfo {
                    id: c.id.to_hex(),
                    name: c.definition.as_ref().map(|d| d.name.clone()),
                    version: c.definition.as_ref().map(|d| d.version.clone()),
                    global_time: c.global_time,
                    candidates,
                    stats: CommunityStatsView(c.stats.clone()),
                    unreadable: c
                        .stats
                        .unreadable
                        .kinds()
                        .iter()
                        .map(|k| UnreadableView {
                            meta: k.meta,
                            meta_name: c
                                .definition
                                .as_ref()
                                .and_then(|d| d.meta_by_id(k.meta))
                                .map(|m| m.name.clone()),
                            conversion: hex::encode(&k.conversion),
                            count: k.count,
                            first_seen_ms: k.first_seen.as_millis(),
                        })
                        .collect(),
                    unreadable_others: c.stats.unreadable.others,
                    destroyed: c.destroyed.as_ref().map(|d| DestroyedView {
                        degree: d.degree_name(),
                        global_time: d.global_time,
                        author: d.author.to_hex(),
                    }),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn candidates(&self, id: CommunityId, now: CoreInstant) -> Option<Vec<CandidateView>> {
        let community = self.node.community(&id)?;
        let config = community.candidates.config();
        let mut out: Vec<CandidateView> = community
            .candidates
            .iter()
            .map(|c| {
                let category = c.category(now, config);
                CandidateView {
                    address: c.address,
                    lan: c.lan,
                    wan: c.wan,
                    member: c.member.map(|m| m.to_hex()),
                    category: category.as_str(),
                    verified: c.is_verified(now, config),
                    connection_type: c.connection_type.as_str(),
                    global_time: c.global_time,
                    last_seen_ms: c
                        .last_seen()
                        .map(|t| now.saturating_since(t).as_millis() as u64),
                }
            })
            .collect();
        out.sort_by_key(|c| c.address);
        Some(out)
    }
}
