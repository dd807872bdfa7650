//! `--set key.path=value`, helm/Virter style: `values.Image=x`, `stages[1].sysprep.fstrim=false`.
//! A value takes the type of the key it replaces; a new key gets the TOML type its text has
//! (and is retried as a string if the schema wants one, see [`deserialize_with_sets`]).

use crate::bad_input;
use toml::Value;

/// The kind of document `--set`s apply to, for [`deserialize_with_sets`]'s messages.
pub struct Document<'a> {
    /// The file, as shown in messages.
    pub origin: &'a str,
    /// What its keys are called: "the pipeline schema", "a seed file".
    pub schema: &'a str,
    /// Added to a message about the file's own content (not a `--set`'s).
    pub hint: fn(&str) -> &'static str,
}

/// Applies the `--set`s to `doc`, then `prepare` (template rendering), and reads the result
/// as a `T`. A `--set` whose text looked like a number or a boolean is retried as a string
/// where the schema wants another type: values are typed by the schema, not by how they
/// look. Every error is bad input naming the `--set` responsible, or the file and the key.
pub fn deserialize_with_sets<T: serde::de::DeserializeOwned>(
    doc: &Value,
    sets: &[String],
    document: &Document,
    prepare: impl Fn(&mut Value) -> Result<(), String>,
) -> anyhow::Result<T> {
    let origin = document.origin;
    let sets: Vec<Override> =
        sets.iter().map(|s| Override::parse(s)).collect::<Result<_, _>>().map_err(|e| bad_input!("{e}"))?;
    let mut as_string = vec![false; sets.len()];
    loop {
        let mut doc = doc.clone();
        for (ov, s) in sets.iter().zip(&as_string) {
            apply(&mut doc, ov, *s).map_err(|e| bad_input!("{e}"))?;
        }
        prepare(&mut doc).map_err(|e| bad_input!("{origin}: {e}"))?;
        let err = match serde_path_to_error::deserialize::<_, T>(doc) {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let at = err.path().to_string();
        // toml's messages end with a line saying where, which the path already says.
        let msg = err.inner().to_string();
        let msg = msg.split("\nin `").next().unwrap_or(&msg).trim_end().to_string();
        if let Some(i) = sets.iter().position(|ov| ov.path_string() == at) {
            if !as_string[i] && msg.contains("invalid type") && !sets[i].raw.is_empty() {
                as_string[i] = true;
                continue;
            }
        }
        let unknown = msg.contains("unknown field") || msg.contains("unknown variant");
        if let Some(ov) = sets.iter().find(|ov| at.starts_with(&ov.path_string()) || ov.path_string().starts_with(&at))
        {
            if unknown {
                return Err(bad_input!("--set {}: no such key in {} ({at}: {msg})", ov.path_string(), document.schema));
            }
        }
        let at = if at == "." { String::new() } else { format!("{at}: ") };
        return Err(bad_input!("{origin}: {at}{msg}{}", (document.hint)(&msg)));
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// One parsed `--set`.
#[derive(Debug, Clone)]
pub struct Override {
    pub path: Vec<Segment>,
    pub raw: String,
}

impl Override {
    pub fn parse(text: &str) -> Result<Override, String> {
        let (path, raw) = text
            .split_once('=')
            .ok_or_else(|| format!("--set {text}: expected KEY=VALUE, e.g. values.Hostname=web1"))?;
        Ok(Override { path: parse_path(path).map_err(|e| format!("--set {text}: {e}"))?, raw: raw.to_string() })
    }

    /// The path as serde_path_to_error prints it, so errors can be matched to their --set.
    pub fn path_string(&self) -> String {
        path_to_string(&self.path)
    }
}

pub fn path_to_string(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() {
            return Err(format!("empty key in path `{path}`"));
        }
        segments.push(Segment::Key(name.to_string()));
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(|| format!("unclosed `[` in path `{path}`"))?;
            let index = rest[1..close]
                .parse::<usize>()
                .map_err(|_| format!("`{}` is not an array index in path `{path}`", &rest[1..close]))?;
            segments.push(Segment::Index(index));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(format!("unexpected `{rest}` in path `{path}`"));
            }
        }
    }
    Ok(segments)
}

