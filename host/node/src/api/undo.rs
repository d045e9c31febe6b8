//! Undo through the control API: `POST /v1/communities/{id}/undo` makes this node's member
//! undo a stored message ([`dispersy_core::node::Node::create_undo`]): an undo-own of its own
//! message, an undo-other of another member's (which needs `undo` on the message's meta).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dispersy_core::identity::{MemberId, PublicKey};
use dispersy_core::node::{CreateError, UndoError};
use dispersy_core::undo::Target;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult, Shared, ask, community_id, rejected};
use crate::command::Command;

/// `{"member": KEY_OR_ID_HEX, "global_time": N}`: the message to undo.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UndoRequest {
    member: String,
    global_time: u64,
}

/// `POST /v1/communities/{id}/undo`: 201 `{"kind", "global_time", "sent_to", "existing":
/// false}` for a new undo, 200 with `"existing": true` (and the undo's global time) when this
/// member undid the message already; 404 for an unknown community or a message not stored,
/// 400 for a meta that is not undoable or a bad member, 403 when an undo-other lacks `undo`.
pub(super) async fn undo(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<UndoRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let community = community_id(&id)?;
    let Json(request) = body.map_err(rejected)?;
    let member = member_id(&request.member)?;
    let unknown = || ApiError::not_found(format!("unknown community {community}"));
    let row = shared
        .registry
        .as_ref()
        .and_then(|registry| registry.definition(&community))
        .map(|(_, row)| row)
        .ok_or_else(unknown)?;
    let store = shared
        .store
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this node stores nothing"))?;
    let meta = store
        .undo_targets(row, &[(member, request.global_time)])
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .first()
        .copied()
        .flatten();
    let target = Target {
        member,
        global_time: request.global_time,
    };
    let created = ask(&shared, |reply| Command::Undo {
        community,
        target,
        meta,
        reply: Some(reply),
    })
    .await?
    .map_err(|e| match e {
        UndoError::NotJoined(_) | UndoError::NotStored { .. } => ApiError::not_found(e.to_string()),
        UndoError::NotPermitted(_) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        UndoError::Publish(CreateError::TooLarge { .. }) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        _ => ApiError::bad_request(e.to_string()),
    })?;
    let status = if created.existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(json!({
            "kind": created.kind,
            "global_time": created.global_time,
            "existing": created.existing,
            "sent_to": created.sent_to,
        })),
    )
        .into_response())
}

/// A member named by its 66-hex key or its 40-hex id.
fn member_id(text: &str) -> ApiResult<MemberId> {
    match text.len() {
        66 => PublicKey::from_hex(text)
            .map(|key| key.member_id())
            .map_err(|e| ApiError::bad_request(format!("member {text:?}: {e}"))),
        40 => MemberId::from_hex(text)
            .map_err(|e| ApiError::bad_request(format!("member {text:?}: {e}"))),
        _ => Err(ApiError::bad_request(format!(
            "member {text:?} is neither a 66-hex public key nor a 40-hex member id"
        ))),
    }
}
