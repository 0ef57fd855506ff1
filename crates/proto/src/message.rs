//! Validation: a [`Frame`] becomes a typed [`Message`] or a [`Reject`] for its sender.
//!
//! Checks run in SPEC.md §2's precedence order — `bad_json`, `missing_field`, `bad_field`, `unsupported` — so the
//! first applicable row decides the code. Session-state and routing checks come later, in the hub, and build their
//! rejects with [`Message::reject`].

use std::borrow::Cow;

use crate::frame::{Field, Frame, Presence};
use crate::reply::{Echo, Reject};
use crate::RejectCode;

/// Ids (`transaction_id`, `room_id`, `guest_id`) are at most this many bytes of UTF-8.
pub const MAX_ID_LEN: usize = 128;

/// What a caller asks of the callee: receive its stream, or send one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallType {
    Play,
    Push,
}

impl CallType {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            CallType::Play => "play",
            CallType::Push => "push",
        }
    }
}

/// A validated client message. Strings borrow from the frame's text where it had no escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// `request/register`; `None` asks the server to assign an id.
    Register { room_id: Option<Cow<'a, str>> },
    /// `request/unregister`.
    Unregister { room_id: Cow<'a, str> },
    /// `request/call`, caller → callee's room.
    Call { guest_id: Cow<'a, str>, room_id: Cow<'a, str>, call_type: CallType },
    /// `accept/call` or `reject/call`, callee → caller.
    Answer { accepted: bool, guest_id: Cow<'a, str>, room_id: Cow<'a, str> },
    /// `indication/candidate`, either direction.
    Candidate { guest_id: Cow<'a, str>, room_id: Cow<'a, str> },
    /// `indication/bye`, either direction.
    Bye { guest_id: Cow<'a, str>, room_id: Cow<'a, str> },
    /// `request/ice_servers`: fresh credentials for the session's registration (SPEC.md §4.6).
    IceServers,
}

impl Body<'_> {
    /// The `method` this body was sent with.
    pub fn method(&self) -> &'static str {
        match self {
            Body::Register { .. } => "register",
            Body::Unregister { .. } => "unregister",
            Body::Call { .. } | Body::Answer { .. } => "call",
            Body::Candidate { .. } => "candidate",
            Body::Bye { .. } => "bye",
            Body::IceServers => "ice_servers",
        }
    }

    /// The `room_id` the message names, if any.
    pub fn room_id(&self) -> Option<&str> {
        match self {
            Body::Register { room_id } => room_id.as_deref(),
            Body::IceServers => None,
            Body::Unregister { room_id }
            | Body::Call { room_id, .. }
            | Body::Answer { room_id, .. }
            | Body::Candidate { room_id, .. }
            | Body::Bye { room_id, .. } => Some(room_id),
        }
    }

    /// The `guest_id` the message names, if any.
    pub fn guest_id(&self) -> Option<&str> {
        match self {
            Body::Register { .. } | Body::Unregister { .. } | Body::IceServers => None,
            Body::Call { guest_id, .. }
            | Body::Answer { guest_id, .. }
            | Body::Candidate { guest_id, .. }
            | Body::Bye { guest_id, .. } => Some(guest_id),
        }
    }
}

/// A validated message, with what a reject must echo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The request's or indication's `transaction_id`.
    pub transaction_id: Cow<'a, str>,
    /// What the message asks for.
    pub body: Body<'a>,
    /// `type`, `vhost`, `app`, `stream` as sent, echoed in call rejects as ZLMediaKit does.
    pub call_echo: [Option<Cow<'a, str>>; 4],
}

impl<'a> Message<'a> {
    /// Parses and validates one text frame.
    pub fn parse(text: &'a str) -> Result<Self, Reject<'a>> {
        match Frame::from_json(text) {
            Ok(frame) => validate(frame),
            Err(e) => Err(Reject::new(RejectCode::BadJson, format!("invalid JSON: {e}"), Echo::default())),
        }
    }

    /// A reject for this message, echoing its ids as SPEC.md §2 requires.
    pub fn reject(&self, code: RejectCode, reason: impl Into<String>) -> Reject<'_> {
        let [call_type, vhost, app, stream] = self.call_echo.each_ref().map(|v| v.as_deref().map(Cow::Borrowed));
        Reject::new(
            code,
            reason.into(),
            Echo {
                transaction_id: Cow::Borrowed(&self.transaction_id),
                method: Cow::Borrowed(self.body.method()),
                room_id: self.body.room_id().map(Cow::Borrowed),
                guest_id: self.body.guest_id().map(Cow::Borrowed),
                call_type,
                vhost,
                app,
                stream,
            },
        )
    }
}

/// The class/method pairs the protocol has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Register,
    Unregister,
    Call,
    Answer { accepted: bool },
    Candidate,
    Bye,
    IceServers,
}

impl Kind {
    fn of(class: &str, method: &str) -> Option<Kind> {
        Some(match (class, method) {
            ("request", "register") => Kind::Register,
            ("request", "unregister") => Kind::Unregister,
            ("request", "call") => Kind::Call,
            ("accept", "call") => Kind::Answer { accepted: true },
            ("reject", "call") => Kind::Answer { accepted: false },
            ("indication", "candidate") => Kind::Candidate,
            ("indication", "bye") => Kind::Bye,
            ("request", "ice_servers") => Kind::IceServers,
            _ => return None,
        })
    }
}

