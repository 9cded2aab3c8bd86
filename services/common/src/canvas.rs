//! The canvas model every service agrees on: its geometry and its palette.
//!
//! Pixels are stored and sent as palette indices (one byte each); the palette maps an index
//! to an `#RRGGBB` colour.

use std::{fmt, str::FromStr};

/// The largest width or height a canvas may have. 4096 × 4096 is 16 MiB of pixels: the
/// snapshot stays a size a browser can fetch and Redis can hold in one string.
pub const MAX_SIDE: u16 = 4096;

/// The most colours a palette may have. Colours are sent as one byte; 32 keeps the palette a
/// row a person can choose from.
pub const MAX_COLORS: usize = 32;

/// The fewest colours a palette may have: with one there is nothing to draw.
pub const MIN_COLORS: usize = 2;

/// The default palette (16 colours), as the operator and the services write it.
pub const DEFAULT_PALETTE: &str = "#FFFFFF,#E4E4E4,#888888,#222222,#FFA7D1,#E50000,#E59500,#A06A42,#E5D900,#94E044,#02BE01,#00D3DD,#0083C7,#0000EA,#CF6EE4,#820080";

/// A palette index: what one pixel holds.
pub type ColorIndex = u8;

/// Why a canvas size or a coordinate is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("canvas size {width}x{height} is out of range: each side must be 1..={MAX_SIDE}")]
    BadSize { width: u32, height: u32 },
    #[error("({x}, {y}) is outside the {width}x{height} canvas")]
    OutOfBounds {
        x: i64,
        y: i64,
        width: u16,
        height: u16,
    },
}

/// A canvas's width and height, both within `1..=MAX_SIDE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanvasSize {
    width: u16,
    height: u16,
}

/// A pixel position known to lie on its canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Point {
    pub x: u16,
    pub y: u16,
}

impl CanvasSize {
    /// Checks that both sides are within `1..=MAX_SIDE`.
    pub fn new(width: u32, height: u32) -> Result<Self, GeometryError> {
        let side = |n: u32| u16::try_from(n).ok().filter(|n| (1..=MAX_SIDE).contains(n));
        match (side(width), side(height)) {
            (Some(width), Some(height)) => Ok(Self { width, height }),
            _ => Err(GeometryError::BadSize { width, height }),
        }
    }

    pub fn width(self) -> u16 {
        self.width
    }

    pub fn height(self) -> u16 {
        self.height
    }

    /// Number of pixels, which is also the snapshot body's length in bytes.
    pub fn pixel_count(self) -> usize {
        usize::from(self.width) * usize::from(self.height)
    }

    /// The point at `(x, y)`, if it lies on the canvas. Takes signed, wide coordinates so
    /// any number a client sends gets a precise answer rather than a parse error.
    pub fn point(self, x: i64, y: i64) -> Result<Point, GeometryError> {
        let on = |v: i64, side: u16| u16::try_from(v).ok().filter(|v| *v < side);
        match (on(x, self.width), on(y, self.height)) {
            (Some(x), Some(y)) => Ok(Point { x, y }),
            _ => Err(GeometryError::OutOfBounds {
                x,
                y,
                width: self.width,
                height: self.height,
            }),
        }
    }

    /// Row-major index of a point: `y * width + x`. The point must come from this size's
    /// [`point`](Self::point) (or [`point_at`](Self::point_at)).
    pub fn index(self, point: Point) -> usize {
        usize::from(point.y) * usize::from(self.width) + usize::from(point.x)
    }

    /// The point at a row-major index, if the index is on the canvas.
    pub fn point_at(self, index: usize) -> Option<Point> {
        if index >= self.pixel_count() {
            return None;
        }
        let width = usize::from(self.width);
        let x = u16::try_from(index % width).ok()?;
        let y = u16::try_from(index / width).ok()?;
        Some(Point { x, y })
    }
}

/// One colour, written `#RRGGBB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rgb(pub [u8; 3]);

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02X}{g:02X}{b:02X}")
    }
}

