//! Reading `docker-compose.yml` as Docker Compose would: YAML anchors, aliases and
//! merge keys resolved, `${VAR:-default}` interpolation applied to the values, a
//! service's `environment` in either of its two forms.

use std::path::Path;

use serde_yaml::Value;

use crate::process::Env;

/// A parsed compose file.
#[derive(Debug, Clone)]
pub struct ComposeFile {
    document: Value,
}

/// Values of the variables that interpolation may read (the shell's and `.env`'s in
/// Docker Compose); `None` for an unset one.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl ComposeFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut document: Value =
            serde_yaml::from_str(text).map_err(|error| format!("invalid YAML: {error}"))?;
        document
            .apply_merge()
            .map_err(|error| format!("invalid merge key: {error}"))?;
        Ok(Self { document })
    }

    fn service(&self, name: &str) -> Result<&Value, String> {
        self.document
            .get("services")
            .and_then(|services| services.get(name))
            .ok_or_else(|| format!("the compose file has no service {name:?}"))
    }

    /// The service's `environment`, interpolated. Entries without a value (passed
    /// through from the caller's environment) are resolved through `lookup` too, and
    /// left out when unset, as Docker Compose does.
    pub fn environment(&self, service: &str, lookup: Lookup<'_>) -> Result<Env, String> {
        let mut env = Env::new();
        match self.service(service)?.get("environment") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(entries)) => {
                for (key, value) in entries {
                    let key = scalar(key).ok_or_else(|| format!("{service}: odd key {key:?}"))?;
                    let value = match value {
                        Value::Null => lookup(&key),
                        value => Some(interpolate(
                            &scalar(value)
                                .ok_or_else(|| format!("{service}: {key} is not a scalar"))?,
                            lookup,
                        )?),
                    };
                    if let Some(value) = value {
                        env.insert(key, value);
                    }
                }
            }
            Some(Value::Sequence(entries)) => {
                for entry in entries {
                    let entry = scalar(entry)
                        .ok_or_else(|| format!("{service}: odd environment entry {entry:?}"))?;
                    match entry.split_once('=') {
                        Some((key, value)) => {
                            env.insert(key.to_owned(), interpolate(value, lookup)?);
                        }
                        None => {
                            if let Some(value) = lookup(&entry) {
                                env.insert(entry, value);
                            }
                        }
                    }
                }
            }
            Some(other) => return Err(format!("{service}: odd environment {other:?}")),
        }
        Ok(env)
    }

    /// The service's published ports in the short syntax
    /// (`[HOST_IP:]HOST_PORT:CONTAINER_PORT`), interpolated.
    pub fn ports(&self, service: &str, lookup: Lookup<'_>) -> Result<Vec<String>, String> {
        match self.service(service)?.get("ports") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Sequence(ports)) => ports
                .iter()
                .map(|port| {
                    let port = scalar(port)
                        .ok_or_else(|| format!("{service}: a port not in the short syntax"))?;
                    interpolate(&port, lookup)
                })
                .collect(),
            Some(other) => Err(format!("{service}: odd ports {other:?}")),
        }
    }

    /// The service's `command` as a list of arguments (empty when it has none).
    pub fn command(&self, service: &str) -> Result<Vec<String>, String> {
        self.arguments(service, "command")
    }

    /// The service's `entrypoint` as a list of arguments (empty when it has none).
    pub fn entrypoint(&self, service: &str) -> Result<Vec<String>, String> {
        self.arguments(service, "entrypoint")
    }

    fn arguments(&self, service: &str, key: &str) -> Result<Vec<String>, String> {
        match self.service(service)?.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Sequence(arguments)) => arguments
                .iter()
                .map(|argument| scalar(argument).ok_or_else(|| format!("{service}: odd {key}")))
                .collect(),
            Some(Value::String(line)) => Ok(line.split_whitespace().map(str::to_owned).collect()),
            Some(other) => Err(format!("{service}: odd {key} {other:?}")),
        }
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Applies Compose interpolation to one value: `$$` is a `$`; `$VAR` and `${VAR}`
/// must be set; `${VAR:-default}` (unset or empty) and `${VAR-default}` (unset) fall
/// back to the default, itself interpolated; `${VAR:?message}` and `${VAR?message}`
/// fail when unset; `${VAR:+other}` and `${VAR+other}` give `other` when set.
pub fn interpolate(text: &str, lookup: Lookup<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(braced) = rest.strip_prefix('{') {
            let end = closing_brace(braced).ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            out.push_str(&expand(&braced[..end], lookup, text)?);
            rest = &braced[end + 1..];
        } else {
            let name_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if name_len == 0 {
                return Err(format!("a lone $ in {text:?} (write $$ for a dollar sign)"));
            }
            let name = &rest[..name_len];
            out.push_str(&lookup(name).ok_or_else(|| unset(name, text))?);
            rest = &rest[name_len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0_usize;
    for (index, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(index),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn expand(inner: &str, lookup: Lookup<'_>, text: &str) -> Result<String, String> {
    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, modifier) = inner.split_at(name_len);
    if name.is_empty() {
        return Err(format!("no variable name in ${{{inner}}} of {text:?}"));
    }
    let value = lookup(name);
    let set_and_not_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let operators: [(&str, bool); 6] = [
        (":-", set_and_not_empty),
        ("-", value.is_some()),
        (":?", set_and_not_empty),
        ("?", value.is_some()),
        (":+", set_and_not_empty),
        ("+", value.is_some()),
    ];
    if modifier.is_empty() {
        return value.ok_or_else(|| unset(name, text));
    }
    for (operator, condition) in operators {
        if let Some(word) = modifier.strip_prefix(operator) {
            return match operator {
                ":-" | "-" if condition => Ok(value.unwrap_or_default()),
                ":-" | "-" => interpolate(word, lookup),
                ":?" | "?" if condition => Ok(value.unwrap_or_default()),
                ":?" | "?" => Err(format!("{name} is required in {text:?}: {word}")),
                _ if condition => interpolate(word, lookup),
                _ => Ok(String::new()),
            };
        }
    }
    Err(format!(
        "unsupported interpolation ${{{inner}}} in {text:?}"
    ))
}

fn unset(name: &str, text: &str) -> String {
    format!("{name} is unset and {text:?} gives it no default")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_apply_when_unset_and_values_win_when_set() {
        let set = |name: &str| (name == "USER").then(|| "alice".to_owned());
        assert_eq!(
            interpolate("${USER:-bank}@${HOST:-db}", &none).unwrap(),
            "bank@db"
        );
        assert_eq!(
            interpolate("${USER:-bank}@${HOST:-db}", &set).unwrap(),
            "alice@db"
        );
        assert_eq!(
            interpolate("$$HOME and ${A:-${B:-x}}", &none).unwrap(),
            "$HOME and x"
        );
        assert_eq!(interpolate("${USER:+yes}${HOST:+no}", &set).unwrap(), "yes");
        let empty = |_: &str| Some(String::new());
        assert_eq!(interpolate("${A:-d}|${A-d}", &empty).unwrap(), "d|");
    }

    #[test]
    fn unset_variables_without_defaults_are_errors() {
        assert!(interpolate("${NOPE}", &none).is_err());
        assert!(interpolate("$NOPE/x", &none).is_err());
        assert!(interpolate("${NOPE:?must be set}", &none).is_err());
        assert!(interpolate("${NOPE", &none).is_err());
    }

    #[test]
    fn environments_resolve_through_anchors_merges_and_lists() {
        let compose = ComposeFile::parse(
            "x-env: &env\n  A: ${A:-1}\n  B: 2\nx-base: &base\n  environment: *env\n\
             services:\n  one:\n    <<: *base\n  two:\n    environment: [\"C=${C:-3}\", D]\n    command: [\"rebuild\"]\n",
        )
        .unwrap();
        let one = compose.environment("one", &none).unwrap();
        assert_eq!(
            one,
            Env::from([("A".into(), "1".into()), ("B".into(), "2".into())])
        );
        let two = compose.environment("two", &none).unwrap();
        assert_eq!(two, Env::from([("C".into(), "3".into())]));
        assert_eq!(compose.command("two").unwrap(), ["rebuild"]);
        assert!(compose.environment("three", &none).is_err());
    }
}
