//! The messages Node's `JSON.parse` (V8) and Express' JSON body parser give
//! for a body that is not valid JSON, so that the simulator's 503 answers
//! read like the supervisor's. Written from V8's documented error templates:
//! a syntax check only, the value itself is parsed by serde.

/// Longest context V8 quotes on each side of an unexpected character.
const CONTEXT: usize = 10;

/// `JSON.parse(text)`'s error message, or `None` when V8 would accept it.
pub fn v8_parse_error(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = Parser { s: &chars, i: 0 };
    match p.document() {
        Ok(()) => None,
        Err(e) => Some(p.message(e, text)),
    }
}

/// The message of Express' JSON parser (strict mode) for a request body.
pub fn body_parser_error(text: &str) -> Option<String> {
    let first = text
        .chars()
        .find(|c| !matches!(c, ' ' | '\t' | '\n' | '\r'));
    if first != Some('{') && first != Some('[') {
        // Strict mode: the body is re-parsed with every character from the
        // first one on replaced by '#', and the runs of '#' in the message
        // are put back from the body.
        let Some(first) = first else {
            return Some("Unexpected end of JSON input".to_string());
        };
        let idx = text.find(first).unwrap_or(0);
        let prefix = &text[..idx];
        let rest = text[idx..].chars().count();
        let partial = format!("{prefix}{}", "#".repeat(rest));
        let msg = v8_parse_error(&partial).unwrap_or_default();
        let tail: Vec<char> = text[idx..].chars().collect();
        let mut out = String::new();
        let mut run = 0usize;
        for c in msg.chars().chain(std::iter::once('\0')) {
            if c == '#' {
                run += 1;
                continue;
            }
            if run > 0 {
                out.extend(tail.iter().take(run));
                run = 0;
            }
            if c != '\0' {
                out.push(c);
            }
        }
        return Some(out);
    }
    v8_parse_error(text)
}

enum Err {
    /// An unexpected character (or the end) where a value or token was due,
    /// without a more specific message.
    Unexpected,
    /// "Unexpected number in JSON at position N".
    Number,
    /// A message template with the position appended.
    At(&'static str),
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(' ' | '\t' | '\n' | '\r')) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn document(&mut self) -> Result<(), Err> {
        self.value()?;
        if self.peek().is_some() {
            return Err(Err::At("Unexpected non-whitespace character after JSON"));
        }
        Ok(())
    }

    fn value(&mut self) -> Result<(), Err> {
        match self.peek() {
            Some('{') => self.object(),
            Some('[') => self.array(),
            Some('"') => self.string(),
            Some('-' | '0'..='9') => self.number(),
            Some('t') => self.literal("true"),
            Some('f') => self.literal("false"),
            Some('n') => self.literal("null"),
            _ => Err(Err::Unexpected),
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), Err> {
        for w in word.chars() {
            if self.s.get(self.i) != Some(&w) {
                return Err(Err::Unexpected);
            }
            self.i += 1;
        }
        Ok(())
    }

    fn expect(&mut self, c: char, msg: &'static str) -> Result<(), Err> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Err::At(msg))
        }
    }

    fn object(&mut self) -> Result<(), Err> {
        self.i += 1;
        if self.peek() == Some('}') {
            self.i += 1;
            return Ok(());
        }
        if self.peek() != Some('"') {
            return Err(Err::At("Expected property name or '}'"));
        }
        loop {
            self.string()?;
            self.expect(':', "Expected ':' after property name")?;
            self.value()?;
            match self.peek() {
                Some(',') => {
                    self.i += 1;
                    if self.peek() != Some('"') {
                        return Err(Err::At("Expected double-quoted property name"));
                    }
                }
                _ => return self.expect('}', "Expected ',' or '}' after property value"),
            }
        }
    }

    fn array(&mut self) -> Result<(), Err> {
        self.i += 1;
        if self.peek() == Some(']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.value()?;
            match self.peek() {
                Some(',') => self.i += 1,
                _ => return self.expect(']', "Expected ',' or ']' after array element"),
            }
        }
    }

    fn string(&mut self) -> Result<(), Err> {
        self.i += 1;
        loop {
            match self.s.get(self.i).copied() {
                None => return Err(Err::At("Unterminated string in JSON")),
                Some('"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some('\\') => {
                    self.i += 1;
                    match self.s.get(self.i).copied() {
                        Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => self.i += 1,
                        Some('u') => {
                            for k in 1..=4 {
                                if !self
                                    .s
                                    .get(self.i + k)
                                    .is_some_and(|c| c.is_ascii_hexdigit())
                                {
                                    self.i += k;
                                    return Err(Err::At("Bad Unicode escape"));
                                }
                            }
                            self.i += 5;
                        }
                        None => return Err(Err::At("Unterminated string in JSON")),
                        Some(_) => return Err(Err::At("Bad escaped character")),
                    }
                }
                Some(c) if (c as u32) < 0x20 => {
                    return Err(Err::At("Bad control character in string literal"))
                }
                Some(_) => self.i += 1,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), Err> {
        if self.s.get(self.i) == Some(&'-') {
            self.i += 1;
        }
        match self.s.get(self.i).copied() {
            Some('0') => {
                self.i += 1;
                if self.s.get(self.i).is_some_and(|c| c.is_ascii_digit()) {
                    return Err(Err::Number);
                }
            }
            Some('1'..='9') => {
                self.digits();
            }
            _ => return Err(Err::At("No number after minus sign in JSON")),
        }
        if self.s.get(self.i) == Some(&'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Err::At("Unterminated fractional number in JSON"));
            }
        }
        if matches!(self.s.get(self.i), Some('e' | 'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some('+' | '-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Err::At("Exponent part is missing a number in JSON"));
            }
        }
        Ok(())
    }

    /// Position in UTF-16 code units, as JavaScript counts.
    fn pos(&self) -> usize {
        self.s[..self.i.min(self.s.len())]
            .iter()
            .map(|c| c.len_utf16())
            .sum()
    }

    fn message(&self, e: Err, text: &str) -> String {
        let pos = self.pos();
        match e {
            Err::At(m) if m.ends_with(" JSON") => format!("{m} at position {pos}"),
            Err::At(m) => format!("{m} in JSON at position {pos}"),
            Err::Number => format!("Unexpected number in JSON at position {pos}"),
            Err::Unexpected => {
                let Some(&c) = self.s.get(self.i) else {
                    return "Unexpected end of JSON input".to_string();
                };
                if c == '"' {
                    return format!("Unexpected string in JSON at position {pos}");
                }
                if matches!(text, "NaN" | "Infinity" | "undefined" | "[object Object]") {
                    return format!("\"{text}\" is not valid JSON");
                }
                let n = self.s.len();
                let sub = |a: usize, b: usize| -> String { self.s[a..b.min(n)].iter().collect() };
                let i = self.i;
                if n <= CONTEXT * 2 + 1 {
                    format!("Unexpected token '{c}', \"{text}\" is not valid JSON")
                } else if i < CONTEXT {
                    format!(
                        "Unexpected token '{c}', \"{}\"... is not valid JSON",
                        sub(0, i + CONTEXT)
                    )
                } else if i < n - CONTEXT {
                    format!(
                        "Unexpected token '{c}', ...\"{}\"... is not valid JSON",
                        sub(i - CONTEXT, i + CONTEXT)
                    )
                } else {
                    format!(
                        "Unexpected token '{c}', ...\"{}\" is not valid JSON",
                        sub(i - CONTEXT, n)
                    )
                }
            }
        }
    }
}
