//! Series selectors in Prometheus matcher syntax: `{service="checkout",pid!="1",comm=~"py.*"}`.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

/// A series' labels.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub enum MatchOp {
    Equal(String),
    NotEqual(String),
    Regex(Regex),
    NotRegex(Regex),
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
}

impl Matcher {
    /// A missing label matches as the empty string, as in Prometheus.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.label).map_or("", String::as_str);
        match &self.op {
            MatchOp::Equal(v) => value == v,
            MatchOp::NotEqual(v) => value != v,
            MatchOp::Regex(re) => re.is_match(value),
            MatchOp::NotRegex(re) => !re.is_match(value),
        }
    }
}

/// All matchers must hold. An empty selector matches every series.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub matchers: Vec<Matcher>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {}", self.message, self.position + 1)
    }
}

impl std::error::Error for SelectorError {}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }

    /// Takes out the matchers on `labels`, for labels that are not series labels (`task`).
    pub fn take_labels(&mut self, labels: &[&str]) -> Selector {
        let (taken, kept) =
            std::mem::take(&mut self.matchers).into_iter().partition(|m| labels.contains(&m.label.as_str()));
        self.matchers = kept;
        Selector { matchers: taken }
    }

    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut p = Parser { s: text.as_bytes(), i: 0 };
        p.skip_ws();
        if p.i == p.s.len() {
            return Ok(Selector::default());
        }
        p.expect(b'{')?;
        let mut matchers = Vec::new();
        loop {
            p.skip_ws();
            if p.eat(b'}') {
                break;
            }
            let label = p.label()?;
            p.skip_ws();
            let op = p.op()?;
            p.skip_ws();
            let value = p.string()?;
            let op = match op {
                "=" => MatchOp::Equal(value),
                "!=" => MatchOp::NotEqual(value),
                "=~" | "!~" => {
                    let re = Regex::new(&format!("^(?:{value})$"))
                        .map_err(|e| SelectorError { position: p.i, message: format!("invalid regex: {e}") })?;
                    if op == "=~" {
                        MatchOp::Regex(re)
                    } else {
                        MatchOp::NotRegex(re)
                    }
                }
                _ => unreachable!("op() returns only known operators"),
            };
            matchers.push(Matcher { label, op });
            p.skip_ws();
            if p.eat(b',') {
                continue;
            }
            p.skip_ws();
            p.expect(b'}')?;
            break;
        }
        p.skip_ws();
        if p.i != p.s.len() {
            return Err(p.error("unexpected text after the closing '}'"));
        }
        Ok(Selector { matchers })
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> SelectorError {
        SelectorError { position: self.i, message: message.to_string() }
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), SelectorError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected '{}'", c as char)))
        }
    }

    fn label(&mut self) -> Result<String, SelectorError> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_') {
            self.i += 1;
        }
        let name = &self.s[start..self.i];
        if name.is_empty() || name[0].is_ascii_digit() {
            return Err(SelectorError { position: start, message: "expected a label name".into() });
        }
        Ok(String::from_utf8_lossy(name).into_owned())
    }

    fn op(&mut self) -> Result<&'static str, SelectorError> {
        for op in ["=~", "!~", "!=", "="] {
            if self.s[self.i..].starts_with(op.as_bytes()) {
                self.i += op.len();
                return Ok(op);
            }
        }
        Err(self.error("expected one of =, !=, =~, !~"))
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        let quote = match self.s.get(self.i) {
            Some(&q @ (b'"' | b'\'')) => q,
            _ => return Err(self.error("expected a quoted value")),
        };
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.i) {
                None => return Err(self.error("unterminated string")),
                Some(&c) if c == quote => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    let escaped = *self.s.get(self.i + 1).ok_or_else(|| self.error("unterminated escape"))?;
                    out.push(match escaped {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                    self.i += 2;
                }
                Some(&c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.error("value is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_and_matches() {
        let s = Selector::parse(r#"{service="checkout", pid!="1",comm=~"py.*"}"#).expect("valid");
        assert_eq!(s.matchers.len(), 3);
        assert!(s.matches(&labels(&[("service", "checkout"), ("pid", "7"), ("comm", "python3.12")])));
        assert!(!s.matches(&labels(&[("service", "checkout"), ("pid", "1"), ("comm", "python3.12")])));
        assert!(!s.matches(&labels(&[("service", "checkout"), ("pid", "7"), ("comm", "xpython")])), "anchored");
        assert!(Selector::parse("").expect("empty").matches(&labels(&[])));
        assert!(Selector::parse("{}").expect("braces").matches(&labels(&[("a", "b")])));
        let s = Selector::parse(r#"{host!~"a|b",x=""}"#).expect("valid");
        assert!(s.matches(&labels(&[("host", "c")])), "missing label is empty");
    }

    #[test]
    fn escapes() {
        let s = Selector::parse(r#"{a="x\"y"}"#).expect("valid");
        assert!(s.matches(&labels(&[("a", "x\"y")])));
    }

    #[test]
    fn errors_point_at_the_problem() {
        for bad in [
            "service=\"x\"",
            "{service}",
            "{service=x}",
            "{1a=\"x\"}",
            "{a=\"x\"",
            "{a=~\"(\"}",
            "{a=\"x\"} y",
            "{a==\"x\"}",
        ] {
            let e = Selector::parse(bad).expect_err(bad);
            assert!(!e.message.is_empty(), "{bad}");
        }
        assert_eq!(Selector::parse("{a=\"x\" b=\"y\"}").expect_err("missing comma").position, 7);
    }

    #[test]
    fn take_labels_splits_the_selector() {
        let mut s = Selector::parse(r#"{task="t1",service="a",task_id!="3"}"#).expect("valid");
        let taken = s.take_labels(&["task", "task_id"]);
        assert_eq!(taken.matchers.len(), 2);
        assert_eq!(s.matchers.len(), 1);
        assert_eq!(s.matchers[0].label, "service");
    }
}
