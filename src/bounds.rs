//! How big anything a caller sends may be, in one place.
//!
//! Every value a request carries ends up in a stored step record, a log line, an
//! error message or a child's argv. Without a bound, one request can make a record
//! of tens of megabytes that no client with gRPC's default 4 MiB limit can read
//! back, for the whole retention period. The bounds are generous for real use (a
//! path of 4 KiB is PATH_MAX) and small enough that a record stays small.

/// Longest path (Linux PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Longest name: zone, cluster, user, device, unit, ...
pub const MAX_NAME: usize = 255;
/// Most entries in `env`, `parameters`, `extra_args`, `argv`.
pub const MAX_ENTRIES: usize = 256;
/// Longest single key or value in those.
pub const MAX_VALUE: usize = 4096;
/// How much of a rejected value an error message quotes.
pub const QUOTE: usize = 200;

/// The value for an error message: escaped, and cut to [`QUOTE`] bytes with a
/// note of how long it really was, so that a 1 MB path never becomes a 1 MB
/// message.
pub fn quote(value: &str) -> String {
    let escaped: String = value.escape_debug().collect();
    if escaped.len() <= QUOTE {
        return escaped;
    }
    let mut cut = QUOTE;
    while !escaped.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...({} bytes)", &escaped[..cut], value.len())
}

/// `field` is at most `max` bytes.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes long, over the limit of {max}; give a shorter value (it begins '{}')",
            value.len(),
            quote(value)
        ));
    }
    Ok(())
}

/// A list or map has at most [`MAX_ENTRIES`] entries of at most [`MAX_VALUE`]
/// bytes each.
pub fn check_entries<'a>(
    field: &str,
    entries: impl ExactSizeIterator<Item = &'a str>,
) -> Result<(), String> {
    if entries.len() > MAX_ENTRIES {
        return Err(format!(
            "{field} has {} entries, over the limit of {MAX_ENTRIES}",
            entries.len()
        ));
    }
    for e in entries {
        check_len(&format!("an entry of {field}"), e, MAX_VALUE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_short_and_say_how_long() {
        assert_eq!(quote("zone1"), "zone1");
        let long = "é".repeat(1000);
        let q = quote(&long);
        assert!(q.len() <= QUOTE + 20, "{}", q.len());
        assert!(q.ends_with("(2000 bytes)"), "{q}");
        assert_eq!(quote("a\nb"), "a\\nb");
    }

    #[test]
    fn lengths_and_entries() {
        assert!(check_len("observer.zone", "z", MAX_NAME).is_ok());
        let e = check_len("observer.zone", &"z".repeat(256), MAX_NAME).unwrap_err();
        assert!(e.contains("observer.zone is 256 bytes long"), "{e}");
        let many: Vec<String> = (0..257).map(|i| i.to_string()).collect();
        let e = check_entries("observer.extra_args", many.iter().map(String::as_str)).unwrap_err();
        assert!(e.contains("257 entries"), "{e}");
        let big = ["x".repeat(MAX_VALUE + 1)];
        assert!(check_entries("observer.env", big.iter().map(String::as_str)).is_err());
    }
}
