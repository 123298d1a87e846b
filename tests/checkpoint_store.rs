//! The checkpoint store's promises, on a local folder and on a real
//! S3-compatible object store (SeaweedFS, `scripts/s3.sh`): the same suite
//! for both, then the object store's lease, which stands in for the local
//! file lock.

mod common;

use k2::checkpoint::Store;
use k2::checkpoint::store::{LocalStore, ObjectStore};
use k2::config::S3Config;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The local S3 store of `scripts/s3.sh`, started if none runs.
fn s3() -> S3Config {
    let endpoint = common::store::require_s3();
    S3Config {
        endpoint: Some(endpoint),
        access_key_id: Some(k2::secret::Secret::new("k2")),
        secret_access_key: Some(k2::secret::Secret::new("k2")),
        ..S3Config::default()
    }
}

fn object_store(test: &str) -> ObjectStore {
    let prefix = format!("tests/{test}-{}", uuid::Uuid::new_v4().simple());
    ObjectStore::new("k2-warehouse", &prefix, &s3()).unwrap()
}

/// What every store must do.
fn suite(store: &dyn Store) {
    assert_eq!(store.get("a/x").unwrap(), None);
    assert!(!store.exists("a/x").unwrap());
    assert_eq!(store.list("a").unwrap(), Vec::<String>::new());
    store.put("a/x", b"one").unwrap();
    store.put("a/x", b"two").unwrap();
    assert_eq!(store.get("a/x").unwrap().as_deref(), Some(&b"two"[..]));
    assert!(store.exists("a/x").unwrap());
    assert!(store.create("a/y", b"first").unwrap());
    assert!(!store.create("a/y", b"second").unwrap(), "a second create loses");
    assert_eq!(store.get("a/y").unwrap().as_deref(), Some(&b"first"[..]));
    store.put("a/sub/z", b"deeper").unwrap();
    let mut names = store.list("a").unwrap();
    names.sort();
    assert_eq!(names, ["x", "y"], "the keys directly in a/");
    store.delete("a/x").unwrap();
    store.delete("a/x").unwrap();
    assert!(!store.exists("a/x").unwrap());
    // Of racing creators, exactly one wins, and its bytes are what is there.
    let winners = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for i in 0..8u8 {
            let winners = &winners;
            s.spawn(move || {
                if store.create("a/race", &[i]).unwrap() {
                    winners.lock().unwrap().push(i);
                }
            });
        }
    });
    let winners = winners.into_inner().unwrap();
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(store.get("a/race").unwrap(), Some(winners));
    for key in ["a/y", "a/race", "a/sub/z"] {
        store.delete(key).unwrap();
    }
}

#[test]
fn a_local_folder_keeps_the_stores_promises() {
    let dir = std::env::temp_dir().join(format!("k2-store-{}", uuid::Uuid::new_v4().simple()));
    suite(&LocalStore::new(&dir));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_object_store_keeps_the_stores_promises() {
    suite(&object_store("suite"));
}

/// The lease: a second instance is refused while the first renews it, starts
/// at once after a release, and takes over a lease whose holder died; a
/// holder whose lease was taken over is told so.
#[test]
fn the_object_stores_lease_admits_one_live_instance() {
    let store = object_store("lease");
    let lease = Duration::from_millis(900);
    let lost = Arc::new(AtomicUsize::new(0));
    let counted = |n: &Arc<AtomicUsize>| -> Box<dyn Fn(String) + Send + Sync> {
        let n = n.clone();
        Box::new(move |_| {
            n.fetch_add(1, Ordering::SeqCst);
        })
    };

    let first = store.lock("j", lease, counted(&lost)).unwrap();
    let started = Instant::now();
    let err = store.lock("j", lease, counted(&lost)).unwrap_err().to_string();
    assert!(err.contains("already running") && err.contains("lease.json"), "{err}");
    assert!(
        started.elapsed() < lease * 3,
        "refused within about a lease: {:?}",
        started.elapsed()
    );
    drop(first);
    let started = Instant::now();
    let second = store.lock("j", lease, counted(&lost)).unwrap();
    assert!(started.elapsed() < lease, "a released lease is free at once");

    // The holder "dies": its lease, last renewed long ago, is taken over
    // at once; the old holder, still renewing, learns it lost the lease.
    let stale = serde_json::json!({"holder": "dead", "host": "h", "pid": 1, "renewed_ms": 0, "lease_ms": 900});
    store.put("lease.json", stale.to_string().as_bytes()).unwrap();
    let third = store.lock("j", lease, counted(&lost)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lost.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        lost.load(Ordering::SeqCst),
        1,
        "the second holder was told its lease is gone"
    );
    drop(second);
    drop(third);
    assert_eq!(store.get("lease.json").unwrap(), None, "released");

    // A holder on this host whose process is gone (killed, restarted by
    // its supervisor): its fresh, long lease is taken over at once.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let fresh = serde_json::json!({"holder": "killed", "host": host.trim(), "pid": pid,
        "renewed_ms": chrono::Utc::now().timestamp_millis(), "lease_ms": 60_000});
    store.put("lease.json", fresh.to_string().as_bytes()).unwrap();
    let started = Instant::now();
    let fourth = store.lock("j", lease, counted(&lost)).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a dead local holder's lease is taken over at once: {:?}",
        started.elapsed()
    );
    drop(fourth);
}
