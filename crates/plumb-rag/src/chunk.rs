//! Chunking: a document's text cut into pieces of at most `max_tokens` tokens, each with its
//! byte span in the text and the path of headings it sits under.
//!
//! Tokens are counted with cl100k (the encoding of OpenAI's embedding models): one yardstick
//! for every collection, whatever embedder follows. Two strategies:
//!
//! * `structure` (the default): text-splitter's semantic levels — Markdown sections, then
//!   paragraphs, sentences, words — so a chunk is the largest run of whole units that fits;
//!   neighbours share up to `overlap` tokens of whole units (none when a unit is longer); a
//!   heading left alone joins the chunk after it when both fit.
//! * `fixed`: windows of `max_tokens` tokens cut at word boundaries whatever the structure,
//!   each starting `overlap` tokens before the previous one ended (tokens counted word by word,
//!   a word with the space before it).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};
use tiktoken_rs::CoreBPE;

/// How a collection cuts its documents: recorded with the collection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkingConfig {
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "default_overlap")]
    pub overlap: usize,
}

fn default_max_tokens() -> usize {
    256
}

fn default_overlap() -> usize {
    32
}

impl Default for ChunkingConfig {
    fn default() -> ChunkingConfig {
        ChunkingConfig {
            strategy: Strategy::default(),
            max_tokens: default_max_tokens(),
            overlap: default_overlap(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Headings, paragraphs, sentences, words: the largest whole units that fit.
    #[default]
    Structure,
    /// Windows of `max_tokens` at word boundaries.
    Fixed,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChunkError {
    #[error("chunking: max_tokens must be at least 8, got {0}")]
    TooSmall(usize),
    #[error("chunking: overlap ({overlap}) must be smaller than max_tokens ({max_tokens})")]
    Overlap { overlap: usize, max_tokens: usize },
    #[error("chunking: the cl100k tokenizer could not be loaded: {0}")]
    Tokenizer(String),
}

impl ChunkingConfig {
    pub fn check(&self) -> Result<(), ChunkError> {
        if self.max_tokens < 8 {
            return Err(ChunkError::TooSmall(self.max_tokens));
        }
        if self.overlap >= self.max_tokens {
            return Err(ChunkError::Overlap {
                overlap: self.overlap,
                max_tokens: self.max_tokens,
            });
        }
        Ok(())
    }
}

/// One piece of a document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Position in the document, from 0.
    pub index: usize,
    pub text: String,
    /// Byte span of `text` in the document's text.
    pub start: usize,
    pub end: usize,
    /// The headings the chunk's start sits under, outermost first (Markdown only).
    pub headings: Vec<String>,
    pub tokens: usize,
}

fn cl100k() -> Result<&'static CoreBPE, ChunkError> {
    static BPE: OnceLock<Result<CoreBPE, String>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ChunkError::Tokenizer(e.clone()))
}

/// Tokens of `text` by cl100k.
pub fn count_tokens(text: &str) -> Result<usize, ChunkError> {
    Ok(cl100k()?.encode_ordinary(text).len())
}

/// Cuts `text` (Markdown when `markdown`) into chunks under `config`. Empty and
/// whitespace-only text gives no chunks.
pub fn chunk(
    text: &str,
    markdown: bool,
    config: &ChunkingConfig,
) -> Result<Vec<Chunk>, ChunkError> {
    config.check()?;
    let bpe = cl100k()?;
    let spans: Vec<(usize, usize)> = match config.strategy {
        Strategy::Structure => {
            let chunk_config = ChunkConfig::new(config.max_tokens)
                .with_sizer(bpe)
                .with_overlap(config.overlap)
                .map_err(|_| ChunkError::Overlap {
                    overlap: config.overlap,
                    max_tokens: config.max_tokens,
                })?;
            if markdown {
                MarkdownSplitter::new(chunk_config)
                    .chunk_indices(text)
                    .map(|(start, piece)| (start, start + piece.len()))
                    .collect()
            } else {
                TextSplitter::new(chunk_config)
                    .chunk_indices(text)
                    .map(|(start, piece)| (start, start + piece.len()))
                    .collect()
            }
        }
        Strategy::Fixed => fixed_windows(text, config, bpe),
    };
    let spans = if markdown {
        merge_bare_headings(text, spans, config.max_tokens, bpe)
    } else {
        spans
    };
    let headings = if markdown { headings(text) } else { Vec::new() };
    Ok(spans
        .into_iter()
        .filter(|(start, end)| !text[*start..*end].trim().is_empty())
        .enumerate()
        .map(|(index, (start, end))| {
            let piece = &text[start..end];
            Chunk {
                index,
                text: piece.to_owned(),
                start,
                end,
                headings: heading_path(&headings, start),
                tokens: bpe.encode_ordinary(piece).len(),
            }
        })
        .collect())
}

/// Word-aligned windows of at most `max_tokens` (a longer single word is a window alone).
fn fixed_windows(text: &str, config: &ChunkingConfig, bpe: &CoreBPE) -> Vec<(usize, usize)> {
    let mut words: Vec<(usize, usize, usize)> = Vec::new(); // (start, end, tokens)
    let mut start = None;
    for (at, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(at),
            (true, Some(from)) => {
                words.push((from, at, 0));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(from) = start {
        words.push((from, text.len(), 0));
    }
    for (index, word) in words.iter_mut().enumerate() {
        let piece = &text[word.0..word.1];
        let spaced = if index == 0 {
            piece.to_owned()
        } else {
            format!(" {piece}")
        };
        word.2 = bpe.encode_ordinary(&spaced).len();
    }
    let mut spans = Vec::new();
    let mut first = 0;
    while first < words.len() {
        let mut last = first;
        let mut tokens = words[first].2;
        while last + 1 < words.len() && tokens + words[last + 1].2 <= config.max_tokens {
            last += 1;
            tokens += words[last].2;
        }
        // Word-by-word counts are close, not exact (line breaks tokenize apart): check.
        while last > first
            && bpe
                .encode_ordinary(&text[words[first].0..words[last].1])
                .len()
                > config.max_tokens
        {
            last -= 1;
        }
        spans.push((words[first].0, words[last].1));
        if last + 1 >= words.len() {
            break;
        }
        // The next window starts `overlap` tokens back, and always moves forward.
        let mut next = last + 1;
        let mut shared = 0;
        while next > first + 1 && shared + words[next - 1].2 <= config.overlap {
            next -= 1;
            shared += words[next].2;
        }
        first = next;
    }
    spans
}

/// A chunk that is only headings (a section too long to keep whole starts with its heading
/// alone) joins the chunk after it when the two fit together: a heading says little by itself.
fn merge_bare_headings(
    text: &str,
    spans: Vec<(usize, usize)>,
    max_tokens: usize,
    bpe: &CoreBPE,
) -> Vec<(usize, usize)> {
    let bare = |span: &(usize, usize)| {
        text[span.0..span.1]
            .lines()
            .filter(|line| !line.trim().is_empty())
            .all(|line| line.trim_start().starts_with('#'))
    };
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    let mut pending: Option<(usize, usize)> = None;
    for span in spans {
        let span = match pending.take() {
            Some(head)
                if span.0 >= head.1
                    && bpe.encode_ordinary(&text[head.0..span.1]).len() <= max_tokens =>
            {
                (head.0, span.1)
            }
            Some(head) => {
                merged.push(head);
                span
            }
            None => span,
        };
        if bare(&span) {
            pending = Some(span);
        } else {
            merged.push(span);
        }
    }
    merged.extend(pending);
    merged
}

/// Every Markdown heading: (byte offset, level, text).
fn headings(text: &str) -> Vec<(usize, u8, String)> {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    let mut found = Vec::new();
    let mut current: Option<(usize, u8, String)> = None;
    for (event, range) in Parser::new(text).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                current = Some((range.start, level as u8, String::new()));
            }
            Event::Text(piece) | Event::Code(piece) => {
                if let Some((_, _, heading)) = current.as_mut() {
                    heading.push_str(&piece);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((at, level, heading)) = current.take() {
                    found.push((at, level, heading.trim().to_owned()));
                }
            }
            _ => {}
        }
    }
    found
}

/// The headings in force at byte `at`: the last one of each level above the deepest.
fn heading_path(headings: &[(usize, u8, String)], at: usize) -> Vec<String> {
    let mut stack: Vec<(u8, &str)> = Vec::new();
    for (start, level, text) in headings {
        if *start > at {
            break;
        }
        while stack.last().is_some_and(|(l, _)| l >= level) {
            stack.pop();
        }
        stack.push((*level, text));
    }
    stack.into_iter().map(|(_, text)| text.to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heading_paths_follow_the_levels() {
        let text = "# A\n\nx\n\n## B\n\ny\n\n### C\n\nz\n\n## D\n\nw\n";
        let found = headings(text);
        assert_eq!(found.len(), 4);
        assert_eq!(heading_path(&found, 0), ["A"]);
        let z = text.find('z').unwrap_or(0);
        assert_eq!(heading_path(&found, z), ["A", "B", "C"]);
        let w = text.find('w').unwrap_or(0);
        assert_eq!(heading_path(&found, w), ["A", "D"]);
    }

    #[test]
    fn bad_configs_are_refused() {
        let config = ChunkingConfig {
            max_tokens: 4,
            ..ChunkingConfig::default()
        };
        assert_eq!(chunk("x", false, &config), Err(ChunkError::TooSmall(4)));
        let config = ChunkingConfig {
            max_tokens: 32,
            overlap: 32,
            ..ChunkingConfig::default()
        };
        assert!(matches!(
            chunk("x", false, &config),
            Err(ChunkError::Overlap { .. })
        ));
    }
}
