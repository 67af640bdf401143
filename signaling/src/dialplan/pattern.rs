//! Dialplan patterns: exact numbers, prefixes (`1*`), the catch-all (`*`)
//! and digit maps in the Asterisk/SIP-phone tradition:
//!
//! | token | matches |
//! |---|---|
//! | `X` | one digit 0-9 |
//! | `N` | one digit 2-9 |
//! | `Z` | one digit 1-9 |
//! | `[1-5]`, `[135]`, `[1-37-9]` | one character from the set |
//! | `.` | one or more characters (only at the end) |
//! | `*` | zero or more characters (only at the end); alone, the catch-all |
//! | anything else | itself |
//!
//! `*`, `#` and `+` are literal inside a pattern (a trailing `*` is the
//! prefix wildcard); other characters match case-insensitively.

use std::fmt;

/// Why a pattern was refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty.
    #[error("empty pattern")]
    Empty,
    /// A `[` has no matching `]`.
    #[error("unclosed `[` at position {0}")]
    UnclosedSet(usize),
    /// A character set is empty or a range runs backwards.
    #[error("bad character set `[{0}]`")]
    BadSet(String),
    /// `.` or a wildcard `*` appears before the end.
    #[error("`{0}` is only allowed at the end of a pattern")]
    WildcardNotAtEnd(char),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(char),
    Set(Vec<(char, char)>),
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Literal(l) => l.eq_ignore_ascii_case(&c),
            Token::Set(ranges) => ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    /// The pattern ends: the input must end too.
    Exact,
    /// `.`: one or more further characters.
    OneOrMore,
    /// `*`: zero or more further characters.
    Any,
}

/// A compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
    tail: Tail,
}

/// How specific a match is; larger is more specific. Among routes of equal
/// priority the most specific matching pattern wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    /// An exact end beats `.`, which beats `*`.
    tail: u8,
    /// Then more literal characters beat fewer.
    literals: usize,
    /// Then more positions (fixed length) beat fewer.
    positions: usize,
    /// Then narrower sets beat wider ones (negated total set width).
    narrowness: i64,
}

impl Pattern {
    /// Compiles a pattern.
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        let source = source.trim();
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        let chars: Vec<char> = source.chars().collect();
        let mut tokens = Vec::new();
        let mut tail = Tail::Exact;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let last = i + 1 == chars.len();
            match c {
                'X' | 'x' => tokens.push(Token::Set(vec![('0', '9')])),
                'N' | 'n' => tokens.push(Token::Set(vec![('2', '9')])),
                'Z' | 'z' => tokens.push(Token::Set(vec![('1', '9')])),
                '.' if last => tail = Tail::OneOrMore,
                '.' => return Err(PatternError::WildcardNotAtEnd('.')),
                '*' if last => tail = Tail::Any,
                '[' => {
                    let close = chars[i..]
                        .iter()
                        .position(|&c| c == ']')
                        .map(|p| p + i)
                        .ok_or(PatternError::UnclosedSet(i))?;
                    let body: String = chars[i + 1..close].iter().collect();
                    tokens.push(Token::Set(parse_set(&body)?));
                    i = close;
                }
                other => tokens.push(Token::Literal(other)),
            }
            i += 1;
        }
        Ok(Pattern {
            source: source.to_owned(),
            tokens,
            tail,
        })
    }

    /// Whether `input` matches the whole pattern.
    pub fn matches(&self, input: &str) -> bool {
        let chars: Vec<char> = input.chars().collect();
        if chars.len() < self.tokens.len() {
            return false;
        }
        if !self.tokens.iter().zip(&chars).all(|(t, &c)| t.matches(c)) {
            return false;
        }
        let rest = chars.len() - self.tokens.len();
        match self.tail {
            Tail::Exact => rest == 0,
            Tail::OneOrMore => rest >= 1,
            Tail::Any => true,
        }
    }

    /// The pattern's specificity, for choosing among equal priorities.
    pub fn specificity(&self) -> Specificity {
        let literals = self
            .tokens
            .iter()
            .filter(|t| matches!(t, Token::Literal(_)))
            .count();
        let width: i64 = self
            .tokens
            .iter()
            .map(|t| match t {
                Token::Literal(_) => 1,
                Token::Set(ranges) => ranges
                    .iter()
                    .map(|&(lo, hi)| i64::from(u32::from(hi) - u32::from(lo) + 1))
                    .sum(),
            })
            .sum();
        let tail = match self.tail {
            Tail::Any => 0,
            Tail::OneOrMore => 1,
            Tail::Exact => 2,
        };
        Specificity {
            tail,
            literals,
            positions: self.tokens.len(),
            narrowness: -width,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn parse_set(body: &str) -> Result<Vec<(char, char)>, PatternError> {
    let chars: Vec<char> = body.chars().collect();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i + 1] == '-' {
            let (lo, hi) = (chars[i], chars[i + 2]);
            if lo > hi {
                return Err(PatternError::BadSet(body.to_owned()));
            }
            ranges.push((lo, hi));
            i += 3;
        } else {
            ranges.push((chars[i], chars[i]));
            i += 1;
        }
    }
    if ranges.is_empty() {
        return Err(PatternError::BadSet(body.to_owned()));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).expect("valid pattern")
    }

    #[test]
    fn exact_prefix_and_catch_all() {
        assert!(p("9000").matches("9000"));
        assert!(!p("9000").matches("90001"));
        assert!(p("1*").matches("1") && p("1*").matches("1234"));
        assert!(!p("1*").matches("2000"));
        assert!(p("*").matches("") && p("*").matches("anything"));
        assert!(
            p("alice").matches("Alice"),
            "letters compare case-insensitively"
        );
    }

    #[test]
    fn digit_maps() {
        assert!(p("1XXX").matches("1000") && p("1XXX").matches("1999"));
        assert!(
            !p("1XXX").matches("100") && !p("1XXX").matches("10000") && !p("1XXX").matches("1a00")
        );
        assert!(p("NXX").matches("200") && !p("NXX").matches("100"));
        assert!(p("Z").matches("1") && !p("Z").matches("0"));
        assert!(p("[1-5]X").matches("31") && !p("[1-5]X").matches("61"));
        assert!(p("[135]").matches("3") && !p("[135]").matches("2"));
        assert!(p("[1-37-9]").matches("8") && !p("[1-37-9]").matches("5"));
        assert!(p("9.").matches("91") && !p("9.").matches("9"));
        assert!(p("+1X.").matches("+155"), "+ is literal");
        assert!(
            p("*9*").matches("*9*123") && !p("*9*").matches("x9"),
            "leading * is literal"
        );
    }

    #[test]
    fn bad_patterns_are_named() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("1[23"), Err(PatternError::UnclosedSet(1)));
        assert_eq!(
            Pattern::parse("[9-1]"),
            Err(PatternError::BadSet("9-1".into()))
        );
        assert_eq!(
            Pattern::parse("[]"),
            Err(PatternError::BadSet(String::new()))
        );
        assert_eq!(
            Pattern::parse("1.2"),
            Err(PatternError::WildcardNotAtEnd('.'))
        );
    }

    #[test]
    fn specificity_orders_exact_then_literals_then_narrow() {
        let order = ["*", "1*", "1.", "1XXX", "1[0-4]XX", "10XX", "1000"];
        let specs: Vec<Specificity> = order.iter().map(|s| p(s).specificity()).collect();
        for pair in specs.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?} must increase along {order:?}");
        }
    }
}
