//! The WebSocket protocol's JSON messages and close codes (docs/protocol.md, WebSocket
//! protocol). Pixel updates travel as binary update frames (`pixel_common::wire`).

use std::fmt;

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{MapAccess, Visitor, value::MapAccessDeserializer},
};

/// The protocol version the hello announces.
pub const PROTOCOL_VERSION: u32 = 2;

/// Close codes the gateway sends.
pub mod close {
    /// The gateway is shutting down: reconnect (to another replica).
    pub const GOING_AWAY: u16 = 1001;
    /// The client sent a binary message; clients send JSON text only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// The client kept sending after being told to slow down (rate limit or invalid
    /// messages, `PIXEL_WS_FLOOD_LIMIT` rejections in a row).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message or frame over `PIXEL_WS_MAX_MESSAGE_BYTES`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The gateway has `PIXEL_MAX_CONNECTIONS` connections already: reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Nothing (no message, no pong) arrived within `PIXEL_WS_IDLE_TIMEOUT_MS`.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The client read too slowly and fell `PIXEL_WS_CLIENT_QUEUE` batches behind:
    /// reconnect with `?since=<last applied version>`.
    pub const TOO_SLOW: u16 = 4008;
}

/// Error codes the gateway itself answers with; canvas-api's codes are relayed as they are.
pub mod code {
    /// The text was not a known client message.
    pub const INVALID_MESSAGE: &str = "invalid_message";
    /// The connection's placement rate was exceeded; see `retryAfterMs`.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// canvas-api did not answer (in time, or at all).
    pub const UNAVAILABLE: &str = "unavailable";
    /// The connection has no identity, so it may watch but not place: its address was
    /// given as many identities as the window allows (see `retryAfterMs`), or they could
    /// not be counted.
    pub const IDENTITY_REQUIRED: &str = "identity_required";
    /// The canvas takes placements only from signed-in people (sign-in mode).
    pub const SIGN_IN_REQUIRED: &str = "sign_in_required";
}

/// What a client sends, as a JSON text message. Unknown fields are ignored.
///
/// The derive (`remote = "Self"`) makes an inherent `ClientMessage::deserialize`; the
/// `Deserialize` impl below calls it for JSON objects only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(remote = "Self", tag = "type", rename_all = "camelCase")]
pub enum ClientMessage {
    /// Place a pixel: `color` is a palette index. `id`, when given, is echoed in the answer.
    Place {
        x: i64,
        y: i64,
        color: i64,
        #[serde(default)]
        id: Option<u64>,
    },
    /// Undo this person's last placement, within the canvas's undo window.
    Undo {
        #[serde(default)]
        id: Option<u64>,
    },
}

impl ClientMessage {
    /// The `id` to echo in the answer.
    pub fn id(&self) -> Option<u64> {
        match self {
            Self::Place { id, .. } | Self::Undo { id } => *id,
        }
    }
}

impl<'de> Deserialize<'de> for ClientMessage {
    /// Only the documented form, a JSON object: serde's tagged enums also read a sequence
    /// (`["place", x, y, color]`), which the protocol does not define.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;

        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = ClientMessage;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object with a \"type\"")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ClientMessage, A::Error> {
                ClientMessage::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer.deserialize_map(ObjectOnly)
    }
}

/// Why a client must refetch the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefetchReason {
    /// It asked for more missed updates than `PIXEL_WS_RESYNC_MAX`.
    TooFarBehind,
    /// History no longer reaches back to its version (or the canvas is behind it).
    HistoryGone,
    /// The history could not be read.
    HistoryUnavailable,
    /// The gateway itself lost updates it could not recover.
    Gap,
}

/// The public side of an identity, as the hello tells it to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityInfo {
    /// `anonymous` (a random identity in a signed cookie) or `signed_in` (OpenID Connect).
    pub kind: &'static str,
    /// The handle shown for this identity's placements.
    pub handle: String,
    /// A signed-in person's display name, as their provider gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The canvas's settings, as the hello carries them (the fields of `GET /api/v1/info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CanvasInfo {
    pub width: u16,
    pub height: u16,
    pub palette: Vec<String>,
    pub cooldown_seconds: u32,
    /// Seconds a person may undo their last placement (0: undo is off).
    pub undo_seconds: u32,
    /// Frozen: placements are refused with `canvas_closed`.
    pub read_only: bool,
    /// When placements open, ms since the Unix epoch (null: open already).
    pub opens_at_ms: Option<u64>,
    /// When placements close, ms since the Unix epoch (null: never).
    pub closes_at_ms: Option<u64>,
}

/// What the gateway sends as JSON text messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage {
    /// The first message of every connection.
    Hello {
        protocol: u32,
        /// Who this connection places as; `null` for a watcher.
        identity: Option<IdentityInfo>,
        /// Whether the canvas takes only signed-in people (its page offers sign-in).
        sign_in: bool,
        /// How long this identity's cooldown still runs, in ms (0 when it does not).
        cooldown_ms: u64,
        /// How long its last placement may still be undone, in ms (0: nothing to undo).
        undo_ms: u64,
        version: u64,
        #[serde(flatten)]
        canvas: CanvasInfo,
        online: u64,
    },
    /// A placement was accepted: the canvas version it produced.
    Placed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        version: u64,
        placed_at_ms: u64,
    },
    /// An undo was done: the pixel has `color` again, as canvas version `version`.
    Undone {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        version: u64,
        x: u16,
        y: u16,
        color: u8,
    },
    /// A message was refused.
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: String,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The cluster-wide number of connected clients.
    Online { count: u64 },
    /// Fetch the snapshot again; update frames continue after `version`.
    Refetch { version: u64, reason: RefetchReason },
}

