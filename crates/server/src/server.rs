//! Binding the listeners and running until shutdown.
//!
//! Shutdown order (SPEC.md §6): stop accepting, tell the hub to send no more byes, close every session with 1001,
//! then wait for the sessions — at most `shutdown-grace` — before returning.

use std::net::SocketAddr;
use std::sync::Arc;

use std::future::Future;

use axum::serve::{Listener, ListenerExt};

use rand::distr::SampleString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{Admin, LogControl};
use crate::auth::Auth;
use crate::cluster::{BackboneError, ClusterHub, ClusterTiming, MemoryBackbone, RedisBackbone};
use crate::config::{Config, ConfigError};
use crate::http::{router, AppState};
use crate::hub::{CallLimits, Hub, HubSettings, MemoryHub};
use crate::ice::{detect_external_ip, turn_credentials, IceServers};
use crate::limits::ConnectionLimits;
use crate::memnet::{self, MemoryConnector, MemoryListener};
use crate::metrics::Metrics;
use crate::tls::{self, TlsListener};
use crate::turn::{engine_config, TurnError, TurnServer};

/// Failures of the server itself (not of one session).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind signaling listener {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("signaling listener failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Turn(#[from] TurnError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cluster: {0}")]
    Cluster(#[from] BackboneError),
}

/// Which backbone a cluster node uses: Redis from the config, or an in-process one (tests, embedding).
enum Backing {
    FromConfig,
    Memory(MemoryBackbone),
}

/// Whether the built-in STUN/TURN server runs, and the certificate of its `turns:` listener.
enum BuiltInTurn {
    Off,
    On { certificate: Option<Arc<rustls::ServerConfig>> },
}

/// Where connections come from.
enum Listening {
    Tcp(TcpListener),
    Memory(MemoryListener),
}

/// A server whose listeners are bound; [`Server::run`] serves until shutdown.
pub struct Server {
    listener: Listening,
    local_addr: SocketAddr,
    state: AppState,
    grace: std::time::Duration,
    /// Cancelled by whoever wants the server to stop; sessions are told only after the hub is.
    trigger: CancellationToken,
    /// The built-in STUN/TURN server (absent for in-memory servers).
    turn: Option<TurnServer>,
    /// The TURN server's tasks.
    turn_tasks: TaskTracker,
    /// The wss/https listener, when TLS is configured.
    tls: Option<TlsListener>,
}

