//! Events tell a session's story, but must never compete with the writes that
//! make it: in a burst, one background task per transition put 20 Event
//! creates beside the claims and pod writes of the sessions still on their
//! way. So all Events go through one queue, published one at a time, in order.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};
use prometheus::IntGauge;
use tokio::sync::mpsc;

/// The Events of one transition, for one object.
struct Batch {
    events: Vec<Event>,
    reference: ObjectReference,
}

/// The sending end of the queue; the publishing task ends when it is dropped.
pub struct EventQueue {
    batches: mpsc::UnboundedSender<Batch>,
    queued: IntGauge,
}

impl EventQueue {
    /// Starts the task that publishes queued Events; `queued` counts those not yet published.
    pub fn start(client: Client, queued: IntGauge) -> Self {
        let (batches, mut received) = mpsc::unbounded_channel::<Batch>();
        let published = queued.clone();
        tokio::spawn(async move {
            while let Some(batch) = received.recv().await {
                // Not kept: a Recorder caches every Event it sent for six minutes (to
                // count repeats), which after a burst of sessions held 20 MiB; ours
                // mark transitions and seldom repeat.
                let recorder = Recorder::new(client.clone(), Reporter::from("ephemera"));
                for event in &batch.events {
                    if let Err(error) = recorder.publish(event, &batch.reference).await {
                        tracing::warn!(%error, reason = %event.reason, "could not publish event");
                    }
                    published.dec();
                }
            }
        });
        Self { batches, queued }
    }

    /// Queues `events` about `reference`, to be published after those queued before.
    pub fn publish(&self, reference: ObjectReference, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let count = events.len() as i64;
        self.queued.add(count);
        if self.batches.send(Batch { events, reference }).is_err() {
            // The publishing task is gone only when the runtime shuts down.
            self.queued.sub(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;
    use kube::runtime::events::EventType;

    use super::*;

    fn event(reason: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: None,
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    #[tokio::test]
    async fn events_go_out_one_at_a_time_in_the_order_queued() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let queued = IntGauge::new("queued", "queued").unwrap();
        let queue = EventQueue::start(Client::new(service, "ns"), queued.clone());
        let session = ObjectReference { name: Some("s".into()), namespace: Some("ns".into()), ..Default::default() };
        queue.publish(session.clone(), vec![event("Injected"), event("Running")]);
        queue.publish(session.clone(), Vec::new());
        queue.publish(session, vec![event("Terminated")]);
        assert_eq!(queued.get(), 3);
        for (published, reason) in ["Injected", "Running", "Terminated"].into_iter().enumerate() {
            let (request, send) = handle.next_request().await.expect("an Event create");
            assert_eq!(request.uri().path(), "/apis/events.k8s.io/v1/namespaces/ns/events");
            let body = request.into_body().collect_bytes().await.unwrap();
            let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(sent["reason"], reason);
            assert_eq!(queued.get(), 3 - published as i64);
            // Nothing else goes out while this one is unanswered.
            let next = tokio::time::timeout(Duration::from_millis(50), handle.next_request()).await;
            assert!(next.is_err(), "a second Event was sent before {reason} was answered");
            send.send_response(Response::builder().status(201).body(Body::from(body.to_vec())).unwrap());
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while queued.get() != 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("every queued Event counted as published");
    }
}
