//! When the canvas takes placements: always, unless it is frozen (`spec.canvas.readOnly`)
//! or outside its schedule (`spec.canvas.schedule`). canvas-api refuses placements and
//! undos while it is closed (`canvas_closed`); the gateway's hello tells the page, which
//! counts down to the opening or shows that it has ended.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The canvas's opening hours, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opening {
    pub read_only: bool,
    /// Placements are refused before this instant.
    pub opens_at_ms: Option<u64>,
    /// Placements are refused from this instant on.
    pub closes_at_ms: Option<u64>,
}

/// Why the canvas refuses placements now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    ReadOnly,
    NotYetOpen { opens_at_ms: u64 },
    Ended { closed_at_ms: u64 },
}

/// The schedule ends before it starts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the canvas's schedule closes ({closes}) before it opens ({opens})")]
pub struct ScheduleError {
    opens: String,
    closes: String,
}

impl Opening {
    /// A checked opening: the end, when both are set, comes after the start.
    pub fn new(
        read_only: bool,
        opens_at: Option<jiff::Timestamp>,
        closes_at: Option<jiff::Timestamp>,
    ) -> Result<Self, ScheduleError> {
        if let (Some(opens), Some(closes)) = (opens_at, closes_at)
            && closes <= opens
        {
            return Err(ScheduleError {
                opens: opens.to_string(),
                closes: closes.to_string(),
            });
        }
        // Instants before 1970 are as good as "already".
        let ms = |t: jiff::Timestamp| u64::try_from(t.as_millisecond()).unwrap_or(0);
        Ok(Self {
            read_only,
            opens_at_ms: opens_at.map(ms),
            closes_at_ms: closes_at.map(ms),
        })
    }

    /// Why the canvas is closed at `now_ms`, or `None` while it is open.
    pub fn closed_at(&self, now_ms: u64) -> Option<Closed> {
        if self.read_only {
            return Some(Closed::ReadOnly);
        }
        if let Some(opens_at_ms) = self.opens_at_ms.filter(|opens| now_ms < *opens) {
            return Some(Closed::NotYetOpen { opens_at_ms });
        }
        self.closes_at_ms
            .filter(|closes| now_ms >= *closes)
            .map(|closed_at_ms| Closed::Ended { closed_at_ms })
    }

    /// Why the canvas is closed now, by this machine's clock.
    pub fn closed_now(&self) -> Option<Closed> {
        self.closed_at(now_ms())
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| format!("{ms} ms after 1970"), |t| t.to_string())
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadOnly => f.write_str("the canvas is frozen: it takes no placements for now"),
            Self::NotYetOpen { opens_at_ms } => {
                write!(f, "the canvas opens at {}", rfc3339(*opens_at_ms))
            }
            Self::Ended { closed_at_ms } => {
                write!(f, "the canvas closed at {}", rfc3339(*closed_at_ms))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().expect("RFC 3339")
    }

    #[test]
    fn open_between_start_and_end_and_never_when_read_only() {
        let opening = Opening::new(
            false,
            Some(at("2026-12-01T10:00:00Z")),
            Some(at("2026-12-01T12:00:00+01:00")),
        )
        .expect("ordered");
        let start = opening.opens_at_ms.expect("start");
        let end = opening.closes_at_ms.expect("end");
        assert_eq!(end - start, 3_600_000, "the offset is honoured");
        assert_eq!(
            opening.closed_at(start - 1),
            Some(Closed::NotYetOpen { opens_at_ms: start })
        );
        assert_eq!(opening.closed_at(start), None);
        assert_eq!(opening.closed_at(end - 1), None);
        assert_eq!(
            opening.closed_at(end),
            Some(Closed::Ended { closed_at_ms: end })
        );
        let frozen = Opening {
            read_only: true,
            ..opening
        };
        assert_eq!(frozen.closed_at(start + 1), Some(Closed::ReadOnly));
        assert_eq!(Opening::default().closed_at(0), None);
        assert_eq!(Opening::default().closed_now(), None);
    }

    #[test]
    fn a_schedule_that_ends_before_it_starts_is_refused() {
        let start = at("2026-12-01T10:00:00Z");
        assert!(Opening::new(false, Some(start), Some(start)).is_err());
        assert!(Opening::new(false, Some(start), Some(at("2026-12-01T09:00:00Z"))).is_err());
        assert!(Opening::new(false, None, Some(start)).is_ok());
    }

    #[test]
    fn messages_name_the_instant() {
        let closed = Closed::NotYetOpen {
            opens_at_ms: 1_764_583_200_000,
        };
        assert_eq!(
            closed.to_string(),
            "the canvas opens at 2025-12-01T10:00:00Z"
        );
    }
}
