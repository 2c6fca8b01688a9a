//! The body of a streamed answer: upstream deltas turned into `chat.completion.chunk` events
//! as they arrive, the trace filled in from what was sent.
//!
//! Once the first token has gone out the request cannot fall back any more, so a stream that
//! breaks later ends with an error event (and no `[DONE]`), and the trace says so. A client
//! that goes away stops the upstream call.

use std::convert::Infallible;
use std::time::Instant;

use axum::body::{Body, Bytes};
use futures_util::StreamExt as _;
use plumb_core::{Assembler, ChatDelta, ChatStream, Pricing};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{Call, wire};

pub(crate) struct StreamSetup {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    pub first: ChatDelta,
    pub rest: ChatStream,
    /// When the whole answer must be done (the target's total timeout).
    pub deadline: Option<Instant>,
    pub pricing: Option<Pricing>,
    /// Keep the answer for the trace.
    pub capture: bool,
    /// Replaying a cached answer: it cost no tokens.
    pub cached: bool,
    /// Where to cache the answer once it is complete.
    pub cache_write: Option<crate::cache::Write>,
}

pub(crate) struct StreamTail {
    setup: StreamSetup,
    sender: mpsc::Sender<Bytes>,
}

/// Writes frames to the client.
struct Framer {
    sender: mpsc::Sender<Bytes>,
    id: String,
    created: u64,
    model: String,
}

impl Framer {
    async fn send(&self, frame: String) -> bool {
        self.sender.send(Bytes::from(frame)).await.is_ok()
    }

    async fn chunk(&self, delta: serde_json::Value, finish: Option<&str>) -> bool {
        self.send(wire::chunk_frame(
            &self.id,
            self.created,
            &self.model,
            delta,
            finish,
        ))
        .await
    }

    /// Sends what `delta` shows the client; false once the client has gone.
    async fn forward(&self, delta: &ChatDelta) -> bool {
        if let Some(visible) = wire::delta_json(delta)
            && !self.chunk(visible, None).await
        {
            return false;
        }
        match delta.finish_reason {
            Some(finish) => self.chunk(json!({}), Some(finish.as_str())).await,
            None => true,
        }
    }
}

impl StreamTail {
    /// The tail and the response body it feeds.
    pub(crate) fn new(setup: StreamSetup) -> (StreamTail, Body) {
        let (sender, receiver) = mpsc::channel::<Bytes>(32);
        let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver
                .recv()
                .await
                .map(|frame| (Ok::<_, Infallible>(frame), receiver))
        });
        (StreamTail { setup, sender }, Body::from_stream(frames))
    }

    /// Streams the answer to the client and fills in `call`. Returns the body's sender: the
    /// body ends when it is dropped, so the caller can record the trace first (a client that
    /// has read the whole answer can then find its trace).
    pub(crate) async fn run(self, call: &mut Call) -> impl Send + use<> {
        let StreamTail { setup, sender } = self;
        let StreamSetup {
            id,
            created,
            model,
            include_usage,
            first,
            mut rest,
            deadline,
            pricing,
            capture,
            cached,
            cache_write,
        } = setup;
        let framer = Framer {
            sender,
            id,
            created,
            model,
        };
        let mut assembler = Assembler::default();
        let mut open = framer
            .chunk(json!({"role": "assistant", "content": ""}), None)
            .await
            && framer.forward(&first).await;
        assembler.push(&first);
        let mut failure: Option<(&'static str, String)> = None;
        while open {
            let next = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline.into(), rest.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            failure = Some((
                                "timeout",
                                "the answer did not finish within the target's timeout".into(),
                            ));
                            break;
                        }
                    }
                }
                None => rest.next().await,
            };
            match next {
                Some(Ok(delta)) => {
                    assembler.push(&delta);
                    open = framer.forward(&delta).await;
                }
                Some(Err(error)) => {
                    failure = Some(("stream_broken", error.message));
                    break;
                }
                None => break,
            }
        }
        let response = assembler.response();
        let complete = open && failure.is_none();
        if !open {
            call.error = Some("client_disconnected".into());
            call.error_message = Some("the client closed the stream before the end".into());
        } else if let Some((code, message)) = failure {
            let _ = framer.send(wire::error_frame(&message, code)).await;
            call.error = Some(code.into());
            call.error_message = Some(message);
        } else {
            if include_usage {
                let _ = framer
                    .send(wire::usage_frame(
                        &framer.id,
                        framer.created,
                        &framer.model,
                        &response.usage,
                    ))
                    .await;
            }
            let _ = framer.send(wire::DONE_FRAME.to_owned()).await;
        }
        if complete && let Some(write) = cache_write {
            write.store(response);
        }
        if !cached {
            call.usage = response.usage;
            call.cost_usd = pricing.map(|p| p.cost(&response.usage));
        }
        call.finish_reason = response.finish_reason.map(|f| f.as_str());
        call.response_model = response.model.clone();
        if capture {
            call.output = json!({"content": response.content, "tool_calls": response.tool_calls});
        }
        framer.sender
    }
}
