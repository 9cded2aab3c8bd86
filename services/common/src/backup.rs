//! Backups of a canvas's Redis in object storage: how objects are named, what a finished
//! backup reports, and how a restore lays an archive out for Redis. The backup Job's
//! containers (rendered by the operator) and `backup` (services/backup) write them; the
//! operator reads the report into `status.lastBackup`. Documented in docs/protocol.md.

use serde::{Deserialize, Serialize};

use crate::{ports, redis_schema};

/// What one successful backup reports, as JSON in its container's termination message
/// (`/dev/termination-log`), which the operator reads from the pod's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// When the backup was taken, RFC 3339 in UTC.
    pub time: String,
    /// The object's key in the bucket.
    pub object: String,
    /// The canvas version the backup holds.
    pub version: u64,
}

/// Suffix of every backup object: a Redis RDB file.
pub const OBJECT_SUFFIX: &str = ".rdb";

/// The key of a backup taken at `stamp` (`YYYYMMDDTHHMMSSZ`, so keys sort by time) of a
/// canvas at `version`, under `prefix`.
pub fn object_key(prefix: &str, stamp: &str, version: u64) -> String {
    format!("{prefix}{stamp}-v{version}{OBJECT_SUFFIX}")
}

/// Whether `key` (under `prefix`) names a backup: `<stamp>-v<version>.rdb` with nothing
/// else below the prefix. Other objects sharing the prefix are never pruned or restored.
pub fn is_backup_key(prefix: &str, key: &str) -> bool {
    let Some(name) = key
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(OBJECT_SUFFIX))
    else {
        return false;
    };
    let Some((stamp, version)) = name.split_once("-v") else {
        return false;
    };
    stamp.len() == 16
        && stamp.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
        && !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
}

/// `restore.from` naming the newest backup under the prefix.
pub const RESTORE_LATEST: &str = "latest";

/// Redis's append-only directory under its data directory (Redis 7's default
/// `appenddirname`, which the operator leaves as it is).
pub const AOF_DIR: &str = "appendonlydir";
/// The base file a restore puts into [`AOF_DIR`]: Redis 7 loads an RDB base and appends
/// to an increment it creates beside it.
pub const AOF_BASE_FILE: &str = "appendonly.aof.1.base.rdb";
/// The manifest naming [`AOF_BASE_FILE`] (default `appendfilename` plus `.manifest`).
pub const AOF_MANIFEST_FILE: &str = "appendonly.aof.manifest";

/// The manifest's content for a restored base file alone.
pub fn aof_manifest() -> String {
    format!("file {AOF_BASE_FILE} seq 1 type b\n")
}

/// The backup Job's dump step, a POSIX shell script for a Redis image (it runs `sh`,
/// `sleep`, `redis-cli` and `redis-server`, as the official images and this project's
/// have them). It takes an RDB file from the canvas's Redis over the replication protocol
/// (`redis-cli --rdb`: Redis forks and streams it, serving on meanwhile) into
/// [`ports::ENV_BACKUP_FILE`], then loads that file into a throwaway `redis-server` on a
/// Unix socket, which proves the backup loads and reads the canvas version it holds into
/// [`ports::ENV_BACKUP_VERSION_FILE`]. Redis is found at `$`[`ports::ENV_BACKUP_REDIS_HOST`]
/// and `$`[`ports::ENV_BACKUP_REDIS_PORT`], its password in `REDISCLI_AUTH`.
pub fn dump_script() -> String {
    let file = ports::ENV_BACKUP_FILE;
    let version = ports::ENV_BACKUP_VERSION_FILE;
    let host = ports::ENV_BACKUP_REDIS_HOST;
    let port = ports::ENV_BACKUP_REDIS_PORT;
    let version_key = redis_schema::VERSION_KEY;
    format!(
        r#"set -eu
dir="${{{file}%/*}}"
# A new pod's address reaches the network policy that admits it some time after the pod
# starts: retry for a minute.
attempt=1
until redis-cli -h "${host}" -p "${port}" --rdb "${file}"; do
  if [ "$attempt" -ge 60 ]; then
    echo "no RDB file from ${host}:${port} after $attempt attempts" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  sleep 1
done
# The check server has no password; redis-cli would send this one to it.
unset REDISCLI_AUTH
socket="$dir/check.sock"
redis-server --port 0 --unixsocket "$socket" --dir "$dir" --dbfilename "${{{file}##*/}}" --appendonly no --save '' --daemonize no --logfile "$dir/check.log" &
server=$!
until [ "$(redis-cli -s "$socket" ping 2>/dev/null)" = PONG ]; do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "the backup does not load into redis-server:" >&2
    cat "$dir/check.log" >&2
    exit 1
  fi
  sleep 0.2
done
redis-cli -s "$socket" --raw get {version_key} > "${version}"
redis-cli -s "$socket" shutdown nosave >/dev/null 2>&1 || true
wait "$server" || true
rm -f "$socket" "$dir/check.log"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_keys_sort_by_time_and_are_told_from_other_objects() {
        let key = object_key("ns/demo/", "20261206T220000Z", 42);
        assert_eq!(key, "ns/demo/20261206T220000Z-v42.rdb");
        assert!(is_backup_key("ns/demo/", &key));
        assert!(
            object_key("p/", "20261206T220000Z", 9) > object_key("p/", "20261205T235959Z", 100)
        );
        for other in [
            "ns/demo/notes.txt",
            "ns/demo/20261206T220000Z-v42.rdb.tmp",
            "ns/demo/sub/20261206T220000Z-v42.rdb",
            "ns/demo/20261206T220000-v42.rdb",
            "ns/demo/20261206T220000Z-v.rdb",
            "ns/demo/20261206T220000Z-vx.rdb",
            "ns/other/20261206T220000Z-v42.rdb",
        ] {
            assert!(!is_backup_key("ns/demo/", other), "{other}");
        }
    }
}
