//! The binary formats on the wire: the canvas snapshot and the pixel-update frame. Both are
//! laid out byte by byte in `docs/protocol.md`; integers are big-endian.
//!
//! Decoders take untrusted bytes: every malformed input is a typed error, never a panic.

use crate::canvas::{
    CanvasSize, ColorIndex, GeometryError, MAX_COLORS, MIN_COLORS, Palette, Point,
};

/// The first four bytes of a snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"PXSN";
/// The snapshot layout this code writes and reads.
pub const SNAPSHOT_FORMAT: u8 = 1;
/// Bytes before the pixels: magic, format, palette length, width, height, version.
pub const SNAPSHOT_HEADER_LEN: usize = 4 + 1 + 1 + 2 + 2 + 8;
/// The media type of a snapshot.
pub const SNAPSHOT_CONTENT_TYPE: &str = "application/vnd.pixel-playground.snapshot";

/// The first byte of a pixel-update frame.
pub const FRAME_TYPE_UPDATES: u8 = 0x01;
/// The frame layout this code writes and reads.
pub const FRAME_FORMAT: u8 = 1;
/// Bytes before the updates: type, format, first version, count.
pub const FRAME_HEADER_LEN: usize = 1 + 1 + 8 + 2;
/// Bytes per update in a frame: x, y, colour.
pub const FRAME_UPDATE_LEN: usize = 2 + 2 + 1;
/// The most updates one frame may carry.
pub const MAX_FRAME_UPDATES: usize = 4096;

/// Why bytes are not a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is {len} bytes, shorter than its {SNAPSHOT_HEADER_LEN}-byte header")]
    Truncated { len: usize },
    #[error("snapshot does not start with the magic bytes \"PXSN\"")]
    BadMagic,
    #[error("snapshot format {0} is not supported (this build reads format {SNAPSHOT_FORMAT})")]
    UnsupportedFormat(u8),
    #[error("snapshot palette length {0} is outside {MIN_COLORS}..={MAX_COLORS}")]
    BadPaletteLength(u8),
    #[error("snapshot size is invalid")]
    BadSize(#[source] GeometryError),
    #[error("snapshot has {actual} pixel bytes, its size needs {expected}")]
    LengthMismatch { expected: usize, actual: usize },
    #[error("pixel {index} has colour {color}, outside the palette of {palette_len}")]
    UnknownColor {
        index: usize,
        color: u8,
        palette_len: u8,
    },
}

/// The whole canvas at one version: one palette index per pixel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    version: u64,
    size: CanvasSize,
    palette_len: u8,
    pixels: Vec<ColorIndex>,
}

impl Snapshot {
    /// Checks that there is one pixel per point and each is a palette index.
    pub fn new(
        version: u64,
        size: CanvasSize,
        palette_len: u8,
        pixels: Vec<ColorIndex>,
    ) -> Result<Self, SnapshotError> {
        if !(MIN_COLORS..=MAX_COLORS).contains(&usize::from(palette_len)) {
            return Err(SnapshotError::BadPaletteLength(palette_len));
        }
        if pixels.len() != size.pixel_count() {
            return Err(SnapshotError::LengthMismatch {
                expected: size.pixel_count(),
                actual: pixels.len(),
            });
        }
        if let Some((index, &color)) = pixels.iter().enumerate().find(|(_, c)| **c >= palette_len) {
            return Err(SnapshotError::UnknownColor {
                index,
                color,
                palette_len,
            });
        }
        Ok(Self {
            version,
            size,
            palette_len,
            pixels,
        })
    }

    /// A snapshot of stored pixel bytes, made to fit: missing trailing pixels are colour 0,
    /// bytes past the canvas (it was larger before) are dropped, and indices outside the
    /// palette (it was longer before) read as colour 0.
    pub fn from_stored(
        version: u64,
        size: CanvasSize,
        palette: &Palette,
        mut pixels: Vec<u8>,
    ) -> Self {
        let palette_len = palette.len();
        pixels.resize(size.pixel_count(), 0);
        for pixel in &mut pixels {
            if *pixel >= palette_len {
                *pixel = 0;
            }
        }
        Self {
            version,
            size,
            palette_len,
            pixels,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn size(&self) -> CanvasSize {
        self.size
    }

    pub fn palette_len(&self) -> u8 {
        self.palette_len
    }

    pub fn pixels(&self) -> &[ColorIndex] {
        &self.pixels
    }

    /// The colour at a point of this snapshot's canvas.
    pub fn pixel(&self, point: Point) -> ColorIndex {
        self.pixels
            .get(self.size.index(point))
            .copied()
            .unwrap_or(0)
    }

    /// The header followed by the pixels.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + self.pixels.len());
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_FORMAT);
        out.push(self.palette_len);
        out.extend_from_slice(&self.size.width().to_be_bytes());
        out.extend_from_slice(&self.size.height().to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.pixels);
        out
    }

