//! The permission timeline through the control API: `GET /v1/communities/{id}/timeline` shows
//! it; `POST .../authorize`, `.../revoke`, `.../settings` and `.../destroy` create the
//! permission messages of this node's member ([`dispersy_core::node::Node::create_authority`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dispersy_core::authority::{Body, Degree, MemberRef, Target};
use dispersy_core::community::Definition;
use dispersy_core::identity::{CommunityId, MemberId, PublicKey};
use dispersy_core::meta::{Resolution, StaticResolution};
use dispersy_core::node::{AuthorityError, CreateError, TimelineView};
use dispersy_core::timeline::Permission;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Shared, ask, community_id, rejected};
use crate::command::Command;

/// `{"member": KEY_OR_ID_HEX, "grants": [{"meta": NAME, "permission": NAME}, ...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantRequest {
    member: String,
    grants: Vec<GrantItem>,
}

/// One `{"meta": NAME, "permission": NAME}` of a [`GrantRequest`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantItem {
    meta: String,
    permission: String,
}

/// `{"meta": NAME, "policy": "public"|"linear"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SettingsRequest {
    meta: String,
    policy: String,
}

/// `{"degree": "hard"|"soft"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DestroyRequest {
    degree: String,
}

/// `GET /v1/communities/{id}/timeline`: the timeline as [`timeline_json`] shows it.
pub(super) async fn timeline(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let community = community_id(&id)?;
    let view = ask(&shared, |reply| Command::Timeline { community, reply })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown community {community}")))?;
    Ok(Json(timeline_json(&view)))
}

/// `POST /v1/communities/{id}/authorize`.
pub(super) async fn authorize(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<GrantRequest>, JsonRejection>,
) -> ApiResult<Response> {
    grant(shared, id, body, false).await
}

/// `POST /v1/communities/{id}/revoke`.
pub(super) async fn revoke(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<GrantRequest>, JsonRejection>,
) -> ApiResult<Response> {
    grant(shared, id, body, true).await
}

/// `POST /v1/communities/{id}/settings`.
pub(super) async fn settings(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<SettingsRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let community = community_id(&id)?;
    let Json(request) = body.map_err(rejected)?;
    let definition = definition(&shared, community)?;
    let meta = definition
        .meta_by_name(&request.meta)
        .ok_or_else(|| unknown_meta(&definition, &request.meta))?;
    let Resolution::Dynamic(listed) = &meta.resolution else {
        return Err(ApiError::bad_request(format!(
            "meta-message {:?} is not of dynamic resolution",
            meta.name
        )));
    };
    let policy = match request.policy.as_str() {
        "public" => StaticResolution::Public,
        "linear" => StaticResolution::Linear,
        other => {
            return Err(ApiError::bad_request(format!(
                "policy {other:?} is not public or linear"
            )));
        }
    };
    let index = listed
        .iter()
        .position(|p| *p == policy)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "meta-message {:?} does not list policy {}",
                meta.name, request.policy
            ))
        })?;
    let body = Body::DynamicSettings {
        meta: meta.id,
        index,
    };
    create(&shared, community, body).await
}

/// `POST /v1/communities/{id}/destroy`: a destroy-community of this node's member (it needs
/// `permit` on `destroy-community`): 201 with its global time (`sequence_number` 0: it carries
/// none), 403 without the permit, 409 when the community is destroyed already (a soft-destroyed
/// one takes a hard destroy), 400 a degree other than `hard` or `soft`.
pub(super) async fn destroy(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<DestroyRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let community = community_id(&id)?;
    let Json(request) = body.map_err(rejected)?;
    let degree = match request.degree.as_str() {
        "hard" => Degree::Hard,
        "soft" => Degree::Soft,
        other => {
            return Err(ApiError::bad_request(format!(
                "degree {other:?} is not hard or soft"
            )));
        }
    };
    create(&shared, community, Body::Destroy(degree)).await
}

/// An authorize or (`revoke`) a revoke from its request.
async fn grant(
    shared: Arc<Shared>,
    id: String,
    body: Result<Json<GrantRequest>, JsonRejection>,
    revoke: bool,
) -> ApiResult<Response> {
    let community = community_id(&id)?;
    let Json(request) = body.map_err(rejected)?;
    let definition = definition(&shared, community)?;
    let member = member_ref(&request.member)?;
    if request.grants.is_empty() {
        return Err(ApiError::bad_request("name at least one grant"));
    }
    let mut grants = Vec::with_capacity(request.grants.len());
    for item in &request.grants {
        let subject = definition
            .subject_by_name(&item.meta)
            .ok_or_else(|| unknown_meta(&definition, &item.meta))?;
        let permission = Permission::from_name(&item.permission).ok_or_else(|| {
            ApiError::bad_request(format!(
                "permission {:?} is not permit, authorize, revoke or undo",
                item.permission
            ))
        })?;
        grants.push((subject, permission));
    }
    let targets = vec![Target { member, grants }];
    let body = if revoke {
        Body::Revoke(targets)
    } else {
        Body::Authorize(targets)
    };
    create(&shared, community, body).await
}

