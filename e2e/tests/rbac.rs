//! RBAC derived from the code: every Kubernetes API call in `agents/*/src` is found by a small scanner, mapped to
//! the (apiGroup, resource, verb) the API server authorizes it as, followed from each binary's `main` through the
//! functions it references, and compared with the Role bound to the ServiceAccount of every pod that runs the
//! binary in `manifests/` (the kustomize base, overlays/edge and the OpenShift Template): the Role must grant
//! exactly that set, no verb missing (a 403 at run time: the drain PATCHes pods) and none extra.
//!
//! # The scanner
//!
//! It reads Rust source as text (comments and string contents blanked, `#[cfg(test)]` items dropped) and knows:
//!
//! - `let NAME: Api<Type> = ...` and `let NAME = Api::<Type>::...` bind NAME to a resource (the [`RESOURCES`]
//!   table maps the `k8s_openapi` type to its group and plural). Every later use of NAME must be one of
//!   `NAME.method(...)` ([`METHODS`]: `get` -> get, `list` -> list, `patch` -> patch, ...; a `patch` whose
//!   arguments hold `Patch::Apply` is a server-side apply, which the API server also authorizes as `create` when
//!   the object does not exist yet: k8s.io/apiserver endpoints/handlers/patch.go, createAuthorizerAttributes), or
//!   `watcher(NAME...)` / `metadata_watcher(NAME...)` (kube-runtime: an initial LIST, then WATCH).
//! - `Recorder::new(` (kube-runtime 5 events): POST of an `events.k8s.io/v1` Event, and a merge PATCH of it when
//!   the same event repeats (kube-runtime-5.0.0 src/events.rs `Recorder::publish`).
//! - Anything it cannot map is an ERROR, never ignored: another use of a bound `Api`, an `Api<T>` not bound by a
//!   `let`, a type missing from [`RESOURCES`], `Api::all` (cluster scope: a ClusterRole), `DynamicObject`, raw
//!   `client.request(...)`. Extend the tables (and the manifests) when the code grows.
//!
//! Reachability: a function references every function whose name appears as an identifier in its body (an
//! over-approximation by name, over the binary's own crate and the workspace crates it depends on). [`GATES`]
//! names the few functions a binary reaches only with some flags (e.g. storage-controller reads ConfigMaps only
//! with `--owner-configmap`); each deployment's `args`/`env` decide whether they are reached, so the Role grants
//! what the deployed configuration uses.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde::Deserialize;
use serde_yaml::Value;

/// (apiGroup, resource, verb), as RBAC rules name them.
type Perm = (String, String, String);

/// `k8s_openapi` type -> (apiGroup, plural resource). Namespaced resources only (a Role).
const RESOURCES: &[(&str, &str, &str)] = &[
    ("ConfigMap", "", "configmaps"),
    ("Pod", "", "pods"),
    ("Service", "", "services"),
    ("Secret", "", "secrets"),
    ("Endpoints", "", "endpoints"),
    ("PersistentVolumeClaim", "", "persistentvolumeclaims"),
    ("ServiceAccount", "", "serviceaccounts"),
    ("StatefulSet", "apps", "statefulsets"),
    ("Deployment", "apps", "deployments"),
    ("PodDisruptionBudget", "policy", "poddisruptionbudgets"),
    ("Lease", "coordination.k8s.io", "leases"),
    ("EndpointSlice", "discovery.k8s.io", "endpointslices"),
];

/// kube `Api` method -> RBAC verbs (a `patch` with `Patch::Apply` adds `create`, see the module doc).
const METHODS: &[(&str, &[&str])] = &[
    ("get", &["get"]),
    ("get_opt", &["get"]),
    ("get_metadata", &["get"]),
    ("get_metadata_opt", &["get"]),
    ("list", &["list"]),
    ("list_metadata", &["list"]),
    ("watch", &["watch"]),
    ("watch_metadata", &["watch"]),
    ("create", &["create"]),
    ("replace", &["update"]),
    ("patch", &["patch"]),
    ("patch_metadata", &["patch"]),
    ("delete", &["delete"]),
    ("delete_collection", &["deletecollection"]),
];

/// Functions that a binary reaches only with some flags. `flags` are long flag names of the binary's subcommand
/// (checked against its clap definition); a flag counts as given when it is in the container's `args` or its
/// environment variable is set (and not "false").
struct Gate {
    binary: &'static str,
    function: &'static str,
    /// When the call happens (what the code does; see the file named).
    reached_when: &'static str,
    /// All of these given...
    with: &'static [&'static str],
    /// ...and none of these.
    without: &'static [&'static str],
}

