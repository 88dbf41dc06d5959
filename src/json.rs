//! A check that caller text is JSON as the supervisor's `JSON.parse` reads
//! it (RFC 8259 grammar), and an object. Nothing is built: the text is sent
//! exactly as given, so the check takes no limit `JSON.parse` does not have:
//! any depth (it walks the text with a stack of its own, never recursing),
//! any `\u` escape (a lone surrogate too), any number (`1e999` too).

/// Whether `text` is one JSON value with only white space around it:
/// `Ok(true)` for an object, `Ok(false)` for another value, `Err` with where
/// and why it is not JSON.
pub fn is_object(text: &str) -> Result<bool, String> {
    let b = text.as_bytes();
    let mut i = ws(b, 0);
    let object = b.get(i) == Some(&b'{');
    // The containers open around the current position: `{` or `[`.
    let mut open: Vec<u8> = Vec::new();
    'value: loop {
        i = ws(b, i);
        match b.get(i) {
            Some(b'{') => {
                i = ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    i += 1;
                } else {
                    open.push(b'{');
                    i = key(b, i)?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                i = ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    open.push(b'[');
                    continue 'value;
                }
            }
            Some(b'"') => i = string(b, i)?,
            Some(b't') => i = literal(b, i, b"true")?,
            Some(b'f') => i = literal(b, i, b"false")?,
            Some(b'n') => i = literal(b, i, b"null")?,
            Some(c) if *c == b'-' || c.is_ascii_digit() => i = number(b, i)?,
            _ => return Err(expected(b, i, "a value")),
        }
        // After a value: a comma, the end of containers, or the end of text.
        loop {
            i = ws(b, i);
            let Some(&top) = open.last() else {
                return if i == b.len() {
                    Ok(object)
                } else {
                    Err(expected(b, i, "the end of the text"))
                };
            };
            match (top, b.get(i)) {
                (_, Some(b',')) => {
                    i += 1;
                    if top == b'{' {
                        i = key(b, ws(b, i))?;
                    }
                    continue 'value;
                }
                (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                    open.pop();
                    i += 1;
                }
                (b'{', _) => return Err(expected(b, i, "',' or '}'")),
                _ => return Err(expected(b, i, "',' or ']'")),
            }
        }
    }
}

fn expected(b: &[u8], i: usize, what: &str) -> String {
    match b.get(i) {
        None => format!("the text ends where {what} was expected"),
        Some(&c) if c.is_ascii_graphic() => {
            format!("expected {what} at byte {i}, found '{}'", c as char)
        }
        Some(&c) => format!("expected {what} at byte {i}, found byte 0x{c:02x}"),
    }
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// A member's name and its `:`, at `i`; returns where its value starts.
fn key(b: &[u8], i: usize) -> Result<usize, String> {
    if b.get(i) != Some(&b'"') {
        return Err(expected(b, i, "a member name in double quotes"));
    }
    let i = ws(b, string(b, i)?);
    if b.get(i) != Some(&b':') {
        return Err(expected(b, i, "':'"));
    }
    Ok(i + 1)
}

/// The string starting at `i` (its `"`); returns the index after it.
fn string(b: &[u8], mut i: usize) -> Result<usize, String> {
    i += 1;
    loop {
        match b.get(i) {
            None => return Err(expected(b, i, "'\"' to end a string")),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    for k in 2..6 {
                        if !b.get(i + k).is_some_and(u8::is_ascii_hexdigit) {
                            return Err(expected(b, i + k, "4 hex digits after \\u"));
                        }
                    }
                    i += 6;
                }
                _ => {
                    return Err(expected(
                        b,
                        i + 1,
                        "an escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)",
                    ))
                }
            },
            Some(&c) if c < 0x20 => {
                return Err(expected(b, i, "an escape instead of a control character"))
            }
            Some(_) => i += 1,
        }
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, String> {
    if b[i..].starts_with(word) {
        Ok(i + word.len())
    } else {
        Err(expected(b, i, "a value"))
    }
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` at `i`.
fn number(b: &[u8], mut i: usize) -> Result<usize, String> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(c) if c.is_ascii_digit() => i = digits(b, i),
        _ => return Err(expected(b, i, "a digit")),
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return Err(expected(b, end, "a digit after '.'"));
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return Err(expected(b, end, "a digit in the exponent"));
        }
        i = end;
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::is_object;

    #[test]
    fn what_json_parse_accepts() {
        for ok in [
            "{}",
            " {\"a\" : [1, -0.5e+3, true, false, null, \"x\\u00e9\\n\", {}] }\r\n",
            r#"{"lone":"\ud800","big":1e999,"neg":-1E-999}"#,
            r#"{"a":{"b":[[],[{}]]},"c":"é ☃"}"#,
        ] {
            assert_eq!(is_object(ok), Ok(true), "{ok}");
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(is_object(&deep), Ok(true));
        for other in ["[]", "1", "\"x\"", "null", " true "] {
            assert_eq!(is_object(other), Ok(false), "{other}");
        }
    }

    #[test]
    fn what_json_parse_refuses() {
        for bad in [
            "",
            " ",
            "{",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{'a':1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":+1}",
            "{\"a\":NaN}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"tab\there\"}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":tru}",
            "{} {}",
            "{}x",
            "{\"a\":1]",
            "[1}",
            "\u{feff}{}",
        ] {
            assert!(is_object(bad).is_err(), "accepted {bad:?}");
        }
        let msg = is_object("{\"a\":1,}").unwrap_err();
        assert!(msg.contains("byte 7"), "{msg}");
        let unclosed = format!("{{\"a\":{}", "[".repeat(1000));
        assert!(is_object(&unclosed).is_err());
    }
}
