//! Streamed answers: a chat model can hand out its answer as deltas while it generates, and
//! `Assembler` puts the deltas back together into the `ChatResponse` they add up to.

use std::pin::Pin;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::{ChatResponse, FinishReason, ModelError, ToolCall, ToolCallFunction, Usage};

/// An answer as it arrives. Ends after the delta with the finish reason (and usage, when the
/// model reports it), or with an error if the stream broke.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatDelta, ModelError>> + Send + 'static>>;

/// A piece of an answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    pub content: String,
    pub tool_calls: Vec<ToolCallDelta>,
    pub finish_reason: Option<FinishReason>,
    pub usage: Option<Usage>,
    pub model: Option<String>,
}

/// A piece of tool call `index`: its id and name come once, its arguments in fragments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

impl ChatDelta {
    /// The whole answer as one delta (for models that cannot stream).
    pub fn whole(response: ChatResponse) -> ChatDelta {
        ChatDelta {
            content: response.content,
            tool_calls: response
                .tool_calls
                .into_iter()
                .enumerate()
                .map(|(index, call)| ToolCallDelta {
                    index: index as u32,
                    id: Some(call.id),
                    name: Some(call.function.name),
                    arguments: call.function.arguments,
                })
                .collect(),
            finish_reason: Some(response.finish_reason.unwrap_or(FinishReason::Stop)),
            usage: Some(response.usage),
            model: response.model,
        }
    }

    /// Whether the delta carries anything a client would see.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
            && self.tool_calls.is_empty()
            && self.finish_reason.is_none()
            && self.usage.is_none()
    }
}

/// Adds deltas up into a response.
#[derive(Debug, Default)]
pub struct Assembler {
    response: ChatResponse,
    finished: bool,
}

impl Assembler {
    pub fn push(&mut self, delta: &ChatDelta) {
        self.response.content.push_str(&delta.content);
        for piece in &delta.tool_calls {
            let index = piece.index as usize;
            while self.response.tool_calls.len() <= index {
                self.response.tool_calls.push(ToolCall {
                    id: String::new(),
                    kind: "function".to_owned(),
                    function: ToolCallFunction {
                        name: String::new(),
                        arguments: String::new(),
                    },
                });
            }
            let call = &mut self.response.tool_calls[index];
            if let Some(id) = &piece.id {
                call.id.clone_from(id);
            }
            if let Some(name) = &piece.name {
                call.function.name.push_str(name);
            }
            call.function.arguments.push_str(&piece.arguments);
        }
        if let Some(finish) = delta.finish_reason {
            self.response.finish_reason = Some(finish);
            self.finished = true;
        }
        if let Some(usage) = delta.usage {
            self.response.usage = usage;
        }
        if delta.model.is_some() {
            self.response.model.clone_from(&delta.model);
        }
    }

    /// Whether a finish reason has arrived.
    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn response(&self) -> &ChatResponse {
        &self.response
    }

    pub fn into_response(self) -> ChatResponse {
        self.response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_add_up_to_the_whole_answer() {
        let whole = ChatResponse {
            content: "hello".into(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                kind: "function".into(),
                function: ToolCallFunction {
                    name: "lookup".into(),
                    arguments: "{\"q\":1}".into(),
                },
            }],
            finish_reason: Some(FinishReason::ToolCalls),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
            },
            model: Some("m".into()),
            logprobs: Vec::new(),
        };
        let mut one = Assembler::default();
        one.push(&ChatDelta::whole(whole.clone()));
        assert_eq!(one.into_response(), whole);

        let mut pieces = Assembler::default();
        for delta in [
            ChatDelta {
                content: "hel".into(),
                ..ChatDelta::default()
            },
            ChatDelta {
                content: "lo".into(),
                tool_calls: vec![ToolCallDelta {
                    index: 0,
                    id: Some("call_1".into()),
                    name: Some("lookup".into()),
                    arguments: "{\"q\"".into(),
                }],
                ..ChatDelta::default()
            },
            ChatDelta {
                tool_calls: vec![ToolCallDelta {
                    index: 0,
                    arguments: ":1}".into(),
                    ..ToolCallDelta::default()
                }],
                finish_reason: Some(FinishReason::ToolCalls),
                model: Some("m".into()),
                ..ChatDelta::default()
            },
            ChatDelta {
                usage: Some(whole.usage),
                ..ChatDelta::default()
            },
        ] {
            pieces.push(&delta);
        }
        assert!(pieces.finished());
        assert_eq!(pieces.into_response(), whole);
    }
}
