//! Server-sent events as model APIs send them: `data:` lines grouped into events by blank
//! lines, arriving in arbitrary byte chunks; and the stream of deltas a provider's handler
//! makes of them.

use std::collections::VecDeque;

use futures_util::StreamExt as _;
use plumb_core::{ChatDelta, ChatStream, ModelError, ModelErrorKind};

/// An event's data as JSON; an error event (`{"error": {"message"}}`, as both OpenAI and
/// Anthropic send it mid-stream) as the error it reports.
pub(crate) fn json_event(data: &str) -> Result<serde_json::Value, ModelError> {
    let value: serde_json::Value = serde_json::from_str(data).map_err(|error| {
        ModelError::new(
            ModelErrorKind::Protocol,
            format!("the stream sent an event that is not JSON: {error}"),
        )
    })?;
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        let message = error
            .get("message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown error");
        return Err(ModelError::new(
            ModelErrorKind::Server,
            format!("the stream reported an error: {message}"),
        ));
    }
    Ok(value)
}

/// What a provider makes of its event payloads.
pub(crate) trait Events: Send + 'static {
    /// The deltas of one event's data; an error ends the stream.
    fn event(&mut self, data: &str) -> Result<Vec<ChatDelta>, ModelError>;
    /// Whether the answer is complete, so that the end of the body is not a break.
    fn complete(&self) -> bool;
    /// Whether the provider said the stream is over (nothing after it is read).
    fn over(&self) -> bool;
    /// Deltas to send once the answer is complete (e.g. estimated usage).
    fn closing(&mut self) -> Vec<ChatDelta>;
}

struct Driver<E> {
    bytes:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: SseParser,
    pending: VecDeque<Result<ChatDelta, ModelError>>,
    events: E,
    url: String,
    done: bool,
}

impl<E: Events> Driver<E> {
    fn take(&mut self, payloads: Vec<String>) {
        for payload in payloads {
            if self.done {
                return;
            }
            match self.events.event(&payload) {
                Ok(deltas) => self
                    .pending
                    .extend(deltas.into_iter().filter(|d| !d.is_empty()).map(Ok)),
                Err(error) => {
                    self.done = true;
                    self.pending.push_back(Err(error));
                    return;
                }
            }
            if self.events.over() {
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            let closing = self.events.closing();
            self.pending.extend(closing.into_iter().map(Ok));
        }
    }
}

/// The deltas of a streamed answer. A body that ends before the answer is complete ends the
/// stream with a (retryable) error: the answer would be silently short otherwise.
pub(crate) fn deltas<E: Events>(response: reqwest::Response, url: String, events: E) -> ChatStream {
    let driver = Driver {
        bytes: Box::pin(response.bytes_stream()),
        parser: SseParser::default(),
        pending: VecDeque::new(),
        events,
        url,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        driver,
        |mut driver| async move {
            loop {
                if let Some(item) = driver.pending.pop_front() {
                    return Some((item, driver));
                }
                if driver.done {
                    return None;
                }
                match driver.bytes.next().await {
                    Some(Ok(chunk)) => {
                        let payloads = driver.parser.push(&chunk);
                        driver.take(payloads);
                    }
                    Some(Err(error)) => {
                        driver.done = true;
                        let mut failure = crate::http::transport_error(&error, &driver.url);
                        failure.message = format!("{} (the stream broke)", failure.message);
                        return Some((Err(failure), driver));
                    }
                    None => {
                        let rest: Vec<String> = driver.parser.finish().into_iter().collect();
                        driver.take(rest);
                        if driver.events.complete() {
                            driver.finish();
                        } else if !driver.done {
                            driver.done = true;
                            let message = format!(
                                "the stream from {} ended before the answer did",
                                driver.url
                            );
                            driver
                                .pending
                                .push_back(Err(ModelError::new(ModelErrorKind::Connect, message)));
                        }
                    }
                }
            }
        },
    ))
}

/// Splits a byte stream into event payloads.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds `bytes`; returns the payloads of the events they complete.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let mut line = &self.buffer[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                self.data.push(String::from_utf8_lossy(value).into_owned());
            }
            // Other fields (event:, id:, retry:) and comments (:) carry nothing plumb uses.
            start = end + 1;
        }
        self.buffer.drain(..start);
        events
    }

    /// What is left when the stream ends: an event not closed by a blank line.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let rest = self.push(b"\n");
        rest.into_iter().next().or_else(|| {
            (!self.data.is_empty()).then(|| {
                let event = self.data.join("\n");
                self.data.clear();
                event
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_line_endings() {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in [
            &b"data: {\"a\""[..],
            b":1}\n\n: keep-alive\n\ndata: {\"b\":2}\r\n\r",
            b"\nevent: x\ndata: one\ndata: two\n\ndata: [DONE]",
        ] {
            events.extend(parser.push(chunk));
        }
        events.extend(parser.finish());
        assert_eq!(events, ["{\"a\":1}", "{\"b\":2}", "one\ntwo", "[DONE]"]);
    }
}