impl Server {
    /// Validates `config` and binds every listener. Bound addresses are logged (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let addr = config.signaling.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        info!(addr = %local_addr, "signaling listening");
        let certificate = tls_server_config(&config)?;
        let tls = match &certificate {
            Some(c) => Some(bind_tls(&config, c.clone()).await?),
            None => None,
        };
        let listening = Listening::Tcp(listener);
        let turn = BuiltInTurn::On { certificate };
        let mut server = Server::new(config, listening, local_addr, turn, Backing::FromConfig).await?;
        server.tls = tls;
        Ok(server)
    }

    /// Like [`Server::bind`], as a node of the in-process cluster `backbone` belongs to (`cluster.url` is ignored;
    /// `cluster.heartbeat` applies).
    pub async fn bind_in_cluster(config: Config, backbone: MemoryBackbone) -> Result<Server, ServerError> {
        config.validate()?;
        let addr = config.signaling.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        Server::new(config, Listening::Tcp(listener), local_addr, BuiltInTurn::Off, Backing::Memory(backbone)).await
    }

    /// The bound wss/https address, when TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|t| axum::serve::Listener::local_addr(t).ok())
    }

    /// Like [`Server::bind`], but connections are in-memory pipes opened with the returned connector
    /// (see [`crate::memnet`]); `signaling.listen` is ignored and no STUN/TURN listener runs.
    pub async fn in_memory(config: Config) -> Result<(Server, MemoryConnector), ServerError> {
        config.validate()?;
        let (listener, connector) = memnet::pair();
        let local = SocketAddr::from(([0, 0, 0, 0], 0));
        Ok((
            Server::new(config, Listening::Memory(listener), local, BuiltInTurn::Off, Backing::FromConfig).await?,
            connector,
        ))
    }

    /// Like [`Server::in_memory`], as a node of the in-process cluster `backbone` belongs to.
    pub async fn in_memory_in_cluster(
        config: Config,
        backbone: MemoryBackbone,
    ) -> Result<(Server, MemoryConnector), ServerError> {
        config.validate()?;
        let (listener, connector) = memnet::pair();
        let local = SocketAddr::from(([0, 0, 0, 0], 0));
        let backing = Backing::Memory(backbone);
        Ok((Server::new(config, Listening::Memory(listener), local, BuiltInTurn::Off, backing).await?, connector))
    }

    async fn new(
        config: Config,
        listener: Listening,
        local_addr: SocketAddr,
        turn: BuiltInTurn,
        backing: Backing,
    ) -> Result<Server, ServerError> {
        let external_ips = match config.turn.external_ips.as_slice() {
            [] => vec![detect_external_ip()],
            ips => ips.to_vec(),
        };
        let listen_ip = config.turn.listen.ip();
        let relay_ip = if listen_ip.is_unspecified() { external_ips[0] } else { listen_ip };
        let (credentials, generated) = turn_credentials(&config);
        if let Some(field) = generated {
            info!(field, "no TURN secret configured: generated a random one for this run (credentials will not survive a restart)");
        }
        let shutdown = CancellationToken::new();
        let turn_tasks = TaskTracker::new();
        let turn = match turn {
            BuiltInTurn::On { certificate } => {
                let engine = engine_config(&config.turn, credentials.clone(), relay_ip);
                let (tasks, stop) = (turn_tasks.clone(), shutdown.clone());
                Some(TurnServer::start(&config.turn, engine, relay_ip, certificate, tasks, stop).await?)
            }
            BuiltInTurn::Off => None,
        };
        let port =
            config.turn.port.or(turn.as_ref().map(|t| t.local_addr().port())).unwrap_or(config.turn.listen.port());
        let tls_port = turn.as_ref().and_then(TurnServer::tls_addr).map(|a| config.turn.tls_port.unwrap_or(a.port()));
        let ice = IceServers::new(&config, &external_ips, port, tls_port, &credentials);
        let mut metrics = Metrics::new();
        if let Some(t) = &turn {
            metrics.register_turn(t.clone());
        }
        let l = &config.limits;
        let call_limits = CallLimits { per_room: l.max_calls_per_room, per_caller: l.max_calls_per_caller };
        let settings = HubSettings { ice, call_timeout: config.signaling.call_timeout, call_limits };
        let hub = make_hub(&config, settings, metrics, backing)?;
        let metrics = hub.1;
        let hub = hub.0;
        let auth = Auth::new(
            Some(config.auth.secret.as_str()).filter(|s| !s.is_empty()),
            config.auth.anonymous_networks.clone(),
        );
        let admin = Admin {
            secret: Some(config.admin.secret.clone()).filter(|s| !s.is_empty()),
            log: None,
            log_filter: Default::default(),
        };
        let state = AppState {
            hub,
            config: Arc::new(config.signaling.clone()),
            shutdown,
            sessions: TaskTracker::new(),
            metrics,
            admin: Arc::new(admin),
            auth: Arc::new(auth),
            limits: Arc::new(config.limits.clone()),
            connections: Arc::new(ConnectionLimits::new(l.max_connections, l.max_connections_per_ip)),
        };
        let trigger = CancellationToken::new();
        Ok(Server {
            listener,
            local_addr,
            grace: config.signaling.shutdown_grace,
            state,
            trigger,
            turn,
            turn_tasks,
            tls: None,
        })
    }

    /// Lets `PUT /api/log-level` change the log filter; `current` is the filter in effect now.
    pub fn set_log_control(&mut self, control: LogControl, current: &str) {
        let admin = Admin {
            secret: self.state.admin.secret.clone(),
            log: Some(control),
            log_filter: parking_lot::Mutex::new(current.to_owned()),
        };
        self.state.admin = Arc::new(admin);
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// The built-in STUN/TURN server, when one runs.
    pub fn turn(&self) -> Option<&TurnServer> {
        self.turn.as_ref()
    }

    /// The bound signaling address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cancel this token to begin graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.trigger.clone()
    }

    /// Serves until the shutdown token is cancelled, then shuts down gracefully.
    pub async fn run(self) -> Result<(), ServerError> {
        let Server { listener, state, grace, trigger, turn_tasks, tls, .. } = self;
        let (hub, sessions_stop) = (state.hub.clone(), state.shutdown.clone());
        let tls_task = tls.map(|l| {
            let (state, stop) = (state.clone(), state.shutdown.clone());
            tokio::spawn(async move { serve(l, &state, stop.cancelled_owned()).await })
        });
        let stop_accepting = async move {
            trigger.cancelled().await;
            // The hub first, so that no session closing from here on can send a bye.
            hub.begin_shutdown();
            sessions_stop.cancel();
        };
        match listener {
            // On a runtime worker, not in whatever thread awaits `run` (often `block_on`'s): sessions spawned from
            // there start on the same worker instead of costing a cross-thread wake-up per connection.
            Listening::Tcp(l) => {
                let accept = crate::listener::serve(l, state.clone(), router(state.clone()), stop_accepting);
                tokio::spawn(accept).await.map_err(|e| ServerError::Serve(std::io::Error::other(e)))?
            }
            Listening::Memory(l) => serve(l, &state, stop_accepting).await?,
        }
        if let Some(t) = tls_task {
            t.await.map_err(|e| ServerError::Serve(std::io::Error::other(e)))??;
        }
        state.sessions.close();
        let open = state.sessions.len();
        info!(open, "shutting down: closing sessions");
        turn_tasks.close();
        let all = async { tokio::join!(state.sessions.wait(), turn_tasks.wait()) };
        if tokio::time::timeout(grace, all).await.is_err() {
            warn!(remaining = state.sessions.len(), "shutdown grace period over; dropping remaining sessions");
        }
        info!("shutdown complete");
        Ok(())
    }
}

