//! The crate's top-level modules form layers: no module may reach, through `crate::` and `super::` paths, a module
//! that reaches it back. A cycle means neither side can be read, tested or moved without the other.
//!
//! The graph is read from the source text, not from the compiler: every `.rs` file under `src/` (the binary's
//! `main.rs` aside, which nothing can import), with comments and string literals blanked, and every `crate::X` or
//! `super::...` path resolved to the top-level module it names, in `use` statements and inline alike. Test modules
//! count: `cargo test` compiles them into the same crate. A path that reaches the crate root and then names no
//! module of `lib.rs` (a glob, a macro) adds no edge.
//!
//! The same reading checks that a type name means one thing: no `pub` struct, enum, type alias, trait or union name
//! is defined in two files of `src/` (`main.rs` included), so a reader who meets `MacAddr` or `Change` never has to
//! ask which one. The names the project's style has every module or codec define for itself (`Error`, `Result`,
//! `DecodeError`) are the exception.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where a file refers to another top-level module.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Site {
    file: String,
    line: usize,
}

/// From module to module, every place the first refers to the second, in file and line order.
type Graph = BTreeMap<String, BTreeMap<String, Vec<Site>>>;

/// Where each type name is defined, in the order the files were read.
type Definitions = BTreeMap<String, Vec<Site>>;

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = crate_graph(&src);
    // A reader that saw nothing would find no cycle either; the agent wires the cluster state, so this edge exists.
    assert!(
        graph.get("agent").is_some_and(|to| to.contains_key("k8s")),
        "the graph misses agent -> k8s; the reader is broken: {graph:?}"
    );
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "the top-level modules of src/ form cycles:\n{}",
        describe(&graph, &cycles)
    );
}

#[test]
fn finds_a_cycle_in_a_hand_built_graph() {
    let graph = hand_built(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("e", "d")]);
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c", "a"]]);
    assert_eq!(
        describe(&graph, &cycles(&graph)),
        "a -> b -> c -> a\n  a -> b: src/a.rs:1\n  b -> c: src/b.rs:1\n  c -> a: src/c.rs:1\n"
    );

    let two = hand_built(&[("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")]);
    assert_eq!(cycles(&two), vec![vec!["a", "b", "a"], vec!["c", "d", "c"]]);

    let layered = hand_built(&[("a", "b"), ("b", "c"), ("a", "c")]);
    assert!(cycles(&layered).is_empty());
}

#[test]
fn reads_paths_as_the_compiler_resolves_them() {
    let modules = BTreeSet::from(["agent", "config", "ipvs", "netif", "plan"].map(String::from));
    let text = r####"//! Says [`crate::plan`] in a comment.
use super::codec::Dest;
use crate::agent::client;
const S: &str = "crate::config";
const R: &str = r#"crate::config "quoted""#;
const C: char = '{';
fn f<'a>(x: &'a str) { crate::netif::links::list(x); /* crate::plan */ }
use crate::{config::Labels, plan::{a, b}};
pub(crate) struct NotAPath;
#[cfg(test)]
mod tests {
    use super::super::codec::Golden;
    use super::*;
}
"####;
    let edges = file_edges(Path::new("src/ipvs/verify.rs"), text, &modules);
    let seen: Vec<(&str, usize)> = edges.iter().map(|(m, s)| (m.as_str(), s.line)).collect();
    assert_eq!(
        seen,
        vec![("agent", 3), ("netif", 7), ("config", 8), ("plan", 8)]
    );

    // In a top-level module, `super` is the crate root; in a module inside it, it is not.
    let top = "pub(super) fn f() {}
use super::agent::client;
mod inner { use super::super::plan::NodePlan; use super::x; }
";
    let edges = file_edges(Path::new("src/netif.rs"), top, &modules);
    let seen: Vec<&str> = edges.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(seen, vec!["agent", "plan"]);
}

