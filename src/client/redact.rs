//! The API key kept out of every message: plain and percent-encoded.

use super::request::percent_encode;

/// Replace `key` (plain, or percent-encoded with upper- or lower-case hex)
/// in `text` by `<api key>`.
pub fn scrub_key(text: &str, key: &str) -> String {
    if key.is_empty() {
        return text.to_string();
    }
    let mut out = text.replace(key, "<api key>");
    let encoded = percent_encode(key);
    if encoded != key {
        out = out.replace(&encoded, "<api key>");
        // Only the hex digits after each `%` change case.
        let mut lower = String::with_capacity(encoded.len());
        let mut hex_left = 0;
        for c in encoded.chars() {
            if hex_left > 0 {
                lower.push(c.to_ascii_lowercase());
                hex_left -= 1;
            } else {
                hex_left = if c == '%' { 2 } else { 0 };
                lower.push(c);
            }
        }
        if lower != encoded {
            out = out.replace(&lower, "<api key>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_and_scrubbing() {
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(scrub_key("x k+y x k%2By", "k+y"), "x <api key> x <api key>");
    }
}
