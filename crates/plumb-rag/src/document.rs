//! Documents: a file read into text ready to chunk, with what retrieval reports about it.
//!
//! * Markdown (`.md`, `.markdown`, `.mdx`): as written.
//! * HTML (`.html`, `.htm`): the main content (dom_smoothie's Readability port drops
//!   navigation, footers and other boilerplate), turned into Markdown (htmd) so headings
//!   still guide chunking.
//! * PDF: text per page (pdf-extract, pure Rust); the byte offset where each page starts is kept
//!   so a chunk knows its page. Encrypted PDFs are tried with the empty password only.
//! * Plain text (`.txt`, and any other file that is valid UTF-8 without NUL bytes).
//!
//! A file that cannot be used (unreadable, binary, empty, an unreadable PDF) is a `LoadError`
//! naming the file and why: ingestion skips it and reports it.

use std::path::Path;

use plumb_core::hash_hex;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Markdown,
    Html,
    Pdf,
    Text,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Pdf => "pdf",
            Format::Text => "text",
        }
    }

    /// `markdown` (or `md`), `html`, `pdf`, `text` (or `txt`).
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "markdown" | "md" => Some(Format::Markdown),
            "html" => Some(Format::Html),
            "pdf" => Some(Format::Pdf),
            "text" | "txt" => Some(Format::Text),
            _ => None,
        }
    }

    /// Whether the document's text is Markdown (chunking follows its headings).
    pub fn is_markdown(self) -> bool {
        matches!(self, Format::Markdown | Format::Html)
    }
}

/// A loaded document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// The path as given.
    pub source: String,
    pub format: Format,
    /// The first heading, the HTML title, or the file name.
    pub title: String,
    pub text: String,
    /// PDF: the byte offset in `text` where each page starts (page 1 first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<usize>,
    /// Hash of the file's bytes: unchanged files are not chunked or embedded again.
    pub hash: String,
}

impl Document {
    /// The 1-based page that byte `at` of the text is on (PDF only).
    pub fn page_at(&self, at: usize) -> Option<usize> {
        if self.pages.is_empty() {
            return None;
        }
        Some(
            self.pages
                .iter()
                .filter(|start| **start <= at)
                .count()
                .max(1),
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    #[error("{path}: cannot read it: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: a binary file, not text (supported: Markdown, HTML, PDF, plain text)")]
    Binary { path: String },
    #[error("{path}: no text in it")]
    Empty { path: String },
    #[error("{path}: the PDF cannot be read: {reason}")]
    Pdf { path: String, reason: String },
}

/// Reads `path` into a document, by its extension (and, for others, by its content).
pub fn load(path: &Path) -> Result<Document, LoadError> {
    let source = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| LoadError::Unreadable {
        path: source.clone(),
        reason: error.to_string(),
    })?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_owned();
    from_bytes(&source, &extension, &stem, &bytes)
}

/// A document from a file's bytes; `extension` (lowercase, no dot) picks the format.
pub fn from_bytes(
    source: &str,
    extension: &str,
    stem: &str,
    bytes: &[u8],
) -> Result<Document, LoadError> {
    let hash = hash_hex(bytes);
    let format = match extension {
        "md" | "markdown" | "mdx" => Format::Markdown,
        "html" | "htm" | "xhtml" => Format::Html,
        "pdf" => Format::Pdf,
        _ if bytes.starts_with(b"%PDF-") => Format::Pdf,
        _ => Format::Text,
    };
    let (title, text, pages) = match format {
        Format::Pdf => {
            let pages = pdf_pages(source, bytes)?;
            let mut text = String::new();
            let mut starts = Vec::with_capacity(pages.len());
            for page in pages {
                starts.push(text.len());
                text.push_str(page.trim_end());
                text.push_str("\n\n");
            }
            (stem.to_owned(), text, starts)
        }
        _ => {
            let utf8 = utf8_text(source, bytes)?;
            match format {
                Format::Html => {
                    let (title, markdown) = html_main_content(source, &utf8)?;
                    let title = if title.trim().is_empty() {
                        first_heading(&markdown).unwrap_or_else(|| stem.to_owned())
                    } else {
                        title.trim().to_owned()
                    };
                    (title, markdown, Vec::new())
                }
                Format::Markdown => (
                    first_heading(&utf8).unwrap_or_else(|| stem.to_owned()),
                    utf8,
                    Vec::new(),
                ),
                _ => (stem.to_owned(), utf8, Vec::new()),
            }
        }
    };
    if text.trim().is_empty() {
        return Err(LoadError::Empty {
            path: source.to_owned(),
        });
    }
    Ok(Document {
        source: source.to_owned(),
        format,
        title,
        text,
        pages,
        hash,
    })
}

fn utf8_text(source: &str, bytes: &[u8]) -> Result<String, LoadError> {
    let binary = || LoadError::Binary {
        path: source.to_owned(),
    };
    if bytes.contains(&0) {
        return Err(binary());
    }
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| binary())?;
    // A byte-order mark is not text.
    Ok(text.trim_start_matches('\u{feff}').to_owned())
}

fn html_main_content(source: &str, html: &str) -> Result<(String, String), LoadError> {
    let mut readability = dom_smoothie::Readability::new(html, None, None).map_err(|error| {
        LoadError::Unreadable {
            path: source.to_owned(),
            reason: format!("HTML: {error}"),
        }
    })?;
    let (title, content) = match readability.parse() {
        Ok(article) => (article.title, article.content.to_string()),
        // No main content found (a short page): convert the whole body.
        Err(_) => (String::new(), html.to_owned()),
    };
    let markdown = htmd::convert(&content).map_err(|error| LoadError::Unreadable {
        path: source.to_owned(),
        reason: format!("HTML to Markdown: {error}"),
    })?;
    Ok((title, markdown))
}

/// The text of each page. pdf-extract can panic on malformed files: that is an unreadable PDF,
/// not a crash.
fn pdf_pages(source: &str, bytes: &[u8]) -> Result<Vec<String>, LoadError> {
    let owned = bytes.to_vec();
    let result =
        std::panic::catch_unwind(move || pdf_extract::extract_text_from_mem_by_pages(&owned));
    let reason = match result {
        Ok(Ok(pages)) if pages.is_empty() => "it has no pages".to_owned(),
        Ok(Ok(pages)) => return Ok(pages),
        Ok(Err(error)) => {
            let text = error.to_string();
            if text.to_ascii_lowercase().contains("decrypt") || text.contains("Encrypt") {
                format!("it is encrypted ({text})")
            } else {
                text
            }
        }
        Err(_) => "its structure is damaged (the PDF parser gave up)".to_owned(),
    };
    Err(LoadError::Pdf {
        path: source.to_owned(),
        reason,
    })
}

/// The text of the first Markdown heading.
fn first_heading(markdown: &str) -> Option<String> {
    markdown
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with('#'))
        .map(|line| line.trim_start_matches('#').trim().to_owned())
        .filter(|title| !title.is_empty())
}