#[test]
fn no_type_name_is_defined_in_two_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut definitions = Definitions::new();
    for file in rust_files(&src) {
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        let shown = Path::new("src").join(file.strip_prefix(&src).expect("under src"));
        add_definitions(&mut definitions, &shown, &text);
    }
    // A reader that saw nothing would find no duplicate either; the plan defines `NodePlan`.
    assert!(
        definitions.contains_key("NodePlan"),
        "no definition of NodePlan was read; the reader is broken: {definitions:?}"
    );
    let twice = defined_twice(&definitions);
    assert!(
        twice.is_empty(),
        "type names defined in more than one file of src/ (rename one, or have one module use the other's):\n{}",
        describe_names(&twice)
    );
}

#[test]
fn finds_a_type_name_defined_in_two_files() {
    let codec = r#"//! pub struct InAComment;
pub struct MacAddr(pub [u8; 6]);
pub(crate) enum Family { V4, V6 }
const S: &str = "pub struct InAString";
pub type Result<T, E = Error> = std::result::Result<T, E>;
pub enum Error {}
pub fn MacAddr() {}
struct Private;
#[cfg(test)]
mod tests {
    pub struct Builder<'a> { name: &'a str }
}
"#;
    let links = r#"use super::x;

pub  struct
  MacAddr { bytes: [u8; 6] }
pub type Result<T> = std::result::Result<T, Error>;
pub(in crate::netif) trait Family {}
pub union Private {}
pub struct Builder;
pub struct Builder;
"#;
    let read = type_definitions(Path::new("src/arp/codec.rs"), codec);
    let names: Vec<(&str, usize)> = read.iter().map(|(n, s)| (n.as_str(), s.line)).collect();
    assert_eq!(
        names,
        vec![
            ("MacAddr", 2),
            ("Family", 3),
            ("Result", 5),
            ("Error", 6),
            ("Builder", 11)
        ]
    );

    let mut definitions = Definitions::new();
    add_definitions(&mut definitions, Path::new("src/arp/codec.rs"), codec);
    add_definitions(&mut definitions, Path::new("src/netif/links.rs"), links);
    let twice = defined_twice(&definitions);
    assert_eq!(
        describe_names(&twice),
        "Builder: src/arp/codec.rs:11, src/netif/links.rs:8, src/netif/links.rs:9\n\
         Family: src/arp/codec.rs:3, src/netif/links.rs:6\n\
         MacAddr: src/arp/codec.rs:2, src/netif/links.rs:4\n"
    );

    // Two definitions in one file (a `cfg` pair, say) are one module's business, not a clash.
    let mut one_file = Definitions::new();
    add_definitions(&mut one_file, Path::new("src/netif/links.rs"), links);
    assert!(defined_twice(&one_file).is_empty());
}

/// The graph of the crate rooted at `src/lib.rs`.
fn crate_graph(src: &Path) -> Graph {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("reading src/lib.rs");
    let modules = declared_modules(&code_only(&lib));
    assert!(!modules.is_empty(), "src/lib.rs declares no module");
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).expect("under src");
        if relative == Path::new("lib.rs") || relative == Path::new("main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        let shown = Path::new("src").join(relative);
        let from = module_path(relative)[0].clone();
        for (to, site) in file_edges(&shown, &text, &modules) {
            graph
                .entry(from.clone())
                .or_default()
                .entry(to)
                .or_default()
                .push(site);
        }
    }
    graph
}

/// Every `.rs` file under `dir`, sorted, so sites come out in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("reading a source directory")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The names of `mod x;` and `mod x { .. }` items in a crate root, whatever their visibility and attributes.
fn declared_modules(code: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ';' || c == '{'))
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        if pair[0] == "mod" {
            let name = pair[1].trim_end_matches([';', '{']);
            if !name.is_empty() {
                modules.insert(name.to_string());
            }
        }
    }
    modules
}

/// The module a file defines, from its path under `src/`: `k8s/report.rs` is `k8s::report`, `k8s/mod.rs` is `k8s`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut path: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if path.last().is_some_and(|s| s == "mod") {
        path.pop();
    }
    path
}