impl ServerMessage {
    /// An error answer to the message with `id`.
    pub fn error(id: Option<u64>, code: &str, message: impl Into<String>) -> Self {
        Self::Error {
            id,
            code: code.to_owned(),
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail; the fallback keeps the type total.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn json_of(message: &ServerMessage) -> Value {
        serde_json::from_str(&message.to_json()).expect("JSON")
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let canvas = CanvasInfo {
            width: 3,
            height: 2,
            palette: vec!["#FFFFFF".into(), "#000000".into()],
            cooldown_seconds: 5,
            undo_seconds: 5,
            read_only: false,
            opens_at_ms: None,
            closes_at_ms: Some(1_800_000_000_000),
        };
        let hello = ServerMessage::Hello {
            protocol: 2,
            identity: Some(IdentityInfo {
                kind: "anonymous",
                handle: "anon-0a1b2c3d".into(),
                name: None,
            }),
            sign_in: false,
            cooldown_ms: 1500,
            undo_ms: 800,
            version: 7,
            canvas: canvas.clone(),
            online: 9,
        };
        assert_eq!(
            json_of(&hello),
            json!({"type": "hello", "protocol": 2,
                   "identity": {"kind": "anonymous", "handle": "anon-0a1b2c3d"}, "signIn": false, "cooldownMs": 1500,
                   "undoMs": 800, "version": 7, "width": 3, "height": 2, "palette": ["#FFFFFF", "#000000"],
                   "cooldownSeconds": 5, "undoSeconds": 5, "readOnly": false,
                   "opensAtMs": null, "closesAtMs": 1_800_000_000_000_u64, "online": 9})
        );
        let watcher = ServerMessage::Hello {
            protocol: 2,
            identity: None,
            sign_in: true,
            cooldown_ms: 0,
            undo_ms: 0,
            version: 7,
            canvas,
            online: 9,
        };
        assert_eq!(json_of(&watcher)["identity"], Value::Null);
        assert_eq!(json_of(&watcher)["signIn"], true);
        let signed_in = IdentityInfo {
            kind: "signed_in",
            handle: "user-0a1b2c3d".into(),
            name: Some("Ada".into()),
        };
        assert_eq!(
            serde_json::to_value(&signed_in).expect("json"),
            json!({"kind": "signed_in", "handle": "user-0a1b2c3d", "name": "Ada"})
        );
        assert_eq!(
            json_of(&ServerMessage::Placed {
                id: Some(4),
                version: 8,
                placed_at_ms: 1
            }),
            json!({"type": "placed", "id": 4, "version": 8, "placedAtMs": 1})
        );
        assert_eq!(
            json_of(&ServerMessage::Error {
                id: None,
                code: "cooldown".into(),
                message: "wait".into(),
                retry_after_ms: Some(3000)
            }),
            json!({"type": "error", "code": "cooldown", "message": "wait", "retryAfterMs": 3000})
        );
        assert_eq!(
            json_of(&ServerMessage::Undone {
                id: Some(5),
                version: 9,
                x: 1,
                y: 2,
                color: 0
            }),
            json!({"type": "undone", "id": 5, "version": 9, "x": 1, "y": 2, "color": 0})
        );
        assert_eq!(
            json_of(&ServerMessage::Online { count: 3 }),
            json!({"type": "online", "count": 3})
        );
        assert_eq!(
            json_of(&ServerMessage::Refetch {
                version: 12,
                reason: RefetchReason::TooFarBehind
            }),
            json!({"type": "refetch", "version": 12, "reason": "too_far_behind"})
        );
    }

    #[test]
    fn client_messages_parse_or_fail() {
        let place: ClientMessage =
            serde_json::from_str(r#"{"type":"place","x":1,"y":2,"color":3,"id":9,"extra":0}"#)
                .expect("valid");
        assert_eq!(
            place,
            ClientMessage::Place {
                x: 1,
                y: 2,
                color: 3,
                id: Some(9)
            }
        );
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"undo","id":3}"#).ok(),
            Some(ClientMessage::Undo { id: Some(3) })
        );
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"undo"}"#).ok(),
            Some(ClientMessage::Undo { id: None })
        );
        for bad in [
            "",
            "{}",
            r#"["undo"]"#,
            r#"{"type":"place","x":1,"y":2}"#,
            r#"{"type":"place","x":1.5,"y":2,"color":0}"#,
            r#"{"type":"erase","x":1,"y":2,"color":0}"#,
            "[1,2,3]",
            // Serde's tagged enums read this sequence form; the protocol has objects only
            // (found by the client_message fuzz target).
            r#"["place",3,1,0,3]"#,
            r#"["place",3,1,0]"#,
        ] {
            assert!(
                serde_json::from_str::<ClientMessage>(bad).is_err(),
                "{bad:?}"
            );
        }
    }
}
