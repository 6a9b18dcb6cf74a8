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
    create(client, &core_event(note, regarding, node, Timestamp::now())).await
}

/// Creates an Event built before. AlreadyExists is success: an earlier try whose answer was lost created it.
async fn create(client: &kube::Client, event: &Event) -> Result<(), kube::Error> {
    let namespace = event.metadata.namespace.clone().unwrap_or_default();
    match Api::<Event>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), event)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Events waiting for the API, oldest first, each built once so that its name (and so its identity) survives
/// retries. Bounded: past [`Outbox::LIMIT`] the oldest is dropped, logged and counted, so an API that stays away
/// cannot grow the agent's memory.
#[derive(Debug, Default)]
pub struct Outbox {
    events: std::collections::VecDeque<Event>,
    pub dropped: u64,
}

impl Outbox {
    pub const LIMIT: usize = 1024;

    pub fn push(&mut self, note: &Note, regarding: &ObjectReference, node: &str) {
        if self.events.len() >= Self::LIMIT
            && let Some(old) = self.events.pop_front()
        {
            self.dropped += 1;
            tracing::warn!(
                reason = old.reason.as_deref().unwrap_or(""),
                object = old.involved_object.name.as_deref().unwrap_or(""),
                "the Event queue is full; dropped its oldest Event"
            );
        }
        // Names are unique per nanosecond; two Events queued in the same one must not collide.
        let mut now = Timestamp::now();
        if let Some(last) = self.events.back().and_then(|e| e.event_time.as_ref())
            && now <= last.0
        {
            now = last.0 + k8s_openapi::jiff::SignedDuration::from_nanos(1);
        }
        self.events
            .push_back(core_event(note, regarding, node, now));
    }

    /// Sends queued Events in order until one fails; returns how many were accepted.
    pub async fn flush(&mut self, client: &kube::Client) -> usize {
        let mut sent = 0;
        while let Some(event) = self.events.front() {
            if let Err(error) = create(client, event).await {
                tracing::warn!(
                    %error,
                    reason = event.reason.as_deref().unwrap_or(""),
                    queued = self.events.len(),
                    "publishing an Event failed; it stays queued"
                );
                break;
            }
            self.events.pop_front();
            sent += 1;
        }
        sent
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use axum::http::{Request, Response};
    use kube::client::Body;

    /// How the fake API treats the next Event create.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Down,
        Up,
        /// Stores the Event but answers 500, as when the answer is lost on its way back.
        LoseAnswer,
    }

    /// An Events API: stores created Events by name, answers AlreadyExists for a name it has.
    fn events_api(
        mode: Arc<Mutex<Mode>>,
        stored: Arc<Mutex<BTreeMap<String, Event>>>,
    ) -> kube::Client {
        let service = tower::service_fn(move |req: Request<Body>| {
            let (mode, stored) = (mode.clone(), stored.clone());
            async move {
                let body = req.into_body().collect_bytes().await?;
                let event: Event = serde_json::from_slice(&body)?;
                let name = event.metadata.name.clone().unwrap_or_default();
                let mode = *mode.lock().unwrap();
                let mut stored = stored.lock().unwrap();
                let code = match mode {
                    Mode::Down => 503,
                    _ if stored.contains_key(&name) => 409,
                    Mode::Up => 201,
                    Mode::LoseAnswer => 500,
                };
                if mode != Mode::Down && code != 409 {
                    stored.insert(name, event.clone());
                }
                let answer = if code == 201 {
                    serde_json::to_value(&event)?
                } else {
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                        "message": "fake", "reason": if code == 409 { "AlreadyExists" } else { "InternalError" }})
                };
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer)?))?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response)
            }
        });
        kube::Client::new(service, "default")
    }

    #[tokio::test]
    async fn events_that_fail_are_kept_and_arrive_once_when_the_api_recovers() {
        let mode = Arc::new(Mutex::new(Mode::Down));
        let stored = Arc::default();
        let client = events_api(mode.clone(), Arc::clone(&stored));
        let regarding = ObjectReference {
            name: Some("web".into()),
            namespace: Some("default".into()),
            ..Default::default()
        };
        let mut outbox = Outbox::default();
        for i in 0..3 {
            outbox.push(
                &Note::normal("IPAllocated", format!("event {i}")),
                &regarding,
                "node-1",
            );
        }
        assert_eq!(outbox.flush(&client).await, 0);
        assert_eq!(outbox.len(), 3, "nothing is lost while the API is down");
        *mode.lock().unwrap() = Mode::LoseAnswer;
        assert_eq!(outbox.flush(&client).await, 0);
        *mode.lock().unwrap() = Mode::Up;
        assert_eq!(outbox.flush(&client).await, 3);
        assert!(outbox.is_empty());
        let stored = stored.lock().unwrap();
        let messages: Vec<_> = stored
            .values()
            .map(|e| e.message.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            messages,
            ["event 0", "event 1", "event 2"],
            "each Event once, in order"
        );
    }

    #[test]
    fn a_full_outbox_drops_its_oldest_event() {
        let mut outbox = Outbox::default();
        let regarding = ObjectReference::default();
        for i in 0..=Outbox::LIMIT {
            outbox.push(&Note::normal("X", i.to_string()), &regarding, "n");
        }
        assert_eq!(outbox.len(), Outbox::LIMIT);
        assert_eq!(outbox.dropped, 1);
        assert_eq!(outbox.events[0].message.as_deref(), Some("1"));
    }

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
