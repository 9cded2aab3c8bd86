//! One version of the canvas as served: the binary snapshot, and its gzip, br and PNG
//! forms, each made once, on first request, off the async workers.

use std::{io::Write, sync::Arc};

use bytes::Bytes;
use pixel_common::{
    canvas::{CanvasSize, Palette},
    wire::{PixelUpdate, SNAPSHOT_HEADER_LEN, Snapshot},
};
use tokio::sync::OnceCell;

/// Byte offset of the version in an encoded snapshot (docs/protocol.md, binary snapshot).
const VERSION_OFFSET: usize = 10;

/// How a snapshot body is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

impl Encoding {
    /// The `Content-Encoding` value; `None` for identity.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Self::Identity => None,
            Self::Gzip => Some("gzip"),
            Self::Brotli => Some("br"),
        }
    }
}

/// One version of the canvas, encoded once; its compressed forms and PNG are made on first
/// request.
#[derive(Debug)]
pub struct CachedSnapshot {
    version: u64,
    size: CanvasSize,
    /// The binary snapshot: header, then one byte per pixel.
    encoded: Bytes,
    gzip: OnceCell<Bytes>,
    brotli: OnceCell<Bytes>,
    png: OnceCell<Bytes>,
}

impl CachedSnapshot {
    pub(super) fn new(snapshot: &Snapshot) -> Self {
        Self::from_encoded(
            snapshot.version(),
            snapshot.size(),
            Bytes::from(snapshot.encode()),
        )
    }

