//! Parsers for the text forms of option values: whole numbers, durations and sizes.
//!
//! Each returns the value or a sentence saying what was wrong and what is
//! allowed; the caller adds which option it was.

use std::time::Duration;

/// Parses a whole number from `min` to `max`, or says what was wrong (for flags of any command).
pub fn whole_number_in(text: &str, min: usize, max: usize) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("`{text}` is not a whole number from {min} to {max}"))
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit.trim() {
        "" | "s" => number.checked_mul(1000)?,
        "ms" => number,
        "m" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// A duration from 1ms to 24h, the range every duration option allows.
pub fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
        .filter(|d| !d.is_zero() && *d <= Duration::from_secs(86_400))
        .ok_or_else(|| format!("`{text}` is not a duration from 1ms to 24h, like 500ms, 10s, 2m"))
}

/// Parses `8192`, `8KiB`, `1MiB`, `1GiB` (also `KB`, `MB`, `GB`, `K`, `M`, `G` as powers of 1024) from `min` to `max` bytes.
pub fn size_in(text: &str, min: usize, max: usize) -> Result<usize, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => 0,
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| scale > 0 && (min..=max).contains(n))
        .ok_or_else(|| {
            format!("`{text}` is not a size from {min} to {max} bytes, like 8KiB or 1MiB")
        })
}

/// `true`/`false` and the usual spellings (`1`/`0`, `yes`/`no`, `on`/`off`).
pub fn boolean(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" => Ok(true),
        "false" | "0" | "no" | "n" | "off" | "" => Ok(false),
        _ => Err(format!("`{text}` is not true or false")),
    }
}

/// Any text, kept as it is.
pub fn text(text: &str) -> Result<String, String> {
    Ok(text.to_owned())
}

/// The comma-separated items of a list option, trimmed, without empty ones.
pub fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',')
        .map(|item| item.trim().trim_matches('"'))
        .filter(|item| !item.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("7x"), None);
        assert!(duration("0s").is_err());
        assert!(duration("25h").is_err());
        assert_eq!(size_in("8KiB", 0, usize::MAX), Ok(8192));
        assert_eq!(size_in("1M", 0, usize::MAX), Ok(1 << 20));
        assert!(size_in("1Q", 0, usize::MAX).is_err());
        assert!(size_in("2KiB", 0, 1024).is_err());
        assert_eq!(whole_number_in(" 3 ", 1, 3), Ok(3));
        assert!(whole_number_in("-1", 1, 3).is_err());
        assert_eq!(boolean("on"), Ok(true));
        assert!(boolean("maybe").is_err());
        assert_eq!(items(" a, ,\"b\"").collect::<Vec<_>>(), ["a", "b"]);
    }
}
