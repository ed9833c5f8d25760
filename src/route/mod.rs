//! Routing: which destinations a notification goes to. Routes are evaluated in file order;
//! the first match stops evaluation unless it says `continue = true`; a destination reached
//! twice gets the notification once; nothing matched falls to `[default_route]`.

pub mod matcher;
pub mod severity;

use matcher::{FieldIndex, FieldIndexBuilder, FieldPatterns, PatternError};

use crate::model::{Envelope, Notification, Prepared};
use severity::SeverityRules;
use smallvec::SmallVec;

/// From envelope to decision, in one place for the door, `route-test` and replays: parse
/// the notification (and the alarm inside), classify its severity, route it. The door
/// stores the severity and destinations it decided with the message: that decision is the
/// record, so a message read back after a restart or a routes.toml change is delivered as
/// it was accepted.
pub fn decide<'r>(severity: &SeverityRules, router: &'r Router, envelope: Envelope) -> (Prepared, Decision<'r>) {
    let notification = Notification::from_envelope(envelope);
    let severity = severity.classify(&notification);
    let decision = router.route(&Facts::of(&notification, &severity));
    (Prepared { notification, severity }, decision)
}

/// The notification fields a route can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    AlarmName,
    Severity,
    State,
    Topic,
    Account,
    Region,
    /// An EventBridge event's `source` (`aws.guardduty`).
    Source,
    /// An EventBridge event's `detail-type` (`GuardDuty Finding`).
    DetailType,
}

impl Field {
    const ALL: [Field; 8] = [
        Field::AlarmName,
        Field::Severity,
        Field::State,
        Field::Topic,
        Field::Account,
        Field::Region,
        Field::Source,
        Field::DetailType,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Field::AlarmName => "alarm_name",
            Field::Severity => "severity",
            Field::State => "state",
            Field::Topic => "topic",
            Field::Account => "account",
            Field::Region => "region",
            Field::Source => "source",
            Field::DetailType => "detail_type",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A route as validated from the file, before compilation.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub fields: Vec<FieldPatterns>,
    pub to: Vec<String>,
    pub continue_: bool,
    pub enabled: bool,
}

#[derive(Debug)]
struct Condition {
    field: Field,
    any: Vec<usize>,
    none: Vec<usize>,
}

#[derive(Debug)]
struct CompiledRoute {
    name: String,
    conditions: Vec<Condition>,
    to: Vec<String>,
    continue_: bool,
    enabled: bool,
}

/// The values a notification offers to the matchers.
pub struct Facts<'a> {
    pub alarm_name: Option<&'a str>,
    pub severity: &'a str,
    pub state: Option<&'a str>,
    pub topic: &'a str,
    pub account: Option<&'a str>,
    pub region: Option<&'a str>,
    pub source: Option<&'a str>,
    pub detail_type: Option<&'a str>,
}

impl<'a> Facts<'a> {
    pub fn of(n: &'a Notification, severity: &'a str) -> Facts<'a> {
        Facts {
            alarm_name: n.alarm.as_ref().map(|a| a.name.as_str()),
            severity,
            state: n.state(),
            topic: &n.envelope.topic_arn,
            account: n.account.as_deref(),
            region: n.region.as_deref(),
            source: n.event.as_ref().map(|e| e.source.as_str()),
            detail_type: n.event.as_ref().map(|e| e.detail_type.as_str()),
        }
    }

    fn get(&self, f: Field) -> Option<&'a str> {
        match f {
            Field::AlarmName => self.alarm_name,
            Field::Severity => Some(self.severity),
            Field::State => self.state,
            Field::Topic => Some(self.topic),
            Field::Account => self.account,
            Field::Region => self.region,
            Field::Source => self.source,
            Field::DetailType => self.detail_type,
        }
    }
}

