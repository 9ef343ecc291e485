//! Finding where a key path sits in a YAML file, so that rules checked after
//! parsing can still point at a line and column.
//!
//! Works on block-style YAML (what people write by hand) and on keys inside a
//! one-line flow map; when a segment cannot be found, the position of the
//! deepest segment that was found is returned.

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// One step of a path: a mapping key or a sequence index.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The position of `path` in `text`.
pub fn locate(text: &str, path: &[Step<'_>]) -> Position {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Position { line: 1, column: 1 };
    // The block being searched: lines after `from`, indented more than `parent`.
    let (mut from, mut parent) = (0usize, -1isize);
    // After a sequence item is found, its own line belongs to its block.
    let mut item_line = None;
    for step in path {
        let mut hit = None;
        let mut items_seen = 0;
        for (index, line) in lines.iter().enumerate().skip(from) {
            let content = line.trim_start();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let indent = (line.len() - content.len()) as isize;
            if indent <= parent && item_line != Some(index) {
                break;
            }
            match step {
                Step::Key(key) => {
                    let body = content.strip_prefix("- ").unwrap_or(content);
                    let key_colon = format!("{key}:");
                    if body.starts_with(&key_colon) {
                        let column = line.len() - body.len() + 1;
                        hit = Some((
                            index,
                            column,
                            indent + (content.len() - body.len()) as isize,
                        ));
                        break;
                    }
                    if let Some(at) = line
                        .find(&format!(" {key_colon}"))
                        .or_else(|| line.find(&format!("{{{key_colon}")))
                        && line.contains('{')
                    {
                        hit = Some((index, at + 2, indent));
                        break;
                    }
                }
                Step::Index(wanted) => {
                    if content.starts_with("- ") || content == "-" {
                        if items_seen == *wanted {
                            hit = Some((index, indent as usize + 3, indent));
                            break;
                        }
                        items_seen += 1;
                    }
                }
            }
        }
        match hit {
            Some((line, column, indent)) => {
                found = Position {
                    line: line + 1,
                    column,
                };
                from = line + 1;
                parent = indent;
                item_line = None;
                // A sequence item's own keys sit on the item's line too, and
                // so do the keys of a flow map written after its key.
                if matches!(step, Step::Index(_)) || lines[line].contains('{') {
                    from = line;
                    item_line = Some(line);
                }
            }
            None => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "id: x\nparties:\n  - organisation: A\n    name: First\n  - organisation: B\n    name: Second\ndatasets:\n  d1:\n    fields:\n      nhs_number: keep\n      sex: { code_map: { M: male } }\n";

    #[test]
    fn finds_keys_items_and_flow_keys() {
        assert_eq!(
            locate(YAML, &[Step::Key("id")]),
            Position { line: 1, column: 1 }
        );
        assert_eq!(
            locate(
                YAML,
                &[Step::Key("parties"), Step::Index(1), Step::Key("name")]
            ),
            Position { line: 6, column: 5 }
        );
        assert_eq!(
            locate(
                YAML,
                &[
                    Step::Key("parties"),
                    Step::Index(1),
                    Step::Key("organisation")
                ]
            ),
            Position { line: 5, column: 5 }
        );
        assert_eq!(
            locate(
                YAML,
                &[
                    Step::Key("datasets"),
                    Step::Key("d1"),
                    Step::Key("fields"),
                    Step::Key("nhs_number")
                ]
            ),
            Position {
                line: 10,
                column: 7
            }
        );
        assert_eq!(
            locate(
                YAML,
                &[
                    Step::Key("datasets"),
                    Step::Key("d1"),
                    Step::Key("fields"),
                    Step::Key("sex"),
                    Step::Key("code_map")
                ]
            ),
            Position {
                line: 11,
                column: 14
            }
        );
        // Missing: the deepest found.
        assert_eq!(
            locate(YAML, &[Step::Key("datasets"), Step::Key("nope")]),
            Position { line: 7, column: 1 }
        );
    }
}
