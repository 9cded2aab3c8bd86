//! `backup restore`: a backup as the base of Redis's append-only file, in a data directory
//! that holds no data yet.

use std::path::{Path, PathBuf};

use clap::Args;
use futures::StreamExt;
use object_store::{ObjectStoreExt, path::Path as ObjectPath};
use pixel_common::{backup, ports};
use tokio::io::AsyncWriteExt;

use crate::{Error, store::StoreArgs};

/// Every RDB file begins with this.
const RDB_MAGIC: &[u8] = b"REDIS";
/// Where the download is assembled before it is renamed into place, so that a restore cut
/// short leaves nothing Redis would load.
const STAGING_DIR: &str = "appendonlydir.restoring";

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// `latest` (the newest backup under the prefix) or an object's key.
    #[arg(long, env = ports::ENV_RESTORE_FROM, default_value = backup::RESTORE_LATEST)]
    pub from: String,
    /// Redis's data directory.
    #[arg(long, env = ports::ENV_RESTORE_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The backup is in place; Redis will load it.
    Restored { key: String, bytes: u64 },
    /// Redis already has an append-only file here (a restarted pod, or a restore that
    /// finished before): it is left as it is.
    HoldsData,
}

pub async fn run(args: &RestoreArgs) -> Result<Outcome, Error> {
    let aof_dir = args.data_dir.join(backup::AOF_DIR);
    if tokio::fs::try_exists(&aof_dir)
        .await
        .map_err(|source| read_error(&aof_dir, source))?
    {
        return Ok(Outcome::HoldsData);
    }
    let store = args.store.open()?;
    let key = if args.from == backup::RESTORE_LATEST {
        store
            .backups()
            .await?
            .pop()
            .ok_or_else(|| Error::NoBackup {
                bucket: store.bucket.clone(),
                prefix: store.prefix.clone(),
            })?
    } else {
        args.from.clone()
    };

    let staging = args.data_dir.join(STAGING_DIR);
    // What an earlier attempt left half-done.
    if tokio::fs::try_exists(&staging).await.unwrap_or(false) {
        tokio::fs::remove_dir_all(&staging)
            .await
            .map_err(|source| write_error(&staging, source))?;
    }
    tokio::fs::create_dir(&staging)
        .await
        .map_err(|source| write_error(&staging, source))?;
    let staged = async {
        let bytes = download(&store, &key, &staging.join(backup::AOF_BASE_FILE)).await?;
        let manifest = staging.join(backup::AOF_MANIFEST_FILE);
        write_synced(&manifest, backup::aof_manifest().as_bytes()).await?;
        sync_dir(&staging).await?;
        Ok(bytes)
    }
    .await;
    let bytes = match staged {
        Ok(bytes) => bytes,
        Err(error) => {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(error);
        }
    };
    tokio::fs::rename(&staging, &aof_dir)
        .await
        .map_err(|source| write_error(&aof_dir, source))?;
    sync_dir(&args.data_dir).await?;
    Ok(Outcome::Restored { key, bytes })
}

/// Streams the object into `path`, checking it is an RDB file; returns its size.
async fn download(store: &crate::store::Store, key: &str, path: &Path) -> Result<u64, Error> {
    let download_error = |source| Error::Download {
        key: key.to_owned(),
        source,
    };
    let mut body = store
        .objects
        .get(&ObjectPath::from(key))
        .await
        .map_err(download_error)?
        .into_stream();
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|source| write_error(path, source))?;
    let mut bytes = 0u64;
    let mut head = Vec::with_capacity(RDB_MAGIC.len());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(download_error)?;
        if head.len() < RDB_MAGIC.len() {
            let wanted = RDB_MAGIC.len() - head.len();
            head.extend_from_slice(&chunk[..wanted.min(chunk.len())]);
        }
        file.write_all(&chunk)
            .await
            .map_err(|source| write_error(path, source))?;
        bytes += chunk.len() as u64;
    }
    if head != RDB_MAGIC {
        return Err(Error::NotRdb {
            key: key.to_owned(),
        });
    }
    file.sync_all()
        .await
        .map_err(|source| write_error(path, source))?;
    Ok(bytes)
}

async fn write_synced(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|source| write_error(path, source))?;
    file.write_all(contents)
        .await
        .map_err(|source| write_error(path, source))?;
    file.sync_all()
        .await
        .map_err(|source| write_error(path, source))
}

/// Makes a directory's entries (a file created or renamed in it) durable.
async fn sync_dir(path: &Path) -> Result<(), Error> {
    let dir = tokio::fs::File::open(path)
        .await
        .map_err(|source| read_error(path, source))?;
    dir.sync_all()
        .await
        .map_err(|source| write_error(path, source))
}

fn read_error(path: &Path, source: std::io::Error) -> Error {
    Error::Read {
        path: path.to_owned(),
        source,
    }
}

fn write_error(path: &Path, source: std::io::Error) -> Error {
    Error::Write {
        path: path.to_owned(),
        source,
    }
}
