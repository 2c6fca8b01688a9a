//! Server-sent events as model APIs send them: `data:` lines grouped into events by blank
//! lines, arriving in arbitrary byte chunks.

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
