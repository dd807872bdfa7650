//! The graph of a rebuild's pipelines as a picture: Graphviz's dot language and Mermaid's
//! flowchart, each pipeline a node labelled with what the rebuild would do and why, an edge
//! from each base to what is built on it.

/// One pipeline of the picture.
pub struct Node<'a> {
    pub name: &'a str,
    /// What a rebuild would do with it: "cached: nothing to run", "2 of 4 stages to run: ...".
    pub why: String,
    /// The names of the pipelines it is built on.
    pub bases: Vec<&'a str>,
}

/// A string as a dot quoted string's content.
fn dot_quoted(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn dot(nodes: &[Node]) -> String {
    let mut out = String::from("digraph rebuild {\n    rankdir=LR;\n    node [shape=box];\n");
    for n in nodes {
        out +=
            &format!("    \"{}\" [label=\"{}\\n{}\"];\n", dot_quoted(n.name), dot_quoted(n.name), dot_quoted(&n.why));
    }
    for n in nodes {
        for base in &n.bases {
            out += &format!("    \"{}\" -> \"{}\";\n", dot_quoted(base), dot_quoted(n.name));
        }
    }
    out + "}\n"
}

/// Mermaid node ids are word characters; labels are quoted, with `"` as `#quot;`.
fn mermaid_id(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

pub fn mermaid(nodes: &[Node]) -> String {
    let mut out = String::from("flowchart LR\n");
    for n in nodes {
        // One line of Mermaid per node: a reason's own line breaks become spaces.
        let label = format!("{}<br/>{}", n.name, n.why).replace('"', "#quot;").replace('\n', " ");
        out += &format!("    {}[\"{label}\"]\n", mermaid_id(n.name));
    }
    for n in nodes {
        for base in &n.bases {
            out += &format!("    {} --> {}\n", mermaid_id(base), mermaid_id(n.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_reasons_are_quoted_for_each_language() {
        let nodes = [
            Node { name: "base", why: "cached: nothing to run".into(), bases: vec![] },
            Node { name: "web.v2", why: "1 of 2 stages to run: \"x\" changed".into(), bases: vec!["base"] },
        ];
        let dot = dot(&nodes);
        assert!(dot.contains("\"base\" -> \"web.v2\";"), "{dot}");
        assert!(dot.contains("\\\"x\\\" changed"), "{dot}");
        let mermaid = mermaid(&nodes);
        assert!(mermaid.contains("base --> web_v2") && mermaid.contains("#quot;x#quot;"), "{mermaid}");
    }
}