    /// Reads and checks a snapshot.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let (header, pixels) = bytes
            .split_first_chunk::<SNAPSHOT_HEADER_LEN>()
            .ok_or(SnapshotError::Truncated { len: bytes.len() })?;
        let mut r = Reader(header);
        if r.array::<4>() != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let format = r.u8();
        if format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::UnsupportedFormat(format));
        }
        let palette_len = r.u8();
        let width = r.u16();
        let height = r.u16();
        let version = r.u64();
        let size = CanvasSize::new(width.into(), height.into()).map_err(SnapshotError::BadSize)?;
        Self::new(version, size, palette_len, pixels.to_vec())
    }
}

/// One accepted placement: the canvas version it produced, where, and which colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PixelUpdate {
    pub version: u64,
    pub x: u16,
    pub y: u16,
    pub color: ColorIndex,
}

/// Why bytes are not an update frame, or updates cannot form one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is {len} bytes, shorter than its {FRAME_HEADER_LEN}-byte header")]
    Truncated { len: usize },
    #[error("frame type {0:#04x} is not a pixel-update frame")]
    WrongType(u8),
    #[error("frame format {0} is not supported (this build reads format {FRAME_FORMAT})")]
    UnsupportedFormat(u8),
    #[error("a frame carries 1..={MAX_FRAME_UPDATES} updates, not {0}")]
    BadCount(usize),
    #[error("frame body is {actual} bytes, {count} updates need {expected}")]
    LengthMismatch {
        count: usize,
        expected: usize,
        actual: usize,
    },
    #[error("frame versions must start at 1 and increase by one; got {got} after {after}")]
    NotContiguous { after: u64, got: u64 },
    #[error("frame's version range overflows")]
    VersionOverflow,
}

/// A batch of updates covering a contiguous range of canvas versions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateFrame {
    updates: Vec<PixelUpdate>,
}

impl UpdateFrame {
    /// Checks that there are `1..=MAX_FRAME_UPDATES` updates with versions `n, n+1, …`,
    /// `n ≥ 1`.
    pub fn new(updates: Vec<PixelUpdate>) -> Result<Self, FrameError> {
        if !(1..=MAX_FRAME_UPDATES).contains(&updates.len()) {
            return Err(FrameError::BadCount(updates.len()));
        }
        let mut after = 0u64;
        for (i, update) in updates.iter().enumerate() {
            let contiguous = if i == 0 {
                update.version >= 1
            } else {
                after.checked_add(1) == Some(update.version)
            };
            if !contiguous {
                return Err(FrameError::NotContiguous {
                    after,
                    got: update.version,
                });
            }
            after = update.version;
        }
        Ok(Self { updates })
    }

    pub fn updates(&self) -> &[PixelUpdate] {
        &self.updates
    }

    /// The first and last version the frame covers.
    pub fn versions(&self) -> (u64, u64) {
        let version = |u: Option<&PixelUpdate>| u.map_or(0, |u| u.version);
        (version(self.updates.first()), version(self.updates.last()))
    }

    /// The header followed by the updates.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + self.updates.len() * FRAME_UPDATE_LEN);
        out.push(FRAME_TYPE_UPDATES);
        out.push(FRAME_FORMAT);
        out.extend_from_slice(&self.versions().0.to_be_bytes());
        // The constructor bounds the count by MAX_FRAME_UPDATES, which fits a u16.
        let count = u16::try_from(self.updates.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for update in &self.updates {
            out.extend_from_slice(&update.x.to_be_bytes());
            out.extend_from_slice(&update.y.to_be_bytes());
            out.push(update.color);
        }
        out
    }

