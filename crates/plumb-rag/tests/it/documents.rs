//! Documents from each format, and the files ingestion must skip with a reason.

use plumb_rag::document::from_bytes;
use plumb_rag::{Format, LoadError, load};

use super::fixtures;

/// A minimal valid PDF: one page per text, each drawn in Helvetica.
pub fn pdf(pages: &[&str]) -> Vec<u8> {
    let mut objects: Vec<String> = Vec::new();
    let n = pages.len();
    // 1: catalog, 2: pages, 3: font, then page i at 4 + 2i and its content at 5 + 2i.
    objects.push("<< /Type /Catalog /Pages 2 0 R >>".into());
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    objects.push(format!(
        "<< /Type /Pages /Kids [{}] /Count {n} >>",
        kids.join(" ")
    ));
    objects.push(
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".into(),
    );
    for (i, text) in pages.iter().enumerate() {
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
            5 + 2 * i
        ));
        let stream = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
        objects.push(format!(
            "<< /Length {} >>\nstream\n{stream}\nendstream",
            stream.len()
        ));
    }
    let mut out = String::from("%PDF-1.4\n");
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.push_str(&format!("{} 0 obj\n{object}\nendobj\n", i + 1));
    }
    let xref = out.len();
    out.push_str(&format!(
        "xref\n0 {}\n0000000000 65535 f \n",
        objects.len() + 1
    ));
    for offset in offsets {
        out.push_str(&format!("{offset:010} 00000 n \n"));
    }
    out.push_str(&format!(
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    ));
    out.into_bytes()
}

#[test]
fn html_keeps_the_article_and_drops_the_boilerplate() {
    let document = load(&fixtures().join("article.html")).unwrap();
    assert_eq!(document.format, Format::Html);
    assert!(
        document.title.contains("Descaling your kettle"),
        "{}",
        document.title
    );
    let text = &document.text;
    assert!(
        text.contains("## What you need"),
        "headings become Markdown: {text}"
    );
    assert!(text.contains("equal parts water and white vinegar"));
    for boilerplate in ["Cart (0)", "Accept all cookies", "All rights reserved"] {
        assert!(
            !text.contains(boilerplate),
            "`{boilerplate}` should be gone: {text}"
        );
    }
}

#[test]
fn pdf_pages_are_kept() {
    let bytes = pdf(&["The kettle holds two litres.", "Descale it every month."]);
    let document = from_bytes("manual.pdf", "pdf", "manual", &bytes).unwrap();
    assert_eq!(document.format, Format::Pdf);
    assert_eq!(document.pages.len(), 2);
    let second = document.text.find("Descale").unwrap();
    assert_eq!(document.page_at(0), Some(1));
    assert_eq!(document.page_at(second), Some(2));
    assert!(document.text.contains("two litres"));
    assert_eq!(document.title, "manual");
}

#[test]
fn unusable_files_say_why() {
    let damaged = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage";
    assert!(matches!(
        from_bytes("bad.pdf", "pdf", "bad", damaged),
        Err(LoadError::Pdf { .. })
    ));
    assert_eq!(
        from_bytes(
            "image.png",
            "png",
            "image",
            &[0x89, b'P', b'N', b'G', 0, 0, 1]
        ),
        Err(LoadError::Binary {
            path: "image.png".into()
        })
    );
    assert_eq!(
        from_bytes("empty.md", "md", "empty", b"  \n\n"),
        Err(LoadError::Empty {
            path: "empty.md".into()
        })
    );
    let error = load(std::path::Path::new("/nonexistent/notes.md")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/notes.md: cannot read it")
    );
}

#[test]
fn markdown_and_text_keep_their_text() {
    let document = from_bytes(
        "guide.md",
        "md",
        "guide",
        "\u{feff}# Kettle guide\n\nBoil.".as_bytes(),
    )
    .unwrap();
    assert_eq!(document.title, "Kettle guide");
    assert!(
        document.text.starts_with("# Kettle"),
        "the byte-order mark is dropped"
    );
    assert!(document.format.is_markdown());
    let notes = from_bytes("notes", "", "notes", b"plain words").unwrap();
    assert_eq!(
        (notes.format, notes.title.as_str()),
        (Format::Text, "notes")
    );
    assert_ne!(notes.hash, document.hash);
}
