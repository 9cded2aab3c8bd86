//! `pixel-bench fanout-floor`: the physical floor of the gateway's fan-out, run as its own
//! process on the server cores in place of the gateway.
//!
//! It accepts the same WebSocket clients (the same HTTP upgrade, answered with the standard
//! accept key), sends each a minimal hello, then reads the same Redis subscription and, on
//! the gateway's batching rule (updates gathered for the batch interval from the start of the
//! previous round, and never before that round's writes are done), writes the same update
//! frames, framed once, to every socket: one non-blocking `write` per client per round, on one
//! thread. No protocol work: no per-client task, queue, timer, ping, read or metric; a client
//! whose socket buffer is full keeps what was not written (up to [`MAX_BACKLOG`], then it is
//! dropped). What the gateway spends above this is the price of its protocol.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use futures_util::{FutureExt, StreamExt};
use pixel_common::{
    redis_schema::{UPDATES_CHANNEL, parse_update_message},
    wire::{MAX_FRAME_UPDATES, PixelUpdate, UpdateFrame},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::procfs::raise_open_files;

/// The largest upgrade request read.
const MAX_REQUEST_BYTES: usize = 8192;
/// How long a client may take to send its upgrade request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Unwritten bytes a client may hold before it is dropped (the gateway bounds its slow
/// clients too).
const MAX_BACKLOG: usize = 1 << 20;
/// The hello the load generator waits for: a text message naming its type.
const HELLO: &str = r#"{"type":"hello"}"#;

#[derive(Debug, clap::Args)]
pub struct FanoutFloorArgs {
    /// Where clients connect.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The Redis whose update channel is read (the benchmark's, with canvas-api on it).
    #[arg(long)]
    pub redis_url: String,
    /// The batch interval, as the gateway's `--batch-ms`.
    #[arg(long, default_value_t = 20)]
    pub batch_ms: u64,
}

/// `pixel-bench fanout-floor`: serves until killed.
pub fn main(args: &FanoutFloorArgs) -> Result<()> {
    raise_open_files()?;
    // One thread: the floor of one server core.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(args))
}

async fn run(args: &FanoutFloorArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(UPDATES_CHANNEL).await?;
    let mut messages = pubsub.on_message();
    let (joined_tx, mut joined) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let joined_tx = joined_tx.clone();
            tokio::spawn(async move {
                if let Ok(Ok(stream)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream)).await
                {
                    let _ = joined_tx.send(Client {
                        stream,
                        backlog: Vec::new(),
                    });
                }
            });
        }
    });
    println!("listening on {}", args.listen);
    let batch = Duration::from_millis(args.batch_ms);
    let mut clients: Vec<Client> = Vec::new();
    let mut pending: Vec<PixelUpdate> = Vec::new();
    let mut due = tokio::time::Instant::now();
    loop {
        if pending.is_empty() {
            let message = messages
                .next()
                .await
                .context("the Redis subscription ended")?;
            if let Ok(update) = parse_update_message(message.get_payload_bytes()) {
                pending.push(update);
            }
        }
        tokio::time::sleep_until(due).await;
        // As the gateway's subscriber: every update that has arrived joins this round (the
        // Redis connection's task reads its socket when this one yields).
        tokio::task::yield_now().await;
        while let Some(message) = messages.next().now_or_never() {
            let message = message.context("the Redis subscription ended")?;
            if let Ok(update) = parse_update_message(message.get_payload_bytes()) {
                pending.push(update);
            }
        }
        let wire = wire_frames(&pending);
        pending.clear();
        due = tokio::time::Instant::now() + batch;
        while let Ok(client) = joined.try_recv() {
            clients.push(client);
        }
        clients.retain_mut(|client| client.write(&wire));
    }
}

/// One client socket and what it could not take yet.
struct Client {
    stream: TcpStream,
    backlog: Vec<u8>,
}

impl Client {
    /// One non-blocking write of the backlog and `wire`; false when the client is gone or
    /// holds too much.
    fn write(&mut self, wire: &[u8]) -> bool {
        let result = if self.backlog.is_empty() {
            self.stream.try_write(wire).map(|n| {
                self.backlog.extend_from_slice(&wire[n..]);
            })
        } else {
            self.backlog.extend_from_slice(wire);
            self.stream.try_write(&self.backlog).map(|n| {
                self.backlog.drain(..n);
            })
        };
        match result {
            Ok(()) => self.backlog.len() <= MAX_BACKLOG,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if self.backlog.is_empty() {
                    self.backlog.extend_from_slice(wire);
                }
                self.backlog.len() <= MAX_BACKLOG
            }
            Err(_) => false,
        }
    }
}

/// Reads the upgrade request, answers 101 with the accept key, sends the hello.
async fn handshake(mut stream: TcpStream) -> Result<TcpStream> {
    stream.set_nodelay(true)?;
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0_u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed during the upgrade");
        request.extend_from_slice(&chunk[..n]);
        anyhow::ensure!(
            request.len() <= MAX_REQUEST_BYTES,
            "upgrade request too large"
        );
    }
    let text = String::from_utf8_lossy(&request);
    let key = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .context("no Sec-WebSocket-Key")?;
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    answer.extend(ws_header(0x81, HELLO.len()));
    answer.extend_from_slice(HELLO.as_bytes());
    stream.write_all(&answer).await?;
    Ok(stream)
}

/// The header of an unmasked (server to client) WebSocket frame with `opcode` and FIN set.
fn ws_header(opcode: u8, len: usize) -> Vec<u8> {
    let mut header = vec![opcode];
    match u16::try_from(len) {
        Ok(short) if short < 126 => header.push(u8::try_from(short).unwrap_or(0)),
        Ok(short) => {
            header.push(126);
            header.extend(short.to_be_bytes());
        }
        Err(_) => {
            header.push(127);
            header.extend((len as u64).to_be_bytes());
        }
    }
    header
}

/// The updates as the gateway's update frames (contiguous runs of at most
/// [`MAX_FRAME_UPDATES`]), each as a binary WebSocket message, concatenated.
fn wire_frames(updates: &[PixelUpdate]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut run_start = 0;
    for end in 1..=updates.len() {
        let breaks = end == updates.len()
            || updates[end].version != updates[end - 1].version + 1
            || end - run_start == MAX_FRAME_UPDATES;
        if breaks {
            if let Ok(frame) = UpdateFrame::new(updates[run_start..end].to_vec()) {
                let payload = frame.encode();
                wire.extend(ws_header(0x82, payload.len()));
                wire.extend_from_slice(&payload);
            }
            run_start = end;
        }
    }
    wire
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(version: u64) -> PixelUpdate {
        PixelUpdate {
            version,
            x: 1,
            y: 2,
            color: 3,
        }
    }

    #[test]
    fn frames_are_framed_for_websocket() {
        assert_eq!(ws_header(0x82, 17), [0x82, 17]);
        assert_eq!(ws_header(0x82, 300), [0x82, 126, 1, 44]);
        assert_eq!(ws_header(0x82, 70_000)[..2], [0x82, 127]);
        let updates = [update(5), update(6), update(9)];
        let wire = wire_frames(&updates);
        // Two runs: 5..=6 (12 + 10 bytes) and 9 (12 + 5 bytes), each behind a 2-byte header.
        assert_eq!(wire.len(), 2 + 22 + 2 + 17);
        assert_eq!(
            UpdateFrame::decode(&wire[2..24]).map(|f| f.versions()),
            Ok((5, 6))
        );
        assert_eq!(
            UpdateFrame::decode(&wire[26..]).map(|f| f.versions()),
            Ok((9, 9))
        );
    }
}
