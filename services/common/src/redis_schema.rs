//! How the canvas lives in Redis: key names, the update channel and its message format.
//! canvas-api writes them (one Lua script per placement); the gateway subscribes and reads
//! the history. Documented in `docs/protocol.md`.

use crate::wire::PixelUpdate;

/// String: one byte per pixel (a palette index), row-major; shorter than the canvas when
/// the last pixels were never placed (missing bytes are colour 0).
pub const PIXELS_KEY: &str = "canvas:pixels";
/// Integer: the canvas version, bumped by one per placement. Absent means 0.
pub const VERSION_KEY: &str = "canvas:version";
/// Hash: pixel index → `"<version> <placed-at ms> <client id>"` of the last placement there.
pub const PLACED_KEY: &str = "canvas:placed";
/// Stream: one entry per placement, with ID `<version>-0` and fields `x y c id t p` (`p`:
/// the colour it replaced), and `k` (`u` undo, `r` rollback) when it is not a person's
/// placement; trimmed to a configured length.
pub const HISTORY_KEY: &str = "canvas:history";
/// Prefix of per-client cooldown keys (`SET NX PX`), followed by the client id.
pub const COOLDOWN_KEY_PREFIX: &str = "canvas:cooldown:";
/// Hash: banned player (public name) → `ban` (placements refused) or `shadow` (answered as
/// placed, nothing written).
pub const BANS_KEY: &str = "canvas:bans";
/// Stream: one entry per moderation action (ID by Redis's clock), fields `by`, `action`
/// (`ban`, `unban`, `rollback`) and `detail` (JSON); about 10,000 kept.
pub const AUDIT_KEY: &str = "canvas:audit";
/// Prefix of per-client placement-rate keys, followed by the client id: the theoretical
/// arrival time of the client's placements (GCRA), in µs since the Unix epoch by Redis's
/// clock; its whole burst is allowed again from then on, and the key expires then.
pub const RATE_KEY_PREFIX: &str = "canvas:rate:";
/// Prefix of placement answers kept for a retry, followed by `<client id>:<idempotency
/// key>`: `"<version> <placed at ms>"` of an accepted placement, expiring after
/// [`PLACEMENT_KEY_TTL`].
pub const PLACEMENT_KEY_PREFIX: &str = "canvas:placement:";
/// How long a placement's answer is kept for a retry: far longer than the gateway's request
/// timeout and its one retry.
pub const PLACEMENT_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Prefix of per-client undo records, followed by the client id: the client's last
/// placement as `"<index> <x> <y> <version> <colour before> <record before>"` (the record as
/// in [`PLACED_KEY`], empty when there was none), expiring with the undo window.
pub const UNDO_KEY_PREFIX: &str = "canvas:undo:";
/// Prefix of the per-address counters of issued identities (`INCR`, expiring with the
/// issuance window), followed by the client address.
pub const IDENTITIES_ISSUED_KEY_PREFIX: &str = "canvas:identities:issued:";
/// Hash: a signed-in identity → the display name its provider gave at its last sign-in
/// (shown in the pixel info beside the handle).
pub const NAMES_KEY: &str = "canvas:names";
/// Pub/sub channel where each placement is published as [`update_message`].
pub const UPDATES_CHANNEL: &str = "canvas:updates";
/// Hash: gateway id → `"<connections> <expires-at ms>"`, refreshed by each gateway; the
/// cluster-wide online count is the sum of the entries not yet expired (by Redis's clock).
pub const ONLINE_KEY: &str = "canvas:online";

/// Why a pub/sub message is not an update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("update message {message:?} is not \"<version> <x> <y> <colour>\"")]
pub struct MessageError {
    message: String,
}

/// The text published per placement: `"<version> <x> <y> <colour>"` in decimal.
pub fn update_message(update: &PixelUpdate) -> String {
    format!(
        "{} {} {} {}",
        update.version, update.x, update.y, update.color
    )
}

/// Reads a message published on [`UPDATES_CHANNEL`].
pub fn parse_update_message(message: &[u8]) -> Result<PixelUpdate, MessageError> {
    let error = || MessageError {
        message: String::from_utf8_lossy(message).into_owned(),
    };
    let text = std::str::from_utf8(message).map_err(|_| error())?;
    let mut parts = text.split(' ');
    let mut next = || parts.next().ok_or_else(error);
    let update = PixelUpdate {
        version: next()?.parse().map_err(|_| error())?,
        x: next()?.parse().map_err(|_| error())?,
        y: next()?.parse().map_err(|_| error())?,
        color: next()?.parse().map_err(|_| error())?,
    };
    if parts.next().is_some() {
        return Err(error());
    }
    Ok(update)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_are_four_decimal_numbers() {
        let update = PixelUpdate {
            version: 42,
            x: 3,
            y: 999,
            color: 15,
        };
        assert_eq!(update_message(&update), "42 3 999 15");
        for bad in ["", "1 2 3", "1 2 3 4 5", "1 2 3 256", "a 2 3 4", "1  2 3 4"] {
            assert!(parse_update_message(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse_update_message(&[0xff, b' ']).is_err());
    }

    proptest! {
        #[test]
        fn messages_round_trip(version in any::<u64>(), x in any::<u16>(), y in any::<u16>(), color in any::<u8>()) {
            let update = PixelUpdate { version, x, y, color };
            prop_assert_eq!(parse_update_message(update_message(&update).as_bytes()), Ok(update));
        }
    }
}