/// The value's text read as a TOML value (`true`, `3`, `["a", "b"]`, `"quoted"`), else as a string.
pub fn literal(raw: &str) -> Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Applies one override to the document, creating tables (and a next array entry) as needed.
pub fn apply(doc: &mut Value, ov: &Override, as_string: bool) -> Result<(), String> {
    let shown = ov.path_string();
    let mut node = doc;
    for (i, seg) in ov.path.iter().enumerate() {
        let last = i + 1 == ov.path.len();
        let next_is_index = matches!(ov.path.get(i + 1), Some(Segment::Index(_)));
        let empty = || {
            if next_is_index {
                Value::Array(vec![])
            } else {
                Value::Table(Default::default())
            }
        };
        node = match seg {
            Segment::Key(k) => {
                let table = node
                    .as_table_mut()
                    .ok_or_else(|| format!("--set {shown}: `{k}` is inside a value that is not a table"))?;
                if last {
                    let new = typed(table.get(k), &ov.raw, as_string).map_err(|e| format!("--set {shown}: {e}"))?;
                    table.insert(k.clone(), new);
                    return Ok(());
                }
                table.entry(k.clone()).or_insert_with(empty)
            }
            Segment::Index(idx) => {
                let array = node
                    .as_array_mut()
                    .ok_or_else(|| format!("--set {shown}: [{idx}] indexes a value that is not an array"))?;
                if *idx > array.len() {
                    return Err(format!(
                        "--set {shown}: index {idx} is out of range (the array has {} entries; the next new one is [{}])",
                        array.len(),
                        array.len()
                    ));
                }
                if *idx == array.len() {
                    array.push(if last { Value::String(String::new()) } else { empty() });
                }
                if last {
                    let new =
                        typed(Some(&array[*idx]), &ov.raw, as_string).map_err(|e| format!("--set {shown}: {e}"))?;
                    array[*idx] = new;
                    return Ok(());
                }
                &mut array[*idx]
            }
        };
    }
    Ok(())
}

/// The new value, typed like the one it replaces.
fn typed(existing: Option<&Value>, raw: &str, as_string: bool) -> Result<Value, String> {
    if as_string {
        return Ok(Value::String(raw.to_string()));
    }
    Ok(match existing {
        None => literal(raw),
        Some(Value::String(_)) => Value::String(raw.to_string()),
        Some(Value::Boolean(_)) => Value::Boolean(match raw {
            "true" => true,
            "false" => false,
            _ => return Err(format!("expected true or false, got `{raw}`")),
        }),
        Some(Value::Integer(_)) => {
            Value::Integer(raw.parse().map_err(|_| format!("expected a whole number, got `{raw}`"))?)
        }
        Some(Value::Float(_)) => Value::Float(raw.parse().map_err(|_| format!("expected a number, got `{raw}`"))?),
        Some(Value::Array(_)) => match literal(raw) {
            v @ Value::Array(_) => v,
            _ => Value::Array(
                raw.split(',').filter(|s| !s.is_empty()).map(|s| Value::String(s.trim().to_string())).collect(),
            ),
        },
        Some(Value::Table(_)) => return Err("is a table; set one of its keys instead".into()),
        Some(Value::Datetime(_)) => literal(raw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Value {
        Value::Table(toml::from_str(text).unwrap())
    }

    #[test]
    fn paths_with_indexes_parse() {
        let ov = Override::parse("stages[1].sysprep.fstrim=false").unwrap();
        assert_eq!(
            ov.path,
            vec![
                Segment::Key("stages".into()),
                Segment::Index(1),
                Segment::Key("sysprep".into()),
                Segment::Key("fstrim".into())
            ]
        );
        assert_eq!(ov.path_string(), "stages[1].sysprep.fstrim");
        assert!(Override::parse("novalue").is_err());
        assert!(Override::parse("stages[x].a=1").is_err());
    }

    #[test]
    fn values_take_the_existing_type() {
        let mut d = doc("[[stages]]\n[stages.sysprep]\nfstrim = true\nenable = [\"a\"]\n[values]\nN = 3\n");
        apply(&mut d, &Override::parse("stages[0].sysprep.fstrim=false").unwrap(), false).unwrap();
        apply(&mut d, &Override::parse("stages[0].sysprep.enable=x,y").unwrap(), false).unwrap();
        apply(&mut d, &Override::parse("values.N=4").unwrap(), false).unwrap();
        assert_eq!(d["stages"][0]["sysprep"]["fstrim"], Value::Boolean(false));
        assert_eq!(d["stages"][0]["sysprep"]["enable"], Value::Array(vec!["x".into(), "y".into()]));
        assert_eq!(d["values"]["N"], Value::Integer(4));
        let err = apply(&mut d, &Override::parse("stages[0].sysprep.fstrim=maybe").unwrap(), false).unwrap_err();
        assert!(err.contains("expected true or false"), "{err}");
    }

    #[test]
    fn new_keys_and_a_next_array_entry_are_created() {
        let mut d = doc("version = 1\n");
        apply(&mut d, &Override::parse("env.foo=bar").unwrap(), false).unwrap();
        apply(&mut d, &Override::parse("stages[0].sysprep.fstrim=true").unwrap(), false).unwrap();
        assert_eq!(d["env"]["foo"], Value::String("bar".into()));
        assert_eq!(d["stages"][0]["sysprep"]["fstrim"], Value::Boolean(true));
        let err = apply(&mut d, &Override::parse("stages[5].sysprep.fstrim=true").unwrap(), false).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }
}
