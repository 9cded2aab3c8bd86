//! Backups against real servers: a real `redis-server` holding a canvas, the dump script
//! exactly as the backup Job runs it, and s3s-fs, an S3-compatible server (`cargo xtask
//! test` installs it with `cargo install` and names it in `PIXEL_TEST_S3_SERVER`).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use backup::{
    Error, RestoreArgs, StoreArgs, UploadArgs,
    restore::{self, Outcome},
    upload,
};
use object_store::{ObjectStoreExt, PutPayload, path::Path as ObjectPath};
use pixel_common::{
    backup::{BackupRecord, RESTORE_LATEST, dump_script},
    ports,
    redis_schema::{
        AUDIT_KEY, BANS_KEY, HISTORY_KEY, NAMES_KEY, PIXELS_KEY, PLACED_KEY, VERSION_KEY,
    },
    testing::{RedisServer, free_port},
};
use redis::AsyncCommands;
use tokio::process::{Child, Command};

const BUCKET: &str = "canvases";
const ACCESS_KEY: &str = "pixel-test-access";
const SECRET_KEY: &str = "pixel-test-secret-key";
const PATIENCE: Duration = Duration::from_secs(20);

/// s3s-fs on a loopback port, serving a temporary directory; killed when dropped.
struct S3Server {
    _child: Child,
    endpoint: String,
    _root: tempfile::TempDir,
}

impl S3Server {
    async fn start() -> Self {
        let binary = std::env::var_os(ports::ENV_TEST_S3_SERVER).unwrap_or_else(|| {
            panic!(
                "the backup tests need a real S3-compatible server: set {} to s3s-fs's \
                 binary (`cargo xtask test` installs it and sets it)",
                ports::ENV_TEST_S3_SERVER
            )
        });
        let root = tempfile::tempdir().expect("a directory for the store");
        std::fs::create_dir(root.path().join(BUCKET)).expect("the bucket");
        let port = free_port();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", Path::new(&binary).display()));
        let started = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < PATIENCE,
                "s3s-fs did not listen in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            _child: child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _root: root,
        }
    }

    fn store(&self, prefix: &str) -> StoreArgs {
        StoreArgs {
            endpoint: self.endpoint.clone(),
            bucket: BUCKET.to_owned(),
            prefix: prefix.to_owned(),
            region: "us-east-1".to_owned(),
            access_key_id: Some(ACCESS_KEY.to_owned()),
            secret_access_key: Some(SECRET_KEY.to_owned()),
        }
    }
}

fn port_of(redis: &RedisServer) -> String {
    redis.url().rsplit(':').next().expect("a port").to_owned()
}

