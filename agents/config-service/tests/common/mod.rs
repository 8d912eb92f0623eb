//! A config-service in file mode for the integration tests: started on a kubelet-written directory in a temp dir,
//! stopped (and waited for) on demand. Each test file adds its own starters in an `impl Svc` block.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use config_service::{Args, Running};
use maas_source::kubelet::KubeletWriter;
use tokio::sync::oneshot;

/// A running config-service and the writer of its address directory.
pub struct Svc {
    running: Option<Running>,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
    /// Writes the directory the way the kubelet updates a mounted ConfigMap.
    pub writer: KubeletWriter,
}

impl Svc {
    /// Writes `files` into a fresh directory, then starts config-service on it (`Args::for_dir`, then `edit` with
    /// the args and the temp dir, for extra files).
    pub async fn start_in(
        files: &BTreeMap<String, String>,
        edit: impl FnOnce(&mut Args, &Path),
    ) -> Svc {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg");
        let writer = KubeletWriter::new(&cfg).unwrap();
        writer.write(files).unwrap();
        let mut args = Args::for_dir(&cfg);
        edit(&mut args, dir.path());
        let (tx, rx) = oneshot::channel();
        let running = config_service::start(args, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
        Svc {
            running: Some(running),
            stop: Some(tx),
            _dir: dir,
            writer,
        }
    }

    /// The temp dir holding `cfg/` (and whatever extra files a test put there).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// `amqp://` and the AMQP address bound.
    pub fn url(&self) -> String {
        format!("amqp://{}", self.r().amqp_addr)
    }

    /// The running service (its addresses and metrics).
    pub fn r(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Stops the service and waits for it (at most 10 s); returns how long that took.
    pub async fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.running.take().unwrap().wait())
            .await
            .expect("service did not stop in time")
            .unwrap();
        started.elapsed()
    }
}
