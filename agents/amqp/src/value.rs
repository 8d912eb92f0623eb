//! Mapping between `serde_json` values (what the rest of the project handles) and AMQP values
//! (what goes on the wire).
//!
//! JSON -> AMQP: null, bool, string; integers as `long` (i64) or, above `i64::MAX`, `ulong`;
//! other numbers as `double`; arrays as `list`; objects as `map` with `string` keys.
//!
//! AMQP -> JSON accepts everything a peer may send: every integer width, float/double, symbol and
//! char (as strings), timestamps (milliseconds), UUIDs (hyphenated text), binary (UTF-8 text when
//! valid, else a list of byte values), list/array, maps (non-string keys are rendered as JSON
//! text), described values (the descriptor is dropped). NaN and infinities, and the decimal types
//! this project never uses, become null.

use serde_amqp::Value;
use serde_amqp::primitives::OrderedMap;
use serde_json::Value as Json;

/// Converts a JSON value to the AMQP value sent on the wire.
pub fn json_to_amqp(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Long(i)
            } else if let Some(u) = n.as_u64() {
                Value::Ulong(u)
            } else {
                Value::Double(n.as_f64().unwrap_or(f64::NAN).into())
            }
        }
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::List(items.iter().map(json_to_amqp).collect()),
        Json::Object(map) => Value::Map(json_map_to_amqp(map)),
    }
}

/// Converts a JSON object to an AMQP map with string keys.
pub fn json_map_to_amqp(map: &serde_json::Map<String, Json>) -> OrderedMap<Value, Value> {
    let mut out = OrderedMap::new();
    for (k, v) in map {
        out.insert(Value::String(k.clone()), json_to_amqp(v));
    }
    out
}

/// Converts an AMQP value received from a peer to JSON.
pub fn amqp_to_json(value: Value) -> Json {
    match value {
        Value::Described(d) => amqp_to_json(d.value),
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(b),
        Value::Ubyte(n) => n.into(),
        Value::Ushort(n) => n.into(),
        Value::Uint(n) => n.into(),
        Value::Ulong(n) => n.into(),
        Value::Byte(n) => n.into(),
        Value::Short(n) => n.into(),
        Value::Int(n) => n.into(),
        Value::Long(n) => n.into(),
        Value::Float(f) => float_to_json(f64::from(f.into_inner())),
        Value::Double(f) => float_to_json(f.into_inner()),
        Value::Decimal32(_) | Value::Decimal64(_) | Value::Decimal128(_) => Json::Null,
        Value::Char(c) => Json::String(c.to_string()),
        Value::Timestamp(t) => t.milliseconds().into(),
        Value::Uuid(u) => Json::String(format_uuid(&u.into_inner())),
        Value::Binary(b) => match String::from_utf8(b.into_vec()) {
            Ok(s) => Json::String(s),
            Err(e) => Json::Array(e.into_bytes().into_iter().map(Json::from).collect()),
        },
        Value::String(s) => Json::String(s),
        Value::Symbol(s) => Json::String(s.0),
        Value::List(items) => Json::Array(items.into_iter().map(amqp_to_json).collect()),
        Value::Array(items) => Json::Array(items.0.into_iter().map(amqp_to_json).collect()),
        Value::Map(map) => Json::Object(amqp_map_to_json(map)),
    }
}

/// Converts an AMQP map to a JSON object; keys that are not strings or symbols are rendered as
/// their JSON text.
pub fn amqp_map_to_json(map: OrderedMap<Value, Value>) -> serde_json::Map<String, Json> {
    map.into_iter()
        .map(|(k, v)| (key_to_string(k), amqp_to_json(v)))
        .collect()
}

fn key_to_string(key: Value) -> String {
    match key {
        Value::String(s) => s,
        Value::Symbol(s) => s.0,
        other => amqp_to_json(other).to_string(),
    }
}

fn float_to_json(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_amqp::primitives::{Array, Symbol, Timestamp, Uuid};
    use serde_json::json;

    #[test]
    fn json_to_amqp_types() {
        assert_eq!(json_to_amqp(&json!(null)), Value::Null);
        assert_eq!(json_to_amqp(&json!(true)), Value::Bool(true));
        assert_eq!(json_to_amqp(&json!(-1)), Value::Long(-1));
        assert_eq!(json_to_amqp(&json!(5674)), Value::Long(5674));
        assert_eq!(json_to_amqp(&json!(u64::MAX)), Value::Ulong(u64::MAX));
        assert_eq!(json_to_amqp(&json!(1.5)), Value::Double(1.5.into()));
        assert_eq!(json_to_amqp(&json!("x")), Value::String("x".into()));
        assert_eq!(
            json_to_amqp(&json!(["a", 1])),
            Value::List(vec![Value::String("a".into()), Value::Long(1)])
        );
        let Value::Map(m) = json_to_amqp(&json!({"prefix": "q", "waypoint": false})) else {
            panic!("not a map")
        };
        let keys: Vec<_> = m.keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                Value::String("prefix".into()),
                Value::String("waypoint".into())
            ]
        );
    }

    #[test]
    fn amqp_to_json_accepts_every_scalar() {
        let cases = vec![
            (Value::Ubyte(1), json!(1)),
            (Value::Ushort(2), json!(2)),
            (Value::Uint(3), json!(3)),
            (Value::Ulong(u64::MAX), json!(u64::MAX)),
            (Value::Byte(-1), json!(-1)),
            (Value::Short(-2), json!(-2)),
            (Value::Int(-1), json!(-1)),
            (Value::Long(i64::MIN), json!(i64::MIN)),
            (Value::Float(0.5f32.into()), json!(0.5)),
            (Value::Double(f64::NAN.into()), json!(null)),
            (Value::Char('c'), json!("c")),
            (Value::Symbol(Symbol::from("balanced")), json!("balanced")),
            (
                Value::Timestamp(Timestamp::from_milliseconds(1234)),
                json!(1234),
            ),
            (
                Value::Uuid(Uuid::from([0x12u8; 16])),
                json!("12121212-1212-1212-1212-121212121212"),
            ),
            (Value::Binary(b"abc".to_vec().into()), json!("abc")),
            (Value::Binary(vec![0xffu8, 0].into()), json!([255, 0])),
            (
                Value::Array(Array(vec![Value::Int(1), Value::Int(2)])),
                json!([1, 2]),
            ),
        ];
        for (amqp, want) in cases {
            assert_eq!(amqp_to_json(amqp.clone()), want, "{amqp:?}");
        }
    }

    #[test]
    fn maps_round_trip_and_odd_keys_become_text() {
        let original = json!({"name": "a", "port": "5674", "cost": 1, "list": [true, null], "inner": {"x": 1.25}});
        assert_eq!(amqp_to_json(json_to_amqp(&original)), original);
        let mut m = OrderedMap::new();
        m.insert(
            Value::Symbol(Symbol::from("product")),
            Value::String("qdr".into()),
        );
        m.insert(Value::Int(7), Value::Bool(true));
        assert_eq!(
            amqp_to_json(Value::Map(m)),
            json!({"product": "qdr", "7": true})
        );
    }
}
