//! An async client for switchboard and ZLMediaKit signaling servers.
//!
//! [`Client::connect`] returns a cheap-to-clone [`Client`] handle and a stream of [`Event`]s; a driver task owns the
//! websocket. Requests (`register`, `unregister`, `call`) are matched to their answer by `transaction_id` and time out
//! after [`ClientConfig::request_timeout`] (10 s, as ZLMediaKit). With reconnection on, a dropped connection is
//! re-established with exponential backoff and the room registered again. With ephemeral TURN credentials
//! (`ice_servers_expire`, SPEC.md §4.6) the client fetches fresh ones at 80 % of their lifetime, and again after each
//! reconnect; [`Client::ice_servers`] always returns the freshest. A server that rejects or ignores the request
//! (ZLMediaKit) is left alone from then on, and the servers of the register accept stay in use.
//!
//! Messages carry exactly the fields SPEC.md lists (candidates without the `candidate:` prefix, the sender's ICE
//! `ufrag`/`pwd`), so the same code talks to a ZLMediaKit server.

mod driver;
mod error;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use switchboard_proto::{Envelope, IceServer};
use tokio::sync::{mpsc, oneshot};

pub use error::ClientError;

/// How to reach the server and behave on trouble.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `ws://host:port/signaling` or `wss://…`.
    pub url: String,
    /// How long a request waits for its answer.
    pub request_timeout: Duration,
    /// Reconnect (and re-register) after the connection drops; `None` ends the client instead.
    pub reconnect: Option<Backoff>,
    /// TLS settings for `wss://` (custom roots, e.g. a test CA); `None` uses the webpki roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            request_timeout: Duration::from_secs(10),
            reconnect: Some(Backoff::default()),
            tls: None,
        }
    }
}

/// Exponential reconnect backoff.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(10) }
    }
}

/// A successful registration (or an `ice_servers` refresh of one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    pub room_id: String,
    pub ice_servers: Vec<IceServer>,
    /// When the credentials of `ice_servers` expire (unix seconds), if the server says (SPEC.md §4.6).
    pub ice_servers_expire: Option<u64>,
}

/// What a caller asks for.
#[derive(Clone, Debug)]
pub struct CallRequest {
    pub guest_id: String,
    /// The callee's room.
    pub room_id: String,
    /// `play` or `push`.
    pub call_type: String,
    pub vhost: String,
    pub app: String,
    pub stream: String,
    /// The SDP offer.
    pub sdp: String,
}

/// A call that reached our room: the caller's request (its `sdp` is the offer) and the transaction to answer.
#[derive(Clone, Debug)]
pub struct IncomingCall {
    pub transaction_id: String,
    pub request: CallRequest,
}

/// A trickled ICE candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub guest_id: String,
    pub room_id: String,
    /// The candidate attribute value **without** the `candidate:` prefix.
    pub candidate: String,
    pub ufrag: String,
    pub pwd: String,
}

/// Something the server told us without being asked.
#[derive(Clone, Debug)]
pub enum Event {
    IncomingCall(IncomingCall),
    Candidate(Candidate),
    Bye {
        guest_id: String,
        room_id: String,
        reason: Option<String>,
    },
    /// The connection dropped; pending requests failed with [`ClientError::Disconnected`].
    Disconnected,
    /// Connected again; `room_id` is the room registered again, if one was held.
    Reconnected {
        room_id: Option<String>,
    },
    /// The client fetched fresh ICE servers on its own, ahead of `ice_servers_expire` (SPEC.md §4.6);
    /// [`Client::ice_servers`] returns them from now on.
    IceServers(Registered),
    /// The client gave up (reconnection off, or shut down).
    Closed,
}

/// Converts the protocol's candidate value to the browser/webrtc form (`candidate:` prefix added).
pub fn candidate_to_sdp(value: &str) -> String {
    if value.starts_with("candidate:") {
        value.to_owned()
    } else {
        format!("candidate:{value}")
    }
}

/// Converts a browser/webrtc candidate to the protocol's form (`candidate:` prefix removed).
pub fn candidate_from_sdp(value: &str) -> String {
    value.strip_prefix("a=").unwrap_or(value).strip_prefix("candidate:").unwrap_or(value).to_owned()
}

/// 32 random alphanumerics, as ZLMediaKit's clients use for transaction ids.
pub fn random_id(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

pub(crate) fn registered(accept: Envelope) -> Registered {
    Registered {
        room_id: accept.room_id.unwrap_or_default(),
        ice_servers: accept.ice_servers.unwrap_or_default(),
        ice_servers_expire: accept.ice_servers_expire,
    }
}

pub(crate) enum Command {
    /// Send a request and deliver its answer.
    Request { msg: Envelope, reply: oneshot::Sender<Result<Envelope, ClientError>> },
    /// Send without waiting for anything.
    Send(Envelope),
    /// Close the connection and stop.
    Shutdown,
}

/// A handle to a connected client. Cheap to clone; the connection closes when every handle is dropped.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    timeout: Duration,
    /// The freshest `ice_servers` any accept carried (the driver writes, handles read).
    ice: Arc<Mutex<Vec<IceServer>>>,
}