const GATES: &[Gate] = &[
    Gate {
        binary: "storage-controller",
        function: "spawn_kube_config",
        reached_when: "addresses from the Kubernetes API: --kube without --addresses-dir/--config-service-url (commands.rs run)",
        with: &["kube"],
        without: &["addresses-dir", "config-service-url"],
    },
    Gate {
        binary: "storage-controller",
        function: "spawn_kube_pods",
        reached_when: "broker pods from the Kubernetes API: --kube without --brokers-file (commands.rs run)",
        with: &["kube"],
        without: &["brokers-file"],
    },
    Gate {
        binary: "storage-controller",
        function: "configmap_owner",
        reached_when: "only with --owner-configmap (commands.rs kube_context)",
        with: &["owner-configmap"],
        without: &[],
    },
    Gate {
        binary: "router-agent",
        function: "spawn_kube_config",
        reached_when: "only with --kube (commands.rs)",
        with: &["kube"],
        without: &[],
    },
    Gate {
        binary: "router-agent",
        function: "spawn_kube_pods",
        reached_when: "only with --kube (commands.rs)",
        with: &["kube"],
        without: &[],
    },
    Gate {
        binary: "subscription-service",
        function: "spawn_kube_config",
        reached_when: "addresses from the Kubernetes API: --kube without --addresses-dir/--config-service-url (commands.rs run)",
        with: &["kube"],
        without: &["addresses-dir", "config-service-url"],
    },
    Gate {
        binary: "subscription-service",
        function: "spawn_kube_pods",
        reached_when: "broker pods from the Kubernetes API: --kube without --brokers-file (commands.rs run)",
        with: &["kube"],
        without: &["brokers-file"],
    },
    Gate {
        binary: "subscription-service",
        function: "annotate_released",
        reached_when: "releases of draining broker pods are pod annotations when the broker pods come from the Kubernetes API: --kube without --brokers-file (commands.rs run, release.rs)",
        with: &["kube"],
        without: &["brokers-file"],
    },
    Gate {
        binary: "subscription-service",
        function: "load_configmap",
        reached_when: "$subctrl's subscriptions in the ConfigMap: --router-url with --kube, without --subscriptions-file/--addresses-dir (commands.rs run, configmap_store.rs)",
        with: &["router-url", "kube"],
        without: &["subscriptions-file", "addresses-dir"],
    },
    Gate {
        binary: "subscription-service",
        function: "apply_configmap",
        reached_when: "$subctrl's subscriptions in the ConfigMap: --router-url with --kube, without --subscriptions-file/--addresses-dir (commands.rs run, configmap_store.rs)",
        with: &["router-url", "kube"],
        without: &["subscriptions-file", "addresses-dir"],
    },
    Gate {
        binary: "config-service",
        function: "kube_sources",
        reached_when: "only with --kube (lib.rs run)",
        with: &["kube"],
        without: &[],
    },
];

/// Binaries that exist in the workspace but are not deployed by `manifests/` yet: their derived permissions are
/// printed (what their Role will need), not compared. Remove a binary from here when its Deployment lands.
const NOT_YET_DEPLOYED: &[&str] = &[];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------------------------
// Source text: comments and string contents blanked, #[cfg(test)] items removed.

/// `src` with comments and the contents of string/char literals replaced by spaces (newlines kept, so byte
/// offsets and line numbers stay those of the file).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, i: usize| {
        if out[i] != b'\n' {
            out[i] = b' ';
        }
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                blank(&mut out, i);
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    blank(&mut out, i);
                    blank(&mut out, i + 1);
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    blank(&mut out, i);
                    blank(&mut out, i + 1);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, i);
                    i += 1;
                }
            }
        } else if !prev_ident && raw_string_at(b, i) {
            // Raw string r#"..."#.
            let mut j = if c == b'b' { i + 2 } else { i + 1 };
            let mut hashes = 0;
            while b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            j += 1; // opening quote
            loop {
                if b[j] == b'"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&b'#')) {
                    i = j + 1 + hashes;
                    break;
                }
                blank(&mut out, j);
                j += 1;
            }
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, i);
                    i += 1;
                }
                blank(&mut out, i);
                i += 1;
            }
            i += 1;
        } else if c == b'\'' {
            // A char literal ('a', '\n', '\u{..}', '"') or a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                for k in i + 1..j {
                    blank(&mut out, k);
                }
                i = j + 1;
            } else if b.get(i + 2) == Some(&b'\'') {
                blank(&mut out, i + 1);
                i += 3;
            } else {
                // Multi-byte UTF-8 char literal?
                let rest = &src[i + 1..];
                match rest.chars().next() {
                    Some(ch) if ch.len_utf8() > 1 && rest[ch.len_utf8()..].starts_with('\'') => {
                        out[i + 1..i + 1 + ch.len_utf8()].fill(b' ');
                        i += 2 + ch.len_utf8();
                    }
                    _ => i += 1, // lifetime
                }
            }
        } else {
            i += 1;
        }
    }
    // Only ASCII bytes were replaced by ASCII spaces, or whole UTF-8 sequences: still UTF-8.
    String::from_utf8(out).unwrap()
}

/// True when a raw string literal (`r"`, `r#"`, `br"`, ...) starts at `i`.
fn raw_string_at(b: &[u8], i: usize) -> bool {
    let mut k = match (b[i], b.get(i + 1)) {
        (b'r', _) => i + 1,
        (b'b', Some(b'r')) => i + 2,
        _ => return false,
    };
    while b.get(k) == Some(&b'#') {
        k += 1;
    }
    b.get(k) == Some(&b'"')
}

/// The index just past the block that opens at `open` (a `{`), in comment-free code.
fn block_end(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, &c) in code.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces")
}