/// One checkable field: its wire name and whether it is missing / wrong.
struct Check {
    name: &'static str,
    missing: bool,
    wrong: bool,
}

fn field_check(name: &'static str, f: &Field<'_>) -> Check {
    Check { name, missing: matches!(f, Field::Missing | Field::Empty), wrong: matches!(f, Field::Wrong) }
}

fn presence_check(name: &'static str, p: Presence) -> Check {
    Check { name, missing: p == Presence::Missing, wrong: p == Presence::Wrong }
}

fn validate(frame: Frame<'_>) -> Result<Message<'_>, Reject<'_>> {
    let kind = match (frame.class.as_str(), frame.method.as_str()) {
        (Some(c), Some(m)) => Kind::of(c, m),
        _ => None,
    };
    let checks = [
        field_check("class", &frame.class),
        field_check("method", &frame.method),
        field_check("transaction_id", &frame.transaction_id),
        field_check("room_id", &frame.room_id),
        field_check("guest_id", &frame.guest_id),
        field_check("type", &frame.call_type),
        field_check("vhost", &frame.vhost),
        field_check("app", &frame.app),
        field_check("stream", &frame.stream),
        presence_check("sdp", frame.sdp),
        presence_check("candidate", frame.candidate),
        presence_check("ufrag", frame.ufrag),
        presence_check("pwd", frame.pwd),
        presence_check("reason", frame.reason),
    ];
    let required: &[&str] = match kind {
        None | Some(Kind::Register | Kind::IceServers) => &[],
        Some(Kind::Unregister) => &["room_id"],
        Some(Kind::Call) => &["guest_id", "room_id", "type", "vhost", "app", "stream", "sdp"],
        Some(Kind::Answer { .. } | Kind::Bye) => &["guest_id", "room_id"],
        // ufrag/pwd too: without them the other side cannot use the candidate (ZLMediaKit does not forward it).
        Some(Kind::Candidate) => &["guest_id", "room_id", "candidate", "ufrag", "pwd"],
    };
    let envelope = ["class", "method", "transaction_id"];

    if let Some(c) = checks.iter().find(|c| c.missing && (envelope.contains(&c.name) || required.contains(&c.name))) {
        return fail(RejectCode::MissingField, format!("missing field \"{}\"", c.name), frame);
    }
    if let Some(c) = checks.iter().find(|c| c.wrong) {
        return fail(RejectCode::BadField, format!("field \"{}\" must be a string", c.name), frame);
    }
    let ids = [("transaction_id", &frame.transaction_id), ("room_id", &frame.room_id), ("guest_id", &frame.guest_id)];
    let too_long = ids.into_iter().find(|(_, f)| f.as_str().is_some_and(|s| s.len() > MAX_ID_LEN)).map(|(n, _)| n);
    if let Some(name) = too_long {
        return fail(RejectCode::BadField, format!("field \"{name}\" must be at most {MAX_ID_LEN} bytes"), frame);
    }
    let call_type = match frame.call_type.as_str() {
        Some("play") => Some(CallType::Play),
        Some("push") => Some(CallType::Push),
        _ => None,
    };
    if kind == Some(Kind::Call) && call_type.is_none() {
        return fail(RejectCode::BadField, "field \"type\" must be \"play\" or \"push\"".into(), frame);
    }
    let Some(kind) = kind else {
        let reason = format!(
            "unsupported class/method: {}/{}",
            frame.class.as_str().unwrap_or_default(),
            frame.method.as_str().unwrap_or_default()
        );
        return fail(RejectCode::Unsupported, reason, frame);
    };

    let Frame { transaction_id, room_id, guest_id, call_type: type_field, vhost, app, stream, .. } = frame;
    // The checks above guarantee the ids each kind requires; the last arm only keeps this total without a panic.
    let transaction_id = into_cow(transaction_id).unwrap_or_default();
    let body = match (kind, into_cow(room_id), into_cow(guest_id)) {
        (Kind::Register, room_id, _) => Body::Register { room_id },
        (Kind::IceServers, _, _) => Body::IceServers,
        (Kind::Unregister, Some(room_id), _) => Body::Unregister { room_id },
        (Kind::Call, Some(room_id), Some(guest_id)) => {
            Body::Call { guest_id, room_id, call_type: call_type.unwrap_or(CallType::Play) }
        }
        (Kind::Answer { accepted }, Some(room_id), Some(guest_id)) => Body::Answer { accepted, guest_id, room_id },
        (Kind::Candidate, Some(room_id), Some(guest_id)) => Body::Candidate { guest_id, room_id },
        (Kind::Bye, Some(room_id), Some(guest_id)) => Body::Bye { guest_id, room_id },
        _ => return Err(Reject::new(RejectCode::MissingField, "missing field".into(), Echo::default())),
    };
    let call_echo = [type_field, vhost, app, stream].map(into_cow);
    Ok(Message { transaction_id, body, call_echo })
}

fn fail<'a, T>(code: RejectCode, reason: String, frame: Frame<'a>) -> Result<T, Reject<'a>> {
    Err(Reject::new(code, reason, Echo::from_frame(frame)))
}

fn into_cow(f: Field<'_>) -> Option<Cow<'_, str>> {
    match f {
        Field::Str(s) => Some(s),
        _ => None,
    }
}
