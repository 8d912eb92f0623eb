//! The `$subctrl` API (EnMasse 2016's subscription control, docs/architecture.md §5), pure: a request
//! ([`parse_request`]) applied to the subscriptions the service owns ([`Book`], [`apply`]) gives the new book and
//! the reply. The AMQP side is [`crate::subctrl_link`], the file [`crate::store`].
//!
//! Requests: subject `subscribe` | `unsubscribe` | `list` | `close`; `correlation-id` = the subscriber's id; body
//! (AMQP value) a topic, a list of topics, or a map topic -> tag (the tag is not kept).
//!
//! Names (the `subscription` address, i.e. the durable queue and the address its consumers attach to): a
//! `subscribe` naming ONE topic T makes subscription `<id>`; one naming SEVERAL topics makes `<id>.<T>` for each.
//! A name already used by another address, or by a subscription on another topic, is refused
//! (`amqp:precondition-failed`), so a subscriber that wants several topics one request at a time names them all
//! in one request, or uses one id per topic. Subscribing again to the same topic is accepted and changes
//! nothing.
//!
//! - `subscribe`: every topic must be a topic address (else `amqp:not-found`); the name must be a valid address
//!   (else `amqp:precondition-failed`).
//! - `unsubscribe`: removes the subscriber's subscriptions on the topics named (none there: accepted, nothing
//!   changes).
//! - `close`: removes every subscription of the subscriber (the body is ignored).
//! - `list`: replies (to the request's reply-to, same correlation-id) with subject `subscriptions` and a map
//!   topic -> subscription name of the subscriber.

use std::collections::BTreeMap;

use maas_model::{AddressKind, AddressSet};

/// The node `$subctrl` requests are consumed from.
pub const SUBCTRL_ADDRESS: &str = "$subctrl";
/// Subject of `list` replies.
pub const LIST_REPLY_SUBJECT: &str = "subscriptions";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Subscribe { id: String, topics: Vec<String> },
    Unsubscribe { id: String, topics: Vec<String> },
    List { id: String },
    Close { id: String },
}

impl Request {
    /// The request's name (metric label).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Subscribe { .. } => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::List { .. } => "list",
            Request::Close { .. } => "close",
        }
    }
}

/// The AMQP error condition of a refused request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// `amqp:not-found`: no such topic.
    NotFound,
    /// `amqp:precondition-failed`: the request cannot be applied as asked.
    PreconditionFailed,
    /// `amqp:internal-error`: the service could not do it (no configuration yet, file not written).
    InternalError,
}

impl Condition {
    /// `amqp:not-found`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::NotFound => "amqp:not-found",
            Condition::PreconditionFailed => "amqp:precondition-failed",
            Condition::InternalError => "amqp:internal-error",
        }
    }

    /// Metric label: `not-found`, ...
    pub fn label(self) -> &'static str {
        self.as_str().trim_start_matches("amqp:")
    }
}

/// A refused request: condition and description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", condition.as_str())]
pub struct Rejection {
    pub condition: Condition,
    pub description: String,
}

impl Rejection {
    pub fn new(condition: Condition, description: impl Into<String>) -> Rejection {
        Rejection {
            condition,
            description: description.into(),
        }
    }
}

/// A request body as far as `$subctrl` cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyTopics {
    /// A string: one topic.
    One(String),
    /// A list of strings, or the keys of a map.
    Many(Vec<String>),
    /// No body, or one that is none of these (what it was).
    Other(String),
}

/// Parse a request from its subject, correlation-id (as text) and body.
pub fn parse_request(
    subject: Option<&str>,
    correlation_id: Option<String>,
    body: BodyTopics,
) -> Result<Request, Rejection> {
    let subject = subject.unwrap_or("");
    let id = match correlation_id {
        Some(id) if !id.is_empty() => id,
        _ => {
            return Err(Rejection::new(
                Condition::PreconditionFailed,
                format!("{subject:?} request without a correlation-id (the subscriber's id)"),
            ));
        }
    };
    let topics = || -> Result<Vec<String>, Rejection> {
        let topics = match &body {
            BodyTopics::One(t) => vec![t.clone()],
            BodyTopics::Many(ts) => ts.clone(),
            BodyTopics::Other(what) => {
                return Err(Rejection::new(
                    Condition::PreconditionFailed,
                    format!(
                        "{subject} body must be a topic, a list of topics or a map topic -> tag, not {what}"
                    ),
                ));
            }
        };
        if topics.is_empty() {
            return Err(Rejection::new(
                Condition::PreconditionFailed,
                format!("{subject} names no topic"),
            ));
        }
        Ok(topics)
    };
    match subject {
        "subscribe" => Ok(Request::Subscribe {
            topics: topics()?,
            id,
        }),
        "unsubscribe" => Ok(Request::Unsubscribe {
            topics: topics()?,
            id,
        }),
        "list" => Ok(Request::List { id }),
        "close" => Ok(Request::Close { id }),
        other => Err(Rejection::new(
            Condition::PreconditionFailed,
            format!(
                "unknown request subject {other:?} (expected subscribe, unsubscribe, list or close)"
            ),
        )),
    }
}

