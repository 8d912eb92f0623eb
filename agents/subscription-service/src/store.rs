//! The file `$subctrl` keeps its subscriptions in: a JSON list of typed `Address` documents
//! (`{"apiVersion": "enmasse.io/v1", "kind": "Address", "metadata": {"name": S}, "spec": {"address": S,
//! "type": "subscription", "topic": T}}`), the format every maas binary reads from a `*.json` key of an address
//! directory (agents/model/src/parse.rs: the key `json` is the 2016 format and belongs to the application teams).
//! Written atomically: a hidden temporary file beside it (names starting with `.` are not read as keys), flushed,
//! then renamed over the file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use maas_model::{Address, AddressKind, AddressSet, FlavorSet};
use serde_json::Value;

use crate::subctrl::Book;

/// Why the file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
}

/// The subscriptions file.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The subscriptions in the file (none when it does not exist). Entries that are not subscriptions are
    /// ignored.
    pub fn load(&self) -> Result<Book, StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Book::new()),
            Err(e) => return Err(self.io(e)),
        };
        parse_book(&text).map_err(|reason| StoreError::Format {
            path: self.path.display().to_string(),
            reason,
        })
    }

    /// Writes `book` atomically.
    pub fn save(&self, book: &Book) -> Result<(), StoreError> {
        let text = render_book(book);
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "subscriptions.json".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.io(e)
        })
    }
}

/// Where `$subctrl` keeps its subscriptions: the file (file mode, or `--subscriptions-file`), or the ConfigMap
/// this service owns (`--kube`, [`crate::configmap_store`]).
#[derive(Debug, Clone)]
pub enum Store {
    File(FileStore),
    ConfigMap(crate::configmap_store::ConfigMapStore),
}

impl Store {
    /// The subscriptions kept now.
    pub async fn load(&self) -> Result<Book, StoreError> {
        match self {
            Store::File(f) => f.load(),
            Store::ConfigMap(c) => c.load_configmap().await,
        }
    }

    /// Keep `book`.
    pub async fn save(&self, book: &Book) -> Result<(), StoreError> {
        match self {
            Store::File(f) => f.save(book),
            Store::ConfigMap(c) => c.apply_configmap(book).await,
        }
    }

    /// `file <path>` or `ConfigMap <namespace>/<name>`.
    pub fn describe(&self) -> String {
        match self {
            Store::File(f) => format!("file {}", f.path().display()),
            Store::ConfigMap(c) => c.describe(),
        }
    }
}

/// True when the address configuration `addresses` (what the pipeline made of every address source) shows the
/// change from `before` to `after`: each subscription added or changed is there on its topic, each one removed is
/// gone. Subscriptions the change does not touch are not looked at.
pub fn taken_up(addresses: &AddressSet, before: &Book, after: &Book) -> bool {
    let names = before.keys().chain(after.keys());
    names.filter(|n| before.get(*n) != after.get(*n)).all(|n| {
        match (after.get(n), addresses.get(n)) {
            (Some(topic), Some(a)) => {
                a.kind == AddressKind::Subscription && a.topic.as_deref() == Some(topic.as_str())
            }
            (Some(_), None) => false,
            (None, found) => found.is_none_or(|a| a.kind != AddressKind::Subscription),
        }
    })
}

