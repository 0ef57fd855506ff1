//! The backbone on Redis (redis-rs; why: docs/cluster.md). Layout: `{prefix}:node:{id}` holds a member's
//! incarnation with a TTL of the node timeout; `{prefix}:epoch` changes when Redis lost its data; the hash
//! `{prefix}:rooms` maps room ids to fences; `{prefix}:bus:{id}` is a node's pub/sub inbox.
//!
//! Every change of shared state is one Lua script, so each is atomic on the server, and every script checks the
//! memberships it depends on in the same step. Commands go through a [`ConnectionManager`] (one multiplexed
//! connection that reconnects in the background; a command during an outage fails at once) with a deadline each.
//! The connection is made lazily, so a node starts while Redis is down and joins once it is up. The scripts touch
//! keys they do not declare (members' keys), so Redis Cluster is not supported: one Redis (or a replicated primary).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::{mpsc, OnceCell};
use tracing::{info, warn};

use super::{new_incarnation, Backbone, BackboneError, Claim, Fence, Membership, NodeId, Result};

/// Deadline of one Redis command.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Inbox depth; a full inbox stops reading the subscription (Redis then buffers, up to its pub/sub output limit).
const INBOX: usize = 1024;

/// KEYS[1] epoch, KEYS[2] node key; ARGV[1] incarnation, ARGV[2] timeout ms, ARGV[3] fresh epoch. Returns the epoch.
const JOIN: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then redis.call('SET', KEYS[1], ARGV[3]); epoch = ARGV[3] end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return epoch
";

/// KEYS[1] epoch, KEYS[2] node key; ARGV[1] incarnation, ARGV[2] timeout ms, ARGV[3] our epoch, ARGV[4] fresh epoch.
/// Returns {state, epoch}: 1 alive, 2 reset (state was lost: membership asserted again), 0 lost.
const HEARTBEAT: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then redis.call('SET', KEYS[1], ARGV[4]); epoch = ARGV[4] end
if epoch ~= ARGV[3] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2, epoch}
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {1, epoch}
end
return {0, epoch}
";

/// The liveness check the room scripts share: ARGV[1] is the node key prefix.
const LIVE: &str = r"
local function live(fence)
  if not fence then return false end
  local node, inc = string.match(fence, '^(%S+) (%S+) ')
  return node ~= nil and redis.call('GET', ARGV[1] .. node) == inc
end
";

/// KEYS[1] rooms; ARGV[1] node key prefix, ARGV[2] room, ARGV[3] fence. Returns `won`, the live owner's fence, or
/// `not-member` when the claimer itself is not a member (fences contain spaces, so neither word is one).
const CLAIM: &str = r"
if not live(ARGV[3]) then return 'not-member' end
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if live(cur) then return cur end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 'won'
";

/// KEYS[1] rooms; ARGV[1] room, ARGV[2] expected fence, ARGV[3] new fence (empty: delete). Returns 1 if changed.
const SWAP: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
";

/// KEYS[1] rooms; ARGV[1] node key prefix, ARGV[2] room. Returns the live owner's fence or false.
const OWNER: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if live(cur) then return cur end
return false
";

/// KEYS[1] rooms, KEYS[2] node key; ARGV[1] node key prefix, ARGV[2] 'node incarnation ' (a fence prefix).
/// Deletes the membership (if still ours) and every room of this incarnation.
const LEAVE: &str = r"
local node, inc = string.match(ARGV[2], '^(%S+) (%S+) ')
if redis.call('GET', KEYS[2]) == inc then redis.call('DEL', KEYS[2]) end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i + 1], 1, #ARGV[2]) == ARGV[2] then redis.call('HDEL', KEYS[1], all[i]) end
end
return 1
";

/// KEYS[1] rooms; ARGV[1] node key prefix. Returns every {room, fence} with a live owner.
const ROOMS: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  if live(all[i + 1]) then table.insert(out, all[i]); table.insert(out, all[i + 1]) end
end
return out
";

struct Scripts {
    join: Script,
    heartbeat: Script,
    claim: Script,
    swap: Script,
    owner: Script,
    leave: Script,
    rooms: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_live = |body: &str| Script::new(&format!("{LIVE}{body}"));
        Scripts {
            join: Script::new(JOIN),
            heartbeat: Script::new(HEARTBEAT),
            claim: with_live(CLAIM),
            swap: Script::new(SWAP),
            owner: with_live(OWNER),
            leave: Script::new(LEAVE),
            rooms: with_live(ROOMS),
        }
    }
}

/// One node's handle on a Redis backbone.
pub struct RedisBackbone {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    scripts: Scripts,
    prefix: String,
    id: String,
    node_timeout: Duration,
    /// (incarnation, epoch) of the current membership.
    state: Mutex<(u64, String)>,
}

