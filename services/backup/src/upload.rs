//! `backup upload`: the RDB file the dump container wrote, as the canvas's newest backup.

use std::path::{Path, PathBuf};

use clap::Args;
use object_store::{ObjectStoreExt, WriteMultipart, path::Path as ObjectPath};
use pixel_common::{
    backup::{self, BackupRecord},
    ports,
};
use tokio::io::AsyncReadExt;

use crate::{Error, store::StoreArgs};

/// Parts of a multipart upload (S3 wants at least 5 MiB for every part but the last).
const PART_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Args)]
pub struct UploadArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The RDB file to upload.
    #[arg(long, env = ports::ENV_BACKUP_FILE)]
    pub file: PathBuf,
    /// The file holding the canvas version the RDB file holds (empty: version 0).
    #[arg(long, env = ports::ENV_BACKUP_VERSION_FILE)]
    pub version_file: PathBuf,
    /// How many backups to keep, this one included.
    #[arg(long, env = ports::ENV_BACKUP_RETENTION, default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub retention: u32,
    /// Where to write what was uploaded, as JSON (the container's termination message).
    #[arg(long, env = ports::ENV_BACKUP_RESULT_FILE)]
    pub result_file: Option<PathBuf>,
}

/// Uploads the backup taken at `now`, prunes the store to the retention count and reports
/// the backup.
pub async fn run(args: &UploadArgs, now: jiff::Timestamp) -> Result<BackupRecord, Error> {
    let store = args.store.open()?;
    let version = read_version(&args.version_file).await?;
    let stamp = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let key = backup::object_key(&store.prefix, &stamp, version);

    let upload_error = |source| Error::Upload {
        key: key.clone(),
        source,
    };
    let mut file = tokio::fs::File::open(&args.file)
        .await
        .map_err(|source| read_error(&args.file, source))?;
    let upload = store
        .objects
        .put_multipart(&ObjectPath::from(key.as_str()))
        .await
        .map_err(upload_error)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut buffer = vec![0; 1 << 20];
    loop {
        let read = match file.read(&mut buffer).await {
            Ok(0) => break,
            Ok(read) => read,
            Err(source) => {
                // Nothing half-uploaded is left to look like a backup.
                let _ = writer.abort().await;
                return Err(read_error(&args.file, source));
            }
        };
        if let Err(source) = writer.wait_for_capacity(2).await {
            let _ = writer.abort().await;
            return Err(upload_error(source));
        }
        writer.write(&buffer[..read]);
    }
    writer.finish().await.map_err(upload_error)?;

    let record = BackupRecord {
        time: now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        object: key,
        version,
    };
    if let Some(path) = &args.result_file {
        let json = serde_json::to_vec(&record).expect("a record is JSON");
        tokio::fs::write(path, json)
            .await
            .map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
    }
    // The backup is safe: a store that keeps the old ones (credentials that may not delete,
    // an object lock) costs space, not the backup.
    if let Err(error) = prune(&store, args.retention as usize).await {
        tracing::warn!(error = %pixel_common::error::ErrorChain(&error), "old backups kept");
    }
    Ok(record)
}

/// Deletes the oldest backups beyond `retention`.
async fn prune(store: &crate::store::Store, retention: usize) -> Result<(), Error> {
    let keys = store.backups().await?;
    for old in expired(&keys, retention) {
        store
            .objects
            .delete(&ObjectPath::from(old.as_str()))
            .await
            .map_err(|source| Error::Prune {
                key: old.clone(),
                source,
            })?;
        tracing::info!(object = %old, "old backup deleted");
    }
    Ok(())
}

/// The backups to delete so that `retention` remain: the oldest ones (`keys` oldest first).
pub fn expired(keys: &[String], retention: usize) -> &[String] {
    &keys[..keys.len().saturating_sub(retention)]
}

async fn read_version(path: &Path) -> Result<u64, Error> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| read_error(path, source))?;
    parse_version(&text).ok_or_else(|| Error::Version {
        path: path.to_owned(),
        found: text.chars().take(40).collect(),
    })
}

/// `redis-cli --raw GET` of the version: digits, or nothing when no pixel was ever placed.
fn parse_version(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    text.parse().ok()
}

fn read_error(path: &Path, source: std::io::Error) -> Error {
    Error::Read {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_backups_beyond_the_retention_are_expired() {
        let keys: Vec<String> = ["a", "b", "c", "d"].map(str::to_owned).to_vec();
        assert_eq!(expired(&keys, 2), ["a", "b"]);
        assert_eq!(expired(&keys, 4), [] as [String; 0]);
        assert_eq!(expired(&keys, 9), [] as [String; 0]);
        assert_eq!(expired(&keys, 1), ["a", "b", "c"]);
    }

    #[test]
    fn a_version_is_digits_or_nothing() {
        assert_eq!(parse_version("42\n"), Some(42));
        assert_eq!(parse_version("\n"), Some(0));
        assert_eq!(parse_version(""), Some(0));
        assert_eq!(parse_version("NOAUTH Authentication required."), None);
        assert_eq!(parse_version("-1"), None);
    }
}
