//! Parsing of Kubernetes resource quantities such as `500m`, `4`, `16Gi` or `1e3`.

/// Parses a quantity into thousandths of its unit: `500m` is 500, `2` is 2000, `1Ki` is 1024000.
/// Returns `None` for text that is not a quantity. Values past `i64` saturate.
pub fn parse_milli(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;

    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    let milli = (number * factor * 1000.0).round();
    Some(milli.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
}

/// Parses a quantity and rounds it down to whole units.
pub fn parse_units(text: &str) -> Option<i64> {
    parse_milli(text).map(|milli| milli.div_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_milli("500m"), Some(500));
        assert_eq!(parse_milli("4"), Some(4000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_units("3900m"), Some(3));
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_units("16384Mi"), Some(16384 * 1024 * 1024));
        assert_eq!(parse_units("256Gi"), Some(256 * 1024 * 1024 * 1024));
        assert_eq!(parse_units("1G"), Some(1_000_000_000));
        assert_eq!(parse_units("1e3"), Some(1000));
        assert_eq!(parse_units("128974848"), Some(128_974_848));
    }

    #[test]
    fn bad_quantities() {
        assert_eq!(parse_milli("lots"), None);
        assert_eq!(parse_milli("5Xi"), None);
        assert_eq!(parse_milli(""), None);
    }
}
