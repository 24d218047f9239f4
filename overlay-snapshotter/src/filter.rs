//! containerd's filter syntax (`github.com/containerd/containerd/filters`), as `Walk` (the
//! `List` RPC) receives it:
//!
//! ```text
//! selectors := selector ("," selector)*        all must match
//! selector  := fieldpath (operator value)?     no operator: the field is present
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="             ~= is a regular expression
//! value     := quoted | [^\s,]+
//! quoted    := "..." (Go escapes); /.../ and |...| too after ~=
//! ```
//!
//! Several filter strings match when any of them does. The fields of a snapshot are `kind`
//! (`active`, `view`, `committed`), `name`, `parent` and `labels.KEY`.

use std::collections::BTreeMap;

use regex::Regex;

/// A parse error, in containerd's words (`[before >|here|< after]: what`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filters: parse error: {0}")]
pub struct FilterError(String);

/// What a filter looks at: one snapshot's fields.
pub trait Fields {
    /// The value of `path` and whether it is present.
    fn field(&self, path: &[String]) -> Option<String>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Present,
    Equal,
    NotEqual,
    Matches,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
    value: String,
    /// `None` for `~=` with an invalid expression: it matches nothing, as in containerd.
    re: Option<Regex>,
}

impl Selector {
    fn matches(&self, f: &dyn Fields) -> bool {
        let v = f.field(&self.path);
        match self.op {
            Op::Present => v.is_some(),
            Op::Equal => v.as_deref() == Some(self.value.as_str()),
            Op::NotEqual => v.as_deref().unwrap_or("") != self.value,
            Op::Matches => self
                .re
                .as_ref()
                .is_some_and(|re| re.is_match(v.as_deref().unwrap_or(""))),
        }
    }
}

/// Parsed filters: any of the strings, each a conjunction of selectors.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

