//! Complexity routing: an alias whose `rules` send each request to another alias by a cheap
//! look at it (estimated tokens, patterns in the content, tools, turns). The first rule that
//! matches wins; a rule without `when` matches everything. The rule that fired is reported in
//! the `x-plumb-rule` header and the trace.
//!
//! ```yaml
//! gateway:
//!   models:
//!     auto:
//!       rules:
//!         - {name: long, when: {min_tokens: 2000}, use: strong}
//!         - {name: code, when: {matches: '```|Traceback|\bdef\b'}, use: strong}
//!         - {name: simple, use: cheap}
//! ```

use plumb_core::{ChatRequest, Role};
use regex::Regex;

/// When a rule applies; every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct Condition {
    /// Estimated tokens of all messages at least / at most this.
    pub min_tokens: Option<u64>,
    pub max_tokens: Option<u64>,
    /// A pattern found in the last user message.
    pub matches: Option<Regex>,
    /// The request offers tools (or not).
    pub tools: Option<bool>,
    /// At least this many messages.
    pub min_messages: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub when: Condition,
    /// The alias requests go to.
    pub target: String,
}

/// An alias that routes by rules.
#[derive(Clone, Debug)]
pub struct RuleRouter {
    pub alias: String,
    pub rules: Vec<Rule>,
}

impl Condition {
    fn holds(&self, request: &ChatRequest, tokens: u64) -> bool {
        if self.min_tokens.is_some_and(|min| tokens < min)
            || self.max_tokens.is_some_and(|max| tokens > max)
        {
            return false;
        }
        if self
            .tools
            .is_some_and(|wanted| wanted == request.params.tools.is_empty())
        {
            return false;
        }
        if self
            .min_messages
            .is_some_and(|min| request.messages.len() < min)
        {
            return false;
        }
        if let Some(pattern) = &self.matches {
            let last_user = request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.content.as_str())
                .unwrap_or_default();
            if !pattern.is_match(last_user) {
                return false;
            }
        }
        true
    }
}

impl RuleRouter {
    /// The first rule that matches `request`, if any.
    pub fn pick(&self, request: &ChatRequest) -> Option<&Rule> {
        let needs_tokens = self
            .rules
            .iter()
            .any(|r| r.when.min_tokens.is_some() || r.when.max_tokens.is_some());
        let tokens = if needs_tokens {
            request
                .messages
                .iter()
                .map(|m| plumb_provider::tokens::rough_count(&m.content))
                .sum()
        } else {
            0
        };
        self.rules
            .iter()
            .find(|rule| rule.when.holds(request, tokens))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use plumb_core::Message;

    fn ask(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![Message::new(Role::User, text)],
            ..ChatRequest::default()
        }
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let router = RuleRouter {
            alias: "auto".into(),
            rules: vec![
                Rule {
                    name: "long".into(),
                    when: Condition {
                        min_tokens: Some(50),
                        ..Condition::default()
                    },
                    target: "strong".into(),
                },
                Rule {
                    name: "code".into(),
                    when: Condition {
                        matches: Some(Regex::new("```|Traceback").unwrap()),
                        ..Condition::default()
                    },
                    target: "strong".into(),
                },
                Rule {
                    name: "simple".into(),
                    when: Condition::default(),
                    target: "cheap".into(),
                },
            ],
        };
        assert_eq!(router.pick(&ask("hi there")).unwrap().name, "simple");
        assert_eq!(
            router
                .pick(&ask("Traceback (most recent call last)"))
                .unwrap()
                .name,
            "code"
        );
        assert_eq!(
            router.pick(&ask(&"word ".repeat(200))).unwrap().name,
            "long"
        );
    }
}
