//! Compiled value matchers. A value in routes.toml is a glob (`prod-*`), or a regex when it
//! starts with `~` (`~^db-(primary|replica)$`). All the patterns of one field, across every
//! route, are compiled into one [`FieldIndex`] so that a notification is matched against a
//! field once, not once per route: that keeps 1,000 routes in microseconds.

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::RegexSet;

/// Why a pattern does not compile. The Display text is what `check` prints.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PatternError {
    #[error("bad regex {text:?}: {source}")]
    Regex { text: String, source: regex::Error },
    #[error("bad glob {text:?}: {kind}")]
    Glob { text: String, kind: globset::ErrorKind },
    /// The combined matcher of a field would not build (a regex set over its size limit).
    #[error("cannot compile the patterns of one field together: {0}")]
    Combined(String),
}

/// One value from a route list, validated.
#[derive(Debug, Clone)]
pub enum Pattern {
    Glob(String),
    Regex(String),
}

impl Pattern {
    pub fn compile(text: &str) -> Result<Pattern, PatternError> {
        if let Some(re) = text.strip_prefix('~') {
            regex::Regex::new(re).map_err(|source| PatternError::Regex { text: re.to_string(), source })?;
            Ok(Pattern::Regex(re.to_string()))
        } else {
            Glob::new(text).map_err(|e| PatternError::Glob { text: text.to_string(), kind: e.kind().clone() })?;
            Ok(Pattern::Glob(text.to_string()))
        }
    }

    /// The value when it is a plain literal (no glob metacharacters), for validation.
    pub fn literal(&self) -> Option<&str> {
        match self {
            Pattern::Glob(g) if !g.contains(['*', '?', '[', '{', '\\']) => Some(g),
            _ => None,
        }
    }
}

/// The `field = [...]` and `not_field = [...]` lists of one route.
#[derive(Debug, Clone)]
pub struct FieldPatterns {
    pub field: super::Field,
    pub any: Vec<Pattern>,
    pub none: Vec<Pattern>,
}

/// Trait-free helper so config validation can compare literal lists.
pub trait Literals {
    fn literals(&self) -> Vec<&str>;
}

impl Literals for Vec<Pattern> {
    fn literals(&self) -> Vec<&str> {
        self.iter().filter_map(Pattern::literal).collect()
    }
}

/// Every pattern used on one field, compiled together. Pattern ids are positions in the
/// order they were added.
#[derive(Debug)]
pub struct FieldIndex {
    globs: GlobSet,
    glob_ids: Vec<usize>,
    regexes: RegexSet,
    regex_ids: Vec<usize>,
    len: usize,
}

pub struct FieldIndexBuilder {
    globs: GlobSetBuilder,
    glob_ids: Vec<usize>,
    regexes: Vec<String>,
    regex_ids: Vec<usize>,
    len: usize,
}

impl Default for FieldIndexBuilder {
    fn default() -> Self {
        FieldIndexBuilder {
            globs: GlobSetBuilder::new(),
            glob_ids: Vec::new(),
            regexes: Vec::new(),
            regex_ids: Vec::new(),
            len: 0,
        }
    }
}

impl FieldIndexBuilder {
    /// Adds a pattern and returns its id.
    pub fn add(&mut self, p: &Pattern) -> Result<usize, PatternError> {
        let id = self.len;
        match p {
            Pattern::Glob(g) => {
                self.globs
                    .add(Glob::new(g).map_err(|e| PatternError::Glob { text: g.clone(), kind: e.kind().clone() })?);
                self.glob_ids.push(id);
            }
            Pattern::Regex(r) => {
                self.regexes.push(r.clone());
                self.regex_ids.push(id);
            }
        }
        self.len += 1;
        Ok(id)
    }

    pub fn build(self) -> Result<FieldIndex, PatternError> {
        Ok(FieldIndex {
            globs: self.globs.build().map_err(|e| PatternError::Combined(e.to_string()))?,
            glob_ids: self.glob_ids,
            regexes: RegexSet::new(&self.regexes).map_err(|e| PatternError::Combined(e.to_string()))?,
            regex_ids: self.regex_ids,
            len: self.len,
        })
    }
}

impl FieldIndex {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Which pattern ids match `value`, as a bitmap indexed by id.
    pub fn matches(&self, value: &str, scratch: &mut Vec<usize>, out: &mut Vec<bool>) {
        out.clear();
        out.resize(self.len, false);
        scratch.clear();
        self.globs.matches_into(value, scratch);
        for &i in scratch.iter() {
            out[self.glob_ids[i]] = true;
        }
        if !self.regex_ids.is_empty() {
            for i in self.regexes.matches(value).iter() {
                out[self.regex_ids[i]] = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_regexes_share_one_index() {
        let mut b = FieldIndexBuilder::default();
        let a = b.add(&Pattern::compile("prod-*").unwrap()).unwrap();
        let r = b.add(&Pattern::compile("~^db-(a|b)$").unwrap()).unwrap();
        let l = b.add(&Pattern::compile("exact").unwrap()).unwrap();
        let idx = b.build().unwrap();
        let (mut s, mut out) = (Vec::new(), Vec::new());
        idx.matches("prod-api", &mut s, &mut out);
        assert!(out[a] && !out[r] && !out[l]);
        idx.matches("db-b", &mut s, &mut out);
        assert!(!out[a] && out[r] && !out[l]);
        idx.matches("db-c", &mut s, &mut out);
        assert!(out.iter().all(|m| !m));
        idx.matches("exact", &mut s, &mut out);
        assert!(out[l]);
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(Pattern::compile("~(unclosed").is_err());
        assert!(Pattern::compile("a[").is_err());
        assert_eq!(Pattern::compile("ALARM").unwrap().literal(), Some("ALARM"));
        assert_eq!(Pattern::compile("prod-*").unwrap().literal(), None);
    }
}
