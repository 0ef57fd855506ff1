//! The HTTP side of the signaling listener.
//!
//! A request that carries a websocket upgrade is a signaling connection whatever its path (SPEC.md §1, as ZLMediaKit
//! does), so upgrades are taken before routing. Plain requests reach `/livez`, `/readyz` or a 404.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::LimitsConfig;
use crate::config::SignalingConfig;
use crate::hub::Hub;
use crate::limits::{ConnectionLimits, Refused};
use crate::metrics::Metrics;
use crate::session;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<dyn Hub>,
    pub config: Arc<SignalingConfig>,
    /// Cancelled when graceful shutdown begins.
    pub shutdown: CancellationToken,
    /// Tracks every websocket session, which axum itself does not (tokio-rs/axum#3003).
    pub sessions: TaskTracker,
    pub metrics: Arc<Metrics>,
    /// The admin API's settings (secret, log control).
    pub admin: Arc<crate::admin::Admin>,
    /// Token checks.
    pub auth: Arc<Auth>,
    pub limits: Arc<LimitsConfig>,
    pub connections: Arc<ConnectionLimits>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::admin::routes(state.clone()))
        .merge(crate::web::routes())
        .layer(middleware::from_fn_with_state(state.clone(), take_upgrades))
        .with_state(state)
}

async fn metrics(State(app): State<AppState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], app.metrics.render()).into_response()
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

/// The signaling token: `?token=` (browsers cannot set websocket headers) or `Authorization: Bearer`.
fn token(parts: &axum::http::request::Parts) -> Option<String> {
    let from_query = parts.uri.query().and_then(|q| {
        q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(|t| t.replace("%2E", ".").replace("%2e", "."))
    });
    from_query.or_else(|| {
        parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
    })
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn take_upgrades(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if !is_websocket_upgrade(req.headers()) {
        return next.run(req).await;
    }
    let (mut parts, _body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &app).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let slot = match app.connections.acquire(peer.ip()) {
        Ok(slot) => slot,
        Err(Refused::Total) => return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response(),
        Err(Refused::PerIp) => {
            return (StatusCode::TOO_MANY_REQUESTS, "too many connections from this address\n").into_response()
        }
    };
    let access = app.auth.access(peer.ip(), token(&parts).as_deref());
    let c = &app.config;
    upgrade
        .read_buffer_size(c.read_buffer_size)
        .write_buffer_size(64 * 1024)
        .max_message_size(c.max_message_size)
        .max_frame_size(c.max_message_size)
        .on_upgrade(move |ws| {
            let sessions = app.sessions.clone();
            sessions.track_future(session::run(ws, peer, app, access, slot))
        })
}
