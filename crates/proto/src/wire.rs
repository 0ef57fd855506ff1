//! A general message shape for clients: every field the protocol names, all optional.
//!
//! The server never uses this (it reads frames with [`crate::Message::parse`] and forwards bytes). Clients build the
//! messages they send from it — sending exactly the fields SPEC.md lists, so a ZLMediaKit server accepts them — and
//! read what they receive into it, ignoring fields they do not know.

use serde::{Deserialize, Serialize};

use crate::{IceServer, RejectCode};

/// One protocol message as a client sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub class: String,
    pub method: String,
    #[serde(default)]
    pub transaction_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_id: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub call_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ufrag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The machine code of a reject (switchboard extension; absent from ZLMediaKit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_servers: Option<Vec<IceServer>>,
    /// When the credentials of `ice_servers` expire, unix seconds (SPEC.md §4.6; absent from ZLMediaKit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_servers_expire: Option<u64>,
}

impl Envelope {
    /// A message of `class`/`method` with `transaction_id`, every other field empty.
    pub fn new(class: &str, method: &str, transaction_id: impl Into<String>) -> Envelope {
        Envelope {
            class: class.into(),
            method: method.into(),
            transaction_id: transaction_id.into(),
            ..Default::default()
        }
    }

    /// The reject code, when this is a reject that carries a known one.
    pub fn reject_code(&self) -> Option<RejectCode> {
        self.code.as_deref().and_then(RejectCode::from_wire)
    }

    /// Compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_only_the_fields_set_and_reads_zlmediakit_pretty_json() {
        let mut e = Envelope::new("indication", "candidate", "t");
        e.guest_id = Some("g".into());
        e.room_id = Some("r".into());
        e.candidate = Some("1 1 udp 1 1.2.3.4 5 typ host".into());
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 6);
        let zlm = "{\n\t\"class\" : \"accept\",\n\t\"ice_servers\" : [ { \"pwd\" : \"ZLMediaKit\", \"ufrag\" : \"ZLMediaKit\", \
                   \"url\" : \"turn:10.0.0.1:3478?transport=udp\" } ],\n\t\"method\" : \"register\",\n\t\"room_id\" : \"r\",\n\t\
                   \"transaction_id\" : \"t\",\n\t\"sender\" : \"x\"\n}";
        let e: Envelope = serde_json::from_str(zlm).unwrap();
        assert_eq!(e.ice_servers.unwrap()[0].ufrag, "ZLMediaKit");
        let r: Envelope = serde_json::from_str(
            r#"{"class":"reject","method":"call","transaction_id":"t","reason":"x","code":"room_not_found"}"#,
        )
        .unwrap();
        assert_eq!(r.reject_code(), Some(RejectCode::RoomNotFound));
    }
}
