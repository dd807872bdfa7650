//! Cloud-config documents read and written the way cloud-init's PyYAML (YAML 1.1) reads
//! them. A YAML 1.2 round trip (serde_yaml and its forks) changes meaning for PyYAML: a plain
//! `yes` or `0644` is a boolean or an octal number to PyYAML but a string to YAML 1.2, and
//! re-emitted it comes back quoted or not by 1.2's rules. So documents are read as events
//! (yaml-rust2), plain scalars are kept as written and emitted plain again, and quoted ones
//! are emitted quoted: PyYAML resolves every scalar as it would have in the user's own file.

use std::fmt::Write as _;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A node of a cloud-config document.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A scalar as written without quotes: PyYAML decides its type (`yes`, `0644`, `~`).
    Plain(String),
    /// A string: quoted, a block scalar, or tagged `!!str`.
    Str(String),
    /// A scalar with an explicit tag other than `!!str` (`!!binary ...`), kept as written.
    Tagged(String, String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn str(s: impl Into<String>) -> Node {
        Node::Str(s.into())
    }

    pub fn map() -> Node {
        Node::Map(Vec::new())
    }

    /// Inserts or replaces `key` in a map (PyYAML keeps the last of duplicate keys).
    pub fn insert(&mut self, key: Node, value: Node) {
        if let Node::Map(entries) = self {
            match entries.iter_mut().find(|(k, _)| same_key(k, &key)) {
                Some(entry) => entry.1 = value,
                None => entries.push((key, value)),
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar that PyYAML reads as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            Node::Plain(s) if plain_is_string(s) => Some(s),
            _ => None,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Node::Seq(_) => 1,
            Node::Map(_) => 2,
            _ => 0,
        }
    }
}

/// Whether two keys are the same key to PyYAML: a plain `yes` (a boolean) is not the
/// string "yes".
fn same_key(a: &Node, b: &Node) -> bool {
    match (a.as_str(), b.as_str()) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a == b,
        _ => false,
    }
}

/// Virtlet's merge (its `utils.Merge`, the cloud-init documentation's "simple" method): maps
/// merge key by key, recursively; lists are appended; anything else, or values of different
/// kinds, are replaced by the later one.
pub fn merge(base: Node, over: Node) -> Node {
    match (base, over) {
        (Node::Map(mut entries), Node::Map(over)) => {
            for (k, v) in over {
                match entries.iter().position(|(bk, _)| same_key(bk, &k)) {
                    Some(i) => {
                        let old = std::mem::replace(&mut entries[i].1, Node::Plain(String::new()));
                        entries[i].1 = if old.kind() == v.kind() && v.kind() != 0 { merge(old, v) } else { v };
                    }
                    None => entries.push((k, v)),
                }
            }
            Node::Map(entries)
        }
        (Node::Seq(mut items), Node::Seq(over)) => {
            items.extend(over);
            Node::Seq(items)
        }
        (_, over) => over,
    }
}

/// Virtlet's overwrite mode: the later document's top-level keys replace the earlier ones.
pub fn overwrite(base: Node, over: Node) -> Node {
    let mut out = base;
    if let Node::Map(entries) = over {
        for (k, v) in entries {
            out.insert(k, v);
        }
    }
    out
}

/// Reads one YAML document whose top level is a mapping (an empty document is an empty
/// mapping). Errors say what is wrong and where (line and column).
pub fn parse_mapping(text: &str) -> Result<Node, String> {
    let mut builder = Builder::default();
    Parser::new_from_str(text).load(&mut builder, true).map_err(|e| e.to_string())?;
    if let Some(e) = builder.error {
        return Err(e);
    }
    if builder.documents > 1 {
        return Err("holds more than one YAML document (`---`); give one cloud-config document".into());
    }
    match builder.root.unwrap_or(Node::Plain(String::new())) {
        Node::Plain(s) if s.is_empty() || s == "~" || s == "null" => Ok(Node::map()),
        map @ Node::Map(_) => Ok(map),
        _ => Err("is not a YAML mapping (cloud-config is `key: value` pairs such as `packages: [...]`)".into()),
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, Option<usize>)>,
    /// A mapping's key waiting for its value, per open mapping (parallel to `stack`).
    keys: Vec<Option<Node>>,
    anchors: std::collections::HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    error: Option<String>,
}

