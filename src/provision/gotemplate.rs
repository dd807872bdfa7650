//! Go templates (`{{.Image}}`, `{{ if .X }}`, `{{ range .List }}`) as Virter renders them,
//! through the `gtmpl` crate, with the provisioning values as the data. Virter executes
//! its templates with `missingkey=error`; gtmpl errors on a missing field of an object, so
//! the values are handed over as an object and a missing one is an error naming it.

use gtmpl::Template;
use gtmpl::Value;
use std::collections::HashMap;

/// A provisioning file's values as template data: strings stay strings; numbers, booleans,
/// arrays and tables (beyond Virter, whose values are strings only) keep their shape, so
/// `{{ range .Packages }}` works over an array.
pub fn data(values: &toml::Table) -> Value {
    Value::Object(values.iter().map(|(k, v)| (k.clone(), convert(v))).collect::<HashMap<_, _>>())
}

fn convert(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(convert).collect()),
        toml::Value::Table(t) => Value::Object(t.iter().map(|(k, v)| (k.clone(), convert(v))).collect()),
    }
}

/// Renders one template. Errors say what is wrong without printing the values (which may
/// hold secrets): an undefined value by name, a syntax error as gtmpl reports it.
pub fn render(text: &str, data: &Value) -> Result<String, String> {
    // Most strings hold no action; skip the parser for them.
    if !text.contains("{{") {
        return Ok(text.to_string());
    }
    let mut tmpl = Template::default();
    tmpl.parse(text).map_err(|e| format!("`{text}` is not a valid Go template: {e}"))?;
    tmpl.render(&gtmpl::Context::from(data.clone())).map_err(|e| match e {
        gtmpl::error::ExecError::NoFiledFor(name, _) => format!(
            "`{text}` uses the value `{name}`, which is not defined: define it under [values] (or the pipeline's [values]) or with --set values.{name}=..."
        ),
        gtmpl::error::ExecError::OnlyMapsAndObjectsHaveFields => {
            format!("`{text}` reads a field of a value that is not a table")
        }
        other => format!("`{text}` cannot be rendered: {}", short(&other.to_string())),
    })
}

/// gtmpl's messages can embed a whole value; keep the first line, bounded.
fn short(msg: &str) -> String {
    let line = msg.lines().next().unwrap_or_default();
    if line.chars().count() > 200 {
        format!("{}...", line.chars().take(200).collect::<String>())
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Value {
        data(
            &toml::from_str(
                "Image = \"img\"\nDebug = true\nOff = false\nPkgs = [\"a\", \"b\"]\nN = 3\n[Nested]\nK = \"v\"\n",
            )
            .unwrap(),
        )
    }

    #[test]
    fn go_template_forms_render() {
        let v = values();
        assert_eq!(render("{{.Image}}", &v).unwrap(), "img");
        assert_eq!(render("x-{{ .Image }}-y", &v).unwrap(), "x-img-y");
        assert_eq!(render("{{if .Debug}}on{{else}}off{{end}}", &v).unwrap(), "on");
        assert_eq!(render("{{if .Off}}on{{else}}off{{end}}", &v).unwrap(), "off");
        assert_eq!(render("{{range .Pkgs}}[{{.}}]{{end}}", &v).unwrap(), "[a][b]");
        assert_eq!(render("{{.N}} {{.Nested.K}}", &v).unwrap(), "3 v");
        assert_eq!(render("{{ printf \"%s:%s\" .Image \"tag\" }}", &v).unwrap(), "img:tag");
        assert_eq!(render("no template", &v).unwrap(), "no template");
    }

    #[test]
    fn undefined_values_and_syntax_errors_are_reported() {
        let v = values();
        let e = render("{{.Imag}}", &v).unwrap_err();
        assert!(e.contains("`Imag`") && e.contains("not defined"), "{e}");
        assert!(!e.contains("img"), "the values are not printed: {e}");
        let e = render("{{if .Missing}}x{{end}}", &v).unwrap_err();
        assert!(e.contains("`Missing`"), "{e}");
        let e = render("{{.Image", &v).unwrap_err();
        assert!(e.contains("not a valid Go template"), "{e}");
    }
}
