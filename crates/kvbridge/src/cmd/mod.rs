//! One module per subcommand: flags, then a call into the library crate that does the work.

pub mod dev_vault;
pub mod flexvolume;
pub mod mount;
pub mod provider;

/// Parses durations like `500ms`, `30s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 30s, 2m, 1h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    if secs < 0.0 || !secs.is_finite() {
        return Err(format!("'{s}' must not be negative"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(
            super::parse_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(super::parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(super::parse_duration("2d").is_err());
        assert_eq!(super::parse_duration("0s"), Ok(Duration::ZERO));
        assert!(super::parse_duration("-1s").is_err());
    }
}