/// The subscriptions the service owns: subscription name -> topic.
pub type Book = BTreeMap<String, String>;

/// The subscriptions of subscriber `id`: topic -> name (`<id>`, or `<id>.<topic>`).
pub fn subscriptions_of(book: &Book, id: &str) -> BTreeMap<String, String> {
    book.iter()
        .filter(|(name, topic)| *name == id || **name == format!("{id}.{topic}"))
        .map(|(name, topic)| (topic.clone(), name.clone()))
        .collect()
}

/// What applying a request gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The new book when it changed (to be written before the request is accepted).
    pub book: Option<Book>,
    /// For `list`: topic -> subscription name.
    pub list: Option<BTreeMap<String, String>>,
}

/// Apply `request` to `book` against the current address set (`None`: no valid configuration yet).
pub fn apply(
    book: &Book,
    request: &Request,
    addresses: Option<&AddressSet>,
) -> Result<Applied, Rejection> {
    match request {
        Request::List { id } => Ok(Applied {
            book: None,
            list: Some(subscriptions_of(book, id)),
        }),
        Request::Close { id } => Ok(remove(book, subscriptions_of(book, id).into_values())),
        Request::Unsubscribe { id, topics } => {
            let mine = subscriptions_of(book, id);
            Ok(remove(
                book,
                topics.iter().filter_map(|t| mine.get(t).cloned()),
            ))
        }
        Request::Subscribe { id, topics } => {
            let Some(addresses) = addresses else {
                return Err(Rejection::new(
                    Condition::InternalError,
                    "no valid address configuration yet; try again later",
                ));
            };
            let mut next = book.clone();
            for topic in topics {
                match addresses.get(topic) {
                    Some(a) if a.kind == AddressKind::Topic => {}
                    Some(a) => {
                        return Err(Rejection::new(
                            Condition::NotFound,
                            format!("no topic {topic:?}: it is a {} address", a.kind.as_str()),
                        ));
                    }
                    None => {
                        return Err(Rejection::new(
                            Condition::NotFound,
                            format!("no topic {topic:?}"),
                        ));
                    }
                }
                let name = if topics.len() == 1 {
                    id.clone()
                } else {
                    format!("{id}.{topic}")
                };
                let problems = maas_model::address_problems(&name);
                if !problems.is_empty() {
                    return Err(Rejection::new(
                        Condition::PreconditionFailed,
                        format!("subscription name {name:?}: {}", problems.join("; ")),
                    ));
                }
                match next.get(&name) {
                    Some(t) if t == topic => continue,
                    Some(t) => {
                        return Err(Rejection::new(
                            Condition::PreconditionFailed,
                            format!("subscription {name:?} exists already, on topic {t:?}"),
                        ));
                    }
                    None => {}
                }
                if let Some(a) = addresses.get(&name) {
                    return Err(Rejection::new(
                        Condition::PreconditionFailed,
                        format!(
                            "address {name:?} exists already ({}): choose another subscriber id",
                            a.kind.as_str()
                        ),
                    ));
                }
                next.insert(name, topic.clone());
            }
            Ok(Applied {
                book: (next != *book).then_some(next),
                list: None,
            })
        }
    }
}

