//! The outbound side of one session: a bounded queue of encoded frames, and the switch that ends the session.
//!
//! Frames are written *through* when possible: on a plain TCP session, whoever queued a frame writes it to the socket
//! at the end of its batch (see [`batch`]), without waking the recipient's task. A reader that just handled a read
//! full of messages thus sends each recipient everything it has for it in one `writev`, and a relay costs no task
//! switch. Only when the socket is full does the recipient's own task take over, waiting for it to drain.
//!
//! Invariants:
//! - Nothing is ever queued without bound: a full queue means the consumer cannot keep up, and the session is killed
//!   (cause [`Cause::SlowConsumer`]) instead of buffering more.
//! - Queuing never blocks and never writes, so the hub may queue while it holds its lock; writes happen when the
//!   batch ends, outside any hub lock.
//! - Bytes reach the socket in queue order, written under the queue's lock by one writer at a time.
//! - The first recorded cause wins; later kills only confirm it. After the close frame is queued, nothing else is.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::ws::Frame;

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The peer closed the connection or it failed.
    Closed,
    /// The peer sent nothing for the idle timeout.
    Timeout,
    /// The session's outbound queue overflowed.
    SlowConsumer,
    /// The peer broke the websocket contract (binary frame, oversized message, invalid UTF-8).
    Protocol,
    /// The server is shutting down.
    Shutdown,
    /// An operator kicked the room's holder (admin API).
    Kicked,
    /// A token holder took the room over (auth on).
    TakenOver,
    /// The session kept exceeding its message budget.
    RateLimited,
    /// This node was declared lost by its cluster and is rejoining (SPEC.md §9): reconnect and register again.
    Restart,
}

impl Cause {
    /// A label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Closed => "close",
            Cause::Timeout => "timeout",
            Cause::SlowConsumer => "slow_consumer",
            Cause::Protocol => "protocol",
            Cause::Shutdown => "shutdown",
            Cause::Kicked => "kicked",
            Cause::TakenOver => "taken_over",
            Cause::RateLimited => "rate_limited",
            Cause::Restart => "restart",
        }
    }
}

/// Frames gathered into one `writev`.
const MAX_SLICES: usize = 64;

/// A handle to queue frames for one session. Cheap to clone.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    /// Wakes the session's task: a kill, or frames it must write itself.
    wake: Notify,
    /// The socket, when any task may write to it (plain TCP); otherwise the session's own writer does.
    direct: Option<Arc<TcpStream>>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// The socket refused bytes: until it drains, only the session's task writes.
    blocked: bool,
    /// Already listed in this thread's batch.
    batched: bool,
    /// The front frame is partly written: it must be finished before anything else goes out.
    partial: bool,
    /// The close frame is queued: nothing else will be.
    closing: bool,
    cause: Option<Cause>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("direct", &self.0.direct.is_some()).finish_non_exhaustive()
    }
}

