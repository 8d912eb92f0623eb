//! Watching one file (e.g. `--brokers-file`, `--flavors-file`) through its parent directory.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

mod common;

use std::fs;
use std::time::Duration;

use common::{fast, files, wait_for};
use maas_source::kubelet::KubeletWriter;
use maas_source::{SourceError, read_file_snapshot, watch_file};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn initial_value_and_in_place_and_rename_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("brokers.json");
    fs::write(&path, "v1").unwrap();
    let mut rx = watch_file(path.clone(), fast()).unwrap();
    {
        let snap = rx.borrow();
        assert_eq!(snap.path, path);
        assert_eq!(snap.content, "v1");
        assert_eq!(snap.hash, read_file_snapshot(&path).unwrap().hash);
    }

    fs::write(&path, "v2").unwrap();
    wait_for(&mut rx, WAIT, |s| s.content == "v2").await;

    let tmp_file = tmp.path().join(".brokers.json.tmp");
    fs::write(&tmp_file, "v3").unwrap();
    fs::rename(&tmp_file, &path).unwrap();
    wait_for(&mut rx, WAIT, |s| s.content == "v3").await;
}

#[tokio::test]
async fn a_configmap_key_survives_many_kubelet_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    writer.write(&files(&[("flavor.json", "f1")])).unwrap();
    let mut rx = watch_file(tmp.path().join("flavor.json"), fast()).unwrap();
    assert_eq!(rx.borrow().content, "f1");

    for n in 2..=5 {
        let content = format!("f{n}");
        writer.write(&files(&[("flavor.json", &content)])).unwrap();
        wait_for(&mut rx, WAIT, |s| s.content == content).await;
    }
}

#[tokio::test]
async fn other_files_in_the_directory_publish_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("brokers.json");
    fs::write(&path, "v1").unwrap();
    let rx = watch_file(path, fast()).unwrap();
    fs::write(tmp.path().join("other.json"), "x").unwrap();
    fs::write(tmp.path().join("other.json"), "y").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!rx.has_changed().unwrap());
}

#[tokio::test]
async fn deleted_file_keeps_the_last_value_until_it_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("brokers.json");
    fs::write(&path, "v1").unwrap();
    let mut rx = watch_file(path.clone(), fast()).unwrap();

    fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!rx.has_changed().unwrap());
    assert_eq!(rx.borrow().content, "v1");

    fs::write(&path, "v2").unwrap();
    wait_for(&mut rx, WAIT, |s| s.content == "v2").await;
}

#[tokio::test]
async fn missing_file_or_directory_at_start_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.json");
    let err = watch_file(missing.clone(), fast()).unwrap_err();
    assert!(matches!(err, SourceError::ReadFile { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.json"), "{err}");

    let in_missing_dir = tmp.path().join("nodir").join("f.json");
    let err = watch_file(in_missing_dir, fast()).unwrap_err();
    assert!(err.to_string().contains("nodir"), "{err}");

    let err = watch_file(tmp.path().to_path_buf(), fast()).unwrap_err();
    assert!(matches!(err, SourceError::NotAFile { .. }), "{err:?}");
    assert_eq!(err.metric_label(), "not_a_file");
}

#[test]
fn non_utf8_file_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("flavors.json");
    fs::write(&path, [0xc3, 0x28]).unwrap();
    let err = read_file_snapshot(&path).unwrap_err();
    assert!(matches!(err, SourceError::NotUtf8 { .. }), "{err:?}");
    assert!(err.to_string().contains("flavors.json"), "{err}");
}