fn remove(book: &Book, names: impl Iterator<Item = String>) -> Applied {
    let mut next = book.clone();
    for n in names {
        next.remove(&n);
    }
    Applied {
        book: (next != *book).then_some(next),
        list: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addresses() -> AddressSet {
        let files = BTreeMap::from([
            (
                "json".to_string(),
                r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "t"},
                    "sports": {"store_and_forward": true, "multicast": true, "flavor": "t"},
                    "orders": {"store_and_forward": true, "multicast": false, "flavor": "t"},
                    "taken": {"store_and_forward": false, "multicast": false}}"#
                    .to_string(),
            ),
            (
                "flavor.json".to_string(),
                r#"{"t": {"type": "topic"}}"#.to_string(),
            ),
        ]);
        maas_model::parse_config("t", &files, None)
            .unwrap()
            .addresses
    }

    fn subscribe(id: &str, topics: &[&str]) -> Request {
        Request::Subscribe {
            id: id.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn requests_parse_from_subject_correlation_id_and_body() {
        assert_eq!(
            parse_request(
                Some("subscribe"),
                Some("c1".into()),
                BodyTopics::One("news".into())
            ),
            Ok(subscribe("c1", &["news"]))
        );
        assert_eq!(
            parse_request(
                Some("unsubscribe"),
                Some("c1".into()),
                BodyTopics::Many(vec!["a".into(), "b".into()])
            ),
            Ok(Request::Unsubscribe {
                id: "c1".into(),
                topics: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(
            parse_request(
                Some("list"),
                Some("c1".into()),
                BodyTopics::Other("no body".into())
            ),
            Ok(Request::List { id: "c1".into() })
        );
        assert_eq!(
            parse_request(
                Some("close"),
                Some("c1".into()),
                BodyTopics::Other("x".into())
            ),
            Ok(Request::Close { id: "c1".into() })
        );
        let e = parse_request(Some("subscribe"), None, BodyTopics::One("news".into())).unwrap_err();
        assert_eq!(e.condition, Condition::PreconditionFailed);
        assert!(e.description.contains("correlation-id"), "{e}");
        let e = parse_request(
            Some("purge"),
            Some("c1".into()),
            BodyTopics::One("n".into()),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "amqp:precondition-failed: unknown request subject \"purge\" (expected subscribe, unsubscribe, list or close)"
        );
        let e = parse_request(
            Some("subscribe"),
            Some("c1".into()),
            BodyTopics::Many(vec![]),
        )
        .unwrap_err();
        assert_eq!(e.description, "subscribe names no topic");
        let e = parse_request(
            Some("subscribe"),
            Some("c1".into()),
            BodyTopics::Other("a binary body".into()),
        )
        .unwrap_err();
        assert!(e.description.ends_with("not a binary body"), "{e}");
    }

    #[test]
    fn subscribe_names_one_topic_after_the_subscriber_and_several_after_subscriber_and_topic() {
        let a = addresses();
        let r = apply(&Book::new(), &subscribe("c1", &["news"]), Some(&a)).unwrap();
        let book = r.book.unwrap();
        assert_eq!(book, Book::from([("c1".to_string(), "news".to_string())]));
        // Again: accepted, nothing changes.
        let r = apply(&book, &subscribe("c1", &["news"]), Some(&a)).unwrap();
        assert_eq!(r.book, None);
        // Several topics at once.
        let r = apply(
            &Book::new(),
            &subscribe("c2", &["news", "sports"]),
            Some(&a),
        )
        .unwrap();
        let book2 = r.book.unwrap();
        assert_eq!(
            book2.keys().map(String::as_str).collect::<Vec<_>>(),
            ["c2.news", "c2.sports"]
        );
        let listed = apply(&book2, &Request::List { id: "c2".into() }, Some(&a)).unwrap();
        assert_eq!(
            listed.list.unwrap(),
            BTreeMap::from([
                ("news".to_string(), "c2.news".to_string()),
                ("sports".to_string(), "c2.sports".to_string())
            ])
        );
        assert_eq!(listed.book, None);
    }

    #[test]
    fn subscribe_refusals_say_why() {
        let a = addresses();
        let book = Book::from([("c1".to_string(), "news".to_string())]);
        let e = apply(&book, &subscribe("c9", &["weather"]), Some(&a)).unwrap_err();
        assert_eq!(e.to_string(), "amqp:not-found: no topic \"weather\"");
        let e = apply(&book, &subscribe("c9", &["orders"]), Some(&a)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "amqp:not-found: no topic \"orders\": it is a queue address"
        );
        let e = apply(&book, &subscribe("c1", &["sports"]), Some(&a)).unwrap_err();
        assert_eq!(e.condition, Condition::PreconditionFailed);
        assert!(
            e.description.contains("exists already, on topic \"news\""),
            "{e}"
        );
        let e = apply(&book, &subscribe("taken", &["news"]), Some(&a)).unwrap_err();
        assert!(
            e.description
                .contains("address \"taken\" exists already (anycast)"),
            "{e}"
        );
        let e = apply(&book, &subscribe("$bad", &["news"]), Some(&a)).unwrap_err();
        assert_eq!(e.condition, Condition::PreconditionFailed);
        assert!(e.description.contains("must not start with '$'"), "{e}");
        let e = apply(&book, &subscribe("c2", &["news"]), None).unwrap_err();
        assert_eq!(e.condition, Condition::InternalError);
        // A refused request changes nothing, even when a first topic was fine.
        let e = apply(&book, &subscribe("c3", &["news", "weather"]), Some(&a)).unwrap_err();
        assert_eq!(e.condition, Condition::NotFound);
    }

    #[test]
    fn unsubscribe_and_close_remove_only_the_subscribers_own() {
        let a = addresses();
        let book = Book::from([
            ("c1".to_string(), "news".to_string()),
            ("c2.news".to_string(), "news".to_string()),
            ("c2.sports".to_string(), "sports".to_string()),
            ("c20".to_string(), "sports".to_string()),
        ]);
        let r = apply(
            &book,
            &Request::Unsubscribe {
                id: "c2".into(),
                topics: vec!["news".into(), "weather".into()],
            },
            Some(&a),
        )
        .unwrap();
        assert_eq!(
            r.book
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["c1", "c2.sports", "c20"]
        );
        let r = apply(&book, &Request::Close { id: "c2".into() }, Some(&a)).unwrap();
        assert_eq!(
            r.book
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["c1", "c20"]
        );
        // Nothing of theirs: accepted, nothing changes.
        let r = apply(&book, &Request::Close { id: "c7".into() }, None).unwrap();
        assert_eq!(r.book, None);
        assert_eq!(Condition::NotFound.label(), "not-found");
    }
}
