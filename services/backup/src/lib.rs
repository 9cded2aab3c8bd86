//! backup: a canvas's Redis in S3-compatible object storage.
//!
//! `backup upload` runs in the backup Job the operator schedules (`spec.backup`), after the
//! Job's dump container has taken an RDB file from Redis over its replication protocol
//! (`redis-cli --rdb`, a fork on Redis's side, no pause) and loaded it once to read the
//! canvas version it holds: it uploads the file as `<prefix><time>-v<version>.rdb`, deletes
//! the backups beyond the retention count, and reports what it wrote in its termination
//! message for `status.lastBackup`.
//!
//! `backup restore` runs as an init container of the Redis pod of a canvas created with
//! `spec.restore`: into a data directory that holds no data yet it downloads the backup as
//! the base of Redis's append-only file, so Redis starts from it and appends after it.
//! A volume that already holds data is never touched.

pub mod http;
pub mod restore;
pub mod store;
pub mod upload;

use std::{future::Future, path::PathBuf};

use clap::{Parser, Subcommand};
use pixel_common::telemetry::LogArgs;

pub use crate::{restore::RestoreArgs, store::StoreArgs, upload::UploadArgs};

/// Configuration, from flags or the environment the operator sets on the pod.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "backup",
    version,
    about = "Backs a canvas's Redis up to S3-compatible object storage and restores it.",
    args_override_self = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Uploads an RDB file as the canvas's newest backup and prunes the oldest.
    Upload(UploadArgs),
    /// Fills an empty Redis data directory from a backup.
    Restore(RestoreArgs),
}

/// Why a backup or a restore failed. Each names what it was doing; the cause is in
/// `source()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the object store at {endpoint}")]
    Store {
        endpoint: String,
        #[source]
        source: object_store::Error,
    },
    #[error("the prefix {0:?} must be empty or end with '/'")]
    Prefix(String),
    #[error(
        "no credentials for the object store: set {} and {}",
        pixel_common::ports::ENV_BACKUP_ACCESS_KEY_ID,
        pixel_common::ports::ENV_BACKUP_SECRET_ACCESS_KEY
    )]
    Credentials,
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds {found:?}, not a canvas version", path.display())]
    Version { path: PathBuf, found: String },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot upload {key}")]
    Upload {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot list the backups under {prefix:?}")]
    List {
        prefix: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot delete the old backup {key}")]
    Prune {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("there is no backup under {prefix:?} in bucket {bucket} to restore from")]
    NoBackup { bucket: String, prefix: String },
    #[error("cannot download {key}")]
    Download {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{key} is not a Redis RDB file (it does not begin with REDIS)")]
    NotRdb { key: String },
    #[error("stopped by a signal before it finished")]
    Interrupted,
}

/// Runs the command until it finishes or `shutdown` resolves. Nothing half-written is left
/// as if it were whole: a multipart upload cut short is no object (the store keeps its
/// parts until its lifecycle rules clear them), and a restore's staging directory is never
/// renamed into place.
pub async fn run(args: Args, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let work = async {
        match args.command {
            Command::Upload(upload) => {
                let record = upload::run(&upload, jiff::Timestamp::now()).await?;
                tracing::info!(
                    object = %record.object,
                    version = record.version,
                    "backup uploaded"
                );
                Ok(())
            }
            Command::Restore(restore) => {
                match restore::run(&restore).await? {
                    restore::Outcome::Restored { key, bytes } => {
                        tracing::info!(object = %key, bytes, "restored from backup")
                    }
                    restore::Outcome::HoldsData => tracing::info!(
                        "the data directory already holds Redis data: nothing restored"
                    ),
                }
                Ok(())
            }
        }
    };
    tokio::select! {
        result = work => result,
        () = shutdown => Err(Error::Interrupted),
    }
}