/// Every reference in one file to a top-level module other than its own, in order, with the line it is on.
fn file_edges(shown: &Path, text: &str, modules: &BTreeSet<String>) -> Vec<(String, Site)> {
    let relative = shown.strip_prefix("src").unwrap_or(shown);
    let file_module = module_path(relative);
    let code: Vec<char> = code_only(text).chars().collect();
    let mut edges = Vec::new();
    // Inline modules open at some brace depth; `super` counts from the innermost one.
    let mut inline: Vec<(usize, String)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut depth = 0;
    let mut line = 1;
    let mut i = 0;
    while i < code.len() {
        let c = code[i];
        match c {
            '\n' => line += 1,
            '{' => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    inline.push((depth, name));
                }
            }
            '}' => {
                if inline.last().is_some_and(|(d, _)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            ';' => pending_mod = None,
            _ => {}
        }
        if !is_word_start(&code, i) {
            i += 1;
            continue;
        }
        let word = word_at(&code, i);
        if word == "mod" {
            let next = skip_space(&code, i + word.len());
            let name = word_at(&code, next);
            if !name.is_empty() {
                pending_mod = Some(name);
            }
        } else if (word == "crate" || word == "super") && !continues_a_path(&code, i) {
            let mut here = file_module.clone();
            here.extend(inline.iter().map(|(_, name)| name.clone()));
            for target in path_targets(&code, i, &here, modules) {
                if target != file_module[0] {
                    let site = Site {
                        file: shown.display().to_string(),
                        line,
                    };
                    edges.push((target, site));
                }
            }
        }
        i += word.len().max(1);
    }
    edges
}

/// The top-level modules the path starting at `start` (`crate::..` or `super::..`) names, seen from module `here`;
/// none for `pub(crate)` and `pub(super)`, which are not paths.
fn path_targets(
    code: &[char],
    start: usize,
    here: &[String],
    modules: &BTreeSet<String>,
) -> Vec<String> {
    let mut base: Vec<String> = here.to_vec();
    let mut at = start;
    if word_at(code, at) == "crate" {
        base.clear();
        let Some(next) = after_separator(code, at + "crate".len()) else {
            return Vec::new();
        };
        at = next;
    } else {
        // A run of `super::`, each one a step up.
        while word_at(code, at) == "super" {
            if base.pop().is_none() {
                return Vec::new();
            }
            let Some(next) = after_separator(code, at + "super".len()) else {
                return Vec::new();
            };
            at = next;
        }
    }
    resolved(code, at, &base, modules)
}

/// What the rest of a path names, once its `crate`/`super` prefix has led to module `base`.
fn resolved(code: &[char], at: usize, base: &[String], modules: &BTreeSet<String>) -> Vec<String> {
    if let Some(top) = base.first() {
        return vec![top.clone()];
    }
    let known = |name: &str| modules.contains(name).then(|| name.to_string());
    if code.get(at) == Some(&'{') {
        return group_heads(code, at)
            .iter()
            .filter_map(|n| known(n))
            .collect();
    }
    known(&word_at(code, at)).into_iter().collect()
}

