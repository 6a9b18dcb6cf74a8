//! Kubernetes Events, written through core/v1.
//!
//! core/v1 is what `kubectl describe` reads, and every API server keeps it in step with events.k8s.io/v1, so one
//! write serves both. IronLB emits an Event only when something changed, so there is no series to aggregate: each
//! Event is created once with a unique name.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// An Event to publish, not yet tied to a transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &'static str, message: String) -> Note {
        Note {
            warning: false,
            reason,
            message,
        }
    }

    pub fn warning(reason: &'static str, message: String) -> Note {
        Note {
            warning: true,
            reason,
            message,
        }
    }
}

/// The API server rejects an Event whose note (core/v1 `message`, when `eventTime` is set) is longer than this.
pub const NOTE_LIMIT: usize = 1024;

/// `message` cut to [`NOTE_LIMIT`] bytes at a character boundary, ending in "…" when cut, so that a message quoting
/// user input can never make the API server refuse the Event.
pub fn note_text(message: &str) -> String {
    if message.len() <= NOTE_LIMIT {
        return message.to_string();
    }
    let ellipsis = "…";
    let mut cut = NOTE_LIMIT - ellipsis.len();
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ellipsis}", &message[..cut])
}

/// The component name Events are reported under.
pub const COMPONENT: &str = "ironlb";

/// The Event object for `note` about `regarding`, reported by `node` at `now`.
pub fn core_event(note: &Note, regarding: &ObjectReference, node: &str, now: Timestamp) -> Event {
    let object = regarding.name.as_deref().unwrap_or("object");
    // Unique per object and instant, like client-go's `<object>.<hex nanoseconds>` names.
    let name = format!("{object}.{:x}", now.as_nanosecond());
    let time = Time(now);
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(
                regarding
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            ..Default::default()
        },
        involved_object: regarding.clone(),
        reason: Some(note.reason.to_string()),
        message: Some(note_text(&note.message)),
        type_: Some(if note.warning { "Warning" } else { "Normal" }.to_string()),
        source: Some(EventSource {
            component: Some(COMPONENT.to_string()),
            host: Some(node.to_string()),
        }),
        first_timestamp: Some(time.clone()),
        last_timestamp: Some(time),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        action: Some(note.reason.to_string()),
        reporting_component: Some(COMPONENT.to_string()),
        reporting_instance: Some(node.to_string()),
        ..Default::default()
    }
}

/// Creates the Event.
pub async fn publish(
    client: &kube::Client,
    note: &Note,
    regarding: &ObjectReference,
    node: &str,
) -> Result<(), kube::Error> {
    let event = core_event(note, regarding, node, Timestamp::now());
    let namespace = event.metadata.namespace.clone().unwrap_or_default();
    Api::<Event>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_to_the_api_limit_at_a_character_boundary() {
        let regarding = ObjectReference {
            name: Some("web".into()),
            ..Default::default()
        };
        for filler in ["x", "é", "€"] {
            let long = filler.repeat(64 * 1024);
            let ev = core_event(
                &Note::warning("AllocationFailed", long.clone()),
                &regarding,
                "node-1",
                Timestamp::UNIX_EPOCH,
            );
            let message = ev.message.unwrap();
            assert!(message.len() <= NOTE_LIMIT, "{} bytes", message.len());
            assert!(message.len() > NOTE_LIMIT - 8, "{} bytes", message.len());
            assert!(message.ends_with('…'));
            assert!(long.starts_with(message.trim_end_matches('…')));
        }
        assert_eq!(note_text("short"), "short");
    }

    #[test]
    fn an_event_names_its_object_reason_and_reporter() {
        let regarding = ObjectReference {
            kind: Some("Service".into()),
            namespace: Some("shop".into()),
            name: Some("web".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ev = core_event(
            &Note::warning("AllocationFailed", "pool public is exhausted".into()),
            &regarding,
            "node-a",
            now,
        );
        assert_eq!(ev.metadata.namespace.as_deref(), Some("shop"));
        assert!(ev.metadata.name.as_deref().unwrap().starts_with("web."));
        assert_eq!(ev.involved_object, regarding);
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.reason.as_deref(), Some("AllocationFailed"));
        assert_eq!(ev.message.as_deref(), Some("pool public is exhausted"));
        assert_eq!(ev.source.unwrap().host.as_deref(), Some("node-a"));
        let later = core_event(
            &Note::normal("IPAllocated", "x".into()),
            &regarding,
            "node-a",
            now.checked_add(k8s_openapi::jiff::SignedDuration::from_nanos(1))
                .unwrap(),
        );
        assert_ne!(
            later.metadata.name, ev.metadata.name,
            "two Events must not collide on their name"
        );
        assert_eq!(later.type_.as_deref(), Some("Normal"));
    }
}
