//! Planning a moderator's rollback from the history: which pixels to set to which colour.
//! Pure, so the rules are tested without Redis; `store::Store::roll_back` applies the plan
//! as ordinary placements attributed to the moderator.

use std::collections::BTreeMap;

use pixel_common::canvas::{CanvasSize, Point};

use crate::store::{Change, EntryKind, HistoryEntry};

/// A rectangle of the canvas, already checked to lie on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
}

impl Area {
    fn contains(&self, x: u16, y: u16) -> bool {
        (self.x..self.x.saturating_add(self.width)).contains(&x)
            && (self.y..self.y.saturating_add(self.height)).contains(&y)
    }
}

/// The history does not hold what the rollback needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the history no longer reaches back to version {since}: it cannot say what the pixels were then"
    )]
    Gone { since: u64 },
    #[error(
        "history entry {version} predates the recording of replaced colours; roll back to a later point"
    )]
    NoPrevious { version: u64 },
}

/// What one pixel went through in the entries planned over.
struct Pixel {
    x: u16,
    y: u16,
    /// What the rollback puts back.
    target: u8,
    /// Its colour after the last entry.
    current: u8,
    /// Whether that last entry is one the rollback takes back.
    take_back: bool,
}

fn plan(
    entries: &[HistoryEntry],
    size: CanvasSize,
    mut wanted: impl FnMut(&HistoryEntry) -> bool,
    mut take_back: impl FnMut(&HistoryEntry) -> bool,
) -> Result<Vec<Change>, PlanError> {
    let mut pixels: BTreeMap<usize, Pixel> = BTreeMap::new();
    for entry in entries.iter().filter(|e| wanted(e)) {
        let index = size.index(Point {
            x: entry.x,
            y: entry.y,
        });
        let previous = entry.previous.ok_or(PlanError::NoPrevious {
            version: entry.version,
        })?;
        let pixel = pixels.entry(index).or_insert(Pixel {
            x: entry.x,
            y: entry.y,
            target: previous,
            current: previous,
            take_back: false,
        });
        pixel.take_back = take_back(entry);
        if !pixel.take_back {
            // What stays: the rollback restores up to here, not before.
            pixel.target = entry.color;
        }
        pixel.current = entry.color;
    }
    Ok(pixels
        .into_iter()
        .filter(|(_, p)| p.take_back && p.target != p.current)
        .map(|(index, p)| Change {
            index,
            x: p.x,
            y: p.y,
            color: p.target,
            expected: p.current,
        })
        .collect())
}

/// Puts every pixel of `area` back to its colour at version `since`. `entries` are the
/// history after `since`, oldest first; they must start at `since + 1` unless the canvas is
/// still at `since` (`current`).
pub fn area_to_version(
    entries: &[HistoryEntry],
    since: u64,
    current: u64,
    area: Area,
    size: CanvasSize,
) -> Result<Vec<Change>, PlanError> {
    if since < current && entries.first().map(|e| e.version) != Some(since + 1) {
        return Err(PlanError::Gone { since });
    }
    plan(entries, size, |e| area.contains(e.x, e.y), |_| true)
}

/// Takes back every placement `player` (a public name) made from `since_ms` on, wherever
/// it still shows: such a pixel gets the colour of the last placement by someone else, or
/// the one it had before `player` began. Pixels others placed over since are left alone.
/// `entries` are the whole history kept, oldest first.
pub fn player_since(
    entries: &[HistoryEntry],
    player: &str,
    since_ms: u64,
    size: CanvasSize,
) -> Result<Vec<Change>, PlanError> {
    let after = after_time(entries, since_ms)?;
    plan(
        after,
        size,
        |_| true,
        // History entries name the placer publicly (`placedBy`), as moderators know them.
        |e| e.kind != EntryKind::Rollback && e.placed_by == player,
    )
}