impl Filter {
    /// Parse the filter strings of a request; no strings (or one empty string) match all.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter, FilterError> {
        let mut any = Vec::new();
        for s in filters {
            let s = s.as_ref();
            if s.is_empty() {
                // containerd: an empty filter is `Always`.
                any.push(Vec::new());
                continue;
            }
            any.push(Parser::new(s).selectors()?);
        }
        Ok(Filter { any })
    }

    /// Whether `f` matches.
    pub fn matches(&self, f: &dyn Fields) -> bool {
        self.any.is_empty() || self.any.iter().any(|all| all.iter().all(|s| s.matches(f)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Eof,
    Quoted(String),
    Value(String),
    Field(String),
    Sep(char),
    Operator(String),
    Illegal(String),
    Other(char),
}

struct Scanner {
    input: Vec<char>,
    /// Start of the current rune.
    pos: usize,
    /// After the current rune.
    ppos: usize,
    value: bool,
    err: Option<String>,
}

const EOF: Option<char> = None;

impl Scanner {
    fn next(&mut self) -> Option<char> {
        if self.ppos >= self.input.len() {
            self.pos = self.input.len();
            return EOF;
        }
        self.pos = self.ppos;
        let c = self.input[self.ppos];
        self.ppos += 1;
        if c == '\0' {
            self.error("unexpected null");
        }
        Some(c)
    }

    fn peek(&mut self) -> Option<char> {
        let (p, pp) = (self.pos, self.ppos);
        let c = self.next();
        self.pos = p;
        self.ppos = pp;
        c
    }

    fn error(&mut self, m: &str) {
        if self.err.is_none() {
            self.err = Some(m.to_string());
        }
    }

    fn text(&self, from: usize) -> String {
        self.input[from..self.ppos].iter().collect()
    }

    fn scan(&mut self) -> (usize, Tok) {
        let mut ch = self.next();
        let mut pos = self.pos;
        loop {
            let Some(c) = ch else {
                return (pos, Tok::Eof);
            };
            if c == '\0' {
                return (pos, Tok::Illegal(self.err.clone().unwrap_or_default()));
            }
            if matches!(c, '/' | '|' | '"') {
                if !self.scan_quoted(c) {
                    return (pos, Tok::Illegal(self.err.clone().unwrap_or_default()));
                }
                return (pos, Tok::Quoted(self.text(pos)));
            }
            if matches!(c, ',' | '.') {
                self.value = false;
                return (pos, Tok::Sep(c));
            }
            if matches!(c, '=' | '!' | '~') {
                while matches!(self.peek(), Some('=' | '!' | '~')) {
                    self.next();
                }
                self.value = true;
                return (pos, Tok::Operator(self.text(pos)));
            }
            if c.is_whitespace() {
                ch = self.next();
                pos = self.pos;
                continue;
            }
            if self.value {
                while self.peek().is_some_and(is_value_char) {
                    self.next();
                }
                self.value = false;
                return (pos, Tok::Value(self.text(pos)));
            }
            if is_field_char(c) {
                while self.peek().is_some_and(is_field_char) {
                    self.next();
                }
                return (pos, Tok::Field(self.text(pos)));
            }
            return (self.pos, Tok::Other(c));
        }
    }

    fn scan_quoted(&mut self, quote: char) -> bool {
        let mut ok = true;
        let mut ch = self.next();
        while ch != Some(quote) {
            match ch {
                None | Some('\n') => {
                    self.error("quoted literal not terminated");
                    return false;
                }
                Some('\\') => {
                    let (c, legal) = self.scan_escape(quote);
                    ch = c;
                    ok &= legal;
                }
                Some(_) => ch = self.next(),
            }
        }
        ok
    }

    fn scan_escape(&mut self, quote: char) -> (Option<char>, bool) {
        let ch = self.next();
        match ch {
            Some(c) if "abfnrtv\\".contains(c) || c == quote => (self.next(), true),
            Some(c @ '0'..='7') => self.scan_digits(Some(c), 8, 3),
            Some('x') => {
                let c = self.next();
                self.scan_digits(c, 16, 2)
            }
            Some('u') => {
                let c = self.next();
                self.scan_digits(c, 16, 4)
            }
            Some('U') => {
                let c = self.next();
                self.scan_digits(c, 16, 8)
            }
            c => {
                self.error("illegal escape sequence");
                (c, false)
            }
        }
    }

    fn scan_digits(&mut self, mut ch: Option<char>, base: u32, mut n: u32) -> (Option<char>, bool) {
        while n > 0 && ch.and_then(|c| c.to_digit(16)).is_some_and(|d| d < base) {
            ch = self.next();
            n -= 1;
        }
        if n > 0 {
            self.error("illegal numeric escape sequence");
            return (ch, false);
        }
        (ch, true)
    }
}

fn is_field_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

struct Parser {
    input: String,
    sc: Scanner,
}

impl Parser {
    fn new(s: &str) -> Parser {
        Parser {
            input: s.to_string(),
            sc: Scanner {
                input: s.chars().collect(),
                pos: 0,
                ppos: 0,
                value: false,
                err: None,
            },
        }
    }

    fn err(&self, pos: usize, msg: impl Into<String>) -> FilterError {
        let chars: Vec<char> = self.input.chars().collect();
        let msg = msg.into();
        if pos < chars.len() {
            let before: String = chars[..pos].iter().collect();
            let after: String = chars[pos + 1..].iter().collect();
            FilterError(format!("[{before} >|{}|< {after}]: {msg}", chars[pos]))
        } else {
            FilterError(format!("[{}]: {msg}", self.input))
        }
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, FilterError> {
        let mut v = vec![self.selector()?];
        loop {
            match self.sc.peek() {
                Some(',') => {
                    let (pos, t) = self.sc.scan();
                    if !matches!(t, Tok::Sep(_)) {
                        return Err(self.err(pos, "expected a separator"));
                    }
                    v.push(self.selector()?);
                }
                None => return Ok(v),
                Some(c) => return Err(self.err(self.sc.ppos, format!("unexpected input: {c}"))),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let path = self.fieldpath()?;
        if matches!(self.sc.peek(), None | Some(',') | Some('.')) {
            return Ok(Selector {
                path,
                op: Op::Present,
                value: String::new(),
                re: None,
            });
        }
        let (pos, t) = self.sc.scan();
        let op = match t {
            Tok::Operator(s) => match s.as_str() {
                "==" => Op::Equal,
                "!=" => Op::NotEqual,
                "~=" => Op::Matches,
                _ => return Err(self.err(pos, format!("unsupported operator {s:?}"))),
            },
            Tok::Illegal(m) => return Err(self.err(pos, m)),
            _ => return Err(self.err(pos, r#"expected an operator ("=="|"!="|"~=")"#)),
        };
        let (pos, t) = self.sc.scan();
        let value = match t {
            Tok::Value(s) | Tok::Field(s) => s,
            Tok::Quoted(s) => self.unquote(pos, &s, op == Op::Matches)?,
            Tok::Illegal(m) => return Err(self.err(pos, m)),
            Tok::Eof => return Err(FilterError("unexpected EOF".into())),
            _ => return Err(self.err(pos, "expected value or quoted")),
        };
        let re = if op == Op::Matches {
            match Regex::new(&value) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!("error compiling regexp {value:?}: {e}");
                    None
                }
            }
        } else {
            None
        };
        Ok(Selector {
            path,
            op,
            value,
            re,
        })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, FilterError> {
        let mut v = vec![self.field()?];
        while self.sc.peek() == Some('.') {
            let (pos, t) = self.sc.scan();
            if !matches!(t, Tok::Sep(_)) {
                return Err(self.err(pos, "expected a field separator (`.`)"));
            }
            v.push(self.field()?);
        }
        Ok(v)
    }

    fn field(&mut self) -> Result<String, FilterError> {
        let (pos, t) = self.sc.scan();
        match t {
            Tok::Field(s) => Ok(s),
            Tok::Quoted(s) => self.unquote(pos, &s, false),
            Tok::Illegal(m) => Err(self.err(pos, m)),
            _ => Err(self.err(pos, "expected field or quoted")),
        }
    }

    fn unquote(&self, pos: usize, s: &str, alt: bool) -> Result<String, FilterError> {
        if !alt && !s.starts_with('"') {
            return Err(self.err(pos, "invalid quote encountered"));
        }
        unquote(s).ok_or_else(|| self.err(pos, "unquoting failed: quote syntax error"))
    }
}

/// Go's `strconv.Unquote`, with `/` and `|` as further quote characters (containerd's
/// `filters.unquote`).
fn unquote(s: &str) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() < 2 {
        return None;
    }
    let q = chars[0];
    if chars[chars.len() - 1] != q {
        return None;
    }
    let body = &chars[1..chars.len() - 1];
    let mut out = String::new();
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c == q {
            return None;
        }
        if c != '\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *body.get(i + 1)?;
        i += 2;
        let hex = |n: usize, i: &mut usize| -> Option<u32> {
            let digits: String = body.get(*i..*i + n)?.iter().collect();
            *i += n;
            u32::from_str_radix(&digits, 16).ok()
        };
        match e {
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '\\' => out.push('\\'),
            'x' => out.push(char::from_u32(hex(2, &mut i)?)?),
            'u' => out.push(char::from_u32(hex(4, &mut i)?)?),
            'U' => out.push(char::from_u32(hex(8, &mut i)?)?),
            '0'..='7' => {
                let digits: String = std::iter::once(e)
                    .chain(body.get(i..i + 2)?.iter().copied())
                    .collect();
                i += 2;
                let v = u32::from_str_radix(&digits, 8).ok()?;
                if v > 255 {
                    return None;
                }
                out.push(char::from_u32(v)?);
            }
            '\'' | '"' | '|' | '/' if e == q => out.push(e),
            _ => return None,
        }
    }
    Some(out)
}

/// The fields of a snapshot for filtering, as containerd's `adaptSnapshot`.
pub struct SnapshotFields<'a> {
    /// `active`, `view` or `committed`.
    pub kind: &'a str,
    /// The key or name.
    pub name: &'a str,
    /// The parent's name (empty for none).
    pub parent: &'a str,
    /// Labels.
    pub labels: &'a BTreeMap<String, String>,
}

impl Fields for SnapshotFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first()?.as_str() {
            "kind" => Some(self.kind.to_string()),
            "name" => Some(self.name.to_string()),
            "parent" => Some(self.parent.to_string()),
            "labels" => {
                if self.labels.is_empty() {
                    return None;
                }
                self.labels.get(&path[1..].join(".")).cloned()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap<'a>(
        kind: &'a str,
        name: &'a str,
        parent: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> SnapshotFields<'a> {
        SnapshotFields {
            kind,
            name,
            parent,
            labels,
        }
    }

    #[test]
    fn containerd_walk_filters() {
        let gc: BTreeMap<String, String> = [(
            "containerd.io/gc.root".to_string(),
            "check-walk".to_string(),
        )]
        .into();
        let mut l2 = gc.clone();
        l2.insert("l".into(), "2".into());
        let a = snap("active", "a-wl", "p-wl", &l2);
        let p = snap("committed", "p", "", &gc);
        let f = |s: &[&str]| Filter::parse_all(s).unwrap();
        assert!(f(&[r#"labels."containerd.io/gc.root"==check-walk"#]).matches(&a));
        assert!(f(&[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#]).matches(&a));
        assert!(!f(&["kind==active"]).matches(&p));
        assert!(f(&["name==p", "name==a-np-wl"]).matches(&p));
        assert!(f(&["name==a-wl,labels.l"]).matches(&a));
        assert!(!f(&["name==a-wl,labels.l"]).matches(&p));
        assert!(f(&[r#"parent!="""#]).matches(&a));
        assert!(!f(&[r#"parent!="""#]).matches(&p));
        assert!(f(&["labels.l==2"]).matches(&a));
        assert!(f(&["name~=^a-"]).matches(&a));
        assert!(f(&["name~=/^a-w./"]).matches(&a));
        assert!(!f(&["name~=^a-"]).matches(&p));
        assert!(f(&[] as &[&str]).matches(&p));
        assert!(f(&[""]).matches(&p));
    }

    #[test]
    fn bad_filters_are_errors() {
        for s in [
            "kind==",
            "kind=>active",
            "\"unterminated",
            "name==a,",
            "labels.\"x",
        ] {
            assert!(Filter::parse_all(&[s]).is_err(), "{s} should not parse");
        }
    }

    #[test]
    fn unquote_handles_go_escapes() {
        assert_eq!(unquote(r#""a\"b\n\x41\101""#).as_deref(), Some("a\"b\nAA"));
        assert_eq!(unquote(r"/a\/b/").as_deref(), Some("a/b"));
        assert_eq!(unquote(r#""a\/b""#), None);
    }
}
