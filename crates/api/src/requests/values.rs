//! JSON values → control's input types: the JSON type is checked here (an integer is a JSON
//! integer, not `1.0` or `"1"`), the limits by control's constructors.

use pgbay_control::input::{in_range, InputError, IpFilter, PoolMode, PoolSize};
use serde_json::Value;

/// An integer within `min..=max` (JSON integers only; 1.0 or "1" are refused).
pub(crate) fn int_in(field: &str, v: &Value, min: i64, max: i64) -> Result<i64, InputError> {
    in_range(field, integer(field, v)?, min, max)
}

/// A JSON integer.
pub(crate) fn integer(field: &str, v: &Value) -> Result<i64, InputError> {
    match v {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
    .ok_or_else(|| InputError::new(field, "must be an integer"))
}

/// A JSON boolean.
pub(crate) fn boolean(field: &str, v: &Value) -> Result<bool, InputError> {
    v.as_bool()
        .ok_or_else(|| InputError::new(field, "must be a boolean"))
}

/// A JSON array of strings.
pub(crate) fn strings<'a>(
    field: &str,
    v: &'a Value,
    what: &str,
) -> Result<Vec<&'a str>, InputError> {
    let items = v
        .as_array()
        .ok_or_else(|| InputError::new(field, format!("must be an array{what}")))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .ok_or_else(|| InputError::new(field, format!("item {i} must be a string")))
        })
        .collect()
}

/// `size` of a pool.
pub(crate) fn pool_size(field: &str, v: &Value) -> Result<PoolSize, InputError> {
    PoolSize::new(field, integer(field, v)?)
}

/// `mode` of a pool.
pub(crate) fn pool_mode(field: &str, v: &Value) -> Result<PoolMode, InputError> {
    PoolMode::parse(field, v.as_str().unwrap_or_default())
}

/// `ip-filter`: an array of CIDR strings.
pub(crate) fn ip_filter(field: &str, v: &Value) -> Result<IpFilter, InputError> {
    IpFilter::parse(field, &strings(field, v, " of CIDR strings")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_types_are_checked_before_limits() {
        assert_eq!(pool_size("size", &json!(1)).unwrap().get(), 1);
        for bad in [json!("5"), json!(5.5), json!(null), json!(0), json!(10001)] {
            let e = pool_size("size", &bad).unwrap_err();
            assert!(e.message.contains("`size`"), "{e}");
        }
        assert_eq!(
            pool_mode("mode", &json!("session")).unwrap(),
            PoolMode::Session
        );
        assert!(pool_mode("mode", &json!(1)).is_err());
        let f = ip_filter("ip-filter", &json!(["10.0.0.0/8", "192.168.1.1"])).unwrap();
        assert_eq!(f.to_strings(), ["10.0.0.0/8", "192.168.1.1/32"]);
        assert!(ip_filter("ip-filter", &json!("10.0.0.0/8")).is_err());
        assert!(ip_filter("ip-filter", &json!([1])).is_err());
        assert!(ip_filter("ip-filter", &json!(["10.0.0.0/33"])).is_err());
        assert!(boolean("b", &json!(1)).is_err());
        assert!(int_in("n", &json!(1.0), 0, 5).is_err());
    }
}
