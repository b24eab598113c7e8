//! The event pipeline of the runtime config: event restrictions, then the
//! plugins in their configured order.
//!
//! A [`Plugin`] is made once per runtime config version from its settings
//! (`init`), sees every analytics event of a request (`process`) and says
//! whether to keep it, drop it or send it elsewhere; `close` runs when its
//! version is replaced. Plugins read the event's token, name and distinct
//! id, and may change its properties and IP.
//!
//! # Adding a plugin
//!
//! 1. Write `plugins/my_plugin.rs` with a type implementing [`Plugin`] and a
//!    constructor from its settings.
//! 2. Add its settings to [`crate::runtime_config::Plugin`] (a field named
//!    after it, plus its validation), and one line to [`init`] that builds
//!    it.
//!
//! The built-ins: [`redact`], [`drop`], [`sample`], [`anonymize_ip`],
//! [`limit_properties`]; event restrictions are in [`restrictions`].

pub mod anonymize_ip;
pub mod drop;
pub mod limit_properties;
pub mod raw;
pub mod redact;
pub mod restrictions;
pub mod sample;

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::runtime_config::{self, RuntimeConfig};

/// What happens to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It goes on (to the next plugin, then to its topic).
    Keep,
    /// It is dropped; the response stays 200.
    Drop,
    /// It goes to the overflow topic, without a key.
    Overflow,
    /// It goes to this topic.
    Topic(Arc<str>),
    /// It goes to the dead-letter topic, with headers saying why.
    DeadLetter,
    /// It goes to its topic without a key and with
    /// `force_disable_person_processing`, its text untouched, as PostHog's
    /// capture does for a skip-person-processing restriction.
    Personless,
}

/// One event as plugins see it. The event body is parsed only when a
/// plugin asks for its properties.
#[derive(Debug)]
pub struct Event<'e, 'r> {
    /// Project token.
    pub token: &'e str,
    /// Event name.
    pub name: &'e str,
    /// Distinct id.
    pub distinct_id: &'e str,
    /// Client IP (the message's `ip`).
    pub ip: &'e mut String,
    /// The event's uuid (the client's, or the one capture made).
    pub uuid: Option<uuid::Uuid>,
    body: Body<'r>,
    /// Where the properties are in the unparsed text, once looked for.
    index: Option<Option<raw::EventIndex>>,
}

#[derive(Debug)]
enum Body<'r> {
    Raw(Cow<'r, str>),
    Parsed(Value),
}

impl<'e, 'r> Event<'e, 'r> {
    /// An event whose body is the JSON text `raw`.
    pub fn new(
        token: &'e str,
        name: &'e str,
        distinct_id: &'e str,
        ip: &'e mut String,
        raw: Cow<'r, str>,
    ) -> Self {
        Event {
            token,
            name,
            distinct_id,
            ip,
            uuid: None,
            body: Body::Raw(raw),
            index: None,
        }
    }

    /// The event's JSON text and where its properties are in it (looked
    /// for once, shared by every plugin), unless a plugin has parsed it.
    pub fn indexed(&mut self) -> Option<(&str, &raw::EventIndex)> {
        let Body::Raw(text) = &self.body else {
            return None;
        };
        if self.index.is_none() {
            self.index = Some(raw::index_event(text));
        }
        match (&self.body, &self.index) {
            (Body::Raw(text), Some(Some(index))) => Some((text, index)),
            _ => None,
        }
    }

    /// Replaces the event's JSON text (a plugin that edits the text
    /// directly, keeping it valid JSON).
    pub fn set_raw(&mut self, text: String) {
        self.body = Body::Raw(Cow::Owned(text));
        self.index = None;
    }

    /// Applies `splices` (of values of the indexed text, or ranges within
    /// them) with `with`, keeping the index current without a new scan.
    pub fn splice(&mut self, splices: raw::Splices, with: &str) {
        let Some((text, _)) = self.indexed() else {
            return;
        };
        let (edited, shift) = splices.apply_tracked(text, with);
        if let Some(Some(index)) = &mut self.index {
            index.shift(&shift);
        }
        self.body = Body::Raw(Cow::Owned(edited));
    }