/// The single-node hub, or in cluster mode a cluster hub over its backbone (joining in the background).
fn make_hub(
    config: &Config,
    settings: HubSettings,
    mut metrics: Metrics,
    backing: Backing,
) -> Result<(Arc<dyn Hub>, Arc<Metrics>), ServerError> {
    let c = &config.cluster;
    let timing = ClusterTiming { heartbeat: c.heartbeat, node_timeout: c.node_timeout };
    let backbone = match backing {
        Backing::FromConfig if !c.enabled() => {
            let metrics = Arc::new(metrics);
            let hub = MemoryHub::new(settings.ice, settings.call_timeout, settings.call_limits, metrics.clone());
            return Ok((Arc::new(hub), metrics));
        }
        Backing::FromConfig => {
            let node_id = if c.node_id.is_empty() {
                format!("node-{}", rand::distr::Alphanumeric.sample_string(&mut rand::rng(), 10).to_lowercase())
            } else {
                c.node_id.clone()
            };
            info!(node = %node_id, node_timeout = ?c.node_timeout, "cluster mode: joining the cluster (Redis backbone)");
            let mut backbone = RedisBackbone::new(&c.url, &c.prefix, &node_id, c.node_timeout)?;
            if let Some(path) = &c.tls_ca {
                let pem = std::fs::read(path)
                    .map_err(|e| BackboneError::Config(format!("cluster.tls-ca {}: {e}", path.display())))?;
                backbone = backbone.trusting(&c.url, pem)?;
            }
            let cluster = metrics.register_cluster();
            let metrics = Arc::new(metrics);
            let hub = ClusterHub::start(settings, metrics.clone(), cluster, Arc::new(backbone), timing);
            return Ok((Arc::new(hub), metrics));
        }
        Backing::Memory(backbone) => backbone,
    };
    let cluster = metrics.register_cluster();
    let metrics = Arc::new(metrics);
    let hub = ClusterHub::start(settings, metrics.clone(), cluster, Arc::new(backbone), timing);
    Ok((Arc::new(hub), metrics))
}

/// The certificate when TLS is configured (PEM files, or a generated self-signed one); wss and `turns:` share it.
fn tls_server_config(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, ServerError> {
    let t = &config.tls;
    Ok(Some(match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => tls::from_pem_files(cert, key)?,
        _ if t.dev_self_signed => {
            let dev = tls::self_signed(&config.turn.external_ips, config.turn.tls_host.as_deref())?;
            warn!(
                spki_sha256 = %dev.spki_sha256,
                "serving a self-signed development certificate: browsers will warn (Chromium trusts it with \
                 --ignore-certificate-errors-spki-list=<spki_sha256>); do not use in production"
            );
            dev.config
        }
        _ => return Ok(None),
    }))
}

/// Binds the wss/https listener.
async fn bind_tls(config: &Config, server_config: Arc<rustls::ServerConfig>) -> Result<TlsListener, ServerError> {
    let t = &config.tls;
    let addr = t.listen;
    let tcp = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
    let listener = TlsListener::new(tcp, server_config, config.signaling.send_buffer)
        .map_err(|source| ServerError::Bind { addr, source })?;
    info!(addr = %axum::serve::Listener::local_addr(&listener).unwrap_or(addr), "wss listening");
    Ok(listener)
}

/// Serves HTTP and websocket upgrades on `listener` until `stop` completes.
async fn serve<L>(
    listener: L,
    state: &AppState,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError>
where
    L: Listener<Addr = SocketAddr>,
{
    // `tap_io` gives any listener axum's `SocketAddr` connect info.
    let listener = listener.tap_io(|_| {});
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(stop).await.map_err(ServerError::Serve)
}
