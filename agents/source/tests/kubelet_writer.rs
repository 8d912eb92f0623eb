//! The test-support writer leaves the exact layout the kubelet leaves in a ConfigMap volume.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::files;
use maas_source::kubelet::{KubeletWriter, write_dir_like_kubelet};

fn entries(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn ts_dirs(dir: &Path) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|n| n.starts_with("..2"))
        .collect()
}

#[test]
fn layout_matches_a_kubelet_configmap_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    write_dir_like_kubelet(&dir, &files(&[("json", "{}"), ("config.json", "[]")])).unwrap();

    let ts = ts_dirs(&dir);
    assert_eq!(ts.len(), 1, "{ts:?}");
    let ts = &ts[0];
    // ..YYYY_MM_DD_HH_MM_SS.nnnnnnnnn
    assert_eq!(ts.len(), "..2026_11_28_07_00_00.123456789".len(), "{ts}");
    assert_eq!(&ts[21..22], ".");
    assert_eq!(
        entries(&dir),
        ["..data", "config.json", "json", ts.as_str()]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(
        fs::read_link(dir.join("..data")).unwrap(),
        PathBuf::from(ts)
    );
    assert_eq!(
        fs::read_link(dir.join("json")).unwrap(),
        PathBuf::from("..data/json")
    );
    assert_eq!(fs::read_to_string(dir.join("json")).unwrap(), "{}");
    assert!(fs::symlink_metadata(dir.join(ts)).unwrap().is_dir());
}

#[test]
fn update_swaps_data_removes_old_dir_and_stale_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    writer.write(&files(&[("a", "1"), ("b", "2")])).unwrap();
    let first = ts_dirs(tmp.path());
    writer.write(&files(&[("b", "3"), ("c", "4")])).unwrap();
    let second = ts_dirs(tmp.path());

    assert_eq!(second.len(), 1);
    assert_ne!(first, second, "a new timestamped directory each time");
    assert_eq!(
        entries(tmp.path()),
        ["..data", "b", "c", second[0].as_str()]
            .into_iter()
            .map(String::from)
            .collect(),
        "no ..data_tmp, no old directory, no link for the removed key"
    );
    assert_eq!(fs::read_to_string(tmp.path().join("b")).unwrap(), "3");
    assert_eq!(fs::read_to_string(tmp.path().join("c")).unwrap(), "4");
}

#[test]
fn timestamped_names_are_unique_even_when_written_back_to_back() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    let mut seen = BTreeSet::new();
    for n in 0..200 {
        writer.write(&files(&[("k", &n.to_string())])).unwrap();
        let target = fs::read_link(tmp.path().join("..data")).unwrap();
        assert!(seen.insert(target), "timestamped directory reused");
    }
    assert_eq!(ts_dirs(tmp.path()).len(), 1);
}

#[test]
fn invalid_keys_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = KubeletWriter::new(tmp.path()).unwrap();
    for key in ["", "..data", ".hidden", "a/b"] {
        let err = writer.write(&files(&[(key, "x")])).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{key:?}");
    }
}
