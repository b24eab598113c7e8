//! Which topic an event goes to.
//!
//! Routing is by data type, never by token: the data type is decided from the
//! endpoint, the event name and the batch's `historical_migration` flag, and
//! the topic for each data type comes from configuration.

use std::sync::Arc;

/// The kinds of data capture produces, one topic each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// Ordinary analytics events.
    Events,
    /// Events from a batch flagged `historical_migration`.
    Historical,
    /// `$exception` events.
    Exceptions,
    /// `$$client_ingestion_warning` events.
    ClientWarnings,
    /// Session recording snapshots from `/s`.
    Recordings,
    /// Events rerouted away from a hot partition key.
    Overflow,
    /// `$$heatmap` events (posthog-js's batched heatmap data).
    Heatmaps,
    /// Events a restriction sends to the dead-letter topic.
    DeadLetter,
}

impl DataType {
    /// Data type of an analytics event.
    pub fn for_event(name: &str, historical: bool) -> Self {
        match (name, historical) {
            ("$$client_ingestion_warning", _) => DataType::ClientWarnings,
            ("$exception", _) => DataType::Exceptions,
            ("$$heatmap", _) => DataType::Heatmaps,
            (_, true) => DataType::Historical,
            (_, false) => DataType::Events,
        }
    }

    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            DataType::Events => "events",
            DataType::Historical => "historical",
            DataType::Exceptions => "exceptions",
            DataType::ClientWarnings => "client_warnings",
            DataType::Recordings => "recordings",
            DataType::Overflow => "overflow",
            DataType::Heatmaps => "heatmaps",
            DataType::DeadLetter => "dead_letter",
        }
    }
}

/// Topic name per data type.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Analytics events.
    pub events: Arc<str>,
    /// Session recordings.
    pub recordings: Arc<str>,
    /// Historical imports.
    pub historical: Arc<str>,
    /// Client ingestion warnings.
    pub client_warnings: Arc<str>,
    /// Exceptions.
    pub exceptions: Arc<str>,
    /// Overflow for hot keys.
    pub overflow: Arc<str>,
    /// Heatmaps.
    pub heatmaps: Arc<str>,
    /// The dead-letter route of restrictions.
    pub dlq: Arc<str>,
}

impl Topics {
    /// The topic for a data type.
    pub fn topic(&self, kind: DataType) -> &Arc<str> {
        match kind {
            DataType::Events => &self.events,
            DataType::Historical => &self.historical,
            DataType::Exceptions => &self.exceptions,
            DataType::ClientWarnings => &self.client_warnings,
            DataType::Recordings => &self.recordings,
            DataType::Overflow => &self.overflow,
            DataType::Heatmaps => &self.heatmaps,
            DataType::DeadLetter => &self.dlq,
        }
    }

    /// Every configured topic, for creating them at start.
    pub fn all(&self) -> [&Arc<str>; 8] {
        [
            &self.events,
            &self.recordings,
            &self.historical,
            &self.client_warnings,
            &self.exceptions,
            &self.overflow,
            &self.heatmaps,
            &self.dlq,
        ]
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            events: "clickhouse_events".into(),
            recordings: "clickhouse_session_recording_events".into(),
            historical: "historical_events".into(),
            client_warnings: "client_warnings".into(),
            exceptions: "exceptions".into(),
            overflow: "events_plugin_ingestion_overflow".into(),
            // PostHog's name: the design document lists no heatmaps topic.
            heatmaps: "heatmaps_ingestion".into(),
            // PostHog's name, likewise.
            dlq: "events_plugin_ingestion_dlq".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_events_win_over_the_historical_flag() {
        assert_eq!(
            DataType::for_event("$exception", true),
            DataType::Exceptions
        );
        assert_eq!(
            DataType::for_event("$$client_ingestion_warning", false),
            DataType::ClientWarnings
        );
        assert_eq!(DataType::for_event("$pageview", true), DataType::Historical);
        assert_eq!(DataType::for_event("$$heatmap", true), DataType::Heatmaps);
        assert_eq!(DataType::for_event("$pageview", false), DataType::Events);
    }

    #[test]
    fn every_data_type_has_its_own_default_topic() {
        let topics = Topics::default();
        let mut names: Vec<_> = topics.all().iter().map(|t| t.to_string()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 8);
        assert_eq!(&**topics.topic(DataType::Events), "clickhouse_events");
    }
}