    /// The property `key`, without parsing the rest of the event.
    pub fn property(&mut self, key: &str) -> Option<Cow<'_, Value>> {
        if let Some((text, index)) = self.indexed() {
            return serde_json::from_str(index.property(text, key)?)
                .ok()
                .map(Cow::Owned);
        }
        match &self.body {
            Body::Parsed(value) => value.get("properties")?.get(key).map(Cow::Borrowed),
            Body::Raw(_) => None,
        }
    }

    /// The whole event object (parsed on first use). `None` if the body is
    /// not a JSON object, which validation has already ruled out.
    pub fn object_mut(&mut self) -> Option<&mut Map<String, Value>> {
        if let Body::Raw(raw) = &self.body {
            let parsed = serde_json::from_str(raw).ok()?;
            self.body = Body::Parsed(parsed);
        }
        match &mut self.body {
            Body::Parsed(Value::Object(object)) => Some(object),
            _ => None,
        }
    }

    /// The event's `properties` object, created when absent.
    pub fn properties_mut(&mut self) -> Option<&mut Map<String, Value>> {
        let object = self.object_mut()?;
        let properties = object
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        properties.as_object_mut()
    }

    /// The body as JSON text: the original bytes when no plugin changed it.
    pub fn into_body(self) -> Cow<'r, str> {
        match self.body {
            Body::Raw(raw) => raw,
            Body::Parsed(value) => Cow::Owned(value.to_string()),
        }
    }
}

/// An event plugin; see the module documentation.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    /// Its name in the runtime config (for logs and metrics).
    fn name(&self) -> &'static str;
    /// Decides about one event, maybe changing it.
    fn process(&self, event: &mut Event<'_, '_>) -> Verdict;
    /// Called once when the runtime config version it belongs to is
    /// replaced.
    fn close(&self) {}
}

/// Builds one configured plugin: the registry of built-ins.
pub fn init(config: &runtime_config::Plugin) -> Option<Box<dyn Plugin>> {
    if let Some(settings) = &config.redact {
        return Some(Box::new(redact::Redact::new(settings)));
    }
    if let Some(settings) = &config.drop {
        return Some(Box::new(drop::DropMatching::new(settings)));
    }
    if let Some(settings) = &config.sample {
        return Some(Box::new(sample::Sample::new(settings)));
    }
    if let Some(settings) = &config.anonymize_ip {
        return Some(Box::new(anonymize_ip::AnonymizeIp::new(settings)));
    }
    if let Some(settings) = &config.limit_properties {
        return Some(Box::new(limit_properties::LimitProperties::new(settings)));
    }
    None
}

/// Restrictions then plugins, for one runtime config version.
#[derive(Debug, Default)]
pub struct Pipeline {
    restrictions: restrictions::Restrictions,
    plugins: Vec<Box<dyn Plugin>>,
}

/// Metric label of what stopped or moved an event: a plugin's name or
/// `restriction`.
pub type By = &'static str;

/// [`By`] for the runtime config's restrictions.
pub const RESTRICTION: By = "restriction";

impl Pipeline {
    /// The pipeline of `config` (validated).
    pub fn new(config: &RuntimeConfig) -> Self {
        Pipeline {
            restrictions: restrictions::Restrictions::new(&config.restrictions),
            plugins: config.plugins.iter().filter_map(init).collect(),
        }
    }

    /// Whether it does nothing (so the request path can skip it).
    pub fn is_empty(&self) -> bool {
        self.restrictions.is_empty() && self.plugins.is_empty()
    }

    /// Runs `event` through the restrictions alone (session recordings
    /// take them, not the plugins).
    pub fn restrict(&self, event: &mut Event<'_, '_>) -> Verdict {
        self.restrictions.apply(event)
    }

