//! The admin HTTP API (SPEC.md §8), on the signaling listener.
//!
//! - `GET /api/rooms`, `GET /api/rooms/{id}`, `DELETE /api/rooms/{id}` (kick: byes, then close 4001).
//! - `GET /index/api/listWebrtcRooms?secret=…`: ZLMediaKit's shape, `{"code":0,"data":[…]}`, for existing dashboards.
//! - `GET`/`PUT /api/log-level`: read or change the log filter at runtime.
//!
//! Every endpoint requires the admin secret (`Authorization: Bearer …` or `?secret=…`), compared in constant time.
//! Without a configured secret the API is off (403): there is no default password.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::http::AppState;
use crate::hub::HubUnavailable;

/// Changes the process's log filter; returns the error text for a filter it cannot parse.
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Admin settings.
#[derive(Default)]
pub struct Admin {
    /// The shared secret; `None` disables the API.
    pub secret: Option<String>,
    /// Runtime log control, when the binary installed one.
    pub log: Option<LogControl>,
    /// The filter currently in effect, for `GET /api/log-level`.
    pub log_filter: parking_lot::Mutex<String>,
}

pub fn routes(state: AppState) -> Router<AppState> {
    let api = Router::new()
        .route("/api/rooms", get(list_rooms))
        .route("/api/rooms/{id}", get(one_room).delete(kick_room))
        .route("/api/log-level", get(get_log_level).put(put_log_level))
        .route_layer(middleware::from_fn_with_state(state, require_secret));
    api.route("/index/api/listWebrtcRooms", get(zlm_list_rooms))
}

/// Every `/api/…` route sits behind this check.
async fn require_secret(
    State(app): State<AppState>,
    Query(q): Query<SecretQuery>,
    req: Request,
    next: Next,
) -> Response {
    match authorize(&app, req.headers(), &q) {
        Ok(()) => next.run(req).await,
        Err(refusal) => *refusal,
    }
}

#[derive(Deserialize)]
struct SecretQuery {
    secret: Option<String>,
}

/// `Err` is the response to send instead.
fn authorize(app: &AppState, headers: &HeaderMap, query: &SecretQuery) -> Result<(), Box<Response>> {
    let Some(expected) = app.admin.secret.as_deref() else {
        let body = json!({"error": "admin API disabled: set admin.secret (SWITCHBOARD_ADMIN_SECRET)"});
        return Err(Box::new((StatusCode::FORBIDDEN, Json(body)).into_response()));
    };
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer.or(query.secret.as_deref()).unwrap_or_default();
    if constant_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(Box::new((StatusCode::UNAUTHORIZED, Json(json!({"error": "admin secret required"}))).into_response()))
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn list_rooms(State(app): State<AppState>) -> Response {
    match app.hub.rooms().await {
        Ok(rooms) => Json(rooms).into_response(),
        Err(e) => unavailable(&e),
    }
}

async fn one_room(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app.hub.room(&id).await {
        Ok(Some(room)) => Json(room).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({"error": format!("room {id:?} not found")}))).into_response(),
        Err(e) => unavailable(&e),
    }
}

async fn kick_room(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app.hub.kick(&id).await {
        Ok(true) => {
            tracing::info!(room = %id, "room holder kicked by the admin API");
            Json(json!({"kicked": id})).into_response()
        }
        Ok(false) => (StatusCode::NOT_FOUND, Json(json!({"error": format!("room {id:?} not found")}))).into_response(),
        Err(e) => unavailable(&e),
    }
}

/// The cluster could not answer: 503, so that a retry (or another node) is the obvious next step.
fn unavailable(e: &HubUnavailable) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e.to_string()}))).into_response()
}

async fn get_log_level(State(app): State<AppState>) -> Response {
    Json(json!({"filter": app.admin.log_filter.lock().clone()})).into_response()
}

async fn put_log_level(State(app): State<AppState>, body: String) -> Response {
    let Some(control) = &app.admin.log else {
        return (StatusCode::NOT_IMPLEMENTED, Json(json!({"error": "no runtime log control in this process"})))
            .into_response();
    };
    let filter = body.trim();
    match control(filter) {
        Ok(()) => {
            *app.admin.log_filter.lock() = filter.to_owned();
            tracing::info!(filter, "log filter changed by the admin API");
            Json(json!({"filter": filter})).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response(),
    }
}

async fn zlm_list_rooms(State(app): State<AppState>, headers: HeaderMap, Query(q): Query<SecretQuery>) -> Response {
    if authorize(&app, &headers, &q).is_err() {
        // ZLMediaKit answers HTTP 200 with a negative code.
        return Json(json!({"code": -100, "msg": "secret is incorrect"})).into_response();
    }
    match app.hub.rooms().await {
        Ok(rooms) => Json(json!({"code": 0, "data": rooms})).into_response(),
        Err(e) => Json(json!({"code": -500, "msg": e.to_string()})).into_response(),
    }
}
