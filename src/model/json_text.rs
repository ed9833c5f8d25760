//! Long JSON strings (an SNS `Message`, a stored envelope's message) read in one
//! allocation. serde_json unescapes a string with escapes through a scratch buffer that
//! starts empty for every document and doubles its way up to the string's size: about
//! nine allocations for a 1.5 KB CloudWatch alarm, which is JSON inside JSON and so full
//! of `\"`. serde_json has no public unescaping function, so the string is taken raw
//! (`RawValue`, borrowed from the input: already checked to be a well-formed literal) and
//! unescaped here into a `String` of the right size. A test holds it to serde_json's
//! reading for arbitrary strings and escapes.

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, Error};
use serde_json::value::RawValue;

/// A JSON string borrowed from the input when it has no escapes, else unescaped in one
/// allocation; never through serde_json's scratch buffer. (serde's own `Cow<str>` always
/// copies when it sits in an `Option`.)
#[derive(Debug)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'a> Text<'a> {
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Literal::deserialize(d).map(|l| Text(l.text))
    }
}

/// A [`Text`] that also keeps its literal as written (quotes and escapes included), so it can
/// be written into other JSON as it came instead of escaped again.
#[derive(Debug)]
pub struct Literal<'a> {
    pub text: Cow<'a, str>,
    pub raw: &'a str,
}

impl<'de: 'a, 'a> Deserialize<'de> for Literal<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?.get();
        let not_a_string = || D::Error::custom("expected a string");
        let inner = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')).ok_or_else(not_a_string)?;
        let text = if inner.contains('\\') {
            Cow::Owned(unescape(raw).ok_or_else(not_a_string)?)
        } else {
            Cow::Borrowed(inner)
        };
        Ok(Literal { text, raw })
    }
}

/// The text of a JSON string literal, quotes included. `None` when `raw` is not a string
/// literal or holds an escape serde_json would refuse (a lone surrogate).
pub fn unescape(raw: &str) -> Option<String> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    // A byte loop, not `find`: in JSON inside JSON an escape comes every few bytes, and a
    // search call per escape cost more than the scan (callgrind, BENCHMARKS.md).
    while let Some(i) = rest.bytes().position(|b| b == b'\\') {
        out.push_str(&rest[..i]);
        let esc = rest.as_bytes().get(i + 1)?;
        let mut used = 2;
        match esc {
            b'"' => out.push('"'),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'u' => {
                let hi = hex4(rest.get(i + 2..i + 6)?)?;
                used = 6;
                let c = match hi {
                    0xD800..=0xDBFF => {
                        // A leading surrogate must be followed by `\u` and a trailing one.
                        let lo =
                            rest.get(i + 6..i + 12).filter(|s| s.starts_with("\\u")).and_then(|s| hex4(&s[2..]))?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return None;
                        }
                        used = 12;
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                    }
                    _ => char::from_u32(hi)?,
                };
                out.push(c);
            }
            _ => return None,
        }
        rest = &rest[i + used..];
    }
    out.push_str(rest);
    Some(out)
}

fn hex4(s: &str) -> Option<u32> {
    if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// `deserialize_with` for a `String` field read from a borrowed JSON input (`from_slice`,
/// `from_str`; not `from_reader` or `from_value`): one allocation, or none when a
/// field's text is copied anyway.
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Text::deserialize(d).map(Text::into_owned)
}

/// `deserialize_with` for a [`super::Str`] field: inline when short, as [`string`] else.
pub fn compact<'de, D: Deserializer<'de>>(d: D) -> Result<super::Str, D::Error> {
    Text::deserialize(d).map(|t| super::Str::from(&*t.0))
}

/// `deserialize_with` for an `Option<Str>` field, as [`compact`] (with `default`).
pub fn opt_compact<'de, D: Deserializer<'de>>(d: D) -> Result<Option<super::Str>, D::Error> {
    Option::<Text>::deserialize(d).map(|t| t.map(|t| super::Str::from(&*t.0)))
}

/// `deserialize_with` for an `Option<String>` field, as [`string`] (with `default`).
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<Text>::deserialize(d).map(|t| t.map(Text::into_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde_reading(raw: &str) -> Option<String> {
        serde_json::from_str::<String>(raw).ok()
    }

    #[test]
    fn escapes_as_serde_json_reads_them() {
        for raw in [
            r#""""#,
            r#""plain""#,
            r#""a\"b\\c\/d\be\ff\ng\rh\ti""#,
            r#""\u00e9\u20AC\ud83d\ude80""#,
            r#""\u0000""#,
            r#""{\"AlarmName\":\"x\"}""#,
            r#""\ud83d""#,
            r#""\ude80""#,
            r#""\ud83d\u0041""#,
            r#""\ud83dx""#,
            r#""\x""#,
            r#""\u12""#,
            r#""\u12g4""#,
            r#""trailing\""#,
            "7",
            "null",
        ] {
            assert_eq!(unescape(raw), serde_reading(raw), "{raw}");
        }
    }

    #[test]
    fn text_borrows_plain_strings_and_refuses_other_types() {
        #[derive(serde::Deserialize)]
        struct Wire<'a> {
            #[serde(borrow)]
            a: Option<Text<'a>>,
        }
        let w: Wire = serde_json::from_str(r#"{"a": "plain"}"#).unwrap();
        assert!(matches!(w.a, Some(Text(Cow::Borrowed("plain")))));
        let w: Wire = serde_json::from_str(r#"{"a": "say \"hi\""}"#).unwrap();
        assert_eq!(w.a.unwrap().into_owned(), "say \"hi\"");
        assert!(serde_json::from_str::<Wire>(r#"{"a": null}"#).unwrap().a.is_none());
        assert!(serde_json::from_str::<Wire>(r#"{}"#).unwrap().a.is_none());
        for bad in [r#"{"a": 5}"#, r#"{"a": {"b": 1}}"#, r#"{"a": ["x"]}"#, r#"{"a": true}"#] {
            assert!(serde_json::from_str::<Wire>(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_string_round_trips(s in any::<String>()) {
            let raw = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(unescape(&raw), Some(s));
        }

        #[test]
        fn any_escape_soup_reads_as_serde_json_reads_it(
            parts in proptest::collection::vec(prop_oneof![
                "[a-z\u{e9}\u{1F680} ]{0,4}",
                Just("\\\"".to_string()), Just("\\\\".to_string()), Just("\\n".to_string()),
                Just("\\/".to_string()), Just("\\q".to_string()),
                "\\\\u[0-9a-fA-F]{4}",
                "\\\\u[dD][89abAB][0-9a-f]{2}",
                "\\\\u[dD][c-fC-F][0-9a-f]{2}",
            ], 0..12)
        ) {
            let raw = format!("\"{}\"", parts.concat());
            prop_assert_eq!(unescape(&raw), serde_reading(&raw), "{}", raw);
        }
    }
}
