//! The kubelet-safe directory watch against a real file system.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{count_changes, fast, files, wait_for};
use maas_source::kubelet::{KubeletWriter, write_dir_like_kubelet};
use maas_source::{SourceError, WatchOptions, read_dir_snapshot, watch_dir};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn initial_snapshot_holds_top_level_files_and_hides_kubelet_internals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("addresses");
    write_dir_like_kubelet(&dir, &files(&[("json", "{}"), ("config.json", "[]")])).unwrap();
    fs::create_dir(dir.join("subdir")).unwrap();
    fs::write(dir.join(".hidden"), "x").unwrap();

    let rx = watch_dir(dir.clone(), fast()).unwrap();
    let snap = rx.borrow().clone();
    assert_eq!(snap.dir, dir);
    assert_eq!(snap.files, files(&[("json", "{}"), ("config.json", "[]")]));
    assert_eq!(snap.hash, read_dir_snapshot(&dir).unwrap().hash);
    assert_eq!(snap.hash.len(), 64);
}

#[tokio::test]
async fn kubelet_style_update_is_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    writer.write(&files(&[("json", "v1")])).unwrap();
    let mut rx = watch_dir(tmp.path().to_path_buf(), fast()).unwrap();

    writer.write(&files(&[("json", "v2")])).unwrap();
    wait_for(&mut rx, WAIT, |s| s.files == files(&[("json", "v2")])).await;
    // And again: the watch survives the first update (a single-file watch would not).
    writer.write(&files(&[("json", "v3")])).unwrap();
    wait_for(&mut rx, WAIT, |s| s.files == files(&[("json", "v3")])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_consecutive_kubelet_updates_end_at_the_final_content() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    writer.write(&files(&[("json", "0")])).unwrap();
    let mut rx = watch_dir(tmp.path().to_path_buf(), WatchOptions::default()).unwrap();
    let published = count_changes(rx.clone());

    // Written from a blocking thread, back to back, while the watch runs concurrently.
    tokio::task::spawn_blocking(move || {
        for n in 1..=100 {
            // Alternate the key set too, so links are created and removed along the way.
            let content = n.to_string();
            let mut payload = files(&[("json", &content)]);
            if n % 2 == 0 {
                payload.insert("config.json".into(), content.clone());
            }
            writer.write(&payload).unwrap();
        }
    })
    .await
    .unwrap();
    let last = wait_for(&mut rx, WAIT, |s| {
        s.files == files(&[("json", "100"), ("config.json", "100")])
    })
    .await;
    assert_eq!(last.hash, read_dir_snapshot(tmp.path()).unwrap().hash);
    // Nothing later changes it back: only one timestamped directory remains and it is the final one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.borrow().files, last.files);
    let published = published.load(Ordering::SeqCst);
    assert!(
        (1..=10).contains(&published),
        "100 updates should be coalesced into a few publishes, got {published}"
    );
}

#[tokio::test]
async fn plain_in_place_writes_are_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    fs::write(dir.join("json"), "v1").unwrap();
    let mut rx = watch_dir(dir.clone(), fast()).unwrap();

    // Overwrite in place.
    fs::write(dir.join("json"), "v2").unwrap();
    wait_for(&mut rx, WAIT, |s| s.files == files(&[("json", "v2")])).await;
    // New file.
    fs::write(dir.join("config.json"), "c1").unwrap();
    wait_for(&mut rx, WAIT, |s| {
        s.files == files(&[("json", "v2"), ("config.json", "c1")])
    })
    .await;
    // Editor style: write a hidden temporary, rename it over the file.
    fs::write(dir.join(".json.swp"), "v3").unwrap();
    fs::rename(dir.join(".json.swp"), dir.join("json")).unwrap();
    wait_for(&mut rx, WAIT, |s| {
        s.files == files(&[("json", "v3"), ("config.json", "c1")])
    })
    .await;
    // Removal.
    fs::remove_file(dir.join("config.json")).unwrap();
    wait_for(&mut rx, WAIT, |s| s.files == files(&[("json", "v3")])).await;
}

#[tokio::test]
async fn keys_added_and_removed_by_the_kubelet_are_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    writer.write(&files(&[("a", "1")])).unwrap();
    let mut rx = watch_dir(tmp.path().to_path_buf(), fast()).unwrap();

    writer.write(&files(&[("a", "1"), ("b", "2")])).unwrap();
    wait_for(&mut rx, WAIT, |s| {
        s.files == files(&[("a", "1"), ("b", "2")])
    })
    .await;
    writer.write(&files(&[("b", "2")])).unwrap();
    wait_for(&mut rx, WAIT, |s| s.files == files(&[("b", "2")])).await;
    writer.write(&files(&[])).unwrap();
    wait_for(&mut rx, WAIT, |s| s.files.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounce_coalesces_a_burst() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    writer.write(&files(&[("json", "0")])).unwrap();
    let mut rx = watch_dir(tmp.path().to_path_buf(), WatchOptions::default()).unwrap();
    let published = count_changes(rx.clone());

    // 20 writes, 5 ms apart: all well within one 200 ms quiet period.
    for n in 1..=20 {
        writer.write(&files(&[("json", &n.to_string())])).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_for(&mut rx, WAIT, |s| s.files == files(&[("json", "20")])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = published.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&published),
        "a burst of 20 writes should publish once (at most twice), got {published}"
    );
}

