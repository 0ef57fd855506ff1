//! The HTTP side of the signaling listener.
//!
//! A request that carries a websocket upgrade is a signaling connection whatever its path (SPEC.md §1, as ZLMediaKit
//! does), so upgrades are taken before routing. Plain requests reach `/livez`, `/readyz` or a 404.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Version};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Access, Auth};
use crate::config::LimitsConfig;
use crate::config::SignalingConfig;
use crate::hub::Hub;
use crate::limits::{ConnectionLimits, ConnectionSlot, Refused};
use crate::metrics::Metrics;
use crate::session;
use crate::ws::handshake;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<dyn Hub>,
    pub config: Arc<SignalingConfig>,
    /// Cancelled when graceful shutdown begins.
    pub shutdown: CancellationToken,
    /// Tracks every connection the server runs itself: websocket sessions (which axum would not track,
    /// tokio-rs/axum#3003) and plain-TCP HTTP connections.
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
    // Read here rather than kept up to date: tokio counts its tasks itself, and one read per scrape costs nothing.
    app.metrics.tasks.set(tokio::runtime::Handle::current().metrics().num_alive_tasks() as i64);
    ([(header::CONTENT_TYPE, content_type)], app.metrics.render()).into_response()
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if !app.hub.ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "cluster backbone unreachable\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

/// The admission checks every websocket upgrade passes, whichever path it came by: not shutting down, within the
/// connection limits; then the token is read into the session's access rights.
pub fn admit_upgrade(
    app: &AppState,
    peer: SocketAddr,
    token: Option<&str>,
) -> Result<(Access, ConnectionSlot), handshake::Refusal> {
    if app.shutdown.is_cancelled() {
        return Err(handshake::Refusal::ShuttingDown);
    }
    let slot = match app.connections.acquire(peer.ip()) {
        Ok(slot) => slot,
        Err(Refused::Total) => return Err(handshake::Refusal::TooManyConnections),
        Err(Refused::PerIp) => return Err(handshake::Refusal::TooManyFromAddress),
    };
    Ok((app.auth.access(peer.ip(), token), slot))
}

/// Websocket upgrades that reach the HTTP server (TLS, in-memory and keep-alive connections) become sessions over
/// the upgraded connection; plain TCP connections are upgraded before HTTP (see [`crate::listener`]).
async fn take_upgrades(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let headers = req.headers();
    let checked = handshake::check(
        req.method() == Method::GET,
        req.version() == Version::HTTP_11,
        |name| headers.get(name).map(|v| v.as_bytes()),
        req.uri().query(),
    );
    let upgrade = match checked {
        Ok(Some(upgrade)) => upgrade,
        Ok(None) => return next.run(req).await,
        Err(refusal) => return refusal_response(refusal),
    };
    let (access, slot) = match admit_upgrade(&app, peer, upgrade.token.as_deref()) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal_response(refusal),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let sessions = app.sessions.clone();
    sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => session::run_stream(TokioIo::new(upgraded), peer, app, access, slot).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&upgrade.accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

fn refusal_response(refusal: handshake::Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status().0).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, refusal.body()).into_response();
    for (name, value) in refusal.headers() {
        response.headers_mut().insert(*name, HeaderValue::from_static(value));
    }
    response
}