impl Builder {
    fn fail(&mut self, mark: Marker, what: &str) {
        if self.error.is_none() {
            self.error = Some(format!("{what} at line {} column {}", mark.line(), mark.col() + 1));
        }
    }

    /// Adds a finished node to the open collection (or makes it the document).
    fn push(&mut self, node: Node, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some((parent, _)) = self.stack.last_mut() else {
            self.root = Some(node);
            return;
        };
        match parent {
            Node::Seq(items) => items.push(node),
            Node::Map(entries) => {
                let slot = self.keys.last_mut().expect("a key slot per open mapping");
                match slot.take() {
                    None => {
                        if node.kind() != 0 {
                            self.fail(mark, "a mapping or list as a mapping key is not supported");
                            return;
                        }
                        *slot = Some(node);
                    }
                    Some(key) => match entries.iter_mut().find(|(k, _)| same_key(k, &key)) {
                        Some(entry) => entry.1 = node,
                        None => entries.push((key, node)),
                    },
                }
            }
            _ => unreachable!("only collections are open"),
        }
    }
}

fn standard_tag(tag: &Option<Tag>) -> Option<&str> {
    tag.as_ref().filter(|t| t.handle == "tag:yaml.org,2002:").map(|t| t.suffix.as_str())
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let is_map = matches!(ev, Event::MappingStart(..));
        match ev {
            Event::DocumentStart => self.documents += 1,
            Event::Scalar(value, style, anchor, tag) => {
                let node = match (standard_tag(&tag), &tag) {
                    (Some("str"), _) => Node::Str(value),
                    (_, None) if style == TScalarStyle::Plain => Node::Plain(value),
                    (_, None) => Node::Str(value),
                    (Some(suffix), _) => Node::Tagged(format!("!!{suffix}"), value),
                    (None, Some(t)) => {
                        return self.fail(mark, &format!("the tag `{}{}` is not supported", t.handle, t.suffix))
                    }
                };
                self.push(node, anchor, mark);
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) => {
                let fine = match standard_tag(&tag) {
                    _ if tag.is_none() => true,
                    Some("map") | Some("omap") => is_map,
                    Some("seq") => !is_map,
                    _ => false,
                };
                if !fine {
                    return self.fail(mark, "tags on mappings and lists other than !!map and !!seq are not supported");
                }
                let node = if is_map { Node::map() } else { Node::Seq(Vec::new()) };
                self.stack.push((node, Some(anchor)));
                self.keys.push(None);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let (Some((node, anchor)), Some(_)) = (self.stack.pop(), self.keys.pop()) {
                    self.push(node, anchor.unwrap_or(0), mark);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.push(node, 0, mark),
                None => self.fail(mark, "an alias to an unknown anchor"),
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Whether PyYAML's resolver (YAML 1.1) reads a plain scalar as a string: not a boolean,
/// null, number, timestamp, or the merge and value keys.
pub fn plain_is_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON",
        "off", "Off", "OFF", "~", "null", "Null", "NULL", "", "<<", "=", ".inf", ".Inf", ".INF", "+.inf", "+.Inf",
        "+.INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN",
    ];
    if WORDS.contains(&s) {
        return false;
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits = |t: &str, ok: fn(char) -> bool| !t.is_empty() && t.chars().all(|c| ok(c) || c == '_');
    let number = unsigned
        .strip_prefix("0x")
        .map(|h| digits(h, |c| c.is_ascii_hexdigit()))
        .or_else(|| unsigned.strip_prefix("0b").map(|b| digits(b, |c| c == '0' || c == '1')))
        .unwrap_or_else(|| {
            // Decimal, octal (leading 0), sexagesimal (1:20) and floats (1.5, 1e3 with a sign).
            let mantissa = match unsigned.find(['e', 'E']) {
                Some(i) => {
                    let exp = &unsigned[i + 1..];
                    let signed = exp.starts_with(['+', '-']) && exp.len() > 1;
                    if !signed || !exp[1..].chars().all(|c| c.is_ascii_digit()) {
                        return false;
                    }
                    &unsigned[..i]
                }
                None => unsigned,
            };
            let body = mantissa.replace(['_', ':'], "");
            let mut parts = body.splitn(2, '.');
            let whole = parts.next().unwrap_or("");
            let frac = parts.next();
            let whole_ok = whole.chars().all(|c| c.is_ascii_digit());
            let frac_ok = frac.is_none_or(|f| f.chars().all(|c| c.is_ascii_digit()));
            whole_ok && frac_ok && (!whole.is_empty() || frac.is_some_and(|f| !f.is_empty()))
        });
    !(number || is_timestamp(s))
}

/// YAML 1.1 timestamps: `2001-12-14`, `2001-12-14t21:59:43.10-05:00`, `2001-12-14 21:59:43.10 -5`.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let date = b.len() >= 8 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && {
        let rest = &s[5..];
        let mut it = rest.splitn(3, '-');
        let (m, d) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        let day_len = d.chars().take_while(char::is_ascii_digit).count();
        (1..=2).contains(&m.len()) && m.chars().all(|c| c.is_ascii_digit()) && (1..=2).contains(&day_len)
    };
    date
}

/// The document as cloud-config text (`#cloud-config` first), in block style.
pub fn to_cloud_config(doc: &Node) -> String {
    format!("#cloud-config\n{}", to_yaml(doc))
}

/// The document in block style.
pub fn to_yaml(doc: &Node) -> String {
    let mut out = String::new();
    match doc {
        Node::Map(entries) if entries.is_empty() => out.push_str("{}\n"),
        other => emit(other, 0, &mut out),
    }
    out
}

fn emit(node: &Node, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match node {
        Node::Map(entries) => {
            for (k, v) in entries {
                let _ = write!(out, "{pad}{}:", inline_scalar(k));
                emit_value(v, indent, out);
            }
        }
        Node::Seq(items) => {
            for item in items {
                match item {
                    Node::Map(e) if !e.is_empty() => nested_item(item, indent, out),
                    Node::Seq(s) if !s.is_empty() => nested_item(item, indent, out),
                    _ => {
                        out.push_str(&pad);
                        out.push('-');
                        emit_value(item, indent, out);
                    }
                }
            }
        }
        scalar => {
            let _ = writeln!(out, "{pad}{}", inline_scalar(scalar));
        }
    }
}

/// A non-empty collection as a list item: its first line follows the `- `.
fn nested_item(item: &Node, indent: usize, out: &mut String) {
    let mut inner = String::new();
    emit(item, indent + 2, &mut inner);
    out.push_str(&" ".repeat(indent));
    out.push_str("- ");
    out.push_str(&inner[indent + 2..]);
}

/// What follows `key:` or `-`: a scalar on the same line, or a block below.
fn emit_value(v: &Node, indent: usize, out: &mut String) {
    match v {
        Node::Map(e) if e.is_empty() => out.push_str(" {}\n"),
        Node::Seq(s) if s.is_empty() => out.push_str(" []\n"),
        Node::Map(_) => {
            out.push('\n');
            emit(v, indent + 2, out);
        }
        Node::Seq(_) => {
            out.push('\n');
            emit(v, indent, out);
        }
        Node::Str(s) if literal_block_ok(s) => {
            let chomp = match s.len() - s.trim_end_matches('\n').len() {
                0 => "-",
                1 => "",
                _ => "+",
            };
            let _ = writeln!(out, " |{chomp}");
            let pad = " ".repeat(indent + 2);
            let body = s.strip_suffix('\n').unwrap_or(s);
            for line in body.split('\n') {
                if line.is_empty() {
                    out.push('\n');
                } else {
                    let _ = writeln!(out, "{pad}{line}");
                }
            }
        }
        scalar => {
            let _ = writeln!(out, " {}", inline_scalar(scalar));
        }
    }
}

/// A scalar on one line: plain scalars as written (an empty one as `null`, which PyYAML
/// reads the same), strings plain where PyYAML reads that text as the same string (`eth0`,
/// `/etc/hosts`), else double-quoted.
fn inline_scalar(node: &Node) -> String {
    match node {
        Node::Plain(s) if s.is_empty() => "null".into(),
        Node::Plain(s) if !s.contains('\n') => s.clone(),
        Node::Str(s) if plain_safe(s) => s.clone(),
        Node::Plain(s) | Node::Str(s) => double_quoted(s),
        Node::Tagged(tag, s) => format!("{tag} {}", double_quoted(s)),
        Node::Seq(_) | Node::Map(_) => unreachable!("collections are emitted as blocks"),
    }
}

/// Text that reads back as the same string when written plain: a conservative set of
/// characters, starting with a letter or `/`, and not a YAML 1.1 boolean, null or number.
fn plain_safe(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
        && plain_is_string(s)
}

/// Multi-line text that a literal block (`|`) carries unchanged.
fn literal_block_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\t', '\n'])
        && s.split('\n').all(|l| !l.ends_with([' ', '\t']))
        && s.chars().all(|c| c == '\n' || c == '\t' || printable(c))
}

