//! The two sockets a backend holds (PROTOCOL.md 2): a DEALER for requests, a SUB for events.
//!
//! One thread drives both with `zmq::poll`, so events keep being read into a buffer while a
//! request waits for its reply (the snapshot procedure needs that, 7.2 step 3).
//!
//! The DEALER is set up as a careful backend sets it up:
//! - `ZMQ_IMMEDIATE`: a request is queued only on a completed connection, so nothing piles
//!   up in the socket while the sidecar is down (a request sent then waits at most its
//!   timeout for the connection, then fails here instead of reaching a later sidecar late);
//! - every request has a timeout (`poll` with a deadline, and `ZMQ_RCVTIMEO` as a backstop);
//! - after a timeout the DEALER is closed (linger 0) and re-created, so a late reply to the
//!   abandoned request, or the request itself still queued, cannot reach the next caller;
//! - replies are matched to requests by `id` (a DEALER may see replies out of order, 2).

use crate::curve::CurveKeys;
use crate::wire::{self, Event, Reply, ReplyHead, Request};
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub enum Error {
    /// No reply within the timeout; the DEALER was re-created.
    Timeout {
        op: String,
        after: Duration,
    },
    Zmq(zmq::Error),
    Decode(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout { op, after } => write!(f, "no reply to {op} within {after:?}"),
            Error::Zmq(e) => write!(f, "zmq: {e}"),
            Error::Decode(e) => write!(f, "decode: {e}"),
        }
    }
}

