//! Flag groups that more than one service reads, with the environment names the operator
//! sets on their pods. A service takes them with `#[command(flatten)]`.

use std::time::Duration;

use clap::Args;

use crate::{
    canvas::{CanvasSize, DEFAULT_PALETTE, GeometryError, MAX_SIDE, Palette},
    opening::{Opening, ScheduleError},
    ports,
};

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL, without the password.
    #[arg(long, env = ports::ENV_REDIS_URL, default_value = ports::LOCAL_REDIS_URL)]
    pub redis_url: String,

    /// Redis password.
    #[arg(long, env = ports::ENV_REDIS_PASSWORD, hide_env_values = true)]
    pub redis_password: Option<String>,

    /// How long one Redis command may take, in ms.
    #[arg(long, env = ports::ENV_REDIS_TIMEOUT_MS, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_timeout_ms: u64,
}

impl RedisArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}

/// The internal credential between the gateway and canvas-api ([`ports::ENV_API_TOKEN`]):
/// canvas-api requires it on placements, the gateway presents it.
#[derive(Clone, Args)]
pub struct ApiTokenArgs {
    /// The token placements carry (`Authorization: Bearer <token>`), at least 16 printable
    /// ASCII characters. Checked by [`ApiTokenArgs::check`], not by the parser, whose errors
    /// would print the value.
    #[arg(long, env = ports::ENV_API_TOKEN, hide_env_values = true)]
    pub api_token: String,
}

/// The internal token is too short or holds other than printable ASCII (its value is not
/// repeated here).
#[derive(Debug, thiserror::Error)]
#[error(
    "{} must be at least {} printable ASCII characters",
    ports::ENV_API_TOKEN,
    ports::API_TOKEN_MIN_LEN
)]
pub struct ApiTokenError;

impl ApiTokenArgs {
    /// The token, if it is acceptable.
    pub fn check(&self) -> Result<&str, ApiTokenError> {
        let token = &self.api_token;
        if token.len() < ports::API_TOKEN_MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiTokenError);
        }
        Ok(token)
    }
}

impl std::fmt::Debug for ApiTokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTokenArgs").finish_non_exhaustive()
    }
}

/// The canvas's settings (`spec.canvas` of the `PixelCanvas`).
#[derive(Debug, Clone, Args)]
pub struct CanvasArgs {
    /// Canvas width in pixels.
    #[arg(long, env = ports::ENV_CANVAS_WIDTH, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SIDE)))]
    pub canvas_width: u32,

    /// Canvas height in pixels.
    #[arg(long, env = ports::ENV_CANVAS_HEIGHT, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SIDE)))]
    pub canvas_height: u32,

    /// Palette: 2 to 32 comma-separated #RRGGBB colours.
    #[arg(long, env = ports::ENV_CANVAS_PALETTE, default_value = DEFAULT_PALETTE)]
    pub canvas_palette: Palette,

    /// Seconds a client waits between placements; 0 disables the cooldown.
    #[arg(long, env = ports::ENV_CANVAS_COOLDOWN_SECONDS, default_value_t = 0)]
    pub canvas_cooldown_seconds: u32,

    /// Seconds a person may undo their last placement; 0 disables undo.
    #[arg(long, env = ports::ENV_CANVAS_UNDO_SECONDS, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub canvas_undo_seconds: u32,

    /// Frozen: placements and undos are refused with `canvas_closed`.
    #[arg(long, env = ports::ENV_CANVAS_READ_ONLY, default_value_t = false, action = clap::ArgAction::Set)]
    pub canvas_read_only: bool,

    /// When the canvas opens (RFC 3339); placements before are refused.
    #[arg(long, env = ports::ENV_CANVAS_OPENS_AT)]
    pub canvas_opens_at: Option<jiff::Timestamp>,

    /// When the canvas closes (RFC 3339); placements from then on are refused.
    #[arg(long, env = ports::ENV_CANVAS_CLOSES_AT)]
    pub canvas_closes_at: Option<jiff::Timestamp>,
}

impl CanvasArgs {
    /// The checked canvas size.
    pub fn size(&self) -> Result<CanvasSize, GeometryError> {
        CanvasSize::new(self.canvas_width, self.canvas_height)
    }

    /// The checked opening hours.
    pub fn opening(&self) -> Result<Opening, ScheduleError> {
        Opening::new(
            self.canvas_read_only,
            self.canvas_opens_at,
            self.canvas_closes_at,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Both {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        canvas: CanvasArgs,
    }

    #[derive(Debug, Parser)]
    struct Token {
        #[command(flatten)]
        token: ApiTokenArgs,
    }

    #[test]
    fn the_api_token_is_required_long_and_never_printed() {
        assert!(Token::try_parse_from(["x"]).is_err(), "required");
        let parse =
            |value: &str| Token::try_parse_from(["x", "--api-token", value]).expect("parses");
        for bad in ["short", "sixteen chars ok", "0123456789abcde\n"] {
            let error = parse(bad).token.check().expect_err(bad).to_string();
            assert!(
                !error.contains(bad.trim()),
                "the value is not repeated: {error}"
            );
        }
        let token = parse("0123456789abcdef");
        assert_eq!(token.token.check().ok(), Some("0123456789abcdef"));
        assert!(!format!("{token:?}").contains("0123"), "{token:?}");
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let both = Both::try_parse_from(["x"]).expect("defaults parse");
        assert_eq!(
            both.redis.redis_url,
            format!("redis://127.0.0.1:{}", ports::REDIS)
        );
        assert_eq!(both.redis.timeout(), Duration::from_millis(500));
        assert_eq!(both.canvas.size().map(|s| s.pixel_count()), Ok(1_000_000));
        assert_eq!(both.canvas.canvas_palette, Palette::default());
        assert_eq!(both.canvas.canvas_undo_seconds, 5);
        assert_eq!(both.canvas.opening(), Ok(Opening::default()));
    }

    #[test]
    fn the_schedule_parses_rfc3339_and_read_only_a_bool() {
        let both = Both::try_parse_from([
            "x",
            "--canvas-read-only",
            "true",
            "--canvas-opens-at",
            "2026-12-01T10:00:00Z",
            "--canvas-closes-at",
            "2026-12-01T11:00:00+00:00",
        ])
        .expect("parses");
        let opening = both.canvas.opening().expect("ordered");
        assert!(opening.read_only);
        assert_eq!(opening.opens_at_ms, Some(1_796_119_200_000));
        assert_eq!(opening.closes_at_ms, Some(1_796_122_800_000));
        let reversed = Both::try_parse_from([
            "x",
            "--canvas-opens-at",
            "2026-12-01T11:00:00Z",
            "--canvas-closes-at",
            "2026-12-01T10:00:00Z",
        ])
        .expect("parses");
        assert!(reversed.canvas.opening().is_err());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for bad in [
            ["x", "--canvas-width", "0"],
            ["x", "--canvas-height", "4097"],
            ["x", "--canvas-palette", "#FFFFFF"],
            ["x", "--redis-timeout-ms", "0"],
            ["x", "--canvas-undo-seconds", "3601"],
            ["x", "--canvas-read-only", "yes"],
            ["x", "--canvas-opens-at", "tomorrow"],
        ] {
            assert!(Both::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
