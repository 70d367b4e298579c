//! The import graph between the crate's top-level modules has no cycle.
//!
//! What it covers, exactly: every `crate::` path (in `use` lines and inline,
//! including `use crate::{a, b::c}` groups) in `src/*.rs` and `src/*/**.rs`,
//! attributed to the top-level module the file belongs to (`src/x.rs` and
//! everything under `src/x/` are module `x`). A reference to a root re-export
//! (`crate::Client`, `crate::Error`, ...) counts as one to the module
//! `src/lib.rs` re-exports it from. Not covered: `src/bin/` (binaries, outside
//! the library), `src/sim/` (test-only simulator), `src/lib.rs` itself,
//! comment lines, `#[cfg(test)] mod ...` blocks and files, and `super::` /
//! `self::` paths (they stay inside one module). It is a text scan, not a
//! parser: a `crate::` inside a string literal would be counted too.
//!
//! `cargo test --test module_graph -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `p` with `.` and `..` resolved without touching the file system (a
/// `#[path = "../x.rs"]` names a file outside the including module's folder).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Drops comment lines and `#[cfg(test)] mod x { ... }` blocks; collects the
/// files of `#[cfg(test)] mod x;` items (with or without `#[path]`).
fn strip_test_code(file: &Path, text: &str, test_files: &mut BTreeSet<PathBuf>) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim();
        if t == "#[cfg(test)]" {
            // Skip further attributes, remembering a #[path].
            let mut j = i + 1;
            let mut path_attr = None;
            while j < lines.len() && lines[j].trim().starts_with("#[") {
                let a = lines[j].trim();
                if let Some(rest) = a.strip_prefix("#[path = \"") {
                    path_attr = rest.strip_suffix("\"]").map(str::to_string);
                }
                j += 1;
            }
            let item = lines.get(j).map(|l| l.trim()).unwrap_or("");
            let is_mod = item.starts_with("mod ") || item.starts_with("pub mod ");
            if is_mod && item.ends_with(';') {
                let name = item.trim_start_matches("pub ").trim_start_matches("mod ");
                let name = name.trim_end_matches(';').trim();
                let dir = file.parent().unwrap();
                match path_attr {
                    Some(p) => {
                        test_files.insert(lexical(&dir.join(p)));
                    }
                    None => {
                        test_files.insert(dir.join(format!("{name}.rs")));
                        test_files.insert(dir.join(name).join("mod.rs"));
                    }
                }
                i = j + 1;
                continue;
            }
            if is_mod && item.ends_with('{') {
                let mut depth = 0i64;
                let mut k = j;
                while k < lines.len() {
                    depth += lines[k].matches('{').count() as i64;
                    depth -= lines[k].matches('}').count() as i64;
                    k += 1;
                    if depth <= 0 {
                        break;
                    }
                }
                i = k;
                continue;
            }
        }
        if !t.starts_with("//") {
            out.push_str(lines[i]);
            out.push('\n');
        }
        i += 1;
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every `crate::` path in `text`.
fn crate_refs(text: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for (pos, _) in text.match_indices("crate::") {
        // `$crate::` in macros and `foo_crate::` are not ours.
        let before = text[..pos].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &text[pos + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the brace group.
            let mut depth = 0;
            let mut item_start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 0 => {
                        refs.push(ident(&group[k..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            refs.push(ident(rest).to_string());
        }
    }
    refs
}

/// `pub use m::{A, B};` / `pub use m::A;` lines of lib.rs: name -> module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = ident(rest).to_string();
        let tail = rest[module.len()..]
            .trim_start_matches("::")
            .trim_end_matches(';');
        let names = tail.trim_start_matches('{').trim_end_matches('}');
        for n in names.split(',') {
            let n = n.trim();
            let name = n.rsplit(" as ").next().unwrap_or(n).trim();
            let name = name.rsplit("::").next().unwrap_or(name);
            if !name.is_empty() {
                map.insert(name.to_string(), module.clone());
            }
        }
    }
    map
}

/// The top-level module graph of the library, as described at the top.
fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let reexports = root_reexports(&lib);
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub mod ")
                .or(l.trim().strip_prefix("mod "))
        })
        .map(|m| m.trim_end_matches(';').trim().to_string())
        .collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut test_files = BTreeSet::new();
    let mut texts = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "bin" || module == "sim" || module == "lib" {
            continue;
        }
        let text = fs::read_to_string(f).unwrap();
        let code = strip_test_code(f, &text, &mut test_files);
        texts.push((f.clone(), module, code));
    }
    let mut g = Graph::new();
    for (f, module, code) in texts {
        if test_files.contains(&f) {
            continue;
        }
        assert!(
            modules.contains(&module),
            "{} is in no module of lib.rs",
            f.display()
        );
        let deps = g.entry(module.clone()).or_default();
        for r in crate_refs(&code) {
            let target = if modules.contains(&r) {
                r
            } else if let Some(m) = reexports.get(&r) {
                m.clone()
            } else {
                continue; // a root function such as init_logging
            };
            if target != module {
                deps.insert(target);
            }
        }
    }
    g
}

/// Every elementary cycle would be too many to print; one cycle per strongly
/// connected component with more than one module is enough to act on.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components.
    struct St<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut St<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        if let Some(ws) = s.g.get(v) {
            for w in ws {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let l = s.low[w].min(s.low[v]);
                    s.low.insert(v, l);
                } else if s.on.contains(w) {
                    let l = s.index[w].min(s.low[v]);
                    s.low.insert(v, l);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = St {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn top_level_modules_import_no_cycle() {
    let g = graph();
    for (m, deps) in &g {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("{m} -> {}", deps.join(", "));
    }
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "modules that import each other in a cycle (each line one strongly connected set): {found:#?}"
    );
}

/// The bottom of the graph, stricter than "no cycle": `types` and `errors`
/// import nothing crate-internal but `types`; `config` (parsed settings,
/// `FsyncPolicy`, `Deadlines` as plain data) only `errors`, `types` and
/// `servers`, the parsed `server-ip-port` list, which itself imports nothing.
#[test]
fn leaf_modules_stay_leaves() {
    let g = graph();
    let allowed: &[(&str, &[&str])] = &[
        ("types", &[]),
        ("servers", &[]),
        ("errors", &["types"]),
        ("config", &["errors", "types", "servers"]),
    ];
    for (m, ok) in allowed {
        let deps = g.get(*m).cloned().unwrap_or_default();
        let extra: Vec<_> = deps.iter().filter(|d| !ok.contains(&d.as_str())).collect();
        assert!(
            extra.is_empty(),
            "{m} may import only {ok:?}, imports also {extra:?}"
        );
    }
}

#[test]
fn the_scanner_sees_groups_and_reexports() {
    let refs = crate_refs("use crate::{a::{B, C}, d, e::f};\nlet x = crate::g::h(); $crate::no");
    assert_eq!(refs, ["a", "d", "e", "g"]);
    let lib = "pub use client::{Client, ClientOptions};\npub use errors::{Error, Result};\n";
    let m = root_reexports(lib);
    assert_eq!(m["ClientOptions"], "client");
    assert_eq!(m["Result"], "errors");
    let mut tf = BTreeSet::new();
    let code = strip_test_code(
        Path::new("src/x.rs"),
        "use crate::a;\n// crate::b\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\n#[cfg(test)]\n#[path = \"t.rs\"]\nmod t;\nuse crate::d;\n",
        &mut tf,
    );
    assert_eq!(crate_refs(&code), ["a", "d"]);
    assert!(tf.contains(Path::new("src/t.rs")));
}