/// The first word of each item of the `{ .. }` group opening at `open`: `{a::x, b::{y, z}}` gives `a` and `b`.
fn group_heads(code: &[char], open: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (i, &c) in code.iter().enumerate().skip(open) {
        match c {
            '{' => {
                depth += 1;
                expect_head = depth == 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect_head = true,
            _ if expect_head && is_word_start(code, i) => {
                heads.push(word_at(code, i));
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// The position after a `::` at `at` (spaces allowed around it), or `None` when there is none.
fn after_separator(code: &[char], at: usize) -> Option<usize> {
    let at = skip_space(code, at);
    (code.get(at) == Some(&':') && code.get(at + 1) == Some(&':')).then(|| skip_space(code, at + 2))
}

/// Whether the word at `at` follows a `::`, as the second `super` of `super::super::x` does: the path was read from
/// its first word.
fn continues_a_path(code: &[char], at: usize) -> bool {
    let before: Vec<char> = code[..at]
        .iter()
        .rev()
        .skip_while(|c| c.is_whitespace())
        .take(2)
        .copied()
        .collect();
    before == [':', ':']
}

fn skip_space(code: &[char], mut at: usize) -> usize {
    while code.get(at).is_some_and(|c| c.is_whitespace()) {
        at += 1;
    }
    at
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_word_start(code: &[char], at: usize) -> bool {
    code.get(at)
        .is_some_and(|&c| is_word_char(c) && !c.is_ascii_digit())
        && (at == 0 || !is_word_char(code[at - 1]))
}

fn word_at(code: &[char], at: usize) -> String {
    code.iter()
        .skip(at)
        .take_while(|&&c| is_word_char(c))
        .collect()
}

/// `text` with comments and the insides of string and character literals replaced by spaces, line breaks kept, so
/// that neither a doc link nor a string can add an edge, nor a brace in them throw off the depth.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_at(&chars, i) {
            // r"..", r#".."#, br#".."#: no escapes; ends at a quote followed by as many hashes.
            let open = i + chars[i..].iter().position(|&c| c == '"').expect("a quote") + 1;
            for _ in i..open {
                out.push(' ');
            }
            i = open;
            while i < chars.len() {
                if chars[i] == '"'
                    && chars[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == '#')
                        .count()
                        == hashes
                {
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if let Some(&c) = chars.get(i) {
                    blank(&mut out, c);
                }
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal ('{', '\n', '\''); a lifetime ('a) has no closing quote after one character.
            out.push(' ');
            i += 1;
            if chars.get(i) == Some(&'\\') {
                out.push(' ');
                i += 1;
            }
            while i < chars.len() {
                let end = chars[i] == '\'';
                out.push(' ');
                i += 1;
                if end {
                    break;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The number of hashes of a raw string literal starting at `at` (`r"`, `r#"`, `br"`, `cr"`), if one does.
fn raw_string_at(chars: &[char], at: usize) -> Option<usize> {
    if at > 0 && is_word_char(chars[at - 1]) {
        return None;
    }
    let mut i = at;
    if matches!(chars.get(i), Some('b' | 'c')) {
        i += 1;
    }
    if chars.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
    (chars.get(i + hashes) == Some(&'"')).then_some(hashes)
}

/// The cycles to name: within each group of modules that reach one another (Tarjan's strongly connected
/// components), the shortest cycle through each member, as the modules along it from its first by name, that first
/// repeated at the end. Every module of a group is on one of them, and so is every pair that point at each other.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = graph
        .iter()
        .flat_map(|(from, to)| std::iter::once(from).chain(to.keys()))
        .collect();
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for node in nodes {
        if !tarjan.index.contains_key(node.as_str()) {
            tarjan.visit(node);
        }
    }
    let mut found = BTreeSet::new();
    for component in tarjan.components.iter().filter(|c| c.len() > 1) {
        for member in component {
            let mut cycle = shortest_cycle(graph, member, component);
            cycle.pop();
            let first = (0..cycle.len())
                .min_by_key(|&i| &cycle[i])
                .expect("not empty");
            cycle.rotate_left(first);
            cycle.push(cycle[0].clone());
            found.insert(cycle);
        }
    }
    found.into_iter().collect()
}

struct Tarjan<'g> {
    graph: &'g Graph,
    index: BTreeMap<&'g str, usize>,
    low: BTreeMap<&'g str, usize>,
    stack: Vec<&'g str>,
    on_stack: BTreeSet<&'g str>,
    components: Vec<BTreeSet<String>>,
}

impl<'g> Tarjan<'g> {
    fn visit(&mut self, node: &'g str) {
        let index = self.index.len();
        self.index.insert(node, index);
        self.low.insert(node, index);
        self.stack.push(node);
        self.on_stack.insert(node);
        for next in self.graph.get(node).into_iter().flat_map(|to| to.keys()) {
            let next = next.as_str();
            if !self.index.contains_key(next) {
                self.visit(next);
                let low = self.low[node].min(self.low[next]);
                self.low.insert(node, low);
            } else if self.on_stack.contains(next) {
                let low = self.low[node].min(self.index[next]);
                self.low.insert(node, low);
            }
        }
        if self.low[node] == self.index[node] {
            let mut component = BTreeSet::new();
            loop {
                let member = self.stack.pop().expect("on the stack");
                self.on_stack.remove(member);
                component.insert(member.to_string());
                if member == node {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

/// The shortest way from `start` back to itself, staying inside `component` (breadth first, neighbours by name).
fn shortest_cycle(graph: &Graph, start: &str, component: &BTreeSet<String>) -> Vec<String> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(node).into_iter().flat_map(|to| to.keys()) {
            if !component.contains(next) {
                continue;
            }
            if next == start {
                let mut path = vec![node];
                while let Some(&before) = came_from.get(path[path.len() - 1]) {
                    path.push(before);
                }
                path.reverse();
                path.push(start);
                return path.into_iter().map(String::from).collect();
            }
            if !came_from.contains_key(next.as_str()) && next != start {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    unreachable!("{start} is in a strongly connected component of more than one module")
}

/// Each cycle on a line, then each of its edges with the first place it is made and how many others there are.
fn describe(graph: &Graph, cycles: &[Vec<String>]) -> String {
    let mut out = String::new();
    for cycle in cycles {
        writeln!(out, "{}", cycle.join(" -> ")).unwrap();
        for pair in cycle.windows(2) {
            let sites = &graph[&pair[0]][&pair[1]];
            let first = &sites[0];
            write!(
                out,
                "  {} -> {}: {}:{}",
                pair[0], pair[1], first.file, first.line
            )
            .unwrap();
            if sites.len() > 1 {
                write!(out, " (and {} more)", sites.len() - 1).unwrap();
            }
            out.push('\n');
        }
    }
    out
}

fn add_definitions(definitions: &mut Definitions, shown: &Path, text: &str) {
    for (name, site) in type_definitions(shown, text) {
        definitions.entry(name).or_default().push(site);
    }
}

/// Every `pub` (or `pub(..)`) struct, enum, type alias, trait and union a file defines, with the line of its name,
/// in order; inline modules included, comments and strings not.
fn type_definitions(shown: &Path, text: &str) -> Vec<(String, Site)> {
    let code: Vec<char> = code_only(text).chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < code.len() {
        if !is_word_start(&code, i) {
            i += 1;
            continue;
        }
        let word = word_at(&code, i);
        if word == "pub" {
            let mut at = skip_space(&code, i + word.len());
            if code.get(at) == Some(&'(') {
                let close = code[at..].iter().position(|&c| c == ')');
                at = skip_space(&code, at + close.map_or(0, |c| c + 1));
            }
            let keyword = word_at(&code, at);
            if ["struct", "enum", "type", "trait", "union"].contains(&keyword.as_str()) {
                let at = skip_space(&code, at + keyword.len());
                let name = word_at(&code, at);
                if !name.is_empty() {
                    let line = 1 + code[..at].iter().filter(|&&c| c == '\n').count();
                    let site = Site {
                        file: shown.display().to_string(),
                        line,
                    };
                    found.push((name, site));
                }
            }
        }
        i += word.len().max(1);
    }
    found
}

/// The names, other than [`PER_MODULE_NAMES`], defined in more than one file, with every definition.
fn defined_twice(definitions: &Definitions) -> Definitions {
    definitions
        .iter()
        .filter(|(name, _)| !PER_MODULE_NAMES.contains(&name.as_str()))
        .filter(|(_, sites)| {
            let files: BTreeSet<&str> = sites.iter().map(|s| s.file.as_str()).collect();
            files.len() > 1
        })
        .map(|(name, sites)| (name.clone(), sites.clone()))
        .collect()
}

/// Names the project's style has every module define for itself: the module's `thiserror` enum `Error` with its
/// `Result` alias, and a codec's `DecodeError`.
const PER_MODULE_NAMES: [&str; 3] = ["DecodeError", "Error", "Result"];

/// Each name on a line, with the places it is defined.
fn describe_names(names: &Definitions) -> String {
    let mut out = String::new();
    for (name, sites) in names {
        let places: Vec<String> = sites
            .iter()
            .map(|s| format!("{}:{}", s.file, s.line))
            .collect();
        writeln!(out, "{name}: {}", places.join(", ")).unwrap();
    }
    out
}

/// A graph with one site per edge, in `src/<from>.rs` on line 1.
fn hand_built(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for (from, to) in edges {
        let site = Site {
            file: format!("src/{from}.rs"),
            line: 1,
        };
        graph
            .entry(from.to_string())
            .or_default()
            .entry(to.to_string())
            .or_default()
            .push(site);
    }
    graph
}
