//! Server-rendered HTML of the operator pages: escaping, the page frame and time formatting.
//! The pages load nothing from elsewhere and run no script, and their Content-Security-Policy
//! forbids both.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use visa_jobs::model::{Millis, format_visa_time};

const STYLE: &str = "
body { font-family: sans-serif; margin: 0; color: #1d232a; background: #f6f7f9; }
header { background: #1d3557; color: #fff; padding: 0.6em 1.2em; display: flex; gap: 2em; align-items: baseline; }
header a { color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
main { padding: 1em 1.2em; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 0.85em; }
th, td { border: 1px solid #d5d9de; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #e9edf1; }
.state { font-weight: bold; padding: 0.1em 0.4em; border-radius: 0.3em; }
.state-ACTIVE, .sync-succeeded { background: #c9f2d0; }
.state-ERROR, .job-failed, .sync-failed { background: #ffd1d1; }
.state-STOPPED, .state-STOPPING { background: #e3e3e3; }
.state-BUILDING, .state-STARTING, .state-REBOOTING, .job-running, .job-queued, .sync-running { background: #fff1b8; }
.summary { display: flex; gap: 0.6em; flex-wrap: wrap; margin: 0.6em 0; }
.summary a, .summary span { background: #fff; border: 1px solid #d5d9de; padding: 0.3em 0.6em; border-radius: 0.3em; }
form { margin: 0.6em 0; }
.muted { color: #6b7480; }
.fault { color: #9b1c1c; }
ul.jobs { margin: 0; padding-left: 1.1em; }
.ldap-sync { background: #fff; border: 1px solid #d5d9de; padding: 0.2em 0.8em; margin-bottom: 0.8em; font-size: 0.9em; }
.ldap-sync h3 { font-size: 1em; margin: 0.4em 0; }
.ldap-sync p { margin: 0.3em 0; }
";

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Percent-encodes a query parameter value.
pub fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Wraps `body`, which must already be escaped, in a page with the operators' navigation.
pub fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title} - VISA provider</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header><h1>VISA provider</h1><a href=\"/operator/instances\">Instances</a>\
         <a href=\"/operator/jobs/\">Jobs</a><a href=\"/metrics\">Metrics</a></header>\n\
         <main>\n<h2>{title}</h2>\n{body}\n</main>\n</body>\n</html>\n",
        title = escape(title),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            ),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response()
}

/// Formats a duration in milliseconds as its two largest units, such as `3d 4h` or `5m 10s`.
pub fn format_age(millis: Millis) -> String {
    let seconds = millis.max(0) / 1000;
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {}s", seconds % 60)
    } else {
        format!("{seconds}s")
    }
}

/// Formats a time as ISO-8601 in UTC, to the second.
pub fn format_time(millis: Millis) -> String {
    let text = format_visa_time(millis);
    match text.split_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & o'brien"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; o&#39;brien"
        );
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn query_value_encoding() {
        assert_eq!(encode_query_value("o'brien & co"), "o%27brien%20%26%20co");
        assert_eq!(encode_query_value("ACTIVE"), "ACTIVE");
    }

    #[test]
    fn age_uses_two_units() {
        assert_eq!(format_age(0), "0s");
        assert_eq!(format_age(59_999), "59s");
        assert_eq!(format_age(310_000), "5m 10s");
        assert_eq!(format_age(2 * 3_600_000 + 60_000), "2h 1m");
        assert_eq!(format_age(3 * 86_400_000 + 4 * 3_600_000), "3d 4h");
        assert_eq!(format_age(-5), "0s");
    }

    #[test]
    fn time_drops_milliseconds() {
        assert_eq!(format_time(1_796_396_204_123), "2026-12-04T14:56:44Z");
    }
}