/// Asks the protocol task to create `body`; 201 with its global time, sequence number and
/// record id.
async fn create(shared: &Shared, community: CommunityId, body: Body) -> ApiResult<Response> {
    let created = ask(shared, |reply| Command::Authority {
        community,
        body,
        reply,
    })
    .await?
    .map_err(|e| match e {
        AuthorityError::NotJoined(_) => ApiError::not_found(e.to_string()),
        AuthorityError::NotPermitted { .. } => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        AuthorityError::Destroyed(_) | AuthorityError::Publish(CreateError::Destroyed(_)) => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        AuthorityError::Publish(CreateError::TooLarge { .. }) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        _ => ApiError::bad_request(e.to_string()),
    })?;

    Ok((
        StatusCode::CREATED,
        Json(json!({
            "global_time": created.global_time,
            "sequence_number": created.sequence_number,
            "record": created.record.to_string(),
            "sent_to": created.sent_to,
        })),
    )
        .into_response())
}

/// The definition of joined `community`, or 404.
fn definition(shared: &Shared, community: CommunityId) -> ApiResult<Definition> {
    shared
        .registry
        .as_ref()
        .and_then(|registry| registry.definition(&community))
        .map(|(definition, _)| definition)
        .ok_or_else(|| ApiError::not_found(format!("unknown community {community}")))
}

/// A member named by its 66-hex key or its 40-hex id.
fn member_ref(text: &str) -> ApiResult<MemberRef> {
    match text.len() {
        66 => PublicKey::from_hex(text)
            .map(MemberRef::from_key)
            .map_err(|e| ApiError::bad_request(format!("member {text:?}: {e}"))),
        40 => MemberId::from_hex(text)
            .map(MemberRef::from_id)
            .map_err(|e| ApiError::bad_request(format!("member {text:?}: {e}"))),
        _ => Err(ApiError::bad_request(format!(
            "member {text:?} is neither a 66-hex public key nor a 40-hex member id"
        ))),
    }
}

fn unknown_meta(definition: &Definition, name: &str) -> ApiError {
    let names: Vec<&str> = definition.metas.iter().map(|m| m.name.as_str()).collect();
    ApiError::bad_request(format!(
        "community {} has no meta-message {name:?} (it has: {}; and dynamic-settings, destroy-community)",
        definition.name,
        names.join(", ")
    ))
}

/// The timeline as JSON: `master`, `global_time`, `records` (id, author, global_time, kind,
/// valid, grants or setting), `holdings` (member, meta, permission, since, proof) and
/// `policies` (meta, policy, since, proof); ids in hex.
pub(crate) fn timeline_json(view: &TimelineView) -> Value {
    let ids = |ids: &[dispersy_core::timeline::RecordId]| -> Vec<String> {
        ids.iter().map(ToString::to_string).collect()
    };
    let records: Vec<Value> = view
        .records
        .iter()
        .map(|r| {
            let grants: Vec<Value> = r
                .grants
                .iter()
                .map(|g| {
                    json!({
                        "member": g.member.to_hex(),
                        "meta": g.subject,
                        "permission": g.permission.name(),
                    })
                })
                .collect();
            let setting = r
                .setting
                .as_ref()
                .map(|(meta, policy)| json!({ "meta": meta, "policy": policy_name(*policy) }));
            json!({
                "id": r.id.to_string(),
                "author": r.author.to_hex(),
                "global_time": r.global_time,
                "kind": r.kind,
                "valid": r.valid,
                "grants": grants,
                "setting": setting,
            })
        })
        .collect();
    let holdings: Vec<Value> = view
        .holdings
        .iter()
        .map(|h| {
            json!({
                "member": h.member.to_hex(),
                "meta": h.subject,
                "permission": h.permission.name(),
                "since": h.since,
                "proof": ids(&h.proof),
            })
        })
        .collect();
    let policies: Vec<Value> = view
        .policies
        .iter()
        .map(|p| {
            json!({
                "meta": p.meta,
                "policy": policy_name(p.policy),
                "since": p.since,
                "proof": ids(&p.proof),
            })
        })
        .collect();
    json!({
        "master": view.master.to_hex(),
        "global_time": view.global_time,
        "records": records,
        "holdings": holdings,
        "policies": policies,
    })
}

fn policy_name(policy: StaticResolution) -> &'static str {
    match policy {
        StaticResolution::Public => "public",
        StaticResolution::Linear => "linear",
    }
}