/// Why a palette or a colour is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaletteError {
    #[error("colour {value:?} is not of the form #RRGGBB")]
    BadColor { value: String },
    #[error("a palette needs {MIN_COLORS}..={MAX_COLORS} colours, this one has {count}")]
    BadCount { count: usize },
    #[error("colour {color} appears twice in the palette")]
    Duplicate { color: Rgb },
    #[error("colour index {index} is not in the palette of {len} colours")]
    UnknownColor { index: i64, len: usize },
}

impl FromStr for Rgb {
    type Err = PaletteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PaletteError::BadColor {
            value: s.to_owned(),
        };
        let hex = s.strip_prefix('#').ok_or_else(bad)?;
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let channel = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
        Ok(Self([channel(0)?, channel(2)?, channel(4)?]))
    }
}

/// The colours of a canvas, `MIN_COLORS..=MAX_COLORS` of them, all different. Index 0 is
/// the colour of a pixel nobody has placed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Palette(Vec<Rgb>);

impl Palette {
    /// Checks the count and that no colour repeats.
    pub fn new(colors: Vec<Rgb>) -> Result<Self, PaletteError> {
        if !(MIN_COLORS..=MAX_COLORS).contains(&colors.len()) {
            return Err(PaletteError::BadCount {
                count: colors.len(),
            });
        }
        for (i, color) in colors.iter().enumerate() {
            if colors[..i].contains(color) {
                return Err(PaletteError::Duplicate { color: *color });
            }
        }
        Ok(Self(colors))
    }

    pub fn colors(&self) -> &[Rgb] {
        &self.0
    }

    /// Number of colours, `MIN_COLORS..=MAX_COLORS`, so it always fits a byte.
    pub fn len(&self) -> u8 {
        // The constructor bounds the length by MAX_COLORS (32).
        u8::try_from(self.0.len()).unwrap_or(u8::MAX)
    }

    /// Never true: a palette has at least `MIN_COLORS` colours.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The palette index for a colour number a client sent.
    pub fn index(&self, color: i64) -> Result<ColorIndex, PaletteError> {
        u8::try_from(color)
            .ok()
            .filter(|c| usize::from(*c) < self.0.len())
            .ok_or(PaletteError::UnknownColor {
                index: color,
                len: self.0.len(),
            })
    }

    /// The colour at an index, if the index is in the palette.
    pub fn color(&self, index: ColorIndex) -> Option<Rgb> {
        self.0.get(usize::from(index)).copied()
    }

    /// The colours as `#RRGGBB` strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(Rgb::to_string).collect()
    }
}

impl Default for Palette {
    fn default() -> Self {
        // The default palette is checked by a test to parse; the fallback is never taken.
        DEFAULT_PALETTE
            .parse()
            .unwrap_or_else(|_| Self(vec![Rgb([255, 255, 255]), Rgb([0, 0, 0])]))
    }
}

/// Parses comma-separated `#RRGGBB` colours; whitespace around each is ignored, hex digits
/// may be of either case.
impl FromStr for Palette {
    type Err = PaletteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let colors = s
            .split(',')
            .map(|c| c.trim().parse())
            .collect::<Result<Vec<Rgb>, _>>()?;
        Self::new(colors)
    }
}

impl fmt::Display for Palette {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_outside_the_bounds_are_rejected() {
        for (w, h) in [(0, 1), (1, 0), (4097, 10), (10, 70_000)] {
            assert_eq!(
                CanvasSize::new(w, h),
                Err(GeometryError::BadSize {
                    width: w,
                    height: h
                })
            );
        }
        let max = CanvasSize::new(4096, 4096).expect("max size");
        assert_eq!(max.pixel_count(), 16 * 1024 * 1024);
    }

