//! One module per subcommand: flags, then a call into the library crate that does the work.

pub mod controller;
pub mod copy_self;
#[cfg(feature = "dev-vault")]
pub mod dev_vault;
#[cfg(not(feature = "dev-vault"))]
#[path = "no_dev_vault.rs"]
pub mod dev_vault;
pub mod env;
pub mod flexvolume;
pub mod mount;
pub mod provider;
pub mod trust;
pub mod webhook;

/// The longest duration a flag accepts (longer values are surely typos, and would overflow
/// deadline arithmetic elsewhere).
pub const MAX_FLAG_DURATION: std::time::Duration =
    std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses durations: `humantime` syntax (`500ms`, `30s`, `2m`, `1h`, `1h 30m`, `2days`), plus
/// what kvbridge always accepted: a bare number of seconds (`10`, `1.5`) and a decimal number
/// with one unit (`1.5s`, `0.5m`). At most [`MAX_FLAG_DURATION`]; never panics.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let hint = "(e.g. 500ms, 30s, 2m, 1h)";
    if s.starts_with('-') {
        return Err(format!("'{s}' must not be negative"));
    }
    let decimal = |num: &str| -> Option<f64> {
        let ok = !num.is_empty()
            && num.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && num.bytes().filter(|b| *b == b'.').count() <= 1
            && num.bytes().any(|b| b.is_ascii_digit());
        ok.then(|| num.parse().ok()).flatten()
    };
    let parsed = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        // A bare number: seconds.
        None => decimal(s).map(|n| (n, 1.0)),
        Some(i) if s[..i].contains('.') => {
            let scale = match &s[i..] {
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                unit => {
                    return Err(format!(
                        "'{s}': a decimal number takes one unit of ms, s, m or h, not '{unit}'"
                    ))
                }
            };
            decimal(&s[..i]).map(|n| (n, scale))
        }
        Some(_) => {
            let d = humantime::parse_duration(s)
                .map_err(|e| format!("'{s}' is not a duration {hint}: {e}"))?;
            return if d > MAX_FLAG_DURATION {
                Err(format!("'{s}' is longer than the maximum of 10 years"))
            } else {
                Ok(d)
            };
        }
    };
    let (n, scale) = parsed.ok_or_else(|| format!("'{s}' is not a duration {hint}"))?;
    match std::time::Duration::try_from_secs_f64(n * scale) {
        Ok(d) if d <= MAX_FLAG_DURATION => Ok(d),
        _ => Err(format!("'{s}' is longer than the maximum of 10 years")),
    }
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
        assert_eq!(
            super::parse_duration("2d"),
            Ok(Duration::from_secs(2 * 86400))
        );
        assert_eq!(super::parse_duration("0s"), Ok(Duration::ZERO));
        assert!(super::parse_duration("-1s").is_err());
        assert_eq!(
            super::parse_duration("1.5s"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(super::parse_duration("0.5m"), Ok(Duration::from_secs(30)));
        assert_eq!(
            super::parse_duration("2.5"),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(
            super::parse_duration("1h 30m"),
            Ok(Duration::from_secs(5400))
        );
        for bad in ["", "s", ".", "1.2.3s", "1.5x", "abc", "10 parsecs"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// Issue 13.6: huge values are errors, never panics.
    #[test]
    fn huge_durations_are_errors_not_panics() {
        for huge in [
            "99999999999999999999h",
            "99999999999999999999",
            "1e400",
            "18446744073709551616s",
            "9999999999999999.9h",
            "11years",
            "3650000d",
        ] {
            let r = std::panic::catch_unwind(|| super::parse_duration(huge));
            assert!(matches!(r, Ok(Err(_))), "{huge}: {r:?}");
        }
    }
}
