//! What the fuzz targets check, and the valid inputs the committed seed corpus holds.
//!
//! The checks live here rather than in `fuzz_targets/` so the seed writer
//! (`cargo run --example write_seeds`) runs every seed through them: a seed that fails its own
//! target's check is caught before it is committed.

use gateway::protocol::ClientMessage;
use pixel_common::{
    canvas::CanvasSize,
    wire::{MAX_FRAME_UPDATES, PixelUpdate, Snapshot, UpdateFrame},
};
use serde_json::{Value, json};

/// `Snapshot::decode` never panics; what it accepts encodes back to the same bytes. The
/// format is canonical (docs/protocol.md: fixed header, exactly `W*H` pixel bytes, one
/// encoding per field), so byte identity is the round trip, and it implies
/// `decode(encode(s)) == s`.
pub fn check_snapshot(bytes: &[u8]) {
    let Ok(snapshot) = Snapshot::decode(bytes) else {
        return;
    };
    let encoded = snapshot.encode();
    // Lengths, not contents, in the message: a snapshot can be megabytes.
    assert!(
        encoded == bytes,
        "accepted snapshot re-encodes differently ({} bytes in, {} out)",
        bytes.len(),
        encoded.len()
    );
}

/// `UpdateFrame::decode` never panics; what it accepts encodes back to the same bytes (the
/// format is canonical, as above) and covers `count` contiguous versions. The encoding carries
/// only the first version, so the range is checked separately.
pub fn check_frame(bytes: &[u8]) {
    let Ok(frame) = UpdateFrame::decode(bytes) else {
        return;
    };
    let encoded = frame.encode();
    assert!(
        encoded == bytes,
        "accepted frame re-encodes differently ({} bytes in, {} out)",
        bytes.len(),
        encoded.len()
    );
    let (first, last) = frame.versions();
    let count = u64::try_from(frame.updates().len()).unwrap_or(u64::MAX);
    assert_eq!(
        last.checked_sub(first).and_then(|span| span.checked_add(1)),
        Some(count),
        "frame versions {first}..={last} do not cover its {count} updates"
    );
}

/// serde_json's private map key for raw values.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// The gateway's parse of a client text message: `serde_json::from_str::<ClientMessage>`, the
/// exact call `socket.rs` makes. It never panics, and what it accepts agrees with the message
/// read as untyped JSON (the fields the socket forwards have the values the text holds).
pub fn check_client_message(bytes: &[u8]) {
    // The socket only parses text messages, which the WebSocket layer has checked are UTF-8.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(ClientMessage::Place { x, y, color, id }) = serde_json::from_str::<ClientMessage>(text)
    else {
        return;
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        // With its `raw_value` feature (a dependency enables it), serde_json reads an object
        // whose key is its private token `$serde_json::private::RawValue` as a raw value
        // when it builds an untyped `Value`; the typed parse ignores that key like any
        // unknown field. There is no untyped reading to compare with then.
        Err(_) if text.contains(RAW_VALUE_TOKEN) => return,
        Err(error) => panic!("accepted message is not JSON: {error}"),
    };
    let field = |name: &str| value.get(name);
    assert_eq!(field("x").and_then(Value::as_i64), Some(x), "x");
    assert_eq!(field("y").and_then(Value::as_i64), Some(y), "y");
    assert_eq!(field("color").and_then(Value::as_i64), Some(color), "color");
    assert_eq!(field("id").and_then(Value::as_u64), id, "id");
}

/// The check of the target called `target`.
pub fn check_for(target: &str) -> Option<fn(&[u8])> {
    match target {
        "snapshot_decode" => Some(check_snapshot),
        "frame_decode" => Some(check_frame),
        "client_message" => Some(check_client_message),
        _ => None,
    }
}

/// One seed: its target, a file name that says what it is, and its bytes.
#[derive(Debug)]
pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

impl Seed {
    /// Runs the seed through its target's check, and panics unless its target accepts it
    /// (or rejects it, for a near-miss).
    pub fn verify(&self) {
        let check =
            check_for(self.target).unwrap_or_else(|| panic!("seed {} names no target", self.name));
        check(&self.bytes);
        let accepted = match self.target {
            "snapshot_decode" => Snapshot::decode(&self.bytes).is_ok(),
            "frame_decode" => UpdateFrame::decode(&self.bytes).is_ok(),
            _ => serde_json::from_slice::<ClientMessage>(&self.bytes).is_ok(),
        };
        let near_miss = self.name.starts_with("near-miss");
        assert!(
            accepted != near_miss,
            "seed {}/{}: accepted {accepted}",
            self.target,
            self.name
        );
    }
}