/// Runs the backup Job's dump script against `redis`, into `dir`; returns the RDB file
/// and the version file.
async fn dump(redis: &RedisServer, dir: &Path) -> (PathBuf, PathBuf) {
    let file = dir.join("dump.rdb");
    let version = dir.join("version");
    let output = Command::new("sh")
        .args(["-c", &dump_script()])
        .env(ports::ENV_BACKUP_FILE, &file)
        .env(ports::ENV_BACKUP_VERSION_FILE, &version)
        .env(ports::ENV_BACKUP_REDIS_HOST, "127.0.0.1")
        .env(ports::ENV_BACKUP_REDIS_PORT, port_of(redis))
        .output()
        .await
        .expect("run sh");
    assert!(
        output.status.success(),
        "the dump script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (file, version)
}

/// A canvas as canvas-api leaves it: every kind of key it keeps.
async fn fill(conn: &mut redis::aio::MultiplexedConnection, version: u64) {
    let () = conn.set(PIXELS_KEY, vec![3u8; 4096]).await.expect("pixels");
    let () = conn.set(VERSION_KEY, version).await.expect("version");
    let () = conn.del(HISTORY_KEY).await.expect("history");
    for v in 1..=version {
        let _: String = redis::cmd("XADD")
            .arg(HISTORY_KEY)
            .arg(format!("{v}-0"))
            .arg(&[
                "x", "1", "y", "2", "c", "3", "id", "anon-a", "t", "0", "p", "0",
            ])
            .query_async(conn)
            .await
            .expect("history");
    }
    let () = conn
        .hset(PLACED_KEY, 2049, format!("{version} 0 anon-a"))
        .await
        .expect("placed");
    let () = conn.hset(NAMES_KEY, "user-1", "Ada").await.expect("names");
    let () = conn.hset(BANS_KEY, "anon-b", "ban").await.expect("bans");
    let _: String = redis::cmd("XADD")
        .arg(AUDIT_KEY)
        .arg("*")
        .arg(&["by", "moderator", "action", "ban"])
        .query_async(conn)
        .await
        .expect("audit");
}

/// Every key of a Redis, with its serialised value.
async fn contents(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, Vec<u8>)> {
    let mut keys: Vec<String> = conn.keys("*").await.expect("KEYS");
    keys.sort();
    let mut contents = Vec::new();
    for key in keys {
        let dumped: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("DUMP");
        contents.push((key, dumped));
    }
    contents
}

/// A redis-server on `dir` as the operator runs it (append-only file on), killed when
/// dropped.
async fn redis_on(dir: &Path) -> (Child, redis::aio::MultiplexedConnection) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        // `always`: the restart below follows a SIGKILL, which may not lose a write.
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let started = tokio::time::Instant::now();
    loop {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        {
            return (child, conn);
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the restored Redis did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_backup_restores_every_key_and_the_newest_are_kept() {
    let redis = RedisServer::start().await;
    let mut conn = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let s3 = S3Server::start().await;
    let work = tempfile::tempdir().expect("work dir");
    let prefix = "pixel-demo/demo/";

    // Three backups a minute apart, of the canvas at versions 3, 4 and 5; two are kept.
    let mut records = Vec::new();
    let mut originals = Vec::new();
    for (minute, version) in [(1, 3u64), (2, 4), (3, 5)] {
        fill(&mut conn, version).await;
        originals.push(contents(&mut conn).await);
        let (file, version_file) = dump(&redis, work.path()).await;
        let result_file = work.path().join("result.json");
        let args = UploadArgs {
            store: s3.store(prefix),
            file,
            version_file,
            retention: 2,
            result_file: Some(result_file.clone()),
        };
        let now: jiff::Timestamp = format!("2026-12-06T22:0{minute}:30Z")
            .parse()
            .expect("time");
        let record = upload::run(&args, now).await.expect("upload");
        assert_eq!(
            record,
            BackupRecord {
                time: format!("2026-12-06T22:0{minute}:30Z"),
                object: format!("{prefix}20261206T220{minute}30Z-v{version}.rdb"),
                version,
            }
        );
        let reported: BackupRecord =
            serde_json::from_slice(&std::fs::read(&result_file).expect("result file"))
                .expect("the result file is a record");
        assert_eq!(reported, record);
        records.push(record);
    }
    let kept = s3
        .store(prefix)
        .open()
        .expect("store")
        .backups()
        .await
        .expect("list");
    assert_eq!(kept, [records[1].object.clone(), records[2].object.clone()]);

    // The newest, restored into an empty data directory: every key as it was.
    let data = tempfile::tempdir().expect("data dir");
    let restore_args = |from: &str, dir: &Path| RestoreArgs {
        store: s3.store(prefix),
        from: from.to_owned(),
        data_dir: dir.to_owned(),
    };
    let outcome = restore::run(&restore_args(RESTORE_LATEST, data.path()))
        .await
        .expect("restore");
    assert!(
        matches!(&outcome, Outcome::Restored { key, .. } if *key == records[2].object),
        "{outcome:?}"
    );
    {
        let (_server, mut restored) = redis_on(data.path()).await;
        assert_eq!(contents(&mut restored).await, originals[2]);
        // Redis appends after the restored base: a write survives its restart.
        let () = restored.set("after-restore", 1).await.expect("write");
    }
    {
        let (_server, mut restarted) = redis_on(data.path()).await;
        let after: Option<u8> = restarted.get("after-restore").await.expect("read");
        assert_eq!(
            after,
            Some(1),
            "a write made after the restore survives a restart"
        );
    }

    // A volume that holds data is never overwritten, whatever the backup.
    let before = std::fs::read_dir(data.path().join("appendonlydir"))
        .expect("aof dir")
        .count();
    let again = restore::run(&restore_args(RESTORE_LATEST, data.path()))
        .await
        .expect("restore again");
    assert_eq!(again, Outcome::HoldsData);
    assert_eq!(
        std::fs::read_dir(data.path().join("appendonlydir"))
            .expect("aof dir")
            .count(),
        before
    );

    // A backup named by its key: the older one kept.
    let older = tempfile::tempdir().expect("data dir");
    restore::run(&restore_args(&records[1].object, older.path()))
        .await
        .expect("restore the older");
    let (_server, mut restored) = redis_on(older.path()).await;
    assert_eq!(contents(&mut restored).await, originals[1]);
}

#[tokio::test]
async fn a_restore_without_a_backup_or_from_a_foreign_object_fails_and_writes_nothing() {
    let s3 = S3Server::start().await;
    let data = tempfile::tempdir().expect("data dir");
    let args = |prefix: &str| RestoreArgs {
        store: s3.store(prefix),
        from: RESTORE_LATEST.to_owned(),
        data_dir: data.path().to_owned(),
    };

    let none = restore::run(&args("empty/")).await;
    assert!(matches!(none, Err(Error::NoBackup { .. })), "{none:?}");

    let store = s3.store("foreign/").open().expect("store");
    store
        .objects
        .put(
            &ObjectPath::from("foreign/20261206T220000Z-v9.rdb"),
            PutPayload::from_static(b"not an RDB file"),
        )
        .await
        .expect("put");
    let foreign = restore::run(&args("foreign/")).await;
    assert!(matches!(foreign, Err(Error::NotRdb { .. })), "{foreign:?}");

    assert_eq!(
        std::fs::read_dir(data.path()).expect("data dir").count(),
        0,
        "nothing is left behind"
    );

    let bad_prefix = restore::run(&args("no-slash")).await;
    assert!(
        matches!(bad_prefix, Err(Error::Prefix(_))),
        "{bad_prefix:?}"
    );
}
