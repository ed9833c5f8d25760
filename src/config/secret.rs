//! Webhook URLs are credentials: whoever has one can post to the channel. [`Secret`] keeps
//! them out of every `Debug`/`Display`, so a log line or error cannot leak one by accident.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The only way to read the value; grep for it to audit every use.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a destination URL comes from, for messages that must name it without showing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(String),
    Literal,
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "env:{name}"),
            SecretSource::File(path) => write!(f, "file:{path}"),
            SecretSource::Literal => f.write_str("literal URL"),
        }
    }
}

/// Resolves `env:NAME`, `file:/path` or a literal URL.
pub fn resolve(spec: &str) -> (SecretSource, Result<Secret, String>) {
    if let Some(name) = spec.strip_prefix("env:") {
        let source = SecretSource::Env(name.to_string());
        let value = std::env::var(name)
            .map(|v| Secret::new(v.trim().to_string()))
            .map_err(|_| format!("environment variable {name} is not set"));
        (source, value)
    } else if let Some(path) = spec.strip_prefix("file:") {
        let source = SecretSource::File(path.to_string());
        let value = std::fs::read_to_string(path)
            .map(|v| Secret::new(v.trim().to_string()))
            .map_err(|e| format!("cannot read {path}: {e}"));
        (source, value)
    } else {
        (SecretSource::Literal, Ok(Secret::new(spec.trim().to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("https://hooks.example/T/B/xyz".into());
        assert_eq!(format!("{s}"), "[redacted]");
        assert!(!format!("{s:?}").contains("xyz"));
        assert_eq!(s.expose(), "https://hooks.example/T/B/xyz");
    }

    #[test]
    fn resolve_sources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook");
        std::fs::write(&path, "https://hooks.example/x\n").unwrap();
        let (src, v) = resolve(&format!("file:{}", path.display()));
        assert!(matches!(src, SecretSource::File(_)));
        assert_eq!(v.unwrap().expose(), "https://hooks.example/x");
        let (_, v) = resolve("env:WEBHOOK_RELAY_TEST_SURELY_UNSET_VAR");
        assert!(v.unwrap_err().contains("not set"));
        let (src, v) = resolve("https://literal.example/");
        assert_eq!(src, SecretSource::Literal);
        assert_eq!(v.unwrap().expose(), "https://literal.example/");
    }
}
