//! LastGood: bad input keeps the last good value; errors are new once per content; generation tracks the good.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use maas_source::{LastGood, Offer};

fn errs(list: &[&str]) -> Result<u32, Vec<String>> {
    Err(list.iter().map(|s| s.to_string()).collect())
}

#[test]
fn starts_empty() {
    let lg = LastGood::<u32>::new();
    assert!(lg.good().is_none());
    assert!(lg.errors().is_empty());
    assert_eq!(lg.generation(), 0);
}

#[test]
fn good_input_becomes_the_value_and_bumps_the_generation() {
    let mut lg = LastGood::new();
    let offer = lg.offer("h1", Ok(1));
    assert_eq!(
        offer,
        Offer {
            changed: true,
            new_errors: false,
            recovered: false
        }
    );
    assert_eq!(**lg.good().unwrap(), 1);
    assert_eq!(lg.generation(), 1);

    // Same content again (a resync): nothing changes.
    let offer = lg.offer("h1", Ok(1));
    assert!(!offer.changed);
    assert_eq!(lg.generation(), 1);

    lg.offer("h2", Ok(2));
    assert_eq!(**lg.good().unwrap(), 2);
    assert_eq!(lg.generation(), 2);
}

#[test]
fn bad_input_keeps_the_last_good_value() {
    let mut lg = LastGood::new();
    lg.offer("h1", Ok(1));
    let offer = lg.offer("h2", errs(&["json: address \"$x\" is reserved"]));
    assert!(!offer.changed);
    assert!(offer.new_errors);
    assert_eq!(**lg.good().unwrap(), 1);
    assert_eq!(lg.generation(), 1);
    assert_eq!(lg.errors(), ["json: address \"$x\" is reserved"]);
}

#[test]
fn bad_input_before_any_good_leaves_nothing_in_force() {
    let mut lg = LastGood::<u32>::new();
    let offer = lg.offer("h1", errs(&["e"]));
    assert!(offer.new_errors);
    assert!(lg.good().is_none());
    assert_eq!(lg.generation(), 0);
}

#[test]
fn errors_are_new_only_once_per_content_hash() {
    let mut lg = LastGood::new();
    lg.offer("good", Ok(1));
    assert!(lg.offer("bad1", errs(&["e1"])).new_errors);
    // Resyncs of the same bad content: not new.
    assert!(!lg.offer("bad1", errs(&["e1"])).new_errors);
    assert!(!lg.offer("bad1", errs(&["e1"])).new_errors);
    // A different bad content: new.
    assert!(lg.offer("bad2", errs(&["e2"])).new_errors);
    assert_eq!(lg.errors(), ["e2"]);
    // Back to good, then the first bad content again: that is a change, so new again.
    let offer = lg.offer("good", Ok(1));
    assert!(offer.recovered);
    assert!(!offer.changed, "the good value came from this same content");
    assert!(lg.errors().is_empty());
    assert!(lg.offer("bad1", errs(&["e1"])).new_errors);
    assert_eq!(lg.generation(), 1);
}

#[test]
fn recovery_to_new_content_changes_the_value() {
    let mut lg = LastGood::new();
    lg.offer("h1", Ok(1));
    lg.offer("h2", errs(&["e"]));
    let offer = lg.offer("h3", Ok(3));
    assert_eq!(
        offer,
        Offer {
            changed: true,
            new_errors: false,
            recovered: true
        }
    );
    assert_eq!(**lg.good().unwrap(), 3);
    assert_eq!(lg.good_hash(), Some("h3"));
    assert_eq!(lg.generation(), 2);
}
