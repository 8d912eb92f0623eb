//! Test support: writes a directory exactly as the kubelet's atomic writer updates a mounted ConfigMap.
//!
//! Used by the tests of this crate, router-agent tests, e2e tests, the demo and the bench. The steps follow
//! `pkg/volume/util/atomic_writer.go`:
//! 1. write the payload into a new hidden timestamped directory `..2026_11_28_07_00_00.123456789`;
//! 2. create the symlink `..data_tmp` -> that directory;
//! 3. rename `..data_tmp` over `..data` (the atomic switch);
//! 4. create the user-visible symlinks `key -> ..data/key` for new keys;
//! 5. remove the user-visible symlinks of keys that are gone;
//! 6. remove the old timestamped directory.
//!
//! Unlike the kubelet, an identical payload is written again rather than skipped, so tests can check that a
//! watch publishes nothing for unchanged content even though the file system saw a full update.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::snapshot::DATA_LINK;

/// The temporary symlink renamed over `..data`.
const DATA_TMP_LINK: &str = "..data_tmp";

/// Distinguishes directories created within the same nanosecond (in this process).
static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// Updates one directory the way the kubelet updates a ConfigMap volume.
#[derive(Debug, Clone)]
pub struct KubeletWriter {
    /// The volume's mount point.
    dir: PathBuf,
}

impl KubeletWriter {
    /// Creates `dir` (and its parents) if needed.
    pub fn new(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(KubeletWriter {
            dir: dir.to_path_buf(),
        })
    }

    /// The volume's mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the whole content with `files` (key -> content), step by step as the kubelet does.
    ///
    /// Keys must be non-empty, must not start with `.` and must not contain `/` (as ConfigMap keys).
    pub fn write(&self, files: &BTreeMap<String, String>) -> io::Result<()> {
        for key in files.keys() {
            if key.is_empty() || key.starts_with('.') || key.contains('/') {
                return Err(io::Error::new(
                    ErrorKind::InvalidInput,
                    format!("invalid ConfigMap key {key:?}"),
                ));
            }
        }
        let data_link = self.dir.join(DATA_LINK);
        let old_ts_dir = fs::read_link(&data_link).ok();

        // 1. The new timestamped directory with the payload.
        let ts_name = self.create_ts_dir()?;
        let ts_dir = self.dir.join(&ts_name);
        for (key, content) in files {
            fs::write(ts_dir.join(key), content)?;
        }

        // 2. `..data_tmp` -> new directory (relative, as the kubelet does).
        let tmp_link = self.dir.join(DATA_TMP_LINK);
        match fs::remove_file(&tmp_link) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        symlink(&ts_name, &tmp_link)?;

        // 3. The atomic switch.
        fs::rename(&tmp_link, &data_link)?;

        // 4. User-visible symlinks for new keys.
        for key in files.keys() {
            let visible = self.dir.join(key);
            if fs::symlink_metadata(&visible).is_err() {
                symlink(Path::new(DATA_LINK).join(key), &visible)?;
            }
        }

        // 5. and 6. Remove what belonged to the old version only.
        if let Some(old) = old_ts_dir {
            let old_dir = self.dir.join(&old);
            if let Ok(entries) = fs::read_dir(&old_dir) {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    if name
                        .to_str()
                        .is_some_and(|key| !files.contains_key(key) && !key.starts_with('.'))
                    {
                        match fs::remove_file(self.dir.join(&name)) {
                            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                            _ => {}
                        }
                    }
                }
            }
            if old != Path::new(&ts_name) {
                match fs::remove_dir_all(&old_dir) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Creates `..YYYY_MM_DD_HH_MM_SS.<nanoseconds>` (plus a counter if that name is taken) and returns its name.
    fn create_ts_dir(&self) -> io::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let base = format!("..{}.{:09}", format_utc(now.as_secs()), now.subsec_nanos());
        let mut name = base.clone();
        loop {
            match fs::create_dir(self.dir.join(&name)) {
                Ok(()) => return Ok(name),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    name = format!("{base}{}", UNIQUE.fetch_add(1, Ordering::Relaxed));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Convenience: [`KubeletWriter::new`] then [`KubeletWriter::write`].
pub fn write_dir_like_kubelet(dir: &Path, files: &BTreeMap<String, String>) -> io::Result<()> {
    KubeletWriter::new(dir)?.write(files)
}

/// `YYYY_MM_DD_HH_MM_SS` in UTC for seconds since the Unix epoch.
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps_like_the_kubelet() {
        assert_eq!(format_utc(0), "1970_01_01_00_00_00");
        // 2026-11-28T07:00:00Z
        assert_eq!(format_utc(1_795_849_200), "2026_11_28_07_00_00");
        // 2024-02-29T23:59:59Z (leap day)
        assert_eq!(format_utc(1_709_251_199), "2024_02_29_23_59_59");
    }
}