/// Where a notification goes. Route names are borrowed from the routing table (one
/// decision per notification: no copies of them); the destinations are owned, as the queue
/// keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision<'r> {
    /// Names of the routes that matched, in order (`default_route` when none did).
    pub routes: SmallVec<[&'r str; 4]>,
    /// Destinations, each once, in first-reached order.
    pub destinations: Vec<String>,
    /// A muted route (`enabled = false`) that matched and swallowed the notification.
    pub muted: Option<&'r str>,
}

/// The compiled routing table of one config load.
#[derive(Debug)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    default_to: Vec<String>,
    indexes: Vec<FieldIndex>,
}

/// Name used in decisions for the fallback route.
pub const DEFAULT_ROUTE: &str = "default_route";

impl Router {
    pub fn new(specs: Vec<RouteSpec>, default_to: Vec<String>) -> Result<Router, PatternError> {
        let mut builders: Vec<FieldIndexBuilder> = Field::ALL.iter().map(|_| FieldIndexBuilder::default()).collect();
        let mut routes = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut conditions = Vec::new();
            for fp in &spec.fields {
                let b = &mut builders[fp.field.index()];
                let any = fp.any.iter().map(|p| b.add(p)).collect::<Result<Vec<_>, _>>()?;
                let none = fp.none.iter().map(|p| b.add(p)).collect::<Result<Vec<_>, _>>()?;
                conditions.push(Condition { field: fp.field, any, none });
            }
            routes.push(CompiledRoute {
                name: spec.name,
                conditions,
                to: spec.to,
                continue_: spec.continue_,
                enabled: spec.enabled,
            });
        }
        let indexes = builders.into_iter().map(|b| b.build()).collect::<Result<Vec<_>, _>>()?;
        Ok(Router { routes, default_to, indexes })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn route(&self, facts: &Facts<'_>) -> Decision<'_> {
        // This runs for every notification: the match buffers are the thread's, reused.
        thread_local! {
            static BUFFERS: std::cell::RefCell<(Vec<usize>, [Vec<bool>; Field::ALL.len()])> = Default::default();
        }
        BUFFERS.with_borrow_mut(|(scratch, bits)| self.route_with(facts, scratch, bits))
    }

    fn route_with(
        &self,
        facts: &Facts<'_>,
        scratch: &mut Vec<usize>,
        bits: &mut [Vec<bool>; Field::ALL.len()],
    ) -> Decision<'_> {
        // Match each field once against every pattern of every route.
        let mut matched: [Option<&[bool]>; Field::ALL.len()] = Default::default();
        for (((field, index), slot), bits) in
            Field::ALL.iter().zip(&self.indexes).zip(&mut matched).zip(bits.iter_mut())
        {
            *slot = match facts.get(*field) {
                Some(value) if !index.is_empty() => {
                    index.matches(value, scratch, bits);
                    Some(&bits[..])
                }
                _ => None,
            };
        }
        let mut decision = Decision::default();
        for route in &self.routes {
            let hit = route.conditions.iter().all(|c| match &matched[c.field.index()] {
                // The notification lacks this field (e.g. no alarm name): only a route
                // that merely excludes values can still match.
                None => c.any.is_empty(),
                Some(bits) => (c.any.is_empty() || c.any.iter().any(|&i| bits[i])) && !c.none.iter().any(|&i| bits[i]),
            });
            if !hit || !route.enabled {
                // A muted route still stops evaluation when it matches: muting means
                // "send these nowhere", not "let later routes have them".
                if hit && !route.continue_ {
                    decision.muted = Some(&route.name);
                    return decision;
                }
                continue;
            }
            decision.routes.push(&route.name);
            for d in &route.to {
                if !decision.destinations.contains(d) {
                    decision.destinations.push(d.clone());
                }
            }
            if !route.continue_ {
                return decision;
            }
        }
        if decision.routes.is_empty() && decision.muted.is_none() && !self.default_to.is_empty() {
            decision.routes.push(DEFAULT_ROUTE);
            decision.destinations = self.default_to.clone();
        }
        decision
    }
}
