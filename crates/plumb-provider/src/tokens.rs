//! Token counts when a provider does not report them: tiktoken's encodings for OpenAI-style
//! models (loaded once, on first use).

use std::sync::OnceLock;

use plumb_core::{Message, Usage};
use tiktoken_rs::CoreBPE;

fn o200k() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

fn cl100k() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref()
}

/// Counts tokens of `text` with the encoding `model` most likely uses (o200k for the 4o/4.1/5/o
/// families, cl100k otherwise).
pub fn count(model: &str, text: &str) -> u64 {
    let newer = ["gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4"]
        .iter()
        .any(|p| model.starts_with(p));
    let bpe = if newer { o200k() } else { cl100k() };
    match bpe {
        Some(bpe) => bpe.encode_with_special_tokens(text).len() as u64,
        None => rough_count(text),
    }
}

/// About four characters per token: the figure OpenAI quotes for English. Used by the mock
/// provider, whose answers cost nothing and whose counts only need to be plausible.
pub fn rough_count(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Chat-format overhead as OpenAI counts it: about 3 tokens per message plus 3 for the reply.
pub fn estimate_usage(model: &str, messages: &[Message], output: &str) -> Usage {
    let prompt: u64 = messages
        .iter()
        .map(|m| count(model, &m.content) + 3)
        .sum::<u64>()
        + 3;
    Usage {
        prompt_tokens: prompt,
        completion_tokens: count(model, output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_tiktoken() {
        assert_eq!(count("gpt-4o", "Hello, world!"), 4);
        assert_eq!(rough_count("abcdefgh"), 2);
    }
}