/// Valid inputs for every target, built with the encoders the services use, plus a few
/// near-misses for the client parser's error paths. Each target's sizes stay small (the whole
/// corpus is committed) but reach the format's edges: the smallest canvas, the longest
/// palette, a side at its maximum, the largest frame.
pub fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut snapshot = |name, (width, height): (u32, u32), palette_len: u8, version| {
        let size = CanvasSize::new(width, height).expect("seed sizes are in range");
        let pixels = (0..size.pixel_count())
            .map(|i| u8::try_from(i % usize::from(palette_len)).unwrap_or(0))
            .collect();
        let snapshot =
            Snapshot::new(version, size, palette_len, pixels).expect("seed snapshots are valid");
        seeds.push(Seed {
            target: "snapshot_decode",
            name,
            bytes: snapshot.encode(),
        });
    };
    snapshot("smallest-1x1-2-colours", (1, 1), 2, 0);
    snapshot("3x2-16-colours", (3, 2), 16, 0x0102);
    snapshot("64x64-32-colours", (64, 64), 32, 100_000);
    snapshot("widest-4096x1", (4096, 1), 16, u64::MAX);
    snapshot("tallest-1x4096", (1, 4096), 2, 1);

    let mut frame = |name, first: u64, cells: &[(u16, u16, u8)]| {
        // Not `zip(first..)`: a RangeFrom at u64::MAX overflows when it yields its last value.
        let updates = (0u64..)
            .zip(cells)
            .map(|(offset, &(x, y, color))| PixelUpdate {
                version: first.checked_add(offset).expect("seed versions fit a u64"),
                x,
                y,
                color,
            })
            .collect();
        let frame = UpdateFrame::new(updates).expect("seed frames are valid");
        seeds.push(Seed {
            target: "frame_decode",
            name,
            bytes: frame.encode(),
        });
    };
    frame("one-update", 1, &[(0, 0, 1)]);
    frame("two-updates", 5, &[(1, 2, 3), (0x0102, 0, 31)]);
    frame("last-version", u64::MAX, &[(4095, 4095, 15)]);
    let diagonal: Vec<_> = (0..MAX_FRAME_UPDATES)
        .map(|i| {
            let i = u16::try_from(i).unwrap_or(u16::MAX);
            (i, i, u8::try_from(i % 32).unwrap_or(0))
        })
        .collect();
    frame("most-updates", 42, &diagonal);

    let mut message = |name, text: String| {
        seeds.push(Seed {
            target: "client_message",
            name,
            bytes: text.into_bytes(),
        });
    };
    // `json!` sorts keys; the page (services/frontend/assets/app.js) sends `type` first.
    message(
        "place-as-the-page-sends-it",
        r#"{"type":"place","x":10,"y":20,"color":5,"id":1}"#.to_owned(),
    );
    message(
        "place",
        json!({"type": "place", "x": 1, "y": 2, "color": 3}).to_string(),
    );
    let extra = json!([1, {"a": null}]);
    message(
        "place-with-id-and-extra-field",
        json!({"type": "place", "x": 4095, "y": 0, "color": 31, "id": 9, "extra": extra})
            .to_string(),
    );
    message(
        "place-null-id-negative-coordinates",
        json!({"type": "place", "x": -1, "y": i64::MIN, "color": i64::MAX, "id": null}).to_string(),
    );
    message(
        "place-largest-id",
        json!({"id": u64::MAX, "color": 0, "y": 7, "x": 7, "type": "place"}).to_string(),
    );
    message(
        "near-miss-float-coordinate",
        json!({"type": "place", "x": 1.5, "y": 2, "color": 0}).to_string(),
    );
    message(
        "near-miss-unknown-type",
        json!({"type": "erase", "x": 1, "y": 2, "color": 0}).to_string(),
    );
    message(
        "near-miss-missing-colour",
        json!({"type": "place", "x": 1, "y": 2}).to_string(),
    );
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_accepted_and_pass_their_checks() {
        seeds().iter().for_each(Seed::verify);
    }
}