    /// Reads and checks a frame. Coordinates and colours are checked against a canvas by
    /// whoever applies the updates.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let (header, body) = bytes
            .split_first_chunk::<FRAME_HEADER_LEN>()
            .ok_or(FrameError::Truncated { len: bytes.len() })?;
        let mut r = Reader(header);
        let kind = r.u8();
        if kind != FRAME_TYPE_UPDATES {
            return Err(FrameError::WrongType(kind));
        }
        let format = r.u8();
        if format != FRAME_FORMAT {
            return Err(FrameError::UnsupportedFormat(format));
        }
        let first = r.u64();
        let count = usize::from(r.u16());
        if !(1..=MAX_FRAME_UPDATES).contains(&count) {
            return Err(FrameError::BadCount(count));
        }
        let expected = count * FRAME_UPDATE_LEN;
        if body.len() != expected {
            return Err(FrameError::LengthMismatch {
                count,
                expected,
                actual: body.len(),
            });
        }
        let updates = body
            .chunks_exact(FRAME_UPDATE_LEN)
            .zip(0u64..)
            .map(|(chunk, offset)| {
                let mut r = Reader(chunk);
                Ok(PixelUpdate {
                    version: first
                        .checked_add(offset)
                        .ok_or(FrameError::VersionOverflow)?,
                    x: r.u16(),
                    y: r.u16(),
                    color: r.u8(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(updates)
    }
}

/// Reads big-endian integers from a slice whose length the caller has checked; reading past
/// the end yields zeros rather than a panic.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        if let Some((head, rest)) = self.0.split_first_chunk::<N>() {
            out = *head;
            self.0 = rest;
        }
        out
    }

    fn u8(&mut self) -> u8 {
        u8::from_be_bytes(self.array())
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn size(w: u32, h: u32) -> CanvasSize {
        CanvasSize::new(w, h).expect("size")
    }

    #[test]
    fn snapshot_layout_is_the_documented_one() {
        let snapshot = Snapshot::new(0x0102, size(3, 2), 16, vec![0, 1, 2, 3, 4, 15]).expect("ok");
        assert_eq!(
            snapshot.encode(),
            [
                b'P', b'X', b'S', b'N', 1, 16, 0, 3, 0, 2, 0, 0, 0, 0, 0, 0, 1, 2, //
                0, 1, 2, 3, 4, 15
            ]
        );
        assert_eq!(snapshot.pixel(Point { x: 2, y: 1 }), 15);
    }

    #[test]
    fn malformed_snapshots_are_typed_errors() {
        let good = Snapshot::new(7, size(2, 2), 4, vec![0, 1, 2, 3])
            .expect("ok")
            .encode();
        let with = |i: usize, b: u8| {
            let mut bytes = good.clone();
            bytes[i] = b;
            Snapshot::decode(&bytes)
        };
        assert_eq!(
            Snapshot::decode(&good[..17]),
            Err(SnapshotError::Truncated { len: 17 })
        );
        assert_eq!(with(0, b'Q'), Err(SnapshotError::BadMagic));
        assert_eq!(with(4, 2), Err(SnapshotError::UnsupportedFormat(2)));
        assert_eq!(with(5, 1), Err(SnapshotError::BadPaletteLength(1)));
        assert_eq!(with(5, 33), Err(SnapshotError::BadPaletteLength(33)));
        assert!(matches!(with(7, 0), Err(SnapshotError::BadSize(_))));
        assert_eq!(
            with(21, 4),
            Err(SnapshotError::UnknownColor {
                index: 3,
                color: 4,
                palette_len: 4
            })
        );
        assert_eq!(
            Snapshot::decode(&good[..21]),
            Err(SnapshotError::LengthMismatch {
                expected: 4,
                actual: 3
            })
        );
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            Snapshot::decode(&long),
            Err(SnapshotError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn stored_pixels_are_fitted_to_the_canvas_and_palette() {
        let palette: Palette = "#000000,#FFFFFF,#FF0000".parse().expect("palette");
        let short = Snapshot::from_stored(3, size(2, 2), &palette, vec![2, 7]);
        assert_eq!(short.pixels(), [2, 0, 0, 0]);
        let long = Snapshot::from_stored(3, size(2, 1), &palette, vec![1, 2, 1]);
        assert_eq!(long.pixels(), [1, 2]);
        assert_eq!(Snapshot::decode(&long.encode()), Ok(long));
    }

    fn updates(first: u64, cells: &[(u16, u16, u8)]) -> Vec<PixelUpdate> {
        cells
            .iter()
            .zip(first..)
            .map(|(&(x, y, color), version)| PixelUpdate {
                version,
                x,
                y,
                color,
            })
            .collect()
    }

    #[test]
    fn frame_layout_is_the_documented_one() {
        let frame = UpdateFrame::new(updates(5, &[(1, 2, 3), (0x0102, 0, 31)])).expect("ok");
        assert_eq!(frame.versions(), (5, 6));
        assert_eq!(
            frame.encode(),
            [
                1, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 2, //
                0, 1, 0, 2, 3, //
                1, 2, 0, 0, 31
            ]
        );
    }

    #[test]
    fn frames_need_contiguous_versions_and_a_bounded_count() {
        assert_eq!(UpdateFrame::new(vec![]), Err(FrameError::BadCount(0)));
        let mut gap = updates(1, &[(0, 0, 0), (0, 0, 0)]);
        gap[1].version = 3;
        assert_eq!(
            UpdateFrame::new(gap),
            Err(FrameError::NotContiguous { after: 1, got: 3 })
        );
        assert!(matches!(
            UpdateFrame::new(updates(0, &[(0, 0, 0)])),
            Err(FrameError::NotContiguous { .. })
        ));
        let too_many = updates(1, &vec![(0, 0, 0); MAX_FRAME_UPDATES + 1]);
        assert_eq!(
            UpdateFrame::new(too_many),
            Err(FrameError::BadCount(MAX_FRAME_UPDATES + 1))
        );
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        let good = UpdateFrame::new(updates(9, &[(1, 1, 1)]))
            .expect("ok")
            .encode();
        let with = |i: usize, b: u8| {
            let mut bytes = good.clone();
            bytes[i] = b;
            UpdateFrame::decode(&bytes)
        };
        assert_eq!(
            UpdateFrame::decode(&[]),
            Err(FrameError::Truncated { len: 0 })
        );
        assert_eq!(with(0, 2), Err(FrameError::WrongType(2)));
        assert_eq!(with(1, 9), Err(FrameError::UnsupportedFormat(9)));
        assert_eq!(with(11, 0), Err(FrameError::BadCount(0)));
        assert_eq!(
            with(11, 2),
            Err(FrameError::LengthMismatch {
                count: 2,
                expected: 10,
                actual: 5
            })
        );
        let mut overflow = good.clone();
        overflow[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        overflow[11] = 2;
        overflow.extend_from_slice(&[0; 5]);
        assert_eq!(
            UpdateFrame::decode(&overflow),
            Err(FrameError::VersionOverflow)
        );
        let mut zero = good.clone();
        zero[2..10].copy_from_slice(&0u64.to_be_bytes());
        assert!(matches!(
            UpdateFrame::decode(&zero),
            Err(FrameError::NotContiguous { .. })
        ));
    }

    fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
        (1u32..=64, 1u32..=64, 2u8..=32, any::<u64>()).prop_flat_map(|(w, h, len, version)| {
            let count = (w * h) as usize;
            proptest::collection::vec(0..len, count).prop_map(move |pixels| {
                Snapshot::new(version, size(w, h), len, pixels).expect("valid by construction")
            })
        })
    }

    fn arb_frame() -> impl Strategy<Value = UpdateFrame> {
        (
            1u64..u64::MAX / 2,
            proptest::collection::vec(any::<(u16, u16, u8)>(), 1..=300),
        )
            .prop_map(|(first, cells)| {
                UpdateFrame::new(updates(first, &cells)).expect("valid by construction")
            })
    }

    /// Both formats, for the properties they share.
    trait Format: Sized + PartialEq + std::fmt::Debug {
        fn to_bytes(&self) -> Vec<u8>;
        fn from_bytes(bytes: &[u8]) -> Option<Self>;
    }

    impl Format for Snapshot {
        fn to_bytes(&self) -> Vec<u8> {
            self.encode()
        }
        fn from_bytes(bytes: &[u8]) -> Option<Self> {
            Self::decode(bytes).ok()
        }
    }

    impl Format for UpdateFrame {
        fn to_bytes(&self) -> Vec<u8> {
            self.encode()
        }
        fn from_bytes(bytes: &[u8]) -> Option<Self> {
            Self::decode(bytes).ok()
        }
    }

    /// Whatever the bytes, decoding returns an error or a value that encodes back to them.
    fn decodes_exactly_or_fails<T: Format>(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Some(value) = T::from_bytes(bytes) {
            prop_assert_eq!(value.to_bytes(), bytes);
        }
        Ok(())
    }

    /// Sets one byte of an encoding and cuts it somewhere, then decodes.
    fn corrupted<T: Format>(
        value: &T,
        at: prop::sample::Index,
        byte: u8,
        cut: prop::sample::Index,
    ) -> Result<(), TestCaseError> {
        let mut bytes = value.to_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        bytes.truncate(cut.index(bytes.len() + 1));
        decodes_exactly_or_fails::<T>(&bytes)
    }

    proptest! {
        #[test]
        fn snapshots_round_trip(snapshot in arb_snapshot()) {
            prop_assert_eq!(Snapshot::decode(&snapshot.encode()), Ok(snapshot));
        }

        #[test]
        fn frames_round_trip(frame in arb_frame()) {
            prop_assert_eq!(UpdateFrame::decode(&frame.encode()), Ok(frame));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            decodes_exactly_or_fails::<Snapshot>(&bytes)?;
            decodes_exactly_or_fails::<UpdateFrame>(&bytes)?;
        }

        #[test]
        fn corrupted_snapshots_never_panic(snapshot in arb_snapshot(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            corrupted(&snapshot, at, byte, cut)?;
        }

        #[test]
        fn corrupted_frames_never_panic(frame in arb_frame(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            corrupted(&frame, at, byte, cut)?;
        }
    }
}
