use std::path::Path;

use indexmap::IndexMap;
use plumb_core::{ModelParams, Role};
use plumb_prompt::{
    Example, MessageTemplate, PromptFile, Risk, VarType, Variable, YamlScope, to_yaml,
};
use proptest::prelude::*;

/// Text of the kinds prompts hold: several lines, indentation, quotes, YAML-looking pieces,
/// trailing spaces, unicode, and template expressions (which must stay valid templates).
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9 ,.!?'\"#:;-]{0,30}",
        Just("\n".to_owned()),
        Just("  indented\n".to_owned()),
        Just("- a: b\n".to_owned()),
        Just("trailing space \n".to_owned()),
        Just("{{ ticket }}".to_owned()),
        Just("{% if x is defined %}x{% endif %}".to_owned()),
        Just("ünïcödé — ✓".to_owned()),
        Just("\t".to_owned()),
        Just("\n\n".to_owned()),
        Just("null".to_owned()),
        Just("yes".to_owned()),
        Just("0.5".to_owned()),
    ];
    prop::collection::vec(piece, 1..8).prop_map(|pieces| pieces.concat())
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::System),
        Just(Role::User),
        Just(Role::Assistant),
        Just(Role::Developer)
    ]
}

pub fn prompt_file() -> impl Strategy<Value = PromptFile> {
    (
        "[a-z][a-z0-9_-]{0,12}",
        prop::option::of(text()),
        prop::collection::vec((role(), text()), 1..4),
        prop::collection::vec((text(), text()), 0..3),
        prop::option::of(0u32..200),
        prop::option::of(prop::collection::vec("[a-z\n]{1,3}", 1..3)),
        prop::option::of(prop_oneof![Just(Risk::Low), Just(Risk::High)]),
        prop::option::of(0.0f64..2.0),
        prop::bool::ANY,
    )
        .prop_map(
            |(
                name,
                description,
                messages,
                examples,
                max_tokens,
                stop,
                risk,
                temperature,
                with_default,
            )| {
                let mut variables = IndexMap::new();
                variables.insert(
                    "ticket".to_owned(),
                    Variable {
                        kind: VarType::String,
                        required: !with_default,
                        default: with_default.then(|| serde_json::json!("n/a")),
                        description: description.clone(),
                    },
                );
                PromptFile {
                    name,
                    description,
                    owner: None,
                    risk,
                    tags: vec!["t".into()],
                    model: with_default.then(|| "fast".to_owned()),
                    messages: messages
                        .into_iter()
                        .map(|(role, content)| MessageTemplate { role, content })
                        .collect(),
                    examples: examples
                        .into_iter()
                        .filter(|(i, o)| !i.trim().is_empty() && !o.trim().is_empty())
                        .map(|(input, output)| Example { input, output })
                        .collect(),
                    params: ModelParams {
                        temperature,
                        max_tokens: max_tokens.filter(|m| *m > 0),
                        stop: stop.unwrap_or_default(),
                        ..ModelParams::default()
                    },
                    variables,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn yaml_reads_back_to_the_same_file(file in prompt_file()) {
        let text = to_yaml(&file, YamlScope::Full);
        let back = PromptFile::parse(&text, Path::new("roundtrip.yaml"))
            .map_err(|e| TestCaseError::fail(format!("{e}\n---\n{text}")))?;
        prop_assert_eq!(&back, &file, "{}", text);
        prop_assert_eq!(back.content_hash(), file.content_hash());
    }
}
