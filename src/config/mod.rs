//! routes.toml: the raw file shape, validation that reports every problem with its line and
//! column, and the validated [`Config`] the running code uses. Nothing downstream re-checks
//! a string from the file.

pub mod duration;
pub mod reload;
pub mod secret;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub use duration::{parse_duration, parse_rate, Rate};
pub use secret::{Secret, SecretSource};

use crate::route::severity::SeverityRules;
use crate::route::Router;

// ---------------------------------------------------------------------------------------
// The validated config.

/// `[sns]`: which topics may deliver, and how old a message may be.
#[derive(Debug, Clone)]
pub struct SnsConfig {
    topics: globset::GlobSet,
    pub max_age: Duration,
    pub auto_confirm: bool,
    pub confirm: ConfirmMode,
}

/// How an allowed topic's subscription is confirmed (`[sns] confirm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfirmMode {
    /// GET the SubscribeURL (no credentials needed; anyone with an UnsubscribeURL can
    /// then unsubscribe the endpoint).
    #[default]
    Url,
    /// The SNS `ConfirmSubscription` action with `AuthenticateOnUnsubscribe=true`,
    /// SigV4-signed: unsubscribing then needs AWS credentials.
    Api,
}

impl SnsConfig {
    pub fn topic_allowed(&self, topic_arn: &str) -> bool {
        self.topics.is_match(topic_arn)
    }
}

/// How a destination may be retried before its deliveries become dead letters.
#[derive(Debug, Clone, Copy)]
pub struct RetryBudget {
    pub max_attempts: u32,
    pub max_age: Duration,
    /// The longest `Retry-After` honoured: one answer must not stop a destination for days.
    pub max_retry_after: Duration,
}

/// A Slack incoming webhook and how to treat it.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    /// The incoming webhook's URL (empty for a Web API destination).
    pub url: Secret,
    /// Where the URL or the token comes from (`env:NAME`, a file, the routes file).
    pub source: SecretSource,
    /// Set for a Slack app destination (bot token and channel, the Web API).
    pub app: Option<AppTarget>,
    pub rate: Rate,
    pub burst: u32,
    pub fallback: Option<String>,
    pub mention_here: Vec<String>,
    pub mention_channel: Vec<String>,
    /// Alarm states (upper case) on which the mentions above fire.
    pub mention_states: Vec<String>,
    pub retry: RetryBudget,
}

/// A Slack app destination: where and how it posts through the Web API.
#[derive(Debug, Clone)]
pub struct AppTarget {
    pub token: Secret,
    /// A channel ID (`C0123456789`) or `#name`.
    pub channel: String,
    pub lifecycle: Lifecycle,
    /// After an alarm has been OK this long, its next ALARM starts a new thread.
    pub lifecycle_ttl: Duration,
}

/// What later state changes of an alarm do to its first post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Reply in its thread and update it to show the current state.
    ThreadAndUpdate,
    Thread,
    Update,
    /// Every state change is a new message.
    Off,
}

pub const DEFAULT_LIFECYCLE_TTL: Duration = Duration::from_secs(24 * 3600);

/// One validated routes.toml.
#[derive(Debug)]
pub struct Config {
    pub sns: SnsConfig,
    pub severity: SeverityRules,
    pub destinations: BTreeMap<String, Destination>,
    pub router: Router,
}

/// A problem found in the file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// Warnings are printed by `check` but do not fail it.
    pub warning: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.warning { "warning" } else { "error" };
        write!(f, "{}:{}: {kind}: {}", self.line, self.column, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{} problem(s) in routes file", .0.iter().filter(|p| !p.warning).count())]
    Invalid(Vec<Problem>),
}

/// Defaults suited to Slack's "about one message per second per webhook".
pub const DEFAULT_RATE: &str = "1/s";
pub const DEFAULT_BURST: u32 = 3;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 12;
pub const DEFAULT_MAX_RETRY_AGE: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

const STATES: [&str; 3] = ["ALARM", "OK", "INSUFFICIENT_DATA"];

impl Config {
    pub fn load(path: &Path) -> Result<(Config, Vec<Problem>), ConfigError> {
        Config::load_with(path, Secrets::Required)
    }

    pub fn load_with(path: &Path, secrets: Secrets) -> Result<(Config, Vec<Problem>), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.display().to_string(), error })?;
        Config::parse_with(&text, secrets)
    }

    /// Parses and validates; on success also returns the warnings.
    pub fn parse(text: &str) -> Result<(Config, Vec<Problem>), ConfigError> {
        Config::parse_with(text, Secrets::Required)
    }

    pub fn parse_with(text: &str, secrets: Secrets) -> Result<(Config, Vec<Problem>), ConfigError> {
        validate::parse(text, secrets)
    }
}

/// Whether destination URLs must resolve (`serve`, `check`) or may be missing (`route-test`,
/// which sends nothing and should run on a laptop without the production secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Required,
    Optional,
}