#[tokio::test]
async fn resync_catches_a_change_no_event_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    writer.write(&files(&[("json", "v1")])).unwrap();
    let with_resync = WatchOptions {
        debounce: Duration::from_millis(50),
        resync: Duration::from_millis(300),
    };
    let mut rx = watch_dir(tmp.path().to_path_buf(), with_resync).unwrap();
    let no_resync = WatchOptions {
        resync: Duration::ZERO,
        ..with_resync
    };
    let rx_events_only = watch_dir(tmp.path().to_path_buf(), no_resync).unwrap();

    // Edit the file inside the current timestamped directory: the non-recursive watch of the mount point
    // gets no event for it (as when events are lost).
    fs::write(tmp.path().join("..data").join("json"), "v2").unwrap();

    wait_for(&mut rx, WAIT, |s| s.files == files(&[("json", "v2")])).await;
    // The events-only watch did not see it: the resync is what caught the change.
    assert!(!rx_events_only.has_changed().unwrap());
    assert_eq!(rx_events_only.borrow().files, files(&[("json", "v1")]));
}

#[tokio::test]
async fn unchanged_content_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    let payload = files(&[("json", "same"), ("config.json", "[]")]);
    writer.write(&payload).unwrap();
    let rx = watch_dir(tmp.path().to_path_buf(), fast()).unwrap();

    // Full kubelet updates with identical content (new timestamped dir, link swap, old dir removed each time).
    for _ in 0..5 {
        writer.write(&payload).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!rx.has_changed().unwrap(), "same content must not publish");
    assert_eq!(rx.borrow().files, payload);
}

#[tokio::test]
async fn missing_directory_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nope");
    let err = watch_dir(dir.clone(), fast()).unwrap_err();
    assert!(matches!(err, SourceError::ReadDir { .. }), "{err:?}");
    assert_eq!(err.metric_label(), "read_dir");
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );

    let err = read_dir_snapshot(&dir).unwrap_err();
    assert_eq!(err.path(), dir);
}

#[test]
fn non_utf8_file_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("good"), "ok").unwrap();
    fs::write(tmp.path().join("bad"), [0xff, 0xfe, 0x00]).unwrap();
    let err = read_dir_snapshot(tmp.path()).unwrap_err();
    assert!(matches!(err, SourceError::NotUtf8 { .. }), "{err:?}");
    assert_eq!(err.metric_label(), "not_utf8");
    assert_eq!(err.path(), tmp.path().join("bad"));
    assert!(err.to_string().contains("bad"), "{err}");
}

#[test]
fn unreadable_entry_is_an_error_naming_it() {
    // Tests may run as root, where permissions do not stop reads; a symlink loop cannot be read by anyone.
    let tmp = tempfile::tempdir().unwrap();
    symlink("loop", tmp.path().join("loop")).unwrap();
    let err = read_dir_snapshot(tmp.path()).unwrap_err();
    assert!(matches!(err, SourceError::ReadFile { .. }), "{err:?}");
    assert_eq!(err.path(), tmp.path().join("loop"));
}

#[test]
fn dangling_symlink_is_skipped_as_a_key_being_removed() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("a"), "1").unwrap();
    symlink("..data/gone", tmp.path().join("gone")).unwrap();
    let snap = read_dir_snapshot(tmp.path()).unwrap();
    assert_eq!(snap.files, files(&[("a", "1")]));
}

#[tokio::test]
async fn read_error_while_watching_keeps_the_last_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    fs::write(dir.join("json"), "v1").unwrap();
    let mut rx = watch_dir(dir.clone(), fast()).unwrap();

    fs::write(dir.join("json"), [0xff, 0xfe]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rx.has_changed().unwrap());
    assert_eq!(rx.borrow().files, files(&[("json", "v1")]));

    fs::write(dir.join("json"), "v2").unwrap();
    wait_for(&mut rx, WAIT, |s| s.files == files(&[("json", "v2")])).await;
}

#[test]
fn watching_outside_a_tokio_runtime_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = watch_dir(tmp.path().to_path_buf(), fast()).unwrap_err();
    assert!(matches!(err, SourceError::NoRuntime { .. }), "{err:?}");
}

#[tokio::test]
async fn watch_stops_when_every_receiver_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("json"), "v1").unwrap();
    let rx = watch_dir(tmp.path().to_path_buf(), fast()).unwrap();
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert!(before >= 1);
    drop(rx);
    // The task notices the closed channel and ends, releasing the OS watch.
    let stopped = tokio::time::timeout(WAIT, async {
        loop {
            if tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                < before
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        stopped.is_ok(),
        "watch task still alive after its receivers were dropped"
    );
}