/// The entries placed at `since_ms` or later, when the kept history reaches back that far.
pub fn after_time(entries: &[HistoryEntry], since_ms: u64) -> Result<&[HistoryEntry], PlanError> {
    let start = entries.partition_point(|e| e.placed_at_ms < since_ms);
    if start == 0
        && let Some(first) = entries.first()
        && first.version > 1
    {
        // The entry before the first kept one may be from after `since_ms`, too.
        return Err(PlanError::Gone {
            since: first.version - 1,
        });
    }
    Ok(&entries[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size() -> CanvasSize {
        CanvasSize::new(8, 4).expect("size")
    }

    /// `(x, y, colour, by, previous)` from version `first` on, one ms apart from 1000.
    fn entries(first: u64, list: &[(u16, u16, u8, &str, u8)]) -> Vec<HistoryEntry> {
        list.iter()
            .enumerate()
            .map(|(k, &(x, y, color, by, previous))| HistoryEntry {
                version: first + k as u64,
                x,
                y,
                color,
                placed_by: by.to_owned(),
                placed_at_ms: 1000 + first + k as u64,
                kind: EntryKind::Place,
                previous: Some(previous),
            })
            .collect()
    }

    #[test]
    fn an_area_goes_back_to_its_colours_at_the_version() {
        // Before version 3: (1,1) was 2, (2,1) was 0. Then vandalism, and a pixel outside.
        let history = entries(
            3,
            &[
                (1, 1, 5, "vandal", 2),
                (1, 1, 6, "vandal", 5),
                (2, 1, 7, "vandal", 0),
                (7, 3, 1, "vandal", 0),
                (2, 1, 0, "fixer", 7),
            ],
        );
        let area = Area {
            x: 0,
            y: 0,
            width: 4,
            height: 2,
        };
        let changes = area_to_version(&history, 2, 7, area, size()).expect("complete");
        assert_eq!(
            changes,
            [Change {
                index: 9,
                x: 1,
                y: 1,
                color: 2,
                expected: 6
            }],
            "(2,1) is already back to 0; (7,3) is outside"
        );
        assert_eq!(
            area_to_version(&history[1..], 2, 7, area, size()),
            Err(PlanError::Gone { since: 2 })
        );
        assert_eq!(area_to_version(&[], 7, 7, area, size()), Ok(vec![]));
    }

    #[test]
    fn a_players_placements_are_taken_back_where_they_still_show() {
        let history = entries(
            1,
            &[
                (0, 0, 3, "anon-good", 0),
                (0, 0, 9, "anon-bad", 3),
                (1, 0, 9, "anon-bad", 0),
                (1, 0, 4, "anon-good", 9),
                (2, 0, 9, "anon-bad", 0),
                (2, 0, 8, "anon-bad", 9),
            ],
        );
        let changes = player_since(&history, "anon-bad", 0, size()).expect("complete");
        assert_eq!(
            changes,
            [
                Change {
                    index: 0,
                    x: 0,
                    y: 0,
                    color: 3,
                    expected: 9
                },
                Change {
                    index: 2,
                    x: 2,
                    y: 0,
                    color: 0,
                    expected: 8
                },
            ],
            "(1,0) was placed over by someone else: theirs stands"
        );
        // From a time after the first bad placement, only later ones go.
        let later = player_since(&history, "anon-bad", 1000 + 3, size()).expect("complete");
        assert_eq!(later.iter().map(|c| c.index).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_history_that_does_not_reach_back_or_lacks_colours_is_refused() {
        let trimmed = entries(10, &[(0, 0, 1, "anon-bad", 0)]);
        assert_eq!(
            player_since(&trimmed, "anon-bad", 0, size()),
            Err(PlanError::Gone { since: 9 })
        );
        let mut old = entries(1, &[(0, 0, 1, "anon-bad", 0)]);
        old[0].previous = None;
        assert_eq!(
            player_since(&old, "anon-bad", 0, size()),
            Err(PlanError::NoPrevious { version: 1 })
        );
    }
}
