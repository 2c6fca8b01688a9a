#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

//! Data-driven tests of diff and lint (`test_data/<kind>/<case>.*` → expected output file; set
//! `UPDATE_EXPECT=1` to rewrite the expected files after reviewing a change), and the property
//! that a prompt file written as YAML reads back unchanged.

mod data_driven;
mod roundtrip;
