//! Chunker fixtures: input documents and the chunks they must give (golden files under
//! `tests/fixtures`; `PLUMB_UPDATE_FIXTURES=1` rewrites them after a deliberate change).

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail by panicking")]

mod collection;
mod documents;
#[cfg(feature = "postgres")]
mod pgvector;

use std::path::{Path, PathBuf};

use plumb_rag::{Chunk, ChunkingConfig, Strategy, chunk, count_tokens};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden(name: &str, chunks: &[Chunk]) {
    let path = fixtures().join(name);
    let text = serde_json::to_string_pretty(chunks).unwrap() + "\n";
    if std::env::var_os("PLUMB_UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run with PLUMB_UPDATE_FIXTURES=1",
            path.display()
        )
    });
    assert_eq!(text, expected, "chunks differ from {}", path.display());
}

/// What every chunking must hold: spans are the text, in order, within the capacity.
fn check(text: &str, chunks: &[Chunk], config: &ChunkingConfig) {
    assert!(!chunks.is_empty());
    let mut last_start = 0;
    for (index, piece) in chunks.iter().enumerate() {
        assert_eq!(piece.index, index);
        assert_eq!(&text[piece.start..piece.end], piece.text);
        assert!(piece.start >= last_start, "chunks are in document order");
        last_start = piece.start;
        assert!(
            piece.tokens <= config.max_tokens,
            "{piece:?} over {}",
            config.max_tokens
        );
        assert_eq!(piece.tokens, count_tokens(&piece.text).unwrap());
    }
    // Every word of the document is in some chunk.
    for word in text.split_whitespace() {
        assert!(
            chunks.iter().any(|c| c.text.contains(word)),
            "`{word}` was dropped"
        );
    }
}

#[test]
fn markdown_chunks_follow_headings_and_keep_their_path() {
    let text = std::fs::read_to_string(fixtures().join("guide.md")).unwrap();
    let config = ChunkingConfig {
        strategy: Strategy::Structure,
        max_tokens: 60,
        overlap: 0,
    };
    let chunks = chunk(&text, true, &config).unwrap();
    check(&text, &chunks, &config);
    let first_boil = chunks
        .iter()
        .find(|c| c.text.contains("rinses the heating plate"))
        .unwrap();
    assert_eq!(
        first_boil.headings,
        ["Kettle Pro user guide", "Setting up", "First boil"]
    );
    assert!(
        chunks.iter().all(|c| c
            .text
            .lines()
            .any(|line| !line.trim_start().starts_with('#'))),
        "no chunk is a heading alone"
    );
    let table = chunks
        .iter()
        .find(|c| c.text.contains("Green tea"))
        .unwrap();
    assert!(
        table.text.contains("| Coffee | 95 °C |"),
        "the table stays whole: {table:?}"
    );
    golden("guide.structure-60.json", &chunks);
}

#[test]
fn overlap_repeats_whole_units_from_the_end_of_the_previous_chunk() {
    let text: String = (0..20)
        .map(|i| format!("Sentence {i} is short. "))
        .collect();
    let config = ChunkingConfig {
        strategy: Strategy::Structure,
        max_tokens: 30,
        overlap: 10,
    };
    let chunks = chunk(&text, false, &config).unwrap();
    check(&text, &chunks, &config);
    assert_eq!(chunks.len(), 5);
    for pair in chunks.windows(2) {
        assert!(pair[1].start < pair[0].end, "{pair:?}");
        let shared = &text[pair[1].start..pair[0].end];
        assert!(count_tokens(shared).unwrap() <= 10, "{shared:?}");
        assert!(
            shared.trim_end().ends_with('.'),
            "whole sentences: {shared:?}"
        );
    }
    // Sentences longer than the overlap are never cut to make one.
    let guide = std::fs::read_to_string(fixtures().join("guide.md")).unwrap();
    let config = ChunkingConfig {
        max_tokens: 60,
        overlap: 8,
        ..config
    };
    let chunks = chunk(&guide, true, &config).unwrap();
    check(&guide, &chunks, &config);
    golden("guide.structure-60-overlap-8.json", &chunks);
}

#[test]
fn fixed_windows_ignore_structure_and_overlap_by_words() {
    let text = std::fs::read_to_string(fixtures().join("guide.md")).unwrap();
    let config = ChunkingConfig {
        strategy: Strategy::Fixed,
        max_tokens: 48,
        overlap: 8,
    };
    let chunks = chunk(&text, true, &config).unwrap();
    check(&text, &chunks, &config);
    for pair in chunks.windows(2) {
        assert!(
            pair[1].start < pair[0].end,
            "each window starts inside the previous one"
        );
        assert!(pair[1].start > pair[0].start, "and moves forward");
    }
    golden("guide.fixed-48-overlap-8.json", &chunks);
}

#[test]
fn plain_text_splits_at_paragraphs_and_sentences() {
    let text = "First paragraph, short.\n\nThe second paragraph is longer. It has two sentences.\n\nThird.";
    let config = ChunkingConfig {
        strategy: Strategy::Structure,
        max_tokens: 8,
        overlap: 0,
    };
    let chunks = chunk(text, false, &config).unwrap();
    check(text, &chunks, &config);
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "First paragraph, short.",
            "The second paragraph is longer.",
            "It has two sentences.\n\nThird."
        ]
    );
    assert!(chunks.iter().all(|c| c.headings.is_empty()));
    assert!(chunk("  \n\n ", false, &config).unwrap().is_empty());
}