thread_local! {
    /// Whether this thread is inside [`batch`], and the outboxes that batch queued to.
    static BATCHING: Cell<bool> = const { Cell::new(false) };
    static BATCH: RefCell<Vec<Outbox>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f`, deferring the writes of every frame it queues until it returns; then each touched outbox is flushed
/// once. Nested calls join the outer batch. Even if `f` panics, the batch ends and its frames are flushed.
pub fn batch<R>(f: impl FnOnce() -> R) -> R {
    if BATCHING.get() {
        return f();
    }
    BATCHING.set(true);
    let _end = EndBatch;
    f()
}

/// Ends this thread's batch when dropped: stops deferring, then flushes every outbox the batch touched.
struct EndBatch;

impl Drop for EndBatch {
    fn drop(&mut self) {
        BATCHING.set(false);
        let mut touched = BATCH.with_borrow_mut(std::mem::take);
        for outbox in touched.drain(..) {
            outbox.flush();
        }
        // Keep the list's allocation for the next batch.
        BATCH.with_borrow_mut(|b| {
            if b.capacity() < touched.capacity() {
                *b = touched;
            }
        });
    }
}

impl Outbox {
    /// A queue of at most `capacity` frames. With `direct`, frames are written to that socket by whoever flushes;
    /// without, the session's writer takes them with [`Outbox::take`].
    pub fn new(capacity: usize, direct: Option<Arc<TcpStream>>, metrics: Arc<Metrics>) -> Outbox {
        Outbox(Arc::new(Shared { state: Mutex::default(), wake: Notify::new(), direct, capacity, metrics }))
    }

    /// Queues a frame. A full queue kills the session as a slow consumer; a closing one drops the frame.
    pub fn send(&self, frame: Frame) {
        let mut st = self.0.state.lock();
        if st.closing || st.cause.is_some() {
            return;
        }
        if st.queue.len() >= self.0.capacity {
            st.cause = Some(Cause::SlowConsumer);
            drop(st);
            self.0.wake.notify_one();
            return;
        }
        st.queue.push_back(frame.as_bytes().clone());
        self.schedule(st);
    }

    /// Queues the close frame, after what is queued (`drain`) or instead of it; nothing is queued after it.
    pub fn close(&self, frame: Frame, drain: bool) {
        let mut st = self.0.state.lock();
        if st.closing {
            return;
        }
        if !drain {
            let unfinished = st.queue.pop_front().filter(|_| st.partial);
            st.queue.clear();
            st.queue.extend(unfinished);
        }
        st.closing = true;
        st.queue.push_back(frame.as_bytes().clone());
        self.schedule(st);
    }

    /// After a send: flush when the batch ends, or now wake the session's task to do it.
    fn schedule(&self, mut st: parking_lot::MutexGuard<'_, State>) {
        if BATCHING.get() {
            if !st.batched {
                st.batched = true;
                drop(st);
                BATCH.with_borrow_mut(|b| b.push(self.clone()));
            }
        } else {
            drop(st);
            self.0.wake.notify_one();
        }
    }

    /// Ends the session for `cause` (the first cause recorded wins).
    pub fn kill(&self, cause: Cause) {
        self.0.state.lock().cause.get_or_insert(cause);
        self.0.wake.notify_one();
    }

    /// Why the session must end, once it must.
    pub fn cause(&self) -> Option<Cause> {
        self.0.state.lock().cause
    }

    /// Resolves when the session's task has something to do: a kill, or frames to write.
    pub async fn woken(&self) {
        self.0.wake.notified().await
    }

    /// Whether the socket refused bytes and the session's task must wait for it to drain.
    pub fn blocked(&self) -> bool {
        self.0.state.lock().blocked
    }

    /// Whether everything queued, the close frame included, has been written.
    pub fn is_empty(&self) -> bool {
        self.0.state.lock().queue.is_empty()
    }

    /// Writes what is queued, as far as the socket takes it without blocking. Without a direct socket, wakes the
    /// session's writer instead. A socket error kills the session.
    pub fn flush(&self) {
        let mut st = self.0.state.lock();
        st.batched = false;
        let Some(socket) = &self.0.direct else {
            drop(st);
            self.0.wake.notify_one();
            return;
        };
        if st.blocked {
            return; // the session's task is waiting for the socket to drain
        }
        self.write_queued(&mut st, socket);
    }

    /// Called by the session's task once the socket is writable again.
    pub fn flush_unblocked(&self) {
        let Some(socket) = &self.0.direct else { return };
        let mut st = self.0.state.lock();
        st.blocked = false;
        self.write_queued(&mut st, socket);
    }

    fn write_queued(&self, st: &mut State, socket: &TcpStream) {
        while !st.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = st.queue.iter().zip(slices.iter_mut()).map(|(b, s)| *s = IoSlice::new(b)).count();
            match socket.try_write_vectored(&slices[..n]) {
                Ok(written) => {
                    self.0.metrics.bytes_out.inc_by(written as u64);
                    st.partial = advance(&mut st.queue, written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.blocked = true;
                    self.0.wake.notify_one();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    st.queue.clear();
                    st.cause.get_or_insert(Cause::Closed);
                    self.0.wake.notify_one();
                    return;
                }
            }
        }
    }

    /// For a session without a direct socket: moves every queued frame into `out`, for its writer to write.
    /// True once the close frame has been queued (and so is in `out` or was taken before).
    pub fn take(&self, out: &mut Vec<Bytes>) -> bool {
        let mut st = self.0.state.lock();
        st.batched = false;
        out.extend(st.queue.drain(..));
        st.closing
    }

    /// Counts bytes a session's own writer wrote.
    pub fn wrote(&self, n: usize) {
        self.0.metrics.bytes_out.inc_by(n as u64);
    }
}

/// Drops `n` written bytes from the front of the queue; true when that leaves the front frame partly written.
fn advance(queue: &mut VecDeque<Bytes>, mut n: usize) -> bool {
    while n > 0 {
        let Some(front) = queue.front_mut() else { return false };
        if n >= front.len() {
            n -= front.len();
            queue.pop_front();
        } else {
            front.advance(n);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(capacity: usize) -> Outbox {
        Outbox::new(capacity, None, Arc::new(Metrics::new()))
    }

    fn taken(o: &Outbox) -> Vec<Bytes> {
        let mut out = Vec::new();
        o.take(&mut out);
        out
    }

    #[test]
    fn a_full_queue_kills_the_session_as_slow_consumer() {
        let o = outbox(2);
        o.send(Frame::text("a"));
        o.send(Frame::text("b"));
        assert_eq!(o.cause(), None);
        o.send(Frame::text("c"));
        assert_eq!(o.cause(), Some(Cause::SlowConsumer));
        o.kill(Cause::Timeout);
        assert_eq!(o.cause(), Some(Cause::SlowConsumer), "first cause wins");
        let frames = taken(&o);
        assert_eq!(frames, [Frame::text("a").as_bytes().clone(), Frame::text("b").as_bytes().clone()]);
    }

    #[test]
    fn nothing_is_queued_after_the_close_frame() {
        let o = outbox(8);
        o.send(Frame::text("a"));
        o.close(Frame::close(1000, ""), true);
        o.send(Frame::text("late"));
        assert_eq!(taken(&o), [Frame::text("a").as_bytes().clone(), Frame::close(1000, "").as_bytes().clone()]);
        let o = outbox(8);
        o.send(Frame::text("a"));
        o.close(Frame::close(1008, "slow"), false);
        assert_eq!(taken(&o), [Frame::close(1008, "slow").as_bytes().clone()], "not drained: the queue is dropped");
    }

    #[test]
    fn advancing_splits_frames() {
        let mut q: VecDeque<Bytes> = [Bytes::from_static(b"abc"), Bytes::from_static(b"de")].into();
        assert!(advance(&mut q, 4));
        assert_eq!(q, [Bytes::from_static(b"e")]);
        assert!(!advance(&mut q, 1));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_batch_writes_each_socket_once_in_queue_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let o = Outbox::new(8, Some(Arc::new(server)), Arc::new(Metrics::new()));
        batch(|| {
            o.send(Frame::text("one"));
            o.send(Frame::text("two"));
            assert!(!o.is_empty(), "nothing is written inside the batch");
        });
        assert!(o.is_empty(), "the batch's end wrote both");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batch(|| {
                o.send(Frame::text("three"));
                panic!("a bug while handling a read");
            })
        }));
        assert!(panicked.is_err());
        assert!(o.is_empty(), "a panicking batch still flushed");
        batch(|| o.send(Frame::text("four")));
        assert!(o.is_empty(), "and the next batch works");
        let expected = b"\x81\x03one\x81\x03two\x81\x05three\x81\x04four";
        let mut got = vec![0; expected.len()];
        let read = tokio::io::AsyncReadExt::read_exact(&mut client, &mut got);
        tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("the frames arrive").unwrap();
        assert_eq!(&got, expected);
    }
}
