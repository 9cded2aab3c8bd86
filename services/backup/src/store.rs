//! Where the backups live: an S3-compatible bucket and a prefix in it.

use std::sync::Arc;

use clap::Args;
use futures::TryStreamExt;
use object_store::{ObjectStore, aws::AmazonS3Builder, path::Path};
use pixel_common::{backup, ports};

use crate::Error;

/// The object store's settings, shared by upload and restore.
#[derive(Clone, Args)]
pub struct StoreArgs {
    /// The S3-compatible endpoint, `http(s)://host[:port]`.
    #[arg(long, env = ports::ENV_BACKUP_ENDPOINT)]
    pub endpoint: String,
    /// The bucket.
    #[arg(long, env = ports::ENV_BACKUP_BUCKET)]
    pub bucket: String,
    /// The prefix of this canvas's backups: empty, or ending with `/`.
    #[arg(long, env = ports::ENV_BACKUP_PREFIX, default_value = "")]
    pub prefix: String,
    /// The region requests are signed for.
    #[arg(long, env = ports::ENV_BACKUP_REGION, default_value = "us-east-1")]
    pub region: String,
    /// Required to reach the store (a restore into a volume that holds data never does).
    #[arg(long, env = ports::ENV_BACKUP_ACCESS_KEY_ID, hide_env_values = true)]
    pub access_key_id: Option<String>,
    #[arg(long, env = ports::ENV_BACKUP_SECRET_ACCESS_KEY, hide_env_values = true)]
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreArgs")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// An opened store.
#[derive(Debug, Clone)]
pub struct Store {
    pub objects: Arc<dyn ObjectStore>,
    pub bucket: String,
    pub prefix: String,
}

impl StoreArgs {
    pub fn open(&self) -> Result<Store, Error> {
        if !(self.prefix.is_empty() || self.prefix.ends_with('/')) {
            return Err(Error::Prefix(self.prefix.clone()));
        }
        let (Some(access_key_id), Some(secret_access_key)) =
            (&self.access_key_id, &self.secret_access_key)
        else {
            return Err(Error::Credentials);
        };
        let objects = AmazonS3Builder::new()
            .with_http_connector(crate::http::HyperConnector)
            .with_endpoint(&self.endpoint)
            .with_allow_http(self.endpoint.starts_with("http://"))
            // Path-style (`<endpoint>/<bucket>/<key>`): what self-hosted stores serve
            // without wildcard DNS.
            .with_virtual_hosted_style_request(false)
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(access_key_id)
            .with_secret_access_key(secret_access_key)
            .build()
            .map_err(|source| Error::Store {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        Ok(Store {
            objects: Arc::new(objects),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
        })
    }
}

impl Store {
    /// The keys of this canvas's backups, oldest first (keys sort by the time they name).
    pub async fn backups(&self) -> Result<Vec<String>, Error> {
        let prefix = self.prefix.trim_end_matches('/');
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
        let mut keys: Vec<String> = self
            .objects
            .list(prefix.as_ref())
            .map_ok(|meta| meta.location.to_string())
            .try_filter(|key| std::future::ready(backup::is_backup_key(&self.prefix, key)))
            .try_collect()
            .await
            .map_err(|source| Error::List {
                prefix: self.prefix.clone(),
                source,
            })?;
        keys.sort();
        Ok(keys)
    }
}
