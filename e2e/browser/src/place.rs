//! `place`: pixels placed through the Ingress as the page places them, over one WebSocket
//! to the gateway, each awaited for its `placed` answer. The only way to place: canvas-api's
//! REST endpoint refuses every caller but the gateway.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use crate::ws::{self, Target};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    endpoint: ws::Endpoint,
    /// `X,Y,COLOR` (repeatable): a pixel to place, in order.
    #[arg(long = "pixel", required = true, value_parser = parse_pixel)]
    pixels: Vec<(u64, u64, u64)>,
    /// Where the identity cookie is kept between runs, as a browser keeps it: read before
    /// connecting when the file exists, written with the cookie the connection ends with.
    #[arg(long)]
    cookie_file: Option<std::path::PathBuf>,
    /// Bound on the connection and on each answer, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=300))]
    patience_secs: u64,
}

fn parse_pixel(spec: &str) -> Result<(u64, u64, u64), String> {
    let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
    let [x, y, color] = parts.as_slice() else {
        return Err(format!("{spec:?} is not X,Y,COLOR"));
    };
    let number = |part: &str| {
        part.parse::<u64>()
            .map_err(|e| format!("{part:?} in {spec:?}: {e}"))
    };
    Ok((number(x)?, number(y)?, number(color)?))
}

/// What `place` prints on success.
#[derive(Debug, Serialize)]
pub struct Summary {
    check: &'static str,
    /// The canvas version each placement produced, in the order given.
    versions: Vec<u64>,
    /// Who placed them: the hello's identity handle.
    handle: Option<String>,
}

pub async fn run(args: Args) -> Result<Summary> {
    let target = Target::new(
        &args.endpoint.ws_url,
        &args.endpoint.resolve,
        None,
        Duration::from_secs(args.patience_secs),
    )
    .await?;
    if let Some(file) = &args.cookie_file
        && let Ok(cookie) = std::fs::read_to_string(file)
    {
        target.keep_cookie(cookie.trim().to_owned());
    }
    let ((mut socket, hello), _) = target.connect_retrying(None).await?;
    if let (Some(file), Some(cookie)) = (&args.cookie_file, target.cookie()) {
        std::fs::write(file, cookie).with_context(|| format!("cannot write {}", file.display()))?;
    }
    let mut versions = Vec::with_capacity(args.pixels.len());
    for (id, &(x, y, color)) in args.pixels.iter().enumerate() {
        let version = ws::place(&mut socket, target.patience, id as u64, (x, y, color)).await?;
        if let Some(&previous) = versions.last() {
            ensure!(version > previous, "version {version} after {previous}");
        }
        versions.push(version);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    Ok(Summary {
        check: "place",
        versions,
        handle: hello.handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_are_x_y_colour() {
        assert_eq!(parse_pixel("1, 2,3"), Ok((1, 2, 3)));
        for bad in ["1,2", "1,2,3,4", "a,2,3", "-1,2,3", ""] {
            assert!(parse_pixel(bad).is_err(), "{bad}");
        }
    }
}