    /// Runs `event` through the restrictions and plugins; the first verdict
    /// other than [`Verdict::Keep`] ends it, with who gave it.
    pub fn run(&self, event: &mut Event<'_, '_>) -> (Verdict, By) {
        let restricted = self.restrictions.apply(event);
        // A personless event still goes through the plugins (redaction
        // among them); the others end the run here.
        if !matches!(restricted, Verdict::Keep | Verdict::Personless) {
            return (restricted, RESTRICTION);
        }
        for plugin in &self.plugins {
            let verdict = plugin.process(event);
            if verdict != Verdict::Keep {
                return (verdict, plugin.name());
            }
        }
        match restricted {
            Verdict::Personless => (Verdict::Personless, RESTRICTION),
            _ => (Verdict::Keep, ""),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for plugin in &self.plugins {
            plugin.close();
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Runs `pipeline` on one event; returns the verdict, the body and IP.
    pub fn run(
        pipeline: &Pipeline,
        token: &str,
        name: &str,
        distinct_id: &str,
        body: Value,
    ) -> (Verdict, Value, String) {
        let mut ip = "203.0.113.77".to_owned();
        let raw = body.to_string();
        let mut event = Event::new(token, name, distinct_id, &mut ip, Cow::Borrowed(&raw));
        let (verdict, _) = pipeline.run(&mut event);
        let body = serde_json::from_str(&event.into_body()).expect("json");
        (verdict, body, ip)
    }

    /// [`run`] for an event of token `t`, name `e`, distinct id `d`, with
    /// `uuid`.
    pub fn run_with_uuid(pipeline: &Pipeline, uuid: uuid::Uuid, body: Value) -> (Verdict, Value) {
        let mut ip = "203.0.113.77".to_owned();
        let raw = body.to_string();
        let mut event = Event::new("t", "e", "d", &mut ip, Cow::Borrowed(&raw));
        event.uuid = Some(uuid);
        let (verdict, _) = pipeline.run(&mut event);
        let body = serde_json::from_str(&event.into_body()).expect("json");
        (verdict, body)
    }

    /// The pipeline of a runtime config document.
    pub fn pipeline(document: &str) -> Pipeline {
        Pipeline::new(&runtime_config::parse(document).expect("valid"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testing::{pipeline, run};
    use super::*;

    #[test]
    fn a_personless_event_still_meets_the_plugins() {
        let p = pipeline(
            "version: 1
restrictions:
  - {action: skipPersonProcessing, distinctIds: [anon]}
plugins:
  - redact: {keys: [email]}
  - drop: {events: [noise]}
",
        );
        let (verdict, body, _) = run(
            &p,
            "t",
            "e",
            "anon",
            json!({"properties": {"email": "a@b.c"}}),
        );
        assert_eq!(verdict, Verdict::Personless);
        assert_ne!(
            body["properties"]["email"], "a@b.c",
            "redacted all the same"
        );
        assert_eq!(run(&p, "t", "noise", "anon", json!({})).0, Verdict::Drop);
    }

    #[test]
    fn an_untouched_body_keeps_its_exact_bytes() {
        let pipeline = pipeline("version: 1\nplugins: [{sample: {rate: 1}}]");
        let raw = r#"{"event":"e",  "properties":{"b":1,"a":2}}"#;
        let mut ip = "1.2.3.4".to_owned();
        let mut event = Event::new("phc_t", "e", "d", &mut ip, Cow::Borrowed(raw));
        assert_eq!(pipeline.run(&mut event).0, Verdict::Keep);
        assert_eq!(event.into_body(), raw);
    }

    #[test]
    fn plugins_run_in_order_and_the_first_verdict_ends_it() {
        let pipeline = pipeline(
            "version: 1\nplugins: [{redact: {keys: [email]}}, {drop: {events: [gone]}}, {redact: {keys: [name]}}]",
        );
        let body = json!({"event": "gone", "properties": {"email": "a@b", "name": "n"}});
        let (verdict, _, _) = run(&pipeline, "phc_t", "gone", "d", body.clone());
        assert_eq!(verdict, Verdict::Drop);
        let (verdict, body, _) = run(&pipeline, "phc_t", "kept", "d", body);
        assert_eq!(verdict, Verdict::Keep);
        assert_eq!(
            body["properties"],
            json!({"email": "[redacted]", "name": "[redacted]"})
        );
    }
}