impl Client {
    /// Connects (the first attempt must succeed) and starts the driver task.
    pub async fn connect(config: ClientConfig) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        let ws = driver::open(&config).await?;
        let (commands, command_rx) = mpsc::channel(256);
        let (events_tx, events) = mpsc::channel(1024);
        let timeout = config.request_timeout;
        let ice = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(driver::run(config, ws, command_rx, events_tx, ice.clone()));
        Ok((Client { commands, timeout, ice }, events))
    }

    async fn request(&self, msg: Envelope) -> Result<Envelope, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Request { msg, reply }).await.map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Err(_) => Err(ClientError::Timeout(self.timeout)),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(result)) => result,
        }
    }

    async fn send(&self, msg: Envelope) -> Result<(), ClientError> {
        self.commands.send(Command::Send(msg)).await.map_err(|_| ClientError::Closed)
    }

    /// Registers `room_id` (or asks the server to assign one).
    pub async fn register(&self, room_id: Option<&str>) -> Result<Registered, ClientError> {
        let mut msg = Envelope::new("request", "register", random_id(32));
        msg.room_id = room_id.map(str::to_owned);
        Ok(registered(self.request(msg).await?))
    }

    /// Asks for fresh credentials for the registered room (SPEC.md §4.6). The client does this on its own before
    /// `ice_servers_expire`; a server without the extension rejects it or (ZLMediaKit) never answers.
    pub async fn refresh_ice_servers(&self) -> Result<Registered, ClientError> {
        Ok(registered(self.request(Envelope::new("request", "ice_servers", random_id(32))).await?))
    }

    /// The freshest ICE servers: those of the last register or refresh accept. Use them for every new call.
    pub fn ice_servers(&self) -> Vec<IceServer> {
        self.ice.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Gives up the room.
    pub async fn unregister(&self, room_id: &str) -> Result<(), ClientError> {
        let mut msg = Envelope::new("request", "unregister", random_id(32));
        msg.room_id = Some(room_id.to_owned());
        self.request(msg).await.map(drop)
    }

    /// Calls a room and waits for the callee's SDP answer.
    pub async fn call(&self, call: CallRequest) -> Result<String, ClientError> {
        let mut msg = Envelope::new("request", "call", random_id(32));
        msg.guest_id = Some(call.guest_id);
        msg.room_id = Some(call.room_id);
        msg.call_type = Some(call.call_type);
        msg.vhost = Some(call.vhost);
        msg.app = Some(call.app);
        msg.stream = Some(call.stream);
        msg.sdp = Some(call.sdp);
        let accept = self.request(msg).await?;
        Ok(accept.sdp.unwrap_or_default())
    }

    fn answer_envelope(call: &IncomingCall, class: &str) -> Envelope {
        let mut msg = Envelope::new(class, "call", call.transaction_id.clone());
        let r = &call.request;
        msg.guest_id = Some(r.guest_id.clone());
        msg.room_id = Some(r.room_id.clone());
        msg.call_type = Some(r.call_type.clone());
        msg.vhost = Some(r.vhost.clone());
        msg.app = Some(r.app.clone());
        msg.stream = Some(r.stream.clone());
        msg
    }

    /// Accepts an incoming call with an SDP answer.
    pub async fn accept(&self, call: &IncomingCall, sdp: String) -> Result<(), ClientError> {
        let mut msg = Self::answer_envelope(call, "accept");
        msg.sdp = Some(sdp);
        self.send(msg).await
    }

    /// Refuses an incoming call.
    pub async fn reject(&self, call: &IncomingCall, reason: &str) -> Result<(), ClientError> {
        let mut msg = Self::answer_envelope(call, "reject");
        msg.reason = Some(reason.to_owned());
        self.send(msg).await
    }

    /// Trickles one local candidate (`candidate` with or without the `candidate:` prefix).
    pub async fn candidate(&self, c: Candidate) -> Result<(), ClientError> {
        let mut msg = Envelope::new("indication", "candidate", random_id(32));
        msg.guest_id = Some(c.guest_id);
        msg.room_id = Some(c.room_id);
        msg.candidate = Some(candidate_from_sdp(&c.candidate));
        msg.ufrag = Some(c.ufrag);
        msg.pwd = Some(c.pwd);
        self.send(msg).await
    }

    /// Ends a call.
    pub async fn bye(&self, guest_id: &str, room_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        let mut msg = Envelope::new("indication", "bye", random_id(32));
        msg.guest_id = Some(guest_id.to_owned());
        msg.room_id = Some(room_id.to_owned());
        msg.reason = reason.map(str::to_owned);
        self.send(msg).await
    }

    /// Closes the connection; the event stream ends with [`Event::Closed`].
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_prefix_conversion() {
        let line = "7e0de214 1 udp 2113955071 192.168.1.1 46411 typ host";
        assert_eq!(candidate_to_sdp(line), format!("candidate:{line}"));
        assert_eq!(candidate_from_sdp(&format!("candidate:{line}")), line);
        assert_eq!(candidate_from_sdp(&format!("a=candidate:{line}")), line);
        assert_eq!(candidate_from_sdp(line), line);
        assert_eq!(candidate_to_sdp(&candidate_to_sdp(line)), format!("candidate:{line}"));
    }
}
