//! Telling the router-agents that a draining broker pod is RELEASED (`crate::handover`, docs/architecture.md §5):
//! every durable subscription of the topics leaving it sits on the topics' new pods, so router-agents with
//! `--topic-handover` may move those topics' linkRoutes off it.
//!
//! - Kubernetes (broker pods from the API): the annotation `maas.io/topics-released: "true"` on the pod (JSON merge
//!   patch; removed again, `null`, when the pod no longer drains). RBAC: pods `patch`.
//! - File mode (`--handover-file`): the file `{"released": ["<pod>", ...]}` router-agent `--handover-file` watches,
//!   written atomically (a hidden temporary file beside it, flushed, renamed over it), only when its content
//!   changes.
//!
//! A pod counts as released only once this succeeded: the old queues are swept `--handover-grace` after the
//! release, so a release the router-agents never heard of would let a sweep delete a queue the router still routes
//! to.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use maas_model::pods::TOPICS_RELEASED_ANNOTATION;
use serde_json::{Value, json};

/// Where releases go.
pub struct Releaser {
    /// `--handover-file`.
    file: Option<PathBuf>,
    /// The broker pods' annotation (broker pods from the Kubernetes API).
    kube: Option<KubePods>,
    /// What the file holds (None: unknown, written on the next change).
    written: Option<BTreeSet<String>>,
}

/// The pods of a namespace, for the annotation.
#[derive(Clone)]
pub struct KubePods {
    pub client: Client,
    pub namespace: String,
    /// Bound on one API call.
    pub timeout: Duration,
}

impl Releaser {
    /// Releases to `file` and/or the pod annotation (neither: kept in memory only, nobody is told).
    pub fn new(file: Option<PathBuf>, kube: Option<KubePods>) -> Releaser {
        Releaser {
            file,
            kube,
            written: None,
        }
    }

    /// True when somebody hears of a release.
    pub fn tells_anyone(&self) -> bool {
        self.file.is_some() || self.kube.is_some()
    }

    /// True when releases are pod annotations.
    pub fn annotates(&self) -> bool {
        self.kube.is_some()
    }

    /// The pods the handover file names now (an earlier run's releases; none when it does not exist).
    pub fn load_file(&mut self) -> Result<BTreeSet<String>, String> {
        let Some(path) = &self.file else {
            return Ok(BTreeSet::new());
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("--handover-file {}: {e}", path.display())),
        };
        let set = maas_model::placement::parse_handover(&path.display().to_string(), &text)
            .map_err(|e| {
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
        self.written = Some(set.clone());
        Ok(set)
    }

    /// Release `pods` (the released set becomes `already` plus them): each pod annotated (Kubernetes), then the
    /// file written. Returns the pods now released, and what failed.
    pub async fn release(
        &mut self,
        already: &BTreeSet<String>,
        pods: &[String],
    ) -> (Vec<String>, Vec<String>) {
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for pod in pods {
            match &self.kube {
                Some(k) => match annotate_released(k, pod, true).await {
                    Ok(()) => done.push(pod.clone()),
                    Err(e) => errors.push(e),
                },
                None => done.push(pod.clone()),
            }
        }
        if !done.is_empty() {
            let mut all = already.clone();
            all.extend(done.iter().cloned());
            if let Err(e) = self.write_file(&all) {
                errors.push(e);
                return (Vec::new(), errors);
            }
        }
        (done, errors)
    }

    /// Keep the file equal to `released` (pods no longer draining dropped) and remove the annotation of `stale`
    /// pods (annotated, not draining). What failed.
    pub async fn tidy(&mut self, released: &BTreeSet<String>, stale: &[String]) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(k) = &self.kube {
            for pod in stale {
                if let Err(e) = annotate_released(k, pod, false).await {
                    errors.push(e);
                }
            }
        }
        if let Err(e) = self.write_file(released) {
            errors.push(e);
        }
        errors
    }

    /// Write the file when its content changes.
    fn write_file(&mut self, released: &BTreeSet<String>) -> Result<(), String> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        if self.written.as_ref() == Some(released) {
            return Ok(());
        }
        write_atomically(path, &maas_model::placement::render_handover(released))
            .map_err(|e| format!("--handover-file {}: {e}", path.display()))?;
        self.written = Some(released.clone());
        Ok(())
    }
}

/// `text` to `path` through a hidden temporary file beside it (flushed, then renamed over it).
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "handover.json".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// JSON merge patch of the pod's [`TOPICS_RELEASED_ANNOTATION`]: `"true"`, or removed.
pub async fn annotate_released(k: &KubePods, pod: &str, released: bool) -> Result<(), String> {
    let api: Api<Pod> = Api::namespaced(k.client.clone(), &k.namespace);
    let value = if released { json!("true") } else { Value::Null };
    let body = json!({"metadata": {"annotations": {TOPICS_RELEASED_ANNOTATION: value}}});
    let what = if released { "annotate" } else { "un-annotate" };
    match tokio::time::timeout(
        k.timeout,
        api.patch(pod, &PatchParams::default(), &Patch::Merge(&body)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "cannot {what} broker pod {pod} {TOPICS_RELEASED_ANNOTATION}: {e}"
        )),
        Err(_) => Err(format!(
            "cannot {what} broker pod {pod} {TOPICS_RELEASED_ANNOTATION}: no answer within {:?}",
            k.timeout
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn the_file_holds_the_released_pods_and_is_written_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.json");
        let mut r = Releaser::new(Some(path.clone()), None);
        assert!(r.tells_anyone());
        assert!(r.load_file().unwrap().is_empty());
        let (done, errors) = r.release(&BTreeSet::new(), &["b-1".to_string()]).await;
        assert_eq!((done, errors), (vec!["b-1".to_string()], vec![]));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"released\":[\"b-1\"]}\n");
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Unchanged: not written again (a router-agent watching it sees no event).
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            r.tidy(&BTreeSet::from(["b-1".to_string()]), &[])
                .await
                .is_empty()
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
        // The pod stops draining: dropped.
        assert!(r.tidy(&BTreeSet::new(), &[]).await.is_empty());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"released\":[]}\n"
        );
        // A new run reads what the last one wrote.
        std::fs::write(&path, "{\"released\":[\"b-2\"]}").unwrap();
        let mut again = Releaser::new(Some(path.clone()), None);
        assert_eq!(
            again.load_file().unwrap().into_iter().collect::<Vec<_>>(),
            ["b-2"]
        );
        std::fs::write(&path, "[").unwrap();
        assert!(again.load_file().unwrap_err().contains("handover"));
        // A file that cannot be written: nothing counts as released.
        let mut bad = Releaser::new(Some(dir.path().join("no/such/dir/h.json")), None);
        let (done, errors) = bad.release(&BTreeSet::new(), &["b-1".to_string()]).await;
        assert!(done.is_empty());
        assert_eq!(errors.len(), 1, "{errors:?}");
        // Neither file nor API: released in memory only.
        let mut none = Releaser::new(None, None);
        assert!(!none.tells_anyone());
        let (done, _) = none.release(&BTreeSet::new(), &["b-1".to_string()]).await;
        assert_eq!(done, ["b-1"]);
    }
}