fn unavailable(e: impl std::fmt::Display) -> BackboneError {
    BackboneError::Unavailable(e.to_string())
}

impl RedisBackbone {
    /// A handle for node `id` on the Redis at `url` (`redis://` or `rediss://`, with user and password if the server
    /// needs them), keys under `prefix`. Connects on first use: this never fails because Redis is down.
    pub fn new(url: &str, prefix: &str, id: &str, node_timeout: Duration) -> Result<RedisBackbone> {
        if !super::valid_node_id(id) {
            return Err(BackboneError::Config(format!("node id {id:?}: 1-64 characters of A-Z a-z 0-9 _ . -")));
        }
        let client = redis::Client::open(url).map_err(|e| BackboneError::Config(format!("redis url: {e}")))?;
        Ok(RedisBackbone {
            client,
            conn: OnceCell::new(),
            scripts: Scripts::new(),
            prefix: prefix.to_owned(),
            id: id.to_owned(),
            node_timeout,
            state: Mutex::new((0, String::new())),
        })
    }

    /// Trusts `ca_pem` (PEM certificates) instead of the web PKI roots for a `rediss://` URL: a private CA, or a
    /// self-signed Redis certificate.
    pub fn trusting(mut self, url: &str, ca_pem: Vec<u8>) -> Result<RedisBackbone> {
        let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(ca_pem) };
        self.client =
            redis::Client::build_with_tls(url, certs).map_err(|e| BackboneError::Config(format!("redis TLS: {e}")))?;
        Ok(self)
    }

    async fn conn(&self) -> Result<ConnectionManager> {
        let connect = self.conn.get_or_try_init(|| async {
            // One connection attempt per use (our callers retry on their own schedule), so that a refusal such as a
            // wrong password is reported as what it is instead of retried into a timeout.
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_number_of_retries(0)
                .set_connection_timeout(Some(OP_TIMEOUT))
                .set_response_timeout(Some(OP_TIMEOUT));
            let conn =
                tokio::time::timeout(OP_TIMEOUT, ConnectionManager::new_with_config(self.client.clone(), config))
                    .await
                    .map_err(|_| BackboneError::Timeout(OP_TIMEOUT))?
                    .map_err(unavailable)?;
            info!(node = %self.id, "connected to the redis backbone");
            Ok::<_, BackboneError>(conn)
        });
        connect.await.cloned()
    }

    /// Runs one script invocation with the deadline.
    async fn run<T: redis::FromRedisValue>(&self, invocation: redis::ScriptInvocation<'_>) -> Result<T> {
        let mut conn = self.conn().await?;
        tokio::time::timeout(OP_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| BackboneError::Timeout(OP_TIMEOUT))?
            .map_err(unavailable)
    }

    fn key(&self, parts: &str) -> String {
        format!("{}:{parts}", self.prefix)
    }

    fn node_prefix(&self) -> String {
        self.key("node:")
    }

    fn timeout_ms(&self) -> u64 {
        self.node_timeout.as_millis() as u64
    }
}

impl Backbone for RedisBackbone {
    fn node(&self) -> NodeId {
        NodeId { id: self.id.clone(), incarnation: self.state.lock().0 }
    }

    async fn join(&self) -> Result<NodeId> {
        let incarnation = new_incarnation();
        let mut inv = self.scripts.join.prepare_invoke();
        inv.key(self.key("epoch")).key(self.key(&format!("node:{}", self.id)));
        inv.arg(incarnation).arg(self.timeout_ms()).arg(rand::random::<u64>().to_string());
        let epoch: String = self.run(inv).await?;
        *self.state.lock() = (incarnation, epoch);
        Ok(self.node())
    }

    async fn heartbeat(&self) -> Result<Membership> {
        let (incarnation, epoch) = self.state.lock().clone();
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(self.key("epoch")).key(self.key(&format!("node:{}", self.id)));
        inv.arg(incarnation).arg(self.timeout_ms()).arg(&epoch).arg(rand::random::<u64>().to_string());
        let (state, now): (i64, String) = self.run(inv).await?;
        self.state.lock().1 = now;
        Ok(match state {
            1 => Membership::Alive,
            2 => {
                warn!(node = %self.id, "the redis backbone lost its state: re-asserting membership and rooms");
                Membership::Reset
            }
            _ => Membership::Lost,
        })
    }

