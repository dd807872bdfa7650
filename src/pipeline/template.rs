//! Every string in a pipeline file is a minijinja template over `[values]` and `[env]`,
//! rendered strictly: an undefined name is an error that names it and the key using it.

use minijinja::{Environment, UndefinedBehavior};
use toml::Value;

/// Renders every string of the document in place, except inside `[values]` itself.
pub fn render_document(doc: &mut Value) -> Result<(), String> {
    let table = doc.as_table().ok_or("the document is not a table")?;
    let values = table.get("values").cloned().unwrap_or(Value::Table(Default::default()));
    let env = table.get("env").cloned().unwrap_or(Value::Table(Default::default()));
    let context = Context::new(&values, &env);
    let keys: Vec<String> = table.keys().filter(|k| *k != "values").cloned().collect();
    let table = doc.as_table_mut().expect("checked above");
    for key in keys {
        render_value(table.get_mut(&key).expect("key exists"), &key, &context)?;
    }
    Ok(())
}

/// The data templates see: each value by its own name, and `values.X` / `env.X`.
pub struct Context {
    env: Environment<'static>,
    data: minijinja::Value,
    names: Vec<String>,
    values: toml::Table,
}

impl Context {
    pub fn new(values: &Value, env: &Value) -> Context {
        let mut jinja = Environment::new();
        jinja.set_undefined_behavior(UndefinedBehavior::Strict);
        jinja.set_syntax(
            minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build().expect("default delimiters"),
        );
        let mut map = std::collections::BTreeMap::new();
        let values_table = values.as_table().cloned().unwrap_or_default();
        for (k, v) in &values_table {
            map.insert(k.clone(), minijinja::Value::from(minijinja::value::Serde(v)));
        }
        map.insert("values".to_string(), minijinja::Value::from(minijinja::value::Serde(values)));
        map.insert("env".to_string(), minijinja::Value::from(minijinja::value::Serde(env)));
        let names = map.keys().cloned().collect();
        Context { env: jinja, data: minijinja::Value::from(map), names, values: values_table }
    }

    /// Renders one template; `at` names the key it came from, for the error.
    pub fn render(&self, text: &str, at: &str) -> Result<String, String> {
        if !(text.contains("{{") || text.contains("{%") || text.contains("{#")) {
            return Ok(text.to_string());
        }
        let tmpl = self.env.template_from_str(text).map_err(|e| format!("{at}: template error: {e:#}"))?;
        for name in tmpl.undeclared_variables(true) {
            let mut parts = name.splitn(2, '.');
            let top = parts.next().unwrap_or_default();
            let missing = if !self.names.iter().any(|n| n == top) {
                Some(top.to_string())
            } else if top == "values" {
                parts.next().filter(|sub| !self.values.contains_key(*sub)).map(|sub| format!("values.{sub}"))
            } else {
                None
            };
            if let Some(missing) = missing {
                let known: Vec<&str> = self.values.keys().map(String::as_str).collect();
                return Err(format!(
                    "{at}: undefined template value `{missing}` (defined in [values]: {}); define it in [values] or pass --set values.{}=...",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") },
                    missing.trim_start_matches("values.")
                ));
            }
        }
        tmpl.render(&self.data).map_err(|e| format!("{at}: template error: {e:#}"))
    }
}

fn render_value(value: &mut Value, at: &str, ctx: &Context) -> Result<(), String> {
    match value {
        Value::String(s) => *s = ctx.render(s, at)?,
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                render_value(item, &format!("{at}[{i}]"), ctx)?;
            }
        }
        Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                // Inline Virter steps are Go templates, rendered by the provision stage
                // with its own values: `{{.Image}}` is no minijinja syntax.
                if k == "steps" && at.starts_with("stages[") && at.ends_with("].provision") {
                    continue;
                }
                render_value(v, &format!("{at}.{k}"), ctx)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Value {
        Value::Table(toml::from_str(text).unwrap())
    }

    #[test]
    fn inline_virter_steps_are_left_to_the_provision_stage() {
        let mut d = doc("[values]\nHost = \"web\"\n[[stages]]\n[stages.provision]\nvalues = { H = \"{{ Host }}\" }\nsteps = [{ shell = { script = \"echo {{.H}}\" } }]\n");
        render_document(&mut d).unwrap();
        assert_eq!(d["stages"][0]["provision"]["values"]["H"].as_str(), Some("web"));
        assert_eq!(d["stages"][0]["provision"]["steps"][0]["shell"]["script"].as_str(), Some("echo {{.H}}"));
    }

    #[test]
    fn renders_values_and_env() {
        let mut d = doc("[values]\nHost = \"web\"\n[env]\nP = \"x\"\n[a]\ns = \"{{ Host }}-{{ values.Host }}-{{ env.P }}\"\nl = [\"{{ Host }}\"]\n");
        render_document(&mut d).unwrap();
        assert_eq!(d["a"]["s"].as_str(), Some("web-web-x"));
        assert_eq!(d["a"]["l"][0].as_str(), Some("web"));
    }

    #[test]
    fn undefined_names_are_named_with_their_key() {
        let mut d = doc("[values]\nHost = \"web\"\n[[stages]]\n[stages.x]\ns = \"{{ Hots }}\"\n");
        let err = render_document(&mut d).unwrap_err();
        assert!(err.contains("stages[0].x.s") && err.contains("`Hots`") && err.contains("Host"), "{err}");
        let mut d = doc("[values]\nHost = \"web\"\n[a]\ns = \"{{ values.Nope }}\"\n");
        let err = render_document(&mut d).unwrap_err();
        assert!(err.contains("values.Nope"), "{err}");
    }

    #[test]
    fn go_template_syntax_is_a_clear_error() {
        let mut d = doc("[values]\nImage = \"x\"\n[a]\ns = \"{{.Image}}\"\n");
        let err = render_document(&mut d).unwrap_err();
        assert!(err.contains("a.s") && err.contains("template error"), "{err}");
    }
}