    fn from_encoded(version: u64, size: CanvasSize, encoded: Bytes) -> Self {
        Self {
            version,
            size,
            encoded,
            gzip: OnceCell::new(),
            brotli: OnceCell::new(),
            png: OnceCell::new(),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn size(&self) -> CanvasSize {
        self.size
    }

    /// One palette index per pixel, row-major.
    pub fn pixels(&self) -> &[u8] {
        &self.encoded[SNAPSHOT_HEADER_LEN..]
    }

    /// The binary snapshot in `encoding`, compressed on first request (off the async
    /// workers; concurrent requests share one compression).
    pub async fn body(self: &Arc<Self>, encoding: Encoding) -> Result<Bytes, EncodeError> {
        let cell = match encoding {
            Encoding::Identity => return Ok(self.encoded.clone()),
            Encoding::Gzip => &self.gzip,
            Encoding::Brotli => &self.brotli,
        };
        let body = cell
            .get_or_try_init(|| {
                let snapshot = Arc::clone(self);
                blocking(move || compress(&snapshot.encoded, encoding))
            })
            .await?;
        Ok(body.clone())
    }

    /// The canvas as an indexed-colour PNG in `palette`, rendered on first request (off the
    /// async workers; concurrent requests share one rendering).
    pub async fn png(self: &Arc<Self>, palette: &Palette) -> Result<Bytes, EncodeError> {
        let png = self
            .png
            .get_or_try_init(|| {
                let snapshot = Arc::clone(self);
                let palette = palette.clone();
                blocking(move || {
                    encode_png(snapshot.size, snapshot.pixels(), &palette).map(Bytes::from)
                })
            })
            .await?;
        Ok(png.clone())
    }

    /// This snapshot with `updates` (contiguous, starting right after its version) applied.
    pub(super) fn with_updates(&self, updates: &[PixelUpdate], palette_len: u8) -> Self {
        let mut encoded = self.encoded.to_vec();
        let width = usize::from(self.size.width());
        let height = usize::from(self.size.height());
        let mut version = self.version;
        for update in updates {
            let (x, y) = (usize::from(update.x), usize::from(update.y));
            if x < width && y < height {
                // Like a stored byte outside the palette, an unknown colour reads as 0.
                let color = if update.color < palette_len {
                    update.color
                } else {
                    0
                };
                encoded[SNAPSHOT_HEADER_LEN + y * width + x] = color;
            }
            version = update.version;
        }
        encoded[VERSION_OFFSET..SNAPSHOT_HEADER_LEN].copy_from_slice(&version.to_be_bytes());
        Self::from_encoded(version, self.size, Bytes::from(encoded))
    }
}

/// Why a compressed body or the PNG could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("compression failed")]
    Compress(#[from] std::io::Error),
    #[error("PNG encoding failed")]
    Png(#[from] png::EncodingError),
    #[error("the encoding task was aborted")]
    Aborted(#[source] tokio::task::JoinError),
}

/// Runs an encoding on the blocking pool: it is CPU work of up to milliseconds.
async fn blocking(
    encode: impl FnOnce() -> Result<Bytes, EncodeError> + Send + 'static,
) -> Result<Bytes, EncodeError> {
    tokio::task::spawn_blocking(encode)
        .await
        .map_err(EncodeError::Aborted)?
}

/// Fast settings: a canvas is long runs of few colours, so even these shrink it tenfold,
/// and they are paid once per version, not per request. Brotli at quality 1, not 4: on a
/// 4096x4096 canvas quality 4 took 3 to 4 times as long (over a second) for output at most
/// 10% smaller, and under steady placements nearly every snapshot request meets a new
/// version, so the compression is on the first paint's path.
const BROTLI_QUALITY: u32 = 1;

fn compress(data: &[u8], encoding: Encoding) -> Result<Bytes, EncodeError> {
    let out = match encoding {
        Encoding::Identity => data.to_vec(),
        Encoding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 8),
                flate2::Compression::fast(),
            );
            encoder.write_all(data)?;
            encoder.finish()?
        }
        Encoding::Brotli => {
            let mut out = Vec::with_capacity(data.len() / 8);
            {
                let mut writer =
                    brotli::CompressorWriter::new(&mut out, 64 << 10, BROTLI_QUALITY, 22);
                writer.write_all(data)?;
                writer.flush()?;
            }
            out
        }
    };
    Ok(Bytes::from(out))
}

/// An indexed-colour PNG of a snapshot's pixels: its palette is the canvas palette.
fn encode_png(size: CanvasSize, pixels: &[u8], palette: &Palette) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, size.width().into(), size.height().into());
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(
        palette
            .colors()
            .iter()
            .flat_map(|c| c.0)
            .collect::<Vec<u8>>(),
    );
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A 4x2 canvas at `version`, every pixel colour 1.
    pub(in crate::cache) fn snapshot(version: u64) -> CachedSnapshot {
        let size = CanvasSize::new(4, 2).expect("size");
        let palette = Palette::default();
        CachedSnapshot::new(&Snapshot::from_stored(version, size, &palette, vec![1; 8]))
    }

    #[test]
    fn updates_are_applied_to_a_copy_with_the_new_version() {
        let base = snapshot(5);
        let updates = [
            PixelUpdate {
                version: 6,
                x: 3,
                y: 1,
                color: 2,
            },
            PixelUpdate {
                version: 7,
                x: 9,
                y: 0,
                color: 2,
            },
            PixelUpdate {
                version: 8,
                x: 0,
                y: 0,
                color: 200,
            },
        ];
        let next = base.with_updates(&updates, 16);
        assert_eq!(next.version(), 8);
        assert_eq!(next.pixels(), [0, 1, 1, 1, 1, 1, 1, 2]);
        let decoded = Snapshot::decode(&next.encoded).expect("valid snapshot");
        assert_eq!(decoded.version(), 8);
        assert_eq!(base.pixels(), [1; 8], "the old version is unchanged");
    }

    #[tokio::test]
    async fn each_encoding_decodes_to_the_snapshot() {
        let cached = Arc::new(snapshot(3));
        let gzip = cached.body(Encoding::Gzip).await.expect("gzip");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gzip[..]), &mut plain)
            .expect("gunzip");
        assert_eq!(plain, cached.encoded);
        let br = cached.body(Encoding::Brotli).await.expect("br");
        let mut plain = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut plain).expect("unbrotli");
        assert_eq!(plain, cached.encoded);
        // Made once: the same bytes come back.
        assert_eq!(
            cached.body(Encoding::Gzip).await.expect("gzip").as_ptr(),
            gzip.as_ptr()
        );
    }
}