    #[test]
    fn points_are_checked_against_the_size() {
        let size = CanvasSize::new(10, 5).expect("size");
        assert_eq!(size.point(9, 4), Ok(Point { x: 9, y: 4 }));
        for (x, y) in [(10, 0), (0, 5), (-1, 0), (0, -1), (i64::MAX, 0)] {
            assert!(
                matches!(size.point(x, y), Err(GeometryError::OutOfBounds { .. })),
                "({x}, {y})"
            );
        }
        assert_eq!(size.index(Point { x: 3, y: 2 }), 23);
        assert_eq!(size.point_at(23), Some(Point { x: 3, y: 2 }));
        assert_eq!(size.point_at(50), None);
    }

    #[test]
    fn palettes_parse_and_print_canonically() {
        let palette: Palette = " #ffffff, #000000 ,#12aB9f".parse().expect("palette");
        assert_eq!(palette.len(), 3);
        assert_eq!(palette.to_string(), "#FFFFFF,#000000,#12AB9F");
        assert_eq!(palette.color(2), Some(Rgb([0x12, 0xAB, 0x9F])));
        assert_eq!(palette.color(3), None);
        assert_eq!(palette.index(2), Ok(2));
        assert_eq!(
            palette.index(3),
            Err(PaletteError::UnknownColor { index: 3, len: 3 })
        );
        assert!(palette.index(-1).is_err());
    }

    #[test]
    fn the_default_palette_is_valid() {
        let parsed: Palette = DEFAULT_PALETTE.parse().expect("default palette parses");
        assert_eq!(parsed.len(), 16);
        assert_eq!(Palette::default(), parsed);
        assert_eq!(parsed.to_string(), DEFAULT_PALETTE);
    }

    #[test]
    fn bad_palettes_are_rejected_with_the_reason() {
        let bad = |s: &str| s.parse::<Palette>().expect_err(s);
        assert!(matches!(
            bad("#FFFFFF"),
            PaletteError::BadCount { count: 1 }
        ));
        assert!(matches!(bad(""), PaletteError::BadColor { .. }));
        assert!(matches!(
            bad("#FFFFFF,FFFFFF"),
            PaletteError::BadColor { .. }
        ));
        assert!(matches!(
            bad("#FFFFFF,#FFFFF"),
            PaletteError::BadColor { .. }
        ));
        assert!(matches!(
            bad("#FFFFFF,#GGGGGG"),
            PaletteError::BadColor { .. }
        ));
        assert!(matches!(bad("#FFFFFF,#ÿÿÿ"), PaletteError::BadColor { .. }));
        assert!(matches!(
            bad("#FFFFFF,#ffffff"),
            PaletteError::Duplicate { .. }
        ));
        let many = (0..33)
            .map(|i| format!("#0000{i:02X}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(matches!(bad(&many), PaletteError::BadCount { count: 33 }));
    }

    proptest! {
        #[test]
        fn index_and_point_are_inverse(w in 1u32..=4096, h in 1u32..=4096, x in 0i64..4096, y in 0i64..4096) {
            let size = CanvasSize::new(w, h).expect("size in range");
            match size.point(x, y) {
                Ok(point) => {
                    let index = size.index(point);
                    prop_assert!(index < size.pixel_count());
                    prop_assert_eq!(size.point_at(index), Some(point));
                }
                Err(_) => prop_assert!(x >= i64::from(w) || y >= i64::from(h)),
            }
        }

        #[test]
        fn printed_palettes_parse_back(colors in proptest::collection::hash_set(any::<[u8; 3]>(), 2..=32)) {
            let palette = Palette::new(colors.into_iter().map(Rgb).collect()).expect("valid palette");
            prop_assert_eq!(palette.to_string().parse::<Palette>(), Ok(palette));
        }

        #[test]
        fn arbitrary_text_parses_to_a_valid_palette_or_an_error(text in "[#0-9a-fA-F, ]{0,40}|\\PC{0,40}") {
            if let Ok(palette) = text.parse::<Palette>() {
                prop_assert!((MIN_COLORS..=MAX_COLORS).contains(&palette.colors().len()));
                prop_assert_eq!(palette.to_string().parse::<Palette>(), Ok(palette));
            }
        }
    }
}
