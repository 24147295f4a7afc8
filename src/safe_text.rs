//! Text from peers and from configuration files, made safe to show: escaped and bounded
//! for log lines, credentials masked in queries, values redacted from parser errors
//! (which may quote a token or a private key).

/// The longest peer value written to a log line; the rest is cut (and said so).
pub const MAX_LOGGED: usize = 256;

/// A value from a peer (certificate subject, path, planeID, header) made safe for a log
/// line: control characters are escaped so that no one can forge lines, and the length
/// is bounded so that no one can flood the log.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_LOGGED));
    for (i, c) in value.chars().enumerate() {
        if i == MAX_LOGGED {
            out.push_str("…(cut)");
            break;
        }
        push_printable(&mut out, c);
    }
    out
}

/// Text for the operator's terminal (a finding, a table cell) that may hold values from
/// CRs, certificates or a remote cluster: escaped as [`escape`] does, but whole (a fix
/// text is longer than a log's bound and must not be cut).
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_printable(&mut out, c);
    }
    out
}

/// Control characters (ESC sequences retitle windows and forge table rows) and the
/// format characters that reorder or hide text (bidirectional overrides, zero-width
/// marks) are written as escapes; everything else as is.
fn push_printable(out: &mut String, c: char) {
    let reorders = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
    if c.is_control() || reorders {
        out.extend(c.escape_default());
    } else {
        out.push(c);
    }
}

/// One word of a command printed for the operator to paste: [`printable`], then quoted
/// for a POSIX shell when it holds anything but letters, digits and `-_./:=@,+`, so a
/// value from a CR (`p1; curl …|sh #`) stays one inert argument.
pub fn shell_word(value: &str) -> String {
    let shown = printable(value);
    match shlex::try_quote(&shown) {
        Ok(quoted) => quoted.into_owned(),
        // Only a NUL byte is refused, and printable() has escaped it.
        Err(_) => format!("'{}'", shown.replace('\'', "'\\''")),
    }
}

/// Query parameters whose values are credentials or commands: masked in logs.
const SECRET_PARAMETERS: [&str; 6] = ["token", "password", "secret", "key", "auth", "command"];

/// A query string for a debug log: each value of a parameter whose name suggests a
/// credential (or an exec command) masked, the rest escaped.
pub fn redacted_query(query: &str) -> String {
    let parts: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            if SECRET_PARAMETERS.iter().any(|s| lower.contains(s)) {
                format!("{}=***", escape(&name))
            } else {
                format!("{}={}", escape(&name), escape(&value))
            }
        })
        .collect();
    parts.join("&")
}

/// A parser's error message with every double-quoted value replaced by `"…"`: errors
/// about configuration files name the file, line, column and problem, never a value
/// (which may be a token or a private key).
pub fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            let mut escaped = false;
            for inner in chars.by_ref() {
                match (escaped, inner) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    _ => escaped = false,
                }
            }
            out.push_str("…\"");
        }
    }
    out
}

/// YAML parsing options for configuration files: no source snippets in errors (they
/// would print the lines around a mistake, secrets included).
pub fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options
}

/// A YAML error as a configuration error text: line and column, the problem, no values.
pub fn yaml_error(e: &serde_saphyr::Error) -> String {
    let problem = redact_values(&e.without_snippet().to_string());
    match e.location() {
        Some(at) => format!("line {}, column {}: {problem}", at.line(), at.column()),
        None => problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_values_cannot_forge_lines() {
        assert_eq!(
            escape("CN=agent\nlevel=error msg=forged"),
            "CN=agent\\nlevel=error msg=forged"
        );
        assert_eq!(escape("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        let long = "x".repeat(10_000);
        assert_eq!(escape(&long).len(), MAX_LOGGED + "…(cut)".len());
    }

    /// What a CR's writer puts in a planeID or a name cannot retitle the window, forge a
    /// table row or hide text, and stays one inert word in a printed command.
    #[test]
    fn terminal_text_and_shell_words() {
        assert_eq!(
            printable("p1\u{1b}]0;owned\u{7}\u{202e}txt.exe"),
            "p1\\u{1b}]0;owned\\u{7}\\u{202e}txt.exe"
        );
        let long = "y".repeat(1000);
        assert_eq!(printable(&long), long);
        assert_eq!(shell_word("dp-1.eu"), "dp-1.eu");
        assert_eq!(shell_word("p1; curl x|sh #"), "'p1; curl x|sh #'");
        // A real shell reads each word back as the value itself.
        for value in [
            "it's",
            "it's $(id)",
            "$(id)",
            "`id`",
            "a\\b",
            "\"q\" ; rm -rf ~",
            "*",
        ] {
            let word = shell_word(value);
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {word}")])
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), value, "{word}");
        }
        assert!(!shell_word("a\u{1b}b").contains('\u{1b}'));
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn credentials_in_queries_are_masked() {
        assert_eq!(
            redacted_query("watch=1&access_token=abc&command=sh&container=app"),
            "watch=1&access_token=***&command=***&container=app"
        );
    }

    #[test]
    fn values_are_redacted() {
        assert_eq!(
            redact_values(r#"invalid type: string "s3cr3t \"x\"", expected u16 at line 3"#),
            r#"invalid type: string "…", expected u16 at line 3"#
        );
        assert_eq!(
            redact_values("missing field `gateway`"),
            "missing field `gateway`"
        );
    }
}