/// `code` with every `#[cfg(test)]` item (a test module, function or impl) blanked.
fn without_test_items(code: &str) -> String {
    let mut b = code.as_bytes().to_vec();
    let mut from = 0;
    while let Some(pos) = code[from..].find("#[cfg(test)]").map(|p| p + from) {
        // The item ends at the first `;` or at the end of the first `{ ... }` block after the attribute.
        let mut end = pos;
        let mut depth = 0i32;
        for (i, &c) in code
            .as_bytes()
            .iter()
            .enumerate()
            .skip(pos + "#[cfg(test)]".len())
        {
            match c {
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                b'{' if depth == 0 => {
                    end = block_end(code.as_bytes(), i);
                    break;
                }
                _ => {}
            }
        }
        for c in &mut b[pos..end] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = end.max(pos + 1);
    }
    String::from_utf8(b).unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// Tokens and functions.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tok {
    text: String,
    at: usize,
}

fn tokens(code: &str, offset: usize) -> Vec<Tok> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok {
                text: code[start..i].to_string(),
                at: offset + start,
            });
        } else if c == b':' && b.get(i + 1) == Some(&b':') {
            out.push(Tok {
                text: "::".into(),
                at: offset + i,
            });
            i += 2;
        } else if c.is_ascii() {
            out.push(Tok {
                text: (c as char).to_string(),
                at: offset + i,
            });
            i += 1;
        } else {
            i += 1; // non-ASCII (identifiers here are ASCII)
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

/// One function (or method) of a crate, with its body.
#[derive(Debug)]
struct Func {
    krate: String,
    file: String,
    name: String,
    /// Tokens of the body.
    body: Vec<Tok>,
    /// Line numbers of the body's byte offsets.
    lines: Vec<usize>,
}

impl Func {
    fn line_of(&self, at: usize) -> usize {
        self.lines.partition_point(|&start| start <= at)
    }
    fn site(&self, at: usize) -> String {
        format!("{}:{} (fn {})", self.file, self.line_of(at), self.name)
    }
}

/// Every `fn` with a body in `code` (nested ones too).
fn functions(krate: &str, file: &str, code: &str) -> Vec<Func> {
    let b = code.as_bytes();
    let lines: Vec<usize> = std::iter::once(0)
        .chain(code.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let toks = tokens(code, 0);
    let mut out = Vec::new();
    for w in toks.windows(2) {
        if w[0].text != "fn" || !is_ident(&w[1].text) {
            continue;
        }
        // The body: the first `{` outside parentheses/brackets after the name, unless a `;` comes first.
        let mut depth = 0i32;
        let mut open = None;
        for (i, &c) in b.iter().enumerate().skip(w[1].at + w[1].text.len()) {
            match c {
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b';' if depth == 0 => break,
                b'{' if depth == 0 => {
                    open = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(open) = open else { continue };
        let end = block_end(b, open);
        out.push(Func {
            krate: krate.to_string(),
            file: file.to_string(),
            name: w[1].text.clone(),
            body: tokens(&code[open..end], open),
            lines: lines.clone(),
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes API calls of one function.

/// A permission one call site needs.
#[derive(Debug, Clone)]
struct Use {
    perm: Perm,
    site: String,
}

fn perm(group: &str, resource: &str, verb: &str) -> Perm {
    (group.to_string(), resource.to_string(), verb.to_string())
}

/// The group and resource of a `k8s_openapi` type named in `file_text` (which decides between the two `Event`s).
fn resource_of(ty: &str, file_text: &str) -> Option<(String, String)> {
    if ty == "Event" {
        return if file_text.contains("events::v1::Event") {
            Some(("events.k8s.io".into(), "events".into()))
        } else if file_text.contains("core::v1::Event") {
            Some((String::new(), "events".into()))
        } else {
            None
        };
    }
    RESOURCES
        .iter()
        .find(|(t, _, _)| *t == ty)
        .map(|(_, g, r)| (g.to_string(), r.to_string()))
}

/// The index of the `)` closing the `(` at `open`.
fn close_paren(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t.text.as_str() {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    toks.len() - 1
}

/// The type path `A::B::T` starting at `i` (after `<`): its last segment and the index of the closing `>`.
fn type_at(toks: &[Tok], mut i: usize) -> Option<(String, usize)> {
    let mut last = None;
    while i < toks.len() {
        match toks[i].text.as_str() {
            ">" => return last.map(|l| (l, i)),
            "::" => {}
            t if is_ident(t) => last = Some(t.to_string()),
            _ => return None, // generics inside, lifetimes, ...: not a plain resource type
        }
        i += 1;
    }
    None
}

/// The Kubernetes API uses of `f` (see the module doc), or the problems the scanner cannot map.
fn api_uses(f: &Func, file_text: &str) -> Result<Vec<Use>, Vec<String>> {
    let t = &f.body;
    let text = |i: usize| t.get(i).map_or("", |x| x.text.as_str());
    let mut uses = Vec::new();
    let mut problems = Vec::new();
    // Bindings: variable -> (type, index of the binding's name token).
    let mut bound: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut api_tokens_explained = BTreeSet::new();
    for i in 0..t.len() {
        if text(i) != "let" {
            continue;
        }
        let name_at = if text(i + 1) == "mut" { i + 2 } else { i + 1 };
        let name = text(name_at);
        if !is_ident(name) {
            continue;
        }
        let (api_at, ty_start) = match (text(name_at + 1), text(name_at + 2)) {
            (":", "Api") if text(name_at + 3) == "<" => (name_at + 2, name_at + 4),
            ("=", "Api") if text(name_at + 3) == "::" && text(name_at + 4) == "<" => {
                (name_at + 2, name_at + 5)
            }
            _ => continue,
        };
        api_tokens_explained.insert(api_at);
        match type_at(t, ty_start) {
            Some((ty, _)) => {
                if bound.insert(name.to_string(), (ty, name_at)).is_some() {
                    problems.push(format!(
                        "{}: `{name}` bound to an Api twice in one function",
                        f.site(t[name_at].at)
                    ));
                }
            }
            None => problems.push(format!(
                "{}: `let {name}`: an Api of a type the scanner cannot read",
                f.site(t[name_at].at)
            )),
        }
    }
    // Every `Api<...>` / `Api::<...>` in a body must be a binding the scanner understood.
    #[allow(clippy::needless_range_loop)] // `text(i + n)` looks ahead by index
    for i in 0..t.len() {
        if text(i) == "Api"
            && (text(i + 1) == "<" || (text(i + 1) == "::" && text(i + 2) == "<"))
            && !api_tokens_explained.contains(&i)
        {
            problems.push(format!(
                "{}: `Api<...>` not bound with `let NAME: Api<Type>`: the scanner cannot follow it",
                f.site(t[i].at)
            ));
        }
        if text(i) == "Api" && text(i + 1) == "::" && text(i + 2) == "all" {
            problems.push(format!(
                "{}: Api::all is cluster-wide (a ClusterRole): not supported",
                f.site(t[i].at)
            ));
        }
        if text(i) == "DynamicObject" {
            problems.push(format!(
                "{}: DynamicObject: the resource is not known statically",
                f.site(t[i].at)
            ));
        }
        if text(i) == "Recorder" && text(i + 1) == "::" && text(i + 2) == "new" {
            for verb in ["create", "patch"] {
                uses.push(Use {
                    perm: perm("events.k8s.io", "events", verb),
                    site: format!("{} Recorder (events.k8s.io/v1 Event)", f.site(t[i].at)),
                });
            }
        }
        if text(i) == "."
            && matches!(text(i + 1), "request" | "request_text" | "request_stream")
            && file_text.contains("kube::Client")
        {
            problems.push(format!(
                "{}: raw `.{}(` on a kube Client: not supported",
                f.site(t[i].at),
                text(i + 1)
            ));
        }
    }
    for (name, (ty, name_at)) in &bound {
        let Some((group, resource)) = resource_of(ty, file_text) else {
            problems.push(format!(
                "{}: Api<{ty}>: add the type to RESOURCES in e2e/tests/rbac.rs",
                f.site(t[*name_at].at)
            ));
            continue;
        };
        let mut recognised = 0;
        for i in 0..t.len() {
            if i == *name_at || text(i) != name || matches!(text(i.wrapping_sub(1)), "." | "::") {
                continue;
            }
            let site = f.site(t[i].at);
            if text(i + 1) == "." && text(i + 3) == "(" {
                let method = text(i + 2);
                // `watcher(api.clone(), ...)`.
                if method == "clone"
                    && text(i + 4) == ")"
                    && text(i.wrapping_sub(1)) == "("
                    && matches!(text(i.wrapping_sub(2)), "watcher" | "metadata_watcher")
                {
                    recognised += 1;
                    for verb in ["list", "watch"] {
                        uses.push(Use {
                            perm: perm(&group, &resource, verb),
                            site: format!("{site} {}({name}.clone())", text(i.wrapping_sub(2))),
                        });
                    }
                    continue;
                }
                if let Some((_, verbs)) = METHODS.iter().find(|(m, _)| *m == method) {
                    recognised += 1;
                    for verb in *verbs {
                        uses.push(Use {
                            perm: perm(&group, &resource, verb),
                            site: format!("{site} {name}.{method}()"),
                        });
                    }
                    if method == "patch" {
                        let close = close_paren(t, i + 3);
                        let apply = (i + 3..close).any(|k| {
                            text(k) == "Patch" && text(k + 1) == "::" && text(k + 2) == "Apply"
                        });
                        if apply {
                            uses.push(Use {
                                perm: perm(&group, &resource, "create"),
                                site: format!(
                                    "{site} {name}.patch(Patch::Apply): server-side apply"
                                ),
                            });
                        }
                    }
                    continue;
                }
                problems.push(format!(
                    "{site}: `{name}.{method}(` on Api<{ty}>: add the method to METHODS in e2e/tests/rbac.rs"
                ));
                continue;
            }
            if text(i.wrapping_sub(1)) == "("
                && matches!(text(i.wrapping_sub(2)), "watcher" | "metadata_watcher")
            {
                recognised += 1;
                for verb in ["list", "watch"] {
                    uses.push(Use {
                        perm: perm(&group, &resource, verb),
                        site: format!("{site} {}({name})", text(i.wrapping_sub(2))),
                    });
                }
                continue;
            }
            problems.push(format!(
                "{site}: `{name}` (Api<{ty}>) used in a way the scanner does not know"
            ));
        }
        if recognised == 0 {
            problems.push(format!(
                "{}: `{name}` (Api<{ty}>) is bound but no call on it was recognised",
                f.site(t[*name_at].at)
            ));
        }
    }
    if problems.is_empty() {
        Ok(uses)
    } else {
        Err(problems)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The workspace: crates, functions, reachability.

struct Crate {
    name: String,
    dir: PathBuf,
    /// Workspace crates it depends on (normal dependencies).
    deps: Vec<String>,
}

fn crates() -> Vec<Crate> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(repo_root().join("agents"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    let names: Vec<(String, PathBuf)> = dirs
        .iter()
        .map(|d| (package_name(&d.join("Cargo.toml")), d.clone()))
        .collect();
    for (name, dir) in &names {
        let text = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let mut section = String::new();
        let mut deps = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            if section != "[dependencies]" {
                continue;
            }
            let key = line
                .split(['.', '=', ' '])
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            if names.iter().any(|(n, _)| *n == key) {
                deps.push(key);
            }
        }
        out.push(Crate {
            name: name.clone(),
            dir: dir.clone(),
            deps,
        });
    }
    out
}

fn package_name(cargo_toml: &Path) -> String {
    let text = fs::read_to_string(cargo_toml).unwrap();
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(v) = line.strip_prefix("name") {
            return v
                .trim_start_matches([' ', '='])
                .trim()
                .trim_matches('"')
                .to_string();
        }
    }
    panic!("{}: no package name", cargo_toml.display())
}

fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Everything the scanner learns from `agents/*/src`.
struct Workspace {
    crates: Vec<Crate>,
    funcs: Vec<Func>,
    /// Direct API uses per function (index into `funcs`).
    uses: Vec<Vec<Use>>,
    problems: Vec<String>,
}

fn scan() -> Workspace {
    let crates = crates();
    let mut funcs = Vec::new();
    let mut texts = Vec::new();
    for c in &crates {
        for file in rs_files(&c.dir.join("src")) {
            let src = fs::read_to_string(&file).unwrap();
            let code = without_test_items(&code_only(&src));
            let rel = file
                .strip_prefix(repo_root())
                .unwrap()
                .display()
                .to_string();
            for f in functions(&c.name, &rel, &code) {
                funcs.push(f);
                texts.push(src.clone());
            }
        }
    }
    let mut uses = Vec::new();
    let mut problems = Vec::new();
    for (f, text) in funcs.iter().zip(&texts) {
        match api_uses(f, text) {
            Ok(u) => uses.push(u),
            Err(p) => {
                problems.extend(p);
                uses.push(Vec::new());
            }
        }
    }
    Workspace {
        crates,
        funcs,
        uses,
        problems,
    }
}

impl Workspace {
    /// The binary's crate and the workspace crates it depends on, transitively.
    fn visible(&self, binary: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![binary.to_string()];
        while let Some(c) = stack.pop() {
            if !seen.insert(c.clone()) {
                continue;
            }
            if let Some(k) = self.crates.iter().find(|k| k.name == c) {
                stack.extend(k.deps.iter().cloned());
            }
        }
        seen
    }

    /// Binaries: crates with a `src/main.rs`.
    fn binaries(&self) -> Vec<String> {
        self.crates
            .iter()
            .filter(|c| c.dir.join("src/main.rs").is_file())
            .map(|c| c.name.clone())
            .collect()
    }

    /// Indices of the functions reachable from the binary's `main`, not entering the functions named in `cut`.
    fn reach(&self, binary: &str, cut: &BTreeSet<&str>) -> BTreeSet<usize> {
        let visible = self.visible(binary);
        let by_name: BTreeMap<&str, Vec<usize>> = self
            .funcs
            .iter()
            .enumerate()
            .filter(|(_, f)| visible.contains(&f.krate))
            .fold(BTreeMap::new(), |mut m, (i, f)| {
                m.entry(f.name.as_str()).or_default().push(i);
                m
            });
        let main_file = format!(
            "{}/src/main.rs",
            self.crates
                .iter()
                .find(|c| c.name == binary)
                .unwrap()
                .dir
                .strip_prefix(repo_root())
                .unwrap()
                .display()
        );
        let mut stack: Vec<usize> = self
            .funcs
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name == "main" && f.file == main_file)
            .map(|(i, _)| i)
            .collect();
        assert!(!stack.is_empty(), "{binary}: no fn main in {main_file}");
        let mut seen = BTreeSet::new();
        while let Some(i) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            for t in &self.funcs[i].body {
                if cut.contains(t.text.as_str()) {
                    continue;
                }
                if let Some(targets) = by_name.get(t.text.as_str()) {
                    stack.extend(targets.iter().copied());
                }
            }
        }
        seen
    }

    /// What `binary` needs with the gated functions in `cut` not reached: permission -> call sites.
    fn needs(&self, binary: &str, cut: &BTreeSet<&str>) -> BTreeMap<Perm, Vec<String>> {
        let mut out: BTreeMap<Perm, Vec<String>> = BTreeMap::new();
        for i in self.reach(binary, cut) {
            for u in &self.uses[i] {
                out.entry(u.perm.clone()).or_default().push(u.site.clone());
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The manifests.

fn load_docs(rel: &str) -> Vec<Value> {
    let text = fs::read_to_string(repo_root().join(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|de| Value::deserialize(de).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn strs(v: &Value) -> Vec<&str> {
    seq(v).iter().filter_map(Value::as_str).collect()
}

/// What a kustomization renders (resources, recursively; patches not applied).
fn kustomize(dir: &str) -> Vec<Value> {
    let k = &load_docs(&format!("{dir}/kustomization.yaml"))[0];
    let mut out = Vec::new();
    for r in strs(&k["resources"]) {
        let path = format!("{dir}/{r}");
        if repo_root().join(&path).is_dir() {
            out.extend(kustomize(&path));
        } else {
            out.extend(load_docs(&path));
        }
    }
    out
}

/// The Template's objects with `${PARAM}` in image fields resolved to the parameters' defaults.
fn template() -> Vec<Value> {
    let t = &load_docs("manifests/openshift/maas-template.yaml")[0];
    let defaults: BTreeMap<String, String> = seq(&t["parameters"])
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut objects: Vec<Value> = seq(&t["objects"]).to_vec();
    for o in &mut objects {
        // get_mut, not IndexMut: indexing a missing key would insert it.
        if let Some(containers) = o
            .get_mut("spec")
            .and_then(|v| v.get_mut("template"))
            .and_then(|v| v.get_mut("spec"))
            .and_then(|v| v.get_mut("containers"))
            .and_then(Value::as_sequence_mut)
        {
            for c in containers {
                if let Some(image) = c["image"].as_str()
                    && let Some(param) = image.strip_prefix("${").and_then(|s| s.strip_suffix('}'))
                {
                    c["image"] = Value::String(defaults[param].clone());
                }
            }
        }
    }
    objects
}

/// The manifest sets a cluster gets: (what, objects).
fn deployments() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        ("manifests/base", kustomize("manifests/base")),
        (
            "manifests/overlays/edge",
            kustomize("manifests/overlays/edge"),
        ),
        ("manifests/openshift/maas-template.yaml", template()),
    ]
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
}

/// The long flags a container gives its binary (args `--flag`/`--flag=v`, or the flag's env var) for `command`.
fn given_flags(c: &Value, command: &clap::Command) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for a in strs(&c["args"]) {
        if let Some(flag) = a.strip_prefix("--") {
            out.insert(flag.split('=').next().unwrap().to_string());
        }
    }
    for e in seq(&c["env"]) {
        let name = e["name"].as_str().unwrap_or("");
        if e["value"].as_str() == Some("false") {
            continue;
        }
        if let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|v| v == name))
            && let Some(long) = arg.get_long()
        {
            out.insert(long.to_string());
        }
    }
    out
}

/// The clap command that parses a container's args: `run` of router-agent/storage-controller, config-service's own.
fn cli(binary: &str) -> clap::Command {
    match binary {
        "router-agent" => router_agent::args::Cli::command()
            .find_subcommand("run")
            .unwrap()
            .clone(),
        "storage-controller" => storage_controller::args::Cli::command()
            .find_subcommand("run")
            .unwrap()
            .clone(),
        "config-service" => config_service::args::Args::command(),
        "subscription-service" => subscription_service::args::Cli::command()
            .find_subcommand("run")
            .unwrap()
            .clone(),
        other => panic!("no CLI known for {other}: add it to cli() in e2e/tests/rbac.rs"),
    }
}

/// The functions cut for one container of `binary` (gates whose flags the container does not give).
fn cut_for(binary: &str, flags: &BTreeSet<String>) -> BTreeSet<&'static str> {
    GATES
        .iter()
        .filter(|g| g.binary == binary)
        .filter(|g| {
            let reached = g.with.iter().all(|f| flags.contains(*f))
                && !g.without.iter().any(|f| flags.contains(*f));
            !reached
        })
        .map(|g| g.function)
        .collect()
}

/// The permissions a Role grants, expanded to (group, resource, verb); problems for wildcards/resourceNames.
fn grants(role: &Value, at: &str) -> BTreeSet<Perm> {
    let mut out = BTreeSet::new();
    for r in seq(&role["rules"]) {
        assert!(
            r["resourceNames"].is_null() && r["nonResourceURLs"].is_null(),
            "{at}: resourceNames/nonResourceURLs are not compared by this test"
        );
        for g in strs(&r["apiGroups"]) {
            for res in strs(&r["resources"]) {
                for v in strs(&r["verbs"]) {
                    assert!(
                        g != "*" && res != "*" && v != "*",
                        "{at}: wildcard in {r:?}"
                    );
                    out.insert(perm(g, res, v));
                }
            }
        }
    }
    out
}

fn show(p: &Perm) -> String {
    let group = if p.0.is_empty() { "core" } else { p.0.as_str() };
    format!("{group}/{} {}", p.1, p.2)
}

// ---------------------------------------------------------------------------------------------------------------
// Tests.

#[test]
fn every_role_grants_exactly_what_its_binary_calls() {
    let ws = scan();
    assert!(
        ws.problems.is_empty(),
        "the RBAC scanner cannot map these Kubernetes API uses:\n  {}",
        ws.problems.join("\n  ")
    );
    let binaries = ws.binaries();
    // The gates name real functions of the binary's crates, reached from main, with API uses behind them, and
    // flags its CLI has.
    for g in GATES {
        assert!(
            binaries.iter().any(|b| b == g.binary),
            "gate for unknown binary {}",
            g.binary
        );
        let command = cli(g.binary);
        for f in g.with.iter().chain(g.without) {
            assert!(
                command.get_arguments().any(|a| a.get_long() == Some(*f)),
                "gate {}/{}: {} has no --{f}",
                g.binary,
                g.function,
                g.binary
            );
        }
        let all = ws.needs(g.binary, &BTreeSet::new());
        let without = ws.needs(g.binary, &BTreeSet::from([g.function]));
        assert!(
            all.len() > without.len()
                || all.values().map(Vec::len).sum::<usize>()
                    > without.values().map(Vec::len).sum::<usize>(),
            "gate {}/{} ({}): cutting it changes nothing; stale gate?",
            g.binary,
            g.function,
            g.reached_when
        );
    }

    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut deployed = BTreeSet::new();
    for (what, docs) in deployments() {
        for d in &docs {
            let spec = &d["spec"]["template"]["spec"];
            if spec.is_null() {
                continue;
            }
            let at = format!(
                "{what} {}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            );
            // What the pod's maas containers need.
            let mut need: BTreeMap<Perm, Vec<String>> = BTreeMap::new();
            for c in seq(&spec["containers"])
                .iter()
                .chain(seq(&spec["initContainers"]))
            {
                let image = c["image"].as_str().unwrap_or("");
                let Some(binary) = image
                    .strip_prefix("quay.io/maas/")
                    .map(|r| r.split([':', '@']).next().unwrap())
                else {
                    continue;
                };
                assert!(
                    binaries.iter().any(|b| b == binary),
                    "{at}: image {image} runs {binary}, which is no binary of agents/"
                );
                deployed.insert(binary.to_string());
                let flags = given_flags(c, &cli(binary));
                let cut = cut_for(binary, &flags);
                for (p, sites) in ws.needs(binary, &cut) {
                    need.entry(p).or_default().extend(sites);
                }
                report.push(format!(
                    "{at} container {}: {binary} with --{} -> {}",
                    c["name"].as_str().unwrap_or("?"),
                    flags.iter().cloned().collect::<Vec<_>>().join(" --"),
                    if need.is_empty() {
                        "no API calls".to_string()
                    } else {
                        need.keys().map(show).collect::<Vec<_>>().join(", ")
                    }
                ));
            }
            // What its ServiceAccount is granted (RoleBindings of the same manifest set; no ClusterRoles).
            let sa = spec["serviceAccountName"].as_str();
            let mut granted = BTreeSet::new();
            if let Some(sa) = sa {
                for rb in docs.iter().filter(|rb| {
                    matches!(
                        rb["kind"].as_str(),
                        Some("RoleBinding" | "ClusterRoleBinding")
                    ) && seq(&rb["subjects"]).iter().any(|s| {
                        s["kind"].as_str() == Some("ServiceAccount")
                            && s["name"].as_str() == Some(sa)
                    })
                }) {
                    assert_eq!(
                        (rb["kind"].as_str(), rb["roleRef"]["kind"].as_str()),
                        (Some("RoleBinding"), Some("Role")),
                        "{at}: {sa} is bound to a cluster-wide role; the code needs namespaced access only"
                    );
                    let role_name = rb["roleRef"]["name"].as_str().unwrap();
                    let role = named(&docs, "Role", role_name)
                        .unwrap_or_else(|| panic!("{at}: Role {role_name} not in {what}"));
                    granted.extend(grants(role, &format!("{what} Role/{role_name}")));
                }
            }
            if need.is_empty() {
                assert!(
                    granted.is_empty(),
                    "{at}: its binaries call no Kubernetes API, yet {sa:?} is granted {:?}",
                    granted.iter().map(show).collect::<Vec<_>>()
                );
                assert!(
                    spec["automountServiceAccountToken"].as_bool() == Some(false) || sa.is_some(),
                    "{at}: pods that call no API get no token (automountServiceAccountToken: false)"
                );
                continue;
            }
            assert!(
                sa.is_some(),
                "{at}: calls the API but has no serviceAccountName"
            );
            let needed: BTreeSet<Perm> = need.keys().cloned().collect();
            let missing: Vec<String> = needed
                .difference(&granted)
                .map(|p| format!("{} (called at {})", show(p), need[p].join("; ")))
                .collect();
            let extra: Vec<String> = granted.difference(&needed).map(show).collect();
            if !missing.is_empty() || !extra.is_empty() {
                failures.push(format!(
                    "{at} (ServiceAccount {}):\n    missing: {}\n    extra:   {}",
                    sa.unwrap(),
                    if missing.is_empty() {
                        "-".into()
                    } else {
                        missing.join("\n             ")
                    },
                    if extra.is_empty() {
                        "-".into()
                    } else {
                        extra.join(", ")
                    }
                ));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "Roles differ from what the code calls:\n  {}",
        failures.join("\n  ")
    );
    // Every binary is deployed, or listed as not yet deployed (then its future Role is printed here).
    for b in &binaries {
        if NOT_YET_DEPLOYED.contains(&b.as_str()) {
            assert!(
                !deployed.contains(b),
                "{b} is deployed now: remove it from NOT_YET_DEPLOYED in e2e/tests/rbac.rs"
            );
            let all = ws.needs(b, &BTreeSet::new());
            eprintln!(
                "{b} (not deployed yet): with every Kubernetes code path it needs {}",
                all.keys().map(show).collect::<Vec<_>>().join(", ")
            );
        } else {
            assert!(
                deployed.contains(b),
                "{b} is a binary of agents/ that no manifest deploys (list it in NOT_YET_DEPLOYED?)"
            );
        }
    }
}

#[test]
fn the_scanner_finds_what_each_binary_is_known_to_call() {
    // Regression anchors: if the scanner stops seeing these, it is broken, not the code.
    let ws = scan();
    assert!(ws.problems.is_empty(), "{:?}", ws.problems);
    let sc = ws.needs("storage-controller", &BTreeSet::new());
    for (g, r, v) in [
        ("", "pods", "patch"), // the drain annotation
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("apps", "statefulsets", "patch"),
        ("apps", "statefulsets", "create"), // server-side apply of a new cluster
        ("apps", "statefulsets", "delete"),
        ("apps", "statefulsets", "list"),
        ("", "services", "patch"),
        ("", "configmaps", "get"), // --owner-configmap
    ] {
        assert!(
            sc.contains_key(&perm(g, r, v)),
            "storage-controller: {} not found in {:?}",
            show(&perm(g, r, v)),
            sc.keys().map(show).collect::<Vec<_>>()
        );
    }
    let cs = ws.needs("config-service", &BTreeSet::new());
    assert_eq!(
        cs.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            perm("", "configmaps", "list"),
            perm("", "configmaps", "watch"),
            perm("", "pods", "list"),
            perm("", "pods", "watch"),
            perm("events.k8s.io", "events", "create"),
            perm("events.k8s.io", "events", "patch"),
        ])
    );
    // router-agent reaches the API only with --kube.
    let ra = ws.needs("router-agent", &cut_for("router-agent", &BTreeSet::new()));
    assert!(ra.is_empty(), "{:?}", ra.keys().collect::<Vec<_>>());
    let ra_kube = ws.needs(
        "router-agent",
        &cut_for("router-agent", &BTreeSet::from(["kube".to_string()])),
    );
    assert!(ra_kube.contains_key(&perm("", "configmaps", "watch")));
}

#[test]
fn the_scanner_maps_each_call_form_and_refuses_what_it_does_not_know() {
    let src = r#"
        use k8s_openapi::api::core::v1::{ConfigMap, Pod};
        // let commented: Api<Secret> = x; (a comment: ignored)
        async fn drain(client: Client) {
            let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
            pods.patch("p", &PatchParams::default(), &Patch::Merge(&body)).await;
            let s = "api.delete(";
            let cms = Api::<ConfigMap>::namespaced(client, "ns");
            let w = watcher(cms.clone(), Default::default());
            cms.patch("c", &PatchParams::apply("m"), &Patch::Apply(&b)).await;
            let r = Recorder::new(client, reporter);
        }
        #[cfg(test)]
        mod tests {
            fn t() { let s: Api<Secret> = todo!(); s.delete("x", &dp); }
        }
    "#;
    let code = without_test_items(&code_only(src));
    let funcs = functions("x", "x.rs", &code);
    assert_eq!(funcs.len(), 1, "the test module is dropped");
    let got: BTreeSet<Perm> = api_uses(&funcs[0], src)
        .unwrap()
        .into_iter()
        .map(|u| u.perm)
        .collect();
    assert_eq!(
        got,
        BTreeSet::from([
            perm("", "pods", "patch"),
            perm("", "configmaps", "list"),
            perm("", "configmaps", "watch"),
            perm("", "configmaps", "patch"),
            perm("", "configmaps", "create"),
            perm("events.k8s.io", "events", "create"),
            perm("events.k8s.io", "events", "patch"),
        ])
    );
    for bad in [
        "fn f() { let a: Api<Pod> = x(); helper(a); }",
        "fn f() { let a: Api<Gadget> = x(); a.list(&lp); }",
        "fn f() { let a: Api<Pod> = x(); a.evict(\"p\", &ep); }",
        "fn f() { let a: Api<Pod> = x(); }",
        "fn f() { watcher(Api::<Pod>::all(c), cfg); }",
    ] {
        let code = code_only(bad);
        let f = &functions("x", "x.rs", &code)[0];
        assert!(api_uses(f, bad).is_err(), "accepted: {bad}");
    }
}
