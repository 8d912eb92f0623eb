//! Why the directory is watched: a notify watch on a single ConfigMap FILE goes deaf after the first kubelet
//! update, because the kubelet deletes the inode it was watching (the old timestamped directory).
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::files;
use maas_source::kubelet::KubeletWriter;
use notify::{RecursiveMode, Watcher};

#[test]
fn a_watch_on_a_single_file_misses_every_update_after_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    writer.write(&files(&[("json", "v1")])).unwrap();

    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = tx.send(res);
    })
    .unwrap();
    // `json` is the kubelet's symlink `json -> ..data/json`; inotify follows it to the file in the current
    // timestamped directory.
    watcher
        .watch(&tmp.path().join("json"), RecursiveMode::NonRecursive)
        .unwrap();

    // First update: the watched inode is removed with the old timestamped directory — one last burst of events.
    writer.write(&files(&[("json", "v2")])).unwrap();
    let first = rx.recv_timeout(Duration::from_secs(2));
    assert!(
        first.is_ok(),
        "the first update is still noticed (as a removal)"
    );
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}

    // Later updates: the content changes, the file watch reports nothing at all.
    writer.write(&files(&[("json", "v3")])).unwrap();
    writer.write(&files(&[("json", "v4")])).unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("json")).unwrap(),
        "v4"
    );
    let later = rx.recv_timeout(Duration::from_secs(1));
    assert!(
        later.is_err(),
        "a single-file watch unexpectedly saw a later update: {later:?}"
    );
}
