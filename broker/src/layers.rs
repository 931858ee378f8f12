//! The broker's modules in layers, and the test that keeps them so.
//!
//! A module may use the modules of the layers below its own, never those of
//! its own layer or above: there is no import cycle, and a reader can start
//! at the bottom (`error`, `config`, `store`) and meet nothing they have not
//! read yet. Tests (`#[cfg(test)] mod …` and `tests.rs` files) may use any
//! module to set themselves up; comments and doc links are not uses.
//!
//! When a new module needs something from a module above it, the thing is
//! usually in the wrong place: move the type down to where both can see it
//! (as the writer's row types live in `store/`), or hand the behaviour in
//! from above (as the server hands `records::writer::prepare` to the
//! backend's committer).

/// Top to bottom. A new top-level module is added to the layer it belongs
/// to; the test fails for a module missing here.
const LAYERS: &[&[&str]] = &[
    // Assembly: the processes and host commands.
    &["server", "cli", "dev"],
    // The listeners and what only they use.
    &["console"],
    &["approvals"],
    &["exchange"],
    &["copies"],
    &["identity", "idempotency"],
    // What a running broker's endpoints share.
    &["state"],
    &["people", "retention", "flow_changes"],
    &["records"],
    &["policy", "oplog"],
    &["keys"],
    &["lookups", "results", "cluster"],
    // The edge every listener shares, storage, configuration.
    &["edge"],
    &["store"],
    &["config"],
    &["metrics", "error"],
];

pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::LAYERS;

    /// Every `.rs` file below `dir` (the source tests read the crate's own
    /// files: this one and `store::boundary`).
    pub(crate) fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The code of a source file without its comments and test modules.
    fn code_of(text: &str) -> String {
        let code = text.split("#[cfg(test)]\nmod ").next().unwrap_or_default();
        code.lines()
            .map(|line| {
                let trimmed = line.trim_start();
                if trimmed.starts_with("//") {
                    ""
                } else {
                    // A trailing comment (no `//` inside a string literal
                    // names a module here).
                    line.split(" //").next().unwrap_or(line)
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The top-level modules named after `crate::` in `code`, with `use
    /// crate::{a, b::c}` groups opened.
    fn used_modules(code: &str) -> Vec<(usize, String)> {
        let mut found = Vec::new();
        let ident = |s: &str| -> String {
            s.trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        let mut at = 0;
        while let Some(i) = code[at..].find("crate::") {
            let start = at + i + "crate::".len();
            let line = code[..start].matches('\n').count() + 1;
            let rest = &code[start..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.push((line, ident(&item)));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(c);
                    }
                }
                found.push((line, ident(&item)));
            } else {
                found.push((line, ident(rest)));
            }
            at = start;
        }
        found.retain(|(_, m)| !m.is_empty());
        found
    }

    /// Every use between top-level modules goes down the layers.
    #[test]
    fn every_module_uses_only_the_layers_below_its_own() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let layer_of: BTreeMap<&str, usize> = LAYERS
            .iter()
            .enumerate()
            .flat_map(|(i, layer)| layer.iter().map(move |m| (*m, i)))
            .collect();
        let mut files = Vec::new();
        sources(&src, &mut files);
        files.sort();
        let mut wrong = Vec::new();
        for file in files {
            let rel = file.strip_prefix(&src).expect("under src");
            let Some(top) = rel.components().next() else {
                continue;
            };
            let top = top.as_os_str().to_string_lossy();
            let module = top.trim_end_matches(".rs");
            if ["lib", "main", "layers"].contains(&module)
                || rel.file_name().is_some_and(|n| n == "tests.rs")
            {
                continue;
            }
            let Some(&own) = layer_of.get(module) else {
                wrong.push(format!(
                    "{}: module `{module}` is in no layer",
                    rel.display()
                ));
                continue;
            };
            let text = std::fs::read_to_string(&file).expect("read source");
            for (line, used) in used_modules(&code_of(&text)) {
                if used == module {
                    continue;
                }
                match layer_of.get(used.as_str()) {
                    Some(&theirs) if theirs > own => {}
                    Some(_) => wrong.push(format!(
                        "{}:{line}: `{module}` uses `{used}`, which is not below it",
                        rel.display()
                    )),
                    None => {}
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn uses_are_found_in_paths_and_groups_but_not_in_comments() {
        let code = code_of(
            "use crate::store::Pools;\n\
             use crate::{records::{a, b}, keys};\n\
             // crate::server is named in a comment\n\
             let x = $crate::config::X; // crate::dev\n",
        );
        let found: Vec<String> = used_modules(&code).into_iter().map(|(_, m)| m).collect();
        assert_eq!(found, ["store", "records", "keys", "config"]);
    }
}