/// Characters PyYAML accepts unescaped in a stream.
fn printable(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{7e}' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        && c != '\u{feff}'
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if printable(c) && c != '\u{85}' => out.push(c),
            c if (c as u32) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Node {
        parse_mapping(text).unwrap()
    }

    #[test]
    fn plain_scalars_keep_their_yaml_1_1_meaning() {
        let d = doc("a: yes\nb: 'yes'\nc: 0644\nd: \"0644\"\ne: ~\nf:\ng: plain text\nh: 'word'\n");
        let out = to_cloud_config(&d);
        assert_eq!(
            out, "#cloud-config\na: yes\nb: \"yes\"\nc: 0644\nd: \"0644\"\ne: ~\nf: null\ng: plain text\nh: word\n",
            "plain stays plain, quoted stays quoted"
        );
        assert!(!plain_is_string("yes") && !plain_is_string("0644") && !plain_is_string("1:20"));
        assert!(!plain_is_string("-1.5e+3") && !plain_is_string("2001-12-14") && !plain_is_string("0x1F"));
        assert!(plain_is_string("web1") && plain_is_string("1.2.3.4") && plain_is_string("e5"));
    }

    #[test]
    fn emitted_documents_read_back_the_same() {
        let text = "users:\n- name: cloudy\n  groups: [a, b]\n  inactive: true\n- default\nwrite_files:\n- path: /x\n  content: |\n    line 1\n\n    line 3\nmounts:\n- [/dev/vdb, /data]\nempty: []\nnested: {}\nruncmd:\n- - sh\n  - -c\n  - echo \"hi\"\\t\n";
        let d = doc(text);
        let out = to_cloud_config(&d);
        assert_eq!(parse_mapping(&out).unwrap(), d, "{out}");
        assert!(out.contains("content: |\n    line 1\n\n    line 3\n"), "{out}");
        assert!(out.contains("- - sh\n  - -c\n"), "{out}");
    }

    #[test]
    fn anchors_and_aliases_are_expanded() {
        let d = doc("base: &b {x: 1}\nother: *b\n");
        assert_eq!(d.get("other"), d.get("base"));
    }

    #[test]
    fn bad_documents_are_refused_with_a_place() {
        let e = parse_mapping("a: [1, 2\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
        assert!(parse_mapping("- a\n- b\n").unwrap_err().contains("not a YAML mapping"));
        assert!(parse_mapping("a: 1\n---\nb: 2\n").unwrap_err().contains("more than one"));
        assert_eq!(parse_mapping("").unwrap(), Node::map());
        assert_eq!(parse_mapping("#cloud-config\n").unwrap(), Node::map());
    }

    #[test]
    fn merge_recurses_into_maps_appends_lists_and_replaces_scalars() {
        let a = doc("packages: [a]\nusers: {x: 1, y: [1]}\nhostname: one\n");
        let b = doc("packages: [b]\nusers: {y: [2], z: 3}\nhostname: two\n");
        let m = merge(a.clone(), b.clone());
        assert_eq!(m, doc("packages: [a, b]\nusers: {x: 1, y: [1, 2], z: 3}\nhostname: two\n"));
        let o = overwrite(a, b);
        assert_eq!(o, doc("packages: [b]\nusers: {y: [2], z: 3}\nhostname: two\n"));
    }

    #[test]
    fn control_characters_are_escaped() {
        let s = Node::str("a\u{1}b\u{85}c\u{7f}");
        let mut d = Node::map();
        d.insert(Node::str("k"), s.clone());
        let out = to_cloud_config(&d);
        assert_eq!(out, "#cloud-config\nk: \"a\\x01b\\x85c\\x7f\"\n");
        assert_eq!(parse_mapping(&out).unwrap().get("k"), Some(&s));
    }
}