/// Subscriptions of `book` whose topic is no topic of `addresses` (Kubernetes mode: the merged configuration,
/// where this service's ConfigMap brings no topic of its own).
pub fn orphans_in(addresses: &AddressSet, book: &Book) -> Vec<String> {
    book.iter()
        .filter(|(_, topic)| {
            addresses
                .get(topic)
                .is_none_or(|a| a.kind != AddressKind::Topic)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The typed documents of `book`, one per line in a JSON list.
pub fn render_book(book: &Book) -> String {
    let docs: Vec<String> = book
        .iter()
        .map(|(name, topic)| {
            Address {
                address: name.clone(),
                kind: AddressKind::Subscription,
                flavor: None,
                topic: Some(topic.clone()),
            }
            .to_typed_value()
            .to_string()
        })
        .collect();
    if docs.is_empty() {
        "[]\n".to_string()
    } else {
        format!("[\n{}\n]\n", docs.join(",\n"))
    }
}

/// The subscriptions of a typed-format text (one Address, a list, or an `AddressList`).
pub fn parse_book(text: &str) -> Result<Book, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items: Vec<&Value> = match &v {
        Value::Array(items) => items.iter().collect(),
        Value::Object(o) if o.get("items").is_some_and(Value::is_array) => o
            .get("items")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Value::Object(_) => vec![&v],
        _ => return Err("not a list of Address documents".into()),
    };
    let mut book = Book::new();
    for item in items {
        let spec = &item["spec"];
        if spec["type"].as_str() != Some("subscription") {
            continue;
        }
        if let (Some(name), Some(topic)) = (spec["address"].as_str(), spec["topic"].as_str()) {
            book.insert(name.to_string(), topic.to_string());
        }
    }
    Ok(book)
}

/// Subscriptions of `book` whose topic is no topic of the address directory `files` WITHOUT the subscriptions
/// file's own key `key` (validated with `flavors`): removing a topic would otherwise make the whole directory
/// invalid for every maas binary (a subscription on a missing topic is an error). None when the rest of the
/// directory does not validate either (nothing can be said then).
pub fn orphans(
    files: &BTreeMap<String, String>,
    key: &str,
    flavors: Option<&FlavorSet>,
    book: &Book,
) -> Option<Vec<String>> {
    let mut rest = files.clone();
    rest.remove(key);
    let config = maas_model::parse_config("subscriptions check", &rest, flavors).ok()?;
    Some(
        book.iter()
            .filter(|(_, topic)| {
                config
                    .addresses
                    .get(topic)
                    .is_none_or(|a| a.kind != AddressKind::Topic)
            })
            .map(|(name, _)| name.clone())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_file_is_typed_format_the_model_reads_next_to_the_2016_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("subscriptions.json"));
        assert_eq!(store.load().unwrap(), Book::new());
        let book = Book::from([
            ("c1".to_string(), "news".to_string()),
            ("c2.news".to_string(), "news".to_string()),
        ]);
        store.save(&book).unwrap();
        assert_eq!(store.load().unwrap(), book);
        // No temporary file left; the directory with the team's `json` key validates with it.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["subscriptions.json"]);
        std::fs::write(
            dir.path().join("json"),
            r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "t"}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("flavor.json"),
            r#"{"t": {"type": "topic"}}"#,
        )
        .unwrap();
        let config = maas_source::load_file_config(dir.path(), None).unwrap();
        let s = config.addresses.get("c2.news").unwrap();
        assert_eq!(s.kind, AddressKind::Subscription);
        assert_eq!(s.topic.as_deref(), Some("news"));
        // A topic gone from the rest of the directory: its subscriptions are orphans.
        let snap = maas_source::read_dir_snapshot(dir.path()).unwrap();
        assert_eq!(
            orphans(&snap.files, "subscriptions.json", None, &book),
            Some(vec![])
        );
        let mut files = snap.files.clone();
        files.insert("json".into(), "{}".into());
        assert_eq!(
            orphans(&files, "subscriptions.json", None, &book),
            Some(vec!["c1".to_string(), "c2.news".to_string()])
        );
        files.insert("json".into(), "{".into());
        assert_eq!(orphans(&files, "subscriptions.json", None, &book), None);
        // The last subscription gone: an empty list, still a valid key.
        store.save(&Book::new()).unwrap();
        let config = maas_source::load_file_config(dir.path(), None).unwrap();
        assert!(config.addresses.get("c1").is_none());
    }

    #[test]
    fn a_change_is_taken_up_once_the_configuration_shows_it() {
        let files: BTreeMap<String, String> = [
            (
                "json".to_string(),
                r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "t"},
                    "sports": {"store_and_forward": true, "multicast": true, "flavor": "t"},
                    "c1": {"subscription": true, "topic": "news"}}"#
                    .to_string(),
            ),
            (
                "flavor.json".to_string(),
                r#"{"t": {"type": "topic"}}"#.to_string(),
            ),
        ]
        .into();
        let config = maas_model::parse_config("t", &files, None).unwrap();
        let a = &config.addresses;
        let none = Book::new();
        let c1 = Book::from([("c1".to_string(), "news".to_string())]);
        let c2 = Book::from([("c2".to_string(), "news".to_string())]);
        assert!(taken_up(a, &none, &c1), "added and there");
        assert!(!taken_up(a, &none, &c2), "added, not there yet");
        assert!(!taken_up(a, &c1, &none), "removed, still there");
        assert!(taken_up(a, &c2, &none), "removed and gone");
        let moved = Book::from([("c1".to_string(), "sports".to_string())]);
        assert!(!taken_up(a, &c1, &moved), "on another topic now");
        assert!(taken_up(a, &c1, &c1), "no change");
        // Orphans: subscriptions on topics the configuration no longer has.
        let book = Book::from([
            ("c1".to_string(), "news".to_string()),
            ("x".to_string(), "gone".to_string()),
            ("y".to_string(), "c1".to_string()),
        ]);
        assert_eq!(orphans_in(a, &book), ["x", "y"]);
    }

    #[test]
    fn reads_a_single_document_and_address_lists_and_skips_other_kinds() {
        let one = r#"{"spec": {"address": "s", "type": "subscription", "topic": "t"}}"#;
        assert_eq!(parse_book(one).unwrap().len(), 1);
        let list = r#"{"kind": "AddressList", "items": [
            {"spec": {"address": "s", "type": "subscription", "topic": "t"}},
            {"spec": {"address": "q", "type": "queue"}}]}"#;
        assert_eq!(
            parse_book(list).unwrap(),
            Book::from([("s".to_string(), "t".to_string())])
        );
        assert!(parse_book("{").is_err());
        assert!(parse_book("3").is_err());
        assert_eq!(render_book(&Book::new()), "[]\n");
    }
}