impl From<zmq::Error> for Error {
    fn from(e: zmq::Error) -> Self {
        Error::Zmq(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

pub struct Client {
    ctx: zmq::Context,
    router: String,
    dealer: zmq::Socket,
    sub: zmq::Socket,
    /// Events received and not yet taken, in arrival order.
    pub buffer: VecDeque<Event>,
    next_id: u64,
    pub timeout: Duration,
    /// Events whose envelope could not be decoded (a client bug or a contract break).
    pub undecodable: Vec<String>,
    /// How many times the DEALER was re-created after a timeout.
    pub dealer_resets: u32,
    /// CURVE keys for both sockets, when the sidecar runs with `[zmq.curve]` (curve.rs).
    curve: Option<CurveKeys>,
}

impl Client {
    /// Connect both sockets; the SUB subscribes to everything (`""`) so `seq` gaps mean loss.
    /// With `curve`, both sockets use those keys (set before they connect).
    pub fn connect(
        router: &str,
        publisher: &str,
        timeout: Duration,
        curve: Option<CurveKeys>,
    ) -> Result<Client> {
        let ctx = zmq::Context::new();
        let dealer = new_dealer(&ctx, router, timeout, curve.as_ref())?;
        let sub = ctx.socket(zmq::SUB)?;
        sub.set_linger(0)?;
        if let Some(keys) = &curve {
            keys.apply(&sub)?;
        }
        sub.set_subscribe(b"")?;
        sub.connect(publisher)?;
        Ok(Client {
            ctx,
            router: router.to_string(),
            dealer,
            sub,
            buffer: VecDeque::new(),
            next_id: 0,
            timeout,
            undecodable: Vec::new(),
            dealer_resets: 0,
            curve,
        })
    }

    /// Send `request` (its `id` and `deadline_ns` are set here) and wait for its reply.
    pub fn request<R: DeserializeOwned>(&mut self, request: Request) -> Result<Reply<R>> {
        let timeout = self.timeout;
        self.request_within(request, timeout)
    }

    /// `request` with its own timeout.
    pub fn request_within<R: DeserializeOwned>(
        &mut self,
        mut request: Request,
        timeout: Duration,
    ) -> Result<Reply<R>> {
        let id = self.fresh_id();
        let common = request.common_mut();
        common.id = Some(id.clone());
        common.deadline_ns = Some(now_ns() + timeout.as_nanos() as i64);
        let body = request.encode().map_err(|e| Error::Decode(e.to_string()))?;
        let reply = self.exchange(request.op(), &body, Some(&id), timeout)?;
        wire::decode_reply(&reply)
            .map_err(|e| Error::Decode(format!("{} reply: {e}", request.op())))
    }

    /// Send raw bytes and wait for the reply whose `id` is `expect_id` (nil for a body the
    /// sidecar cannot read far enough to find an id).
    pub fn request_raw<R: DeserializeOwned>(
        &mut self,
        label: &str,
        body: &[u8],
        expect_id: Option<&str>,
    ) -> Result<Reply<R>> {
        let timeout = self.timeout;
        let reply = self.exchange(label, body, expect_id, timeout)?;
        wire::decode_reply(&reply).map_err(|e| Error::Decode(format!("{label} reply: {e}")))
    }

    pub fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("rust-{}-{}", std::process::id(), self.next_id)
    }

    /// The next event: from the buffer, else from the SUB within `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>> {
        if let Some(event) = self.buffer.pop_front() {
            return Ok(Some(event));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut items = [self.sub.as_poll_item(zmq::POLLIN)];
            zmq::poll(&mut items, millis(left))?;
            if items[0].is_readable() {
                self.drain_sub()?;
                if let Some(event) = self.buffer.pop_front() {
                    return Ok(Some(event));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    // Private

    fn exchange(
        &mut self,
        op: &str,
        body: &[u8],
        expect_id: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        // ZMQ_IMMEDIATE: no connection, no room; wait (bounded) until the DEALER can send.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut items = [
                self.dealer.as_poll_item(zmq::POLLOUT),
                self.sub.as_poll_item(zmq::POLLIN),
            ];
            zmq::poll(&mut items, millis(left))?;
            let (writable, readable) = (items[0].is_writable(), items[1].is_readable());
            if readable {
                self.drain_sub()?;
            }
            if writable {
                match self.dealer.send(body, zmq::DONTWAIT) {
                    Ok(()) => break,
                    Err(zmq::Error::EAGAIN) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out(op, timeout));
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut items = [
                self.dealer.as_poll_item(zmq::POLLIN),
                self.sub.as_poll_item(zmq::POLLIN),
            ];
            zmq::poll(&mut items, millis(left))?;
            let (reply, readable) = (items[0].is_readable(), items[1].is_readable());
            if readable {
                self.drain_sub()?;
            }
            if reply {
                let frames = self.dealer.recv_multipart(0)?;
                let body = frames.last().cloned().unwrap_or_default();
                let head: ReplyHead = wire::decode_reply(&body).map_err(Error::Decode)?;
                if head.id.as_deref() == expect_id {
                    return Ok(body);
                }
                eprintln!("  (dropped a reply to another request: id {:?})", head.id);
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out(op, timeout));
            }
        }
    }

    fn timed_out(&mut self, op: &str, after: Duration) -> Error {
        // A careful backend does not reuse a DEALER whose request went unanswered.
        match new_dealer(&self.ctx, &self.router, self.timeout, self.curve.as_ref()) {
            Ok(fresh) => {
                self.dealer = fresh;
                self.dealer_resets += 1;
            }
            Err(e) => eprintln!("  could not re-create the DEALER: {e}"),
        }
        Error::Timeout {
            op: op.to_string(),
            after,
        }
    }

    /// Read every event the SUB holds now into the buffer.
    fn drain_sub(&mut self) -> Result<()> {
        loop {
            match self.sub.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => match Event::decode(&frames) {
                    Ok(event) => self.buffer.push_back(event),
                    Err(e) => self.undecodable.push(e),
                },
                Err(zmq::Error::EAGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn new_dealer(
    ctx: &zmq::Context,
    router: &str,
    timeout: Duration,
    curve: Option<&CurveKeys>,
) -> Result<zmq::Socket> {
    let dealer = ctx.socket(zmq::DEALER)?;
    dealer.set_linger(0)?;
    if let Some(keys) = curve {
        keys.apply(&dealer)?;
    }
    dealer.set_immediate(true)?;
    dealer.set_rcvtimeo(millis(timeout) as i32)?;
    dealer.set_sndtimeo(millis(timeout) as i32)?;
    dealer.connect(router)?;
    Ok(dealer)
}

/// What a client the sidecar does not let in gets within `wait`: whether its DEALER (with
/// `ZMQ_IMMEDIATE`) ever became writable, and how many events its SUB received.
pub fn outsider(
    router: &str,
    publisher: &str,
    curve: Option<&CurveKeys>,
    wait: Duration,
) -> Result<(bool, usize)> {
    let ctx = zmq::Context::new();
    let dealer = new_dealer(&ctx, router, wait, curve)?;
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_linger(0)?;
    if let Some(keys) = curve {
        keys.apply(&sub)?;
    }
    sub.set_subscribe(b"")?;
    sub.connect(publisher)?;
    let deadline = Instant::now() + wait;
    let (mut writable, mut events) = (false, 0);
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut items = [dealer.as_poll_item(zmq::POLLOUT), sub.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, millis(left).max(1))?;
        if items[0].is_writable() {
            writable = true;
            break;
        }
        if items[1].is_readable() {
            sub.recv_multipart(0)?;
            events += 1;
        }
    }
    Ok((writable, events))
}