    async fn leave(&self) -> Result<()> {
        let incarnation = self.state.lock().0;
        let mut inv = self.scripts.leave.prepare_invoke();
        inv.key(self.key("rooms")).key(self.key(&format!("node:{}", self.id)));
        inv.arg(self.node_prefix()).arg(format!("{} {incarnation} ", self.id));
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    async fn members(&self) -> Result<Vec<NodeId>> {
        let mut conn = self.conn().await?;
        let prefix = self.node_prefix();
        let scan = async {
            let mut keys: Vec<String> = Vec::new();
            let mut iter: redis::AsyncIter<String> = redis::cmd("SCAN")
                .cursor_arg(0)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .clone()
                .iter_async(&mut conn)
                .await?;
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
            drop(iter);
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(keys.into_iter().zip(values).collect::<Vec<_>>())
        };
        let pairs = tokio::time::timeout(OP_TIMEOUT, scan)
            .await
            .map_err(|_| BackboneError::Timeout(OP_TIMEOUT))?
            .map_err(unavailable)?;
        let mut members: Vec<NodeId> = pairs
            .into_iter()
            .filter_map(|(key, value)| {
                let incarnation = value?.parse().ok()?;
                Some(NodeId { id: key.strip_prefix(&prefix)?.to_owned(), incarnation })
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }

    async fn claim(&self, room: &str, fence: &Fence) -> Result<Claim> {
        if fence.node != self.id || fence.incarnation != self.state.lock().0 {
            return Err(BackboneError::Config(format!("fence {fence} is not of this node's incarnation")));
        }
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.key(self.key("rooms")).arg(self.node_prefix()).arg(room).arg(fence.encode());
        let answer: String = self.run(inv).await?;
        match answer.as_str() {
            "won" => Ok(Claim::Won),
            "not-member" => Err(BackboneError::NotMember),
            owner => Fence::decode(owner).map(Claim::Held).ok_or_else(|| unavailable(format!("bad fence {owner:?}"))),
        }
    }

    async fn release(&self, room: &str, fence: &Fence) -> Result<bool> {
        let mut inv = self.scripts.swap.prepare_invoke();
        inv.key(self.key("rooms")).arg(room).arg(fence.encode()).arg("");
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn take_over(&self, room: &str, from: &Fence, to: &Fence) -> Result<bool> {
        let mut inv = self.scripts.swap.prepare_invoke();
        inv.key(self.key("rooms")).arg(room).arg(from.encode()).arg(to.encode());
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn owner(&self, room: &str) -> Result<Option<Fence>> {
        let mut inv = self.scripts.owner.prepare_invoke();
        inv.key(self.key("rooms")).arg(self.node_prefix()).arg(room);
        let owner: Option<String> = self.run(inv).await?;
        Ok(owner.as_deref().and_then(Fence::decode))
    }

    async fn rooms(&self) -> Result<Vec<(String, Fence)>> {
        let mut inv = self.scripts.rooms.prepare_invoke();
        inv.key(self.key("rooms")).arg(self.node_prefix());
        let flat: Vec<String> = self.run(inv).await?;
        let mut rooms: Vec<(String, Fence)> =
            flat.chunks_exact(2).filter_map(|p| Some((p[0].clone(), Fence::decode(&p[1])?))).collect();
        rooms.sort();
        Ok(rooms)
    }

    async fn send(&self, node: &str, batch: Bytes) -> Result<()> {
        let mut conn = self.conn().await?;
        let publish = redis::cmd("PUBLISH").arg(self.key(&format!("bus:{node}"))).arg(batch.as_ref()).clone();
        let _: i64 = tokio::time::timeout(OP_TIMEOUT, publish.query_async(&mut conn))
            .await
            .map_err(|_| BackboneError::Timeout(OP_TIMEOUT))?
            .map_err(unavailable)?;
        Ok(())
    }

    async fn inbox(&self) -> Result<mpsc::Receiver<Bytes>> {
        let (tx, rx) = mpsc::channel(INBOX);
        let (client, channel, id) = (self.client.clone(), self.key(&format!("bus:{}", self.id)), self.id.clone());
        // The first subscription is made here, so that batches sent after this returns are delivered.
        let first = subscribe(&client, &channel).await?;
        tokio::spawn(async move {
            let mut pubsub = Some(first);
            loop {
                let sub = match pubsub.take() {
                    Some(sub) => sub,
                    None => match subscribe(&client, &channel).await {
                        Ok(sub) => {
                            info!(node = %id, "bus resubscribed");
                            sub
                        }
                        Err(_) if tx.is_closed() => return,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                let mut messages = sub.into_on_message();
                loop {
                    // A dropped inbox ends the task at once, not at the next message.
                    let msg = tokio::select! {
                        msg = messages.next() => msg,
                        () = tx.closed() => return,
                    };
                    let Some(msg) = msg else { break };
                    if tx.send(Bytes::from(msg.get_payload_bytes().to_vec())).await.is_err() {
                        return;
                    }
                }
                warn!(node = %id, "bus subscription lost; resubscribing");
            }
        });
        Ok(rx)
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> Result<redis::aio::PubSub> {
    let subscribe = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    tokio::time::timeout(OP_TIMEOUT, subscribe)
        .await
        .map_err(|_| BackboneError::Timeout(OP_TIMEOUT))?
        .map_err(unavailable)
}
